//! One epoch of training (`train_one_epoch`): the rank's batches, each augmented in the
//! fine-tuning phase, one SGD step each, and what the epoch saw, summed over the ranks.

use std::time::Instant;

use crate::models::CamModel as _;
use anyhow::{Result, bail};
use tch::{Kind, Tensor};

use super::context::Run;
use super::record::EpochRecord;
use super::saver::NO_CHECKPOINT;
use super::schedule::Phase;
use super::step::StepResult;
use super::validation::Validation;
use crate::dist::{World, sampler};

/// What one epoch of training saw.
#[derive(Clone, Debug, Default)]
pub struct EpochStats {
    /// With a cache: the refresh interval, the 1-based epoch whose weights made it, and what it holds.
    pub cache: Option<(usize, usize, crate::augment::CacheOf)>,
    /// The refresh pass before the epoch, when it had one (not in `seconds`).
    pub refresh_seconds: Option<f64>,
    pub loss_sum: f64,
    pub seen: i64,
    pub correct: i64,
    pub augmented: usize,
    pub skipped: usize,
    pub seconds: f64,
}

impl EpochStats {
    /// The stats of all ranks together (the time is this rank's).
    fn summed(self, world: &World) -> Result<EpochStats> {
        let s = world.sum(&[
            self.loss_sum,
            self.seen as f64,
            self.correct as f64,
            self.augmented as f64,
            self.skipped as f64,
        ])?;
        Ok(EpochStats {
            loss_sum: s[0],
            seen: s[1] as i64,
            correct: s[2] as i64,
            augmented: s[3] as usize,
            skipped: s[4] as usize,
            ..self
        })
    }

    pub fn record(&self, epoch: usize, phase: Phase, lr: f64, val: &Validation) -> EpochRecord {
        let seen = self.seen.max(1) as f64;
        EpochRecord {
            epoch: epoch + 1,
            phase,
            lr,
            train_loss: self.loss_sum / seen,
            train_top1: self.correct as f64 / seen,
            val_top1: val.top1,
            val_top5: val.top5,
            val_images: val.images,
            val_skipped: val.unreadable,
            augmented_fraction: self.augmented as f64 / seen,
            images_skipped: self.skipped,
            img_per_s: self.seen as f64 / self.seconds,
            seconds: self.seconds,
            refresh_every: self.cache.map(|c| c.0),
            maps_from_epoch: self.cache.map(|c| c.1),
            cached: self.cache.map(|c| c.2).filter(|h| !h.is_maps()),
            refresh_seconds: self.refresh_seconds,
            ..Default::default()
        }
    }
}

/// Torch's generator at the start of an epoch (augmentation draws, dropout): from the seed,
/// the epoch and the rank (rank 0 as a single process), so that a resumed run replays the epoch
/// exactly and no rank's draws depend on another's.
pub fn seed_epoch(seed: u64, epoch: usize, rank: usize) {
    tch::manual_seed(
        (seed as i64)
            .wrapping_mul(1_000_003)
            .wrapping_add(epoch as i64)
            .wrapping_add((rank as i64).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64)),
    );
}

impl Run<'_> {
    /// One pass over the training loader (at most `train.max_steps` batches), each batch
    /// augmented in the fine-tuning phase, then one SGD step.
    pub fn train_one_epoch(&mut self, epoch: usize, lr: f64, phase: Phase) -> Result<EpochStats> {
        let augmenting = phase == Phase::Finetune;
        seed_epoch(self.cfg.train.seed, epoch, self.world().rank());
        let mut stats = EpochStats::default();
        self.loaders.train.masks = None;
        if let (true, Some(every)) = (augmenting, self.augmentation.cached_every()) {
            let (cache, secs) = self.map_cache(epoch, every)?;
            let holds = cache.meta().holds;
            (stats.cache, stats.refresh_seconds) = (Some((every, cache.meta().epoch + 1, holds)), secs);
            self.augmentation.serve(std::sync::Arc::new(cache), &mut self.loaders.train);
        }
        let plan = self.train_batches(epoch);
        let steps = plan.len().min(self.cfg.train.max_steps.unwrap_or(usize::MAX));
        let bar = self.console.step_bar(steps)?;
        let start = Instant::now();
        let mut correct = Tensor::zeros([], (Kind::Int64, self.device));
        self.model.set_training(!self.cfg.train.freeze_bn);
        for batch in self.loaders.train.epoch_of(epoch, plan, 0).take(steps) {
            let batch = batch?;
            if self.stop_requested()? {
                return Err(self.interrupted(format!("epoch {}, step {}", epoch + 1, self.meta.step)));
            }
            stats.skipped += batch.skipped.len();
            self.say_skips(&batch.skipped);
            let n = batch.len() as i64;
            if n == 0 && matches!(self.world(), World::Single) {
                continue;
            }
            let (x, y) = (batch.images(self.device), batch.labels.to_device(self.device));
            let (x, soft) = if augmenting && n > 0 {
                let a = self.augmentation.apply(&self.model, x, &batch)?;
                stats.augmented += a.augmented;
                (a.images, a.targets)
            } else {
                (x, None)
            };
            let result = match n {
                0 => self.trainer.step_empty(lr)?,
                _ => self.trainer.step_with(&self.model, &x, &y, soft.as_ref(), lr)?,
            };
            let (loss, top1) = match result {
                StepResult::Done { loss, top1 } => (loss, top1),
                StepResult::Overflow { loss, top1 } => {
                    self.console.say(format!(
                        "fp16 overflow at step {}: loss scale now {}",
                        self.meta.step,
                        self.trainer.scaler.scale()
                    ));
                    (loss, top1)
                }
                StepResult::NonFinite(v) => bail!(
                    "loss is {v}{} at epoch {} step {} (lr {lr:e}): lower the learning rate; {}",
                    if matches!(self.world(), World::Ranks(_)) { " on at least one rank" } else { "" },
                    epoch + 1,
                    self.meta.step,
                    self.saver
                        .last_checkpoint(self.meta.epoch)
                        .map(|c| format!("the last good checkpoint is {c}"))
                        .unwrap_or(NO_CHECKPOINT.into())
                ),
            };
            self.meta.step += 1;
            stats.loss_sum += loss * n as f64;
            stats.seen += n;
            correct += top1;
            let every = self.cfg.dist.check_every;
            if every > 0 && self.meta.step % every == 0 {
                self.world().check_agreement(self.meta.step)?;
            }
            let ips = stats.seen as f64 / start.elapsed().as_secs_f64();
            let step = self.meta.step;
            self.logged(|tb| super::record::log_step(tb, step, loss, lr, ips))?;
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {ips:.1} img/s"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        stats.correct = correct.int64_value(&[]);
        stats.seconds = start.elapsed().as_secs_f64();
        if let World::Ranks(_) = self.world() {
            // Every rank takes the same decision below from the counts of all.
            self.world().check_agreement(self.meta.step)?;
            stats = stats.summed(self.world())?;
        }
        if stats.seen == 0 {
            bail!(
                "epoch {} trained on no image: every image of its {steps} batches was skipped as unreadable \
                 (see the 'skipped' lines above)",
                epoch + 1
            );
        }
        Ok(stats)
    }

    /// This rank's batches of `epoch`: all of the loader's alone, else its DistributedSampler
    /// shard in batches of `train.batch_size / world`.
    fn train_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let loader = &self.loaders.train;
        match self.world() {
            World::Single => loader.batches(epoch),
            w => sampler::batches(&w.shard(&loader.order(epoch), true), loader.batch_size / w.size(), loader.drop_last),
        }
    }
}
