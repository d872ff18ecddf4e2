//! Saliency convergence (the paper's Fig. 8 as a tool): full Group-CAM maps of a fixed probe of
//! validation images for their ground-truth classes after every epoch, how much they moved, and
//! the grids of them (`<run>/saliency/`, TensorBoard's `saliency/probe`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::RgbImage;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::Config;
use super::checkpoint::Meta;
use super::record::EpochRecord;
use crate::cam::{Explainer, GroupCam};
use crate::data::{ImageFolder, Loader};
use crate::imageio;
use crate::models::CamModel;

/// The probe images (normalised, on the model's device), their labels and the photos in [0, 1].
pub struct Probe {
    pub images: Tensor,
    pub labels: Vec<i64>,
    pub photos: Tensor,
}

/// The probe's sample indices: `n` validation images spread over the classes, round-robin
/// (class 0's first pick, class 1's first, ..., then the second picks), each class's images in
/// a seeded shuffle. A probe of sorted files would be `n` images of class 0.
pub fn pick(samples: &[(PathBuf, i64)], n: usize, seed: u64) -> Vec<usize> {
    let classes = samples.iter().map(|s| s.1).max().map_or(0, |m| m as usize + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, (_, c)) in samples.iter().enumerate() {
        by_class[*c as usize].push(i);
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5A11_E0C7);
    for c in &mut by_class {
        c.shuffle(&mut rng);
    }
    let mut out = Vec::with_capacity(n);
    for round in 0.. {
        let before = out.len();
        for c in &by_class {
            if out.len() < n && round < c.len() {
                out.push(c[round]);
            }
        }
        if out.len() == n || out.len() == before {
            break;
        }
    }
    out
}

/// One probe image as `saliency/probe.json` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeEntry {
    pub path: PathBuf,
    pub class: String,
    pub label: i64,
}

/// Maps (N x H x W) for the probe's labels, explained a few images at a time.
pub fn maps(model: &dyn CamModel, probe: &Probe, groups: i64) -> Result<Tensor> {
    let cam = GroupCam { groups: groups.min(model.target_channels()), ..Default::default() };
    let n = probe.labels.len() as i64;
    let mut parts = Vec::new();
    let step = 4;
    for s in (0..n).step_by(step) {
        let len = (step as i64).min(n - s);
        let x = probe.images.narrow(0, s, len);
        parts.push(cam.explain(model, &x, Some(&probe.labels[s as usize..(s + len) as usize]))?.maps);
    }
    Ok(Tensor::cat(&parts, 0).to_device(tch::Device::Cpu))
}

/// (1 - mean Pearson r, mean |delta|) between two sets of maps; a constant map correlates 0.
pub fn change(prev: &Tensor, cur: &Tensor) -> (f64, f64) {
    let n = cur.size()[0];
    let (a, b) = (prev.reshape([n, -1]).to_kind(Kind::Double), cur.reshape([n, -1]).to_kind(Kind::Double));
    let (ac, bc) = (&a - a.mean_dim(1, true, Kind::Double), &b - b.mean_dim(1, true, Kind::Double));
    let num = (&ac * &bc).sum_dim_intlist(1, false, Kind::Double);
    let den = (ac.square().sum_dim_intlist(1, false, Kind::Double)
        * bc.square().sum_dim_intlist(1, false, Kind::Double))
    .sqrt();
    let r = num.where_self(&den.gt(0.0), &den.zeros_like()) / den.clamp_min(1e-12);
    let delta = (&a - &b).abs().mean(Kind::Double).double_value(&[]);
    (1.0 - r.mean(Kind::Double).double_value(&[]), delta)
}

/// Overlays in a square grid (tensorboard-rs mislabels non-square images).
pub fn grid(photos: &Tensor, maps: &Tensor) -> Result<RgbImage> {
    let n = maps.size()[0];
    let (h, w) = (maps.size()[1] as u32, maps.size()[2] as u32);
    let cols = (n as f64).sqrt().ceil().max(1.0) as u32;
    let side = cols * h.max(w);
    let mut out = RgbImage::new(side, side);
    for i in 0..n {
        let tile = imageio::overlay(&photos.get(i), &maps.get(i))?;
        let (r, c) = (i as u32 / cols, i as u32 % cols);
        image::imageops::replace(&mut out, &tile, (c * w) as i64, (r * h) as i64);
    }
    Ok(out)
}

/// Saliency convergence: a fixed probe of validation images, its maps after every epoch, and
/// the change against the previous epoch's.
pub(super) struct ProbeTracker {
    probe: Option<Probe>,
    /// The last maps (also checkpointed, so that a resumed run compares against them).
    pub prev: Option<Tensor>,
}

impl ProbeTracker {
    /// No probe (ranks other than 0, which write no grids), only the checkpointed maps.
    pub fn off(prev: Option<Tensor>) -> ProbeTracker {
        ProbeTracker { probe: None, prev }
    }

