//! CutMix (Yun et al. 2019) as timm's `Mixup(cutmix_alpha=1.0, mixup_alpha=0, prob=1.0,
//! mode='batch', correct_lam=True)` applies it: the augmentation a user would pick instead of
//! Group-CAM, so that the A/B can put the two side by side (`augment.method: cutmix`).
//!
//! Per batch: lam ~ Beta(alpha, alpha); a box of sqrt(1 - lam) times the image's sides centred
//! on a uniform pixel, clipped to the image; every image gets the box pasted from the batch
//! flipped (image i from image B-1-i); its target is lam' x its own one-hot + (1 - lam') x
//! its partner's, lam' = 1 - the clipped box's share of the pixels. timm's default label
//! smoothing (0.1) is left out: the control trains on hard labels, and smoothing would be a
//! second difference between the arms. All draws come from torch's generator, which the loop
//! seeds per (seed, epoch, rank), so a resumed run mixes as the uninterrupted one did.

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

/// CutMix's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CutMix {
    /// Beta(alpha, alpha) of the kept share (timm's `cutmix_alpha`, 1.0: uniform).
    pub alpha: f64,
    /// The chance that a batch is mixed (timm's `prob`; `augment.probability`).
    pub probability: f64,
}

impl Default for CutMix {
    fn default() -> Self {
        CutMix { alpha: 1.0, probability: 1.0 }
    }
}

/// The pasted box of a batch: rows `y0..y1`, columns `x0..x1`, already clipped, and `lam`, the
/// weight of each image's own label (1 - the box's share of the pixels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CutBox {
    pub y0: i64,
    pub y1: i64,
    pub x0: i64,
    pub x1: i64,
    pub lam: f64,
}

/// A mixed batch.
pub struct Mixed {
    pub images: Tensor,
    /// B x classes soft targets (f32, the images' device); None when the batch was not mixed.
    pub targets: Option<Tensor>,
    pub cut: Option<CutBox>,
    /// Images whose pixels changed (the middle image of an odd batch is its own partner).
    pub augmented: usize,
}

