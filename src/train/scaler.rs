//! The fp16 loss scale, as torch.cuda.amp.GradScaler keeps it: start at 2^16, halve on a step
//! whose gradients overflow (the step is skipped), double after `GROWTH_INTERVAL` consecutive
//! clean steps.

/// Dynamic loss scaling state; checkpointed as (scale, clean steps) so a resume continues it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    scale: f64,
    clean_steps: u64,
}

impl LossScaler {
    pub const INITIAL: f64 = 65536.0;
    pub const GROWTH_INTERVAL: u64 = 2000;

    pub fn new() -> LossScaler {
        LossScaler { scale: Self::INITIAL, clean_steps: 0 }
    }

    /// The state a checkpoint holds.
    pub fn resume(scale: f64, clean_steps: u64) -> LossScaler {
        LossScaler { scale, clean_steps }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// (scale, clean steps since the last change), for the checkpoint.
    pub fn state(&self) -> (f64, u64) {
        (self.scale, self.clean_steps)
    }

    /// After a step: an overflow halves the scale and restarts the count; the
    /// `GROWTH_INTERVAL`-th clean step in a row doubles it.
    pub fn update(&mut self, overflow: bool) {
        if overflow {
            self.scale /= 2.0;
            self.clean_steps = 0;
            return;
        }
        self.clean_steps += 1;
        if self.clean_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new()
    }
}

#[cfg(test)]
mod tests {
    use super::LossScaler;

    #[test]
    fn doubles_after_consecutive_clean_steps_only() {
        let mut s = LossScaler::new();
        for _ in 0..1999 {
            s.update(false);
        }
        assert_eq!(s.scale(), 65536.0);
        s.update(false);
        assert_eq!(s.scale(), 131072.0, "the 2000th clean step in a row doubles");
        // An overflow right before where a step-index rule would double: no doubling follows it.
        for _ in 0..1998 {
            s.update(false);
        }
        s.update(true);
        assert_eq!(s.scale(), 65536.0);
        s.update(false);
        assert_eq!(s.scale(), 65536.0, "one clean step after an overflow must not double");
        for _ in 0..1998 {
            s.update(false);
        }
        assert_eq!(s.scale(), 65536.0);
        s.update(false);
        assert_eq!(s.scale(), 131072.0);
    }

    #[test]
    fn resume_continues_the_count() {
        let mut s = LossScaler::new();
        for _ in 0..1500 {
            s.update(false);
        }
        let (scale, clean) = s.state();
        let mut r = LossScaler::resume(scale, clean);
        for _ in 0..500 {
            r.update(false);
        }
        assert_eq!(r.scale(), 131072.0);
    }
}
