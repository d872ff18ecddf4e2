//! The rank protocol, named once: a run is one process or ranks over a [`Ddp`], chosen at
//! set-up, and everything that must be decided together is asked here.
//!
//! # The collective-order contract
//! Data-parallel runs stay bit-exact (against each other, a resume and a single process of the
//! same global batch) only because every rank issues the same collectives in the same order.
//! The training loop keeps it by asking only [`World`] for anything collective, at points that
//! every rank reaches whatever its data did:
//! - once at set-up: [`World::broadcast_state`] (rank 0's parameters and buffers);
//! - per step: [`World::any`] on the loss (or the fp16 step's one), [`World::average_gradients`]
//!   after each backward (an empty batch sends zeros: `Trainer::step_empty`), a
//!   [`World::check_agreement`] every `dist.check_every` steps, and [`World::any`] for Ctrl-C
//!   before the step;
//! - per epoch: [`World::check_agreement`], the stats' [`World::sum`], validation's
//!   [`World::sum`], the cache refresh's [`World::any`] and [`World::barrier`]s;
//! - at the end: [`World::check_identical`], then [`World::finish`].
//!
//! A branch that only some ranks take must not contain a collective; "is this rank the one
//! that writes files" is [`World::is_main`], asked nowhere else.
//!
//! Seeding is the other half of the contract: the loader's permutation and crops come from
//! (seed, epoch, sample), torch's generator from (seed, epoch, rank) at each epoch's start, so
//! no rank's draws depend on what another rank or an earlier process did.

use anyhow::Result;

use super::{Ddp, sampler};

/// One process, or this process's rank over a data-parallel group.
pub enum World {
    Single,
    Ranks(Ddp),
}

impl World {
    pub fn rank(&self) -> usize {
        match self {
            World::Single => 0,
            World::Ranks(d) => d.rank(),
        }
    }

    pub fn size(&self) -> usize {
        match self {
            World::Single => 1,
            World::Ranks(d) => d.world(),
        }
    }

    /// Whether this process writes the run's files (rank 0, or the only process).
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    pub fn ddp(&self) -> Option<&Ddp> {
        match self {
            World::Single => None,
            World::Ranks(d) => Some(d),
        }
    }

    /// Whether `here` holds on any rank (just `here` alone).
    pub fn any(&self, here: bool) -> Result<bool> {
        match self {
            World::Single => Ok(here),
            World::Ranks(d) => Ok(d.sum(&[if here { 1.0 } else { 0.0 }])?[0] > 0.0),
        }
    }

    /// The values summed over the ranks (the values themselves alone).
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        match self {
            World::Single => Ok(values.to_vec()),
            World::Ranks(d) => d.sum(values),
        }
    }

    /// Waits for every rank (nothing alone).
    pub fn barrier(&self) -> Result<()> {
        match self {
            World::Single => Ok(()),
            World::Ranks(d) => d.group.barrier(),
        }
    }

    pub fn average_gradients(&self) -> Result<()> {
        match self {
            World::Single => Ok(()),
            World::Ranks(d) => d.average_gradients(),
        }
    }

    /// Rank 0's parameters and buffers to every rank.
    pub fn broadcast_state(&self) -> Result<()> {
        match self {
            World::Single => Ok(()),
            World::Ranks(d) => d.broadcast_state(),
        }
    }

    /// The cheap check that the ranks' weights agree after `step`.
    pub fn check_agreement(&self, step: u64) -> Result<()> {
        match self {
            World::Single => Ok(()),
            World::Ranks(d) => d.check_agreement(step),
        }
    }

    /// This rank's share of an epoch `order`: all of it alone, else its DistributedSampler
    /// shard (padded with `pad`, for training; disjoint without, for validation).
    pub fn shard(&self, order: &[usize], pad: bool) -> Vec<usize> {
        match self {
            World::Single => order.to_vec(),
            World::Ranks(d) => sampler::shard(order, d.rank(), d.world(), pad),
        }
    }

    /// The end of a run: the ranks' weights compared in full, `write` on rank 0 while the others
    /// wait, then the group's last barrier, so that every rank's success means a whole run.
    pub fn finish(self, write: impl FnOnce() -> Result<()>) -> Result<()> {
        match self {
            World::Single => write(),
            World::Ranks(d) => {
                d.check_identical()?;
                if d.rank() == 0 {
                    write()?;
                }
                d.group.finish()
            }
        }
    }
}
