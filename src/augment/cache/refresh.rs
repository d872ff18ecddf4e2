//! The refresh pass: this rank's maps (or group scores) of its shard of the whole training
//! images, with the augmentation's own map (or scoring) step, written as one part file or not
//! at all.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use super::store::part_name;
use super::{CacheMeta, shard};
use crate::augment::{CacheOf, GroupCamAugment};
use crate::data::Loader;
use crate::models::CamModel;

/// What a refresh pass did on this rank.
#[derive(Clone, Debug, Default)]
pub struct RefreshStats {
    pub images: usize,
    pub constant: usize,
    pub unreadable: usize,
    pub seconds: f64,
}

/// A refresh pass that `stop` ended early (Ctrl-C): nothing of its part was kept.
#[derive(Debug, thiserror::Error)]
#[error("the saliency cache's refresh pass was stopped after {done} of {of} images")]
pub struct Stopped {
    pub done: usize,
    pub of: usize,
}

/// Computes this rank's part of the cache into `dir`: the maps (or, for a score cache, the
/// group scores) of its shard of `loader`'s samples (whose transform is
/// [`crate::data::Transform::Whole`]) with `aug`'s map step (or its scoring), in batches of
/// `loader.batch_size`, written atomically. An unreadable image gets a zero row (its training
/// reads will skip it anyway); `constant` counts maps that came out constant, or images whose
/// every group score is 0 (the step passes them through). `stop` is asked before each batch; when it says yes the
/// pass ends with [`Stopped`] and leaves no part file.
#[allow(clippy::too_many_arguments)]
pub fn write_part(
    model: &dyn CamModel,
    aug: &GroupCamAugment,
    loader: &Loader,
    meta: &CacheMeta,
    rank: usize,
    dir: &Path,
    device: Device,
    stop: &dyn Fn() -> bool,
) -> Result<RefreshStats> {
    let start = std::time::Instant::now();
    let mine = shard(loader.data.len(), rank, meta.world);
    let batches: Vec<Vec<usize>> = mine.chunks(loader.batch_size.max(1)).map(|c| c.to_vec()).collect();
    let row = meta.row_bytes() as usize;
    let mut stats = RefreshStats::default();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(part_name(rank, meta.world, meta.holds));
    crate::atomic::write_with(&path, |tmp| {
        let mut out = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(tmp)?);
        for (idx, batch) in batches.iter().zip(loader.epoch_of(0, batches.clone(), 0)) {
            if stop() {
                return Err(Stopped { done: stats.images + stats.unreadable, of: mine.len() }.into());
            }
            let batch = batch?;
            let rows = if batch.is_empty() {
                Vec::new()
            } else {
                let x = batch.images(device);
                let (bytes, constant) = match meta.holds {
                    CacheOf::Maps => {
                        let (maps, constant) = aug.maps_for(model, &x, &batch.labels)?;
                        (to_cache(&maps, meta.side), constant)
                    }
                    CacheOf::Scores => {
                        let scores = to_score_rows(&aug.scores_for(model, &x, &batch.labels)?, meta.groups);
                        let none = scores.to_kind(Kind::Float).abs().amax(1, false).le(0.0);
                        (scores, Vec::<bool>::try_from(none)?)
                    }
                };
                let mut rows = vec![0u8; constant.len() * row];
                let len = bytes.numel();
                bytes.copy_data_u8(&mut rows, len);
                for (j, &c) in constant.iter().enumerate() {
                    if c {
                        rows[j * row..(j + 1) * row].fill(0);
                    }
                }
                stats.constant += constant.iter().filter(|&&c| c).count();
                rows
            };
            // Rows in sample order; an unreadable file's row is zeros.
            let mut readable = rows.chunks_exact(row);
            for &i in idx {
                let path = &loader.data.samples[i].0;
                if batch.skipped.iter().any(|(p, _)| p == path) {
                    out.write_all(&vec![0u8; row])?;
                    stats.unreadable += 1;
                } else {
                    out.write_all(readable.next().context("a refresh batch has fewer maps than images")?)?;
                    stats.images += 1;
                }
            }
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(())
    })?;
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// Maps (m x 1 x H x W in [0, 1]) as the cache stores them: area-averaged to `side` x `side`
/// and `round(255 map)` bytes, on the CPU.
pub fn to_cache(maps: &Tensor, side: u32) -> Tensor {
    let small = maps.adaptive_avg_pool2d([side as i64, side as i64]);
    (small * 255.0).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).to_device(Device::Cpu)
}

/// Group scores (m x g floats, g <= `groups`) as the score cache stores them: f16 on the CPU,
/// padded with zero scores to `groups` columns (torch.chunk can make fewer groups than G; a zero
/// score weighs nothing).
pub fn to_score_rows(scores: &Tensor, groups: i64) -> Tensor {
    let (m, g) = (scores.size()[0], scores.size()[1]);
    let padded = if g < groups {
        Tensor::cat(&[scores.shallow_clone(), scores.zeros_like().narrow(1, 0, 1).expand([m, groups - g], false)], 1)
    } else {
        scores.shallow_clone()
    };
    padded.to_kind(Kind::Half).to_device(Device::Cpu).contiguous()
}
