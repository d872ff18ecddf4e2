//! The fine-tuning loop (paper Sec. 5): SGD on a step schedule, every batch augmented by
//! Group-CAM for its labels, with validation, TensorBoard logs, atomic checkpoints, exact
//! resume and per-epoch saliency-convergence tracking. `run` reads as timm's train.py does:
//! the set-up ([`setup`]), then per epoch `train_one_epoch` ([`epoch`], one [`step`] per
//! batch), [`validate`], the probe's maps ([`probe`]) and the [`CheckpointSaver`], then the
//! final weights. On several ranks every collective goes through [`crate::dist::World`], whose
//! module states the order the ranks keep.

pub mod checkpoint;
pub mod config;
mod console;
mod context;
pub mod epoch;
pub mod loaders;
pub mod probe;
pub mod ranges;
pub mod record;
mod refresh;
pub mod report;
pub mod saver;
pub mod scaler;
pub mod schedule;
pub mod setup;
pub mod sgd;
pub mod step;
pub mod validation;

use std::path::PathBuf;

use crate::models::CamModel as _;
use anyhow::Result;

pub use checkpoint::Meta;
pub use config::{Amp, Config};
pub use epoch::EpochStats;
pub use loaders::Loaders;
pub use record::{EpochRecord, ValScore, log_step};
pub use saver::CheckpointSaver;
pub use scaler::LossScaler;
pub use schedule::{Phase, lr_schedule};
pub use step::{StepResult, Trainer, soft_cross_entropy};
pub use validation::{Validation, validate};

/// What a finished run leaves behind.
#[derive(Debug)]
pub struct RunSummary {
    pub out: PathBuf,
    pub history: Vec<EpochRecord>,
    pub best_top1: f64,
}

/// Options that are not part of the experiment.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// A checkpoint to resume from (`<out>/checkpoints/last.safetensors`).
    pub resume: Option<PathBuf>,
    /// Draw progress bars (they draw nothing when stderr is not a terminal anyway).
    pub progress: bool,
    /// Clear a directory that already holds a run (`--overwrite`); otherwise only a resume reuses one.
    pub overwrite: bool,
    /// This process's rank in a data-parallel launch (`dist::launch::from_env`); None: alone.
    pub launch: Option<crate::dist::Launch>,
}

pub fn run(cfg: &Config, opts: &RunOptions) -> Result<RunSummary> {
    let mut run = setup::start(cfg, opts)?;
    let epochs = cfg.train.epochs;
    let epoch_bar = run.console.epoch_bar(epochs, run.meta.epoch)?;
    for epoch in run.meta.epoch..epochs {
        let (lr, phase) = lr_schedule(cfg, epoch);
        let stats = run.train_one_epoch(epoch, lr, phase)?;
        run.model.set_training(false);
        let val = validate(&run.model, &run.loaders.val, run.device, run.world())?;
        let mut skips = val.skipped.clone();
        let mut rec = stats.record(epoch, phase, lr, &val);
        for (name, loader) in &run.loaders.extra_val {
            let v = validate(&run.model, loader, run.device, run.world())?;
            rec.extra_val.insert(name.clone(), record::ValScore { top1: v.top1, top5: v.top5, images: v.images });
            skips.extend(v.skipped);
        }
        run.say_skips(&skips);
        let grid = run.track_probe(&mut rec)?;
        run.console.say(record::summary_line(&rec, epochs));
        // The checkpoint first: a TensorBoard failure after it loses nothing.
        run.save_checkpoints(rec.clone())?;
        run.log_epoch(&rec, grid.as_ref())?;
        epoch_bar.inc(1);
        if run.stop_requested()? && epoch + 1 < epochs {
            return Err(run.interrupted(format!("the end of epoch {}", epoch + 1)));
        }
    }
    epoch_bar.finish_and_clear();
    run.finish()
}