    /// The probe (`saliency.probe` validation images over the classes) and, on a fresh run, its
    /// maps before any training (epoch 0) with their grid.
    pub fn start(
        cfg: &Config,
        val: &Loader,
        model: &dyn CamModel,
        prev: Option<Tensor>,
        dir: &Path,
        device: Device,
    ) -> Result<(ProbeTracker, Option<image::RgbImage>)> {
        let probe = make_probe(val, cfg.saliency.probe, cfg.train.seed, dir, device)?;
        let mut tracker = ProbeTracker { probe, prev };
        let mut grid = None;
        if let (Some(p), None) = (&tracker.probe, &tracker.prev) {
            let maps = maps(model, p, cfg.saliency.groups)?;
            grid = Some(save_grid(dir, p, &maps, 0)?);
            tracker.prev = Some(maps);
        }
        Ok((tracker, grid))
    }

    /// Records the change in `rec`, updates the convergence streak in `meta`, saves the grid;
    /// returns the "converged" line the first time the streak reaches the patience, and the grid.
    pub fn track(
        &mut self,
        cfg: &Config,
        model: &dyn CamModel,
        rec: &mut EpochRecord,
        meta: &mut Meta,
        dir: &Path,
    ) -> Result<(Option<String>, Option<image::RgbImage>)> {
        let Some(p) = &self.probe else { return Ok((None, None)) };
        let maps = maps(model, p, cfg.saliency.groups)?;
        let mut line = None;
        if let Some(prev) = &self.prev {
            let (c, d) = change(prev, &maps);
            (rec.saliency_change, rec.saliency_delta) = (Some(c), Some(d));
            meta.saliency_streak = if c < cfg.saliency.threshold { meta.saliency_streak + 1 } else { 0 };
            if meta.saliency_streak >= cfg.saliency.patience && meta.converged_at.is_none() {
                meta.converged_at = Some(rec.epoch);
                line = Some(format!(
                    "saliency converged at epoch {}: 1 - r < {} for {} epochs",
                    rec.epoch, cfg.saliency.threshold, cfg.saliency.patience
                ));
            }
        }
        let grid = save_grid(dir, p, &maps, rec.epoch)?;
        self.prev = Some(maps);
        Ok((line, Some(grid)))
    }
}

/// The probe (see [`saliency::pick`]), its files recorded in `saliency/probe.json`; a resumed run
/// must find the same files there, or its saliency change would compare other images.
fn make_probe(val: &Loader, n: usize, seed: u64, dir: &Path, device: Device) -> Result<Option<Probe>> {
    if n == 0 {
        return Ok(None);
    }
    let picked = pick(&val.data.samples, n, seed);
    let entries: Vec<ProbeEntry> = picked
        .iter()
        .map(|&i| {
            let (path, label) = val.data.samples[i].clone();
            ProbeEntry { class: val.data.classes[label as usize].clone(), path, label }
        })
        .collect();
    let subset =
        ImageFolder { samples: entries.iter().map(|e| (e.path.clone(), e.label)).collect(), ..val.data.clone() };
    let probe_loader = Loader { data: subset, batch_size: n, shuffle: false, ..val.clone() };
    let batch = probe_loader.epoch(0, 0).next().context("empty validation set")??;
    // Unreadable picks are left out of the probe (validation names and counts them).
    let entries: Vec<_> = entries.into_iter().filter(|e| !batch.skipped.iter().any(|(p, _)| p == &e.path)).collect();
    if entries.is_empty() {
        bail!(
            "no probe image could be read from {} (set saliency.probe: 0 to run without the probe)",
            val.data.root.display()
        );
    }
    let listed = dir.join("probe.json");
    if listed.exists() {
        let text = std::fs::read_to_string(&listed).with_context(|| format!("cannot read {}", listed.display()))?;
        let before: Vec<ProbeEntry> =
            serde_json::from_str(&text).with_context(|| format!("{} is not a probe list", listed.display()))?;
        if before != entries {
            bail!(
                "{} lists other images than the validation set gives now (was it changed?): the saliency change \
                 would compare different images; restore the set, or start a new run",
                listed.display()
            );
        }
    } else {
        crate::atomic::write_bytes(&listed, &serde_json::to_vec_pretty(&entries)?)?;
    }
    let photos = batch.pixels.to_kind(Kind::Float) / 255.0;
    Ok(Some(Probe { images: batch.images(device), labels: Vec::<i64>::try_from(&batch.labels)?, photos }))
}

/// Saves the epoch's grid as a PNG and returns it for TensorBoard.
fn save_grid(dir: &Path, probe: &Probe, maps: &Tensor, epoch: usize) -> Result<image::RgbImage> {
    let img = grid(&probe.photos, maps)?;
    let path = dir.join(format!("epoch-{epoch:03}.png"));
    crate::atomic::save_png(&img, &path)?;
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_spreads_over_the_classes_and_follows_the_seed() {
        // 3 classes of 5, 2 and 4 images, in sorted (ImageFolder) order.
        let samples: Vec<(PathBuf, i64)> = [5, 2, 4]
            .iter()
            .enumerate()
            .flat_map(|(c, &k)| (0..k).map(move |i| (format!("{c}/{i}").into(), c as i64)))
            .collect();
        let p = pick(&samples, 7, 1);
        let classes: Vec<i64> = p.iter().map(|&i| samples[i].1).collect();
        assert_eq!(classes, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(p.iter().collect::<std::collections::HashSet<_>>().len(), 7, "a file picked twice");
        assert_eq!(p, pick(&samples, 7, 1));
        assert_ne!(p, pick(&samples, 7, 2), "the seed does not move the picks");
        assert_eq!(pick(&samples, 50, 1).len(), 11, "a probe larger than the set is the whole set");
    }
}
