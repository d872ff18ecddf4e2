//! What a run shows: progress bars, and lines that go above them on a terminal (to stdout
//! otherwise); ranks other than 0 show nothing but errors.

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub(super) struct Console {
    pub bars: MultiProgress,
    silent: bool,
}

impl Console {
    pub fn new(progress: bool, silent: bool) -> Console {
        let bars = MultiProgress::new();
        if !progress || silent {
            bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Console { bars, silent }
    }

    pub fn say(&self, line: String) {
        if self.silent {
            return;
        }
        if self.bars.is_hidden() {
            println!("{line}");
        } else {
            self.bars.println(line).ok();
        }
    }

    /// The run's bar over `epochs`, at `done`.
    pub fn epoch_bar(&self, epochs: usize, done: usize) -> Result<ProgressBar> {
        let bar = self.bars.add(ProgressBar::new(epochs as u64));
        bar.set_style(ProgressStyle::with_template(
            "epoch {pos}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise}",
        )?);
        bar.set_position(done as u64);
        Ok(bar)
    }

    /// An epoch's bar over its `steps`.
    pub fn step_bar(&self, steps: usize) -> Result<ProgressBar> {
        let bar = self.bars.add(ProgressBar::new(steps as u64));
        bar.set_style(ProgressStyle::with_template("  {pos}/{len} [{bar:30}] {msg} ETA {eta}")?);
        Ok(bar)
    }
}
