//! The saliency cache across ranks (maps or scores, `augment.cache`): before an epoch of a
//! cached run, the cache on disk when it comes from the due refresh epoch or later, else
//! rebuilt now with the current weights, each rank computing its shard. Every rank takes the same decision, and the
//! collectives (one `any`, three barriers) come in the same order on all of them.

use anyhow::Result;

use super::context::Run;
use crate::augment::CacheOf;
use crate::augment::cache::{self, Rebuild, SaliencyCache};
use crate::data::{Loader, Transform};

impl Run<'_> {
    /// The cache `epoch` trains with (see [`cache`]), and the refresh pass's seconds when it ran.
    pub fn map_cache(&mut self, epoch: usize, every: usize) -> Result<(SaliencyCache, Option<f64>)> {
        let cfg = self.cfg;
        let start = cfg.pretrain.as_ref().map_or(0, |p| p.epochs);
        let due = cache::due_epoch(epoch, start, every);
        let (rank, world) = (self.world().rank(), self.world().size());
        let holds = cfg.augment.cache;
        let scores = holds == CacheOf::Scores;
        let want = cache::CacheMeta {
            version: cache::VERSION,
            samples: self.loaders.train.data.len(),
            // Scores are of the whole image at the input size.
            side: if scores { cfg.data.input_size } else { cfg.cache_side() },
            input_size: cfg.data.input_size,
            groups: cfg.augment.groups,
            score_size: cfg.augment.score_size,
            world,
            fingerprint: cache::fingerprint(&self.loaders.train.data),
            epoch,
            holds,
            precision: scores.then_some(cfg.augment.precision),
        };
        let dir = self.saver.paths.map_cache.clone();
        let p = cfg.augment.probability;
        let opened = SaliencyCache::open(&dir, &want, due, p)?;
        let stale = self.world().any(opened.is_err())?;
        let why = match opened {
            Ok(c) if !stale => return Ok((c, None)),
            Ok(_) => Rebuild::AnotherRank,
            Err(why) => why,
        };
        if epoch != due {
            self.console.say(format!(
                "saliency cache: rebuilt before epoch {} with its weights ({why}); an uninterrupted run would use \
                 the maps made before epoch {}",
                epoch + 1,
                due + 1
            ));
        } else if epoch != start {
            self.console.say(format!("saliency cache: refreshing before epoch {} ({why})", epoch + 1));
        }
        if self.world().is_main() {
            cache::clear(&dir)?;
        }
        self.world().barrier()?;
        let whole = Loader {
            transform: Transform::Whole { size: cfg.data.input_size },
            shuffle: false,
            drop_last: false,
            batch_size: cfg.train.val_batch_size.unwrap_or(cfg.train.batch_size),
            masks: None,
            ..self.loaders.train.clone()
        };
        let stop = crate::interrupt::requested;
        let aug = cfg.augment.augmenter();
        let stats =
            cache::write_part(&self.model, &aug, &whole, &want, rank, &dir, self.device, &stop).map_err(|e| {
                match e.downcast_ref::<cache::Stopped>() {
                    Some(s) => self.interrupted(format!(
                        "the saliency cache's refresh pass before epoch {} ({} of {} images done, none kept)",
                        epoch + 1,
                        s.done,
                        s.of
                    )),
                    None => e,
                }
            })?;
        self.world().barrier()?;
        if self.world().is_main() {
            cache::publish(&dir, &want)?;
        }
        self.world().barrier()?;
        let opened = SaliencyCache::open(&dir, &want, due, p)?.map_err(|why| {
            anyhow::anyhow!(
                "rank {rank} cannot read the saliency cache it just helped build in {}: {why} (on several \
                 machines the run directory must be on a filesystem that every rank sees)",
                dir.display()
            )
        })?;
        let seconds = stats.seconds;
        let what = match holds {
            CacheOf::Maps => format!("maps of {s} x {s} px", s = cfg.cache_side()),
            CacheOf::Scores => {
                format!("images' {} group scores (whole images at {s} px)", cfg.augment.groups, s = want.side)
            }
        };
        self.console.say(format!(
            "saliency cache: {} {what} before epoch {} in {seconds:.1} s ({:.1} img/s{}){}",
            stats.images,
            epoch + 1,
            stats.images as f64 / seconds.max(1e-9),
            if world > 1 { format!(" on rank {rank} of {world}") } else { String::new() },
            if stats.constant > 0 { format!(", {} constant (passed through)", stats.constant) } else { String::new() },
        ));
        Ok((opened, Some(seconds)))
    }
}
