//! Everything an epoch works with, built once by [`super::setup`], and the small decisions
//! the loop's parts share: when to stop, what to say, where a failed run can go on from.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Result;
use tch::Device;

use super::Config;
use super::checkpoint::Meta;
use super::console::Console;
use super::loaders::Loaders;
use super::probe::ProbeTracker;
use super::saver::CheckpointSaver;
use super::step::Trainer;
use crate::augment::Augmentation;
use crate::dist::World;
use crate::interrupt::{Interrupt, Interrupted};
use crate::models::Model;
use crate::rundir::RunLock;
use crate::tb::EventLog;

pub(super) struct Run<'a> {
    pub cfg: &'a Config,
    pub device: Device,
    pub loaders: Loaders,
    pub model: Model,
    /// The optimizer side, and the [`World`] the run's collectives go through.
    pub trainer: Trainer,
    pub augmentation: Augmentation,
    pub saver: CheckpointSaver,
    /// The TensorBoard log (off on ranks other than 0, which write no files).
    pub tb: EventLog,
    pub console: Console,
    pub meta: Meta,
    pub probe: ProbeTracker,
    pub named_skips: HashSet<PathBuf>,
    /// Held to the end (dropped last): Ctrl-C handling, then the run directory's lock.
    pub _interrupt: Interrupt,
    pub _lock: Option<RunLock>,
}

impl Run<'_> {
    pub fn world(&self) -> &World {
        &self.trainer.world
    }

    /// Ctrl-C, decided together: a rank stops when any rank was interrupted, so that all of them
    /// stop at the same step (one that stopped alone would leave the others waiting on it).
    pub fn stop_requested(&self) -> Result<bool> {
        self.world().any(crate::interrupt::requested())
    }

    /// The Ctrl-C error, naming the last checkpoint when there is one.
    pub fn interrupted(&self, at: String) -> anyhow::Error {
        let last = self.saver.last();
        let checkpoint = last.exists().then(|| (last, self.meta.epoch));
        Interrupted { at, checkpoint }.into()
    }

    /// Names each unreadable file once per run (train and validation alike).
    pub fn say_skips(&mut self, skipped: &[(PathBuf, String)]) {
        for (p, why) in skipped {
            if self.named_skips.insert(p.clone()) {
                self.console.say(format!("skipped {}: {why}", p.display()));
            }
        }
    }

    /// Runs TensorBoard writes: a failure stops the run naming the intact checkpoint, or
    /// (`train.tensorboard: continue`) is said once and training goes on.
    pub fn logged<T>(&mut self, f: impl FnOnce(&mut EventLog) -> Result<T>) -> Result<T> {
        let r = f(&mut self.tb);
        if let Some(w) = self.tb.take_warning() {
            self.console.say(w);
        }
        r.map_err(|e| anyhow::anyhow!("{e:#}; {}", self.saver.resume_hint(self.meta.epoch)))
    }

    /// The probe's maps after this epoch and how far they moved (see [`ProbeTracker`]).
    /// Returns the epoch's grid, for TensorBoard once the checkpoint is safe.
    pub fn track_probe(&mut self, rec: &mut super::EpochRecord) -> Result<Option<image::RgbImage>> {
        let (line, grid) = self.probe.track(self.cfg, &self.model, rec, &mut self.meta, &self.saver.paths.probe)?;
        if let Some(line) = line {
            self.console.say(line);
        }
        Ok(grid)
    }

    /// `last` every epoch and `best` when val top-1 improved, then the history.
    pub fn save_checkpoints(&mut self, rec: super::EpochRecord) -> Result<()> {
        let state = (&self.model.vs, &self.trainer.sgd, self.probe.prev.as_ref());
        self.saver.save(&mut self.meta, rec, state, self.trainer.scaler.state())
    }

    /// The epoch's TensorBoard scalars and grid, flushed.
    pub fn log_epoch(&mut self, rec: &super::EpochRecord, grid: Option<&image::RgbImage>) -> Result<()> {
        self.logged(|tb| {
            super::record::log_epoch(tb, rec, grid)?;
            tb.flush()
        })
    }

    /// Final weights and the report (rank 0, while the others wait), then the group's last barrier.
    pub fn finish(self) -> Result<super::RunSummary> {
        let Run { trainer, model, meta, saver, .. } = self;
        trainer.world.finish(|| saver.write_final(&model, &meta))?;
        Ok(super::RunSummary { out: saver.paths.out.clone(), history: meta.history, best_top1: meta.best_top1 })
    }
}
