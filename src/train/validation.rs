//! Validation: top-1 and top-5 over a loader, once per epoch, on one process or sharded.

use std::path::PathBuf;

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

use super::step::hits;
use crate::data::Loader;
use crate::dist::{World, sampler};
use crate::models::CamModel;

/// What validation measured, and over which images.
#[derive(Clone, Debug, Default)]
pub struct Validation {
    pub top1: f64,
    pub top5: f64,
    /// Images the accuracies are over (all ranks' together).
    pub images: usize,
    /// Files that could not be read, all ranks' together: counted, left out of the accuracies.
    pub unreadable: usize,
    /// This rank's unreadable files, with why (named in the log).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Top-1 and top-5 accuracy over a loader, in eval mode. With several ranks the images are
/// split over them (each exactly once, no padding) and the counts summed, so that every rank
/// gets the whole set's accuracy.
pub fn validate(model: &dyn CamModel, loader: &Loader, device: Device, world: &World) -> Result<Validation> {
    let batches = match world {
        World::Single => loader.batches(0),
        World::Ranks(_) => sampler::batches(&world.shard(&loader.order(0), false), loader.batch_size, false),
    };
    let mut n = 0i64;
    let (mut t1, mut t5) = (Tensor::zeros([], (Kind::Int64, device)), Tensor::zeros([], (Kind::Int64, device)));
    let mut skipped = Vec::new();
    for batch in loader.epoch_of(0, batches, 0) {
        let batch = batch?;
        skipped.extend(batch.skipped.iter().cloned());
        if batch.is_empty() {
            continue;
        }
        let logits = tch::no_grad(|| model.logits_eval(&batch.images(device)));
        let (a, b) = hits(&logits, &batch.labels.to_device(device));
        (n, t1, t5) = (n + batch.len() as i64, t1 + a, t5 + b);
    }
    let (mut t1, mut t5) = (t1.int64_value(&[]), t5.int64_value(&[]));
    let mut unreadable = skipped.len();
    if let World::Ranks(_) = world {
        let s = world.sum(&[n as f64, t1 as f64, t5 as f64, unreadable as f64])?;
        (n, t1, t5, unreadable) = (s[0] as i64, s[1] as i64, s[2] as i64, s[3] as usize);
    }
    if n == 0 {
        bail!(
            "no validation image could be read from {} ({} unreadable, the first: {})",
            loader.data.root.display(),
            unreadable,
            skipped.first().map(|(p, why)| format!("{}: {why}", p.display())).unwrap_or_default()
        );
    }
    Ok(Validation { top1: t1 as f64 / n as f64, top5: t5 as f64 / n as f64, images: n as usize, unreadable, skipped })
}