impl CutMix {
    /// The box for a batch of h x w images, or None when the batch is not mixed.
    pub fn draw(&self, h: i64, w: i64) -> Option<CutBox> {
        let cpu = (Kind::Double, Device::Cpu);
        if self.probability < 1.0 && Tensor::rand([1], cpu).double_value(&[0]) >= self.probability {
            return None;
        }
        // Beta(a, a) as X / (X + Y) of two Gamma(a) draws.
        let g = Vec::<f64>::try_from(Tensor::from_slice(&[self.alpha, self.alpha]).internal_standard_gamma())
            .expect("two doubles");
        let lam = g[0] / (g[0] + g[1]).max(f64::MIN_POSITIVE);
        let ratio = (1.0 - lam).sqrt();
        let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
        let cy = Tensor::randint(h, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        let cx = Tensor::randint(w, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        let (y0, y1) = ((cy - cut_h / 2).clamp(0, h), (cy + cut_h / 2).clamp(0, h));
        let (x0, x1) = ((cx - cut_w / 2).clamp(0, w), (cx + cut_w / 2).clamp(0, w));
        let lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
        Some(CutBox { y0, y1, x0, x1, lam })
    }

    /// Mixes a B x C x H x W batch whose labels (B integers, on any device) are of `classes`.
    pub fn apply(&self, images: &Tensor, labels: &Tensor, classes: i64) -> Result<Mixed> {
        let (n, _, h, w) = images.size4()?;
        if labels.size() != [n] || labels.is_floating_point() {
            bail!(
                "labels must be {n} integers (one per image), got a {:?} tensor of shape {:?}",
                labels.kind(),
                labels.size()
            );
        }
        let Some(cut) = self.draw(h, w) else {
            return Ok(Mixed { images: images.shallow_clone(), targets: None, cut: None, augmented: 0 });
        };
        tch::no_grad(|| {
            let out = images.copy();
            let (bh, bw) = (cut.y1 - cut.y0, cut.x1 - cut.x0);
            let mut pasted = out.narrow(2, cut.y0, bh).narrow(3, cut.x0, bw);
            pasted.copy_(&images.flip([0]).narrow(2, cut.y0, bh).narrow(3, cut.x0, bw));
            let own = labels.to_device(images.device()).to_kind(Kind::Int64).one_hot(classes).to_kind(Kind::Float);
            let targets = &own * cut.lam + own.flip([0]) * (1.0 - cut.lam);
            let augmented = if bh * bw > 0 { (n - n % 2) as usize } else { 0 };
            Ok(Mixed { images: out, targets: Some(targets), cut: Some(cut), augmented })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Images of one value each (i + 1), 9 x 13 so that boxes clip on both sides.
    fn batch(n: i64) -> Tensor {
        Tensor::arange(n, (Kind::Float, Device::Cpu)).view([n, 1, 1, 1]).expand([n, 3, 9, 13], false).copy() + 1.0
    }

    /// Every image holds its partner's pixels exactly inside the box and its own outside; the
    /// target weights are the pasted area's share computed from the pixels; boxes clip.
    #[test]
    fn labels_mix_by_the_pasted_area() {
        let (n, h, w, classes) = (5i64, 9i64, 13i64, 4i64);
        let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 1]);
        let x = batch(n);
        let mut clipped = 0;
        for seed in 0..60 {
            tch::manual_seed(seed);
            let m = CutMix::default().apply(&x, &labels, classes).unwrap();
            let b = m.cut.unwrap();
            let targets = Vec::<Vec<f32>>::try_from(m.targets.unwrap()).unwrap();
            let px = Vec::<f32>::try_from(m.images.narrow(1, 0, 1).flatten(0, -1)).unwrap();
            let ids = [0usize, 1, 2, 3, 1];
            for i in 0..n as usize {
                let partner = n as usize - 1 - i;
                let mut pasted = 0;
                for y in 0..h {
                    for xx in 0..w {
                        let v = px[i * (h * w) as usize + (y * w + xx) as usize];
                        let inside = (b.y0..b.y1).contains(&y) && (b.x0..b.x1).contains(&xx);
                        assert_eq!(
                            v,
                            if inside { partner as f32 + 1.0 } else { i as f32 + 1.0 },
                            "seed {seed} image {i}"
                        );
                        pasted += inside as i64;
                    }
                }
                let lam = 1.0 - pasted as f64 / (h * w) as f64;
                assert_eq!(pasted, (b.y1 - b.y0) * (b.x1 - b.x0));
                assert!((b.lam - lam).abs() < 1e-12, "seed {seed}: lam {} for {pasted} pasted pixels", b.lam);
                let mut want = vec![0f64; classes as usize];
                want[ids[i]] += lam;
                want[ids[partner]] += 1.0 - lam;
                for c in 0..classes as usize {
                    assert!((targets[i][c] as f64 - want[c]).abs() < 1e-6, "seed {seed} image {i}: {:?}", targets[i]);
                }
            }
            assert_eq!(m.augmented, if b.lam < 1.0 { 4 } else { 0 });
            clipped += (b.y0 == 0 || b.y1 == h || b.x0 == 0 || b.x1 == w) as usize;
        }
        assert!(clipped > 5, "the boxes never reached the border: clipping went untested");
    }

    /// The same generator state draws the same box; probability 0 leaves the batch alone.
    #[test]
    fn a_seed_draws_the_same_box_and_probability_zero_mixes_nothing() {
        let draw = |seed| {
            tch::manual_seed(seed);
            CutMix::default().draw(32, 32).unwrap()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        let x = batch(2);
        let m =
            CutMix { probability: 0.0, ..Default::default() }.apply(&x, &Tensor::from_slice(&[0i64, 1]), 2).unwrap();
        assert!(m.targets.is_none() && m.cut.is_none() && m.augmented == 0 && m.images.equal(&x));
    }
}
