//! One epoch's record: what history.json, the checkpoint's meta and the report hold for it, the
//! line the epoch ends with, and its TensorBoard scalars.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::tb::EventLog;

/// One epoch's record, as logged, checkpointed and reported.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub phase: super::schedule::Phase,
    pub lr: f64,
    pub train_loss: f64,
    pub train_top1: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub augmented_fraction: f64,
    pub images_skipped: usize,
    /// Validation images the accuracies are over, and unreadable ones left out (0 in runs
    /// from before they were recorded).
    #[serde(default)]
    pub val_images: usize,
    #[serde(default)]
    pub val_skipped: usize,
    pub img_per_s: f64,
    pub seconds: f64,
    pub saliency_change: Option<f64>,
    pub saliency_delta: Option<f64>,
    /// With cached maps (`augment.refresh: K`): K, and the 1-based epoch whose starting weights
    /// the epoch's maps came from, so that the saliency change can be read beside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_every: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maps_from_epoch: Option<usize>,
    /// `scores` when the cache holds group scores (`augment.cache: scores`); absent for maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<crate::augment::CacheOf>,
    /// The seconds of the refresh pass before this epoch (not in `seconds`), when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_seconds: Option<f64>,
    /// `data.extra_val`'s sets by name (absent without them, so older histories read and
    /// write as they were).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_val: BTreeMap<String, ValScore>,
}

/// One extra validation set's accuracies after an epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValScore {
    pub top1: f64,
    pub top5: f64,
    /// Images the accuracies are over.
    pub images: usize,
}

/// The line an epoch ends with.
pub(super) fn summary_line(rec: &EpochRecord, epochs: usize) -> String {
    format!(
        "epoch {}/{epochs} [{}] loss {:.4} train top-1 {:.2}% val top-1 {:.2}% top-5 {:.2}% (of {} images{}) augmented {:.0}% skipped {} {:.1}s{}",
        rec.epoch,
        rec.phase,
        rec.train_loss,
        100.0 * rec.train_top1,
        100.0 * rec.val_top1,
        100.0 * rec.val_top5,
        rec.val_images,
        if rec.val_skipped > 0 { format!(", {} unreadable skipped", rec.val_skipped) } else { String::new() },
        100.0 * rec.augmented_fraction,
        rec.images_skipped,
        rec.seconds,
        rec.saliency_change.map(|c| format!(" saliency change {c:.4}")).unwrap_or_default()
            + &rec
                .refresh_every
                .zip(rec.maps_from_epoch)
                .map(|(k, e)| {
                    let every = if k == 1 { "epoch".to_string() } else { format!("{k} epochs") };
                    let what = rec.cached.map_or("maps", |c| c.name());
                    format!(" (cached {what}: refreshed every {every}, these from before epoch {e})")
                })
                .unwrap_or_default()
            + &rec
                .extra_val
                .iter()
                .map(|(name, v)| format!(
                    " | {name} top-1 {:.2}% top-5 {:.2}% (of {})",
                    100.0 * v.top1,
                    100.0 * v.top5,
                    v.images
                ))
                .collect::<String>()
    )
}

pub(super) fn log_epoch(tb: &mut EventLog, r: &EpochRecord, grid: Option<&image::RgbImage>) -> Result<()> {
    let e = r.epoch;
    for (tag, v) in [
        ("epoch/train_loss", r.train_loss),
        ("epoch/train_top1", r.train_top1),
        ("val/top1", r.val_top1),
        ("val/top5", r.val_top5),
        ("epoch/lr", r.lr),
        ("epoch/img_per_s", r.img_per_s),
        ("epoch/augmented_fraction", r.augmented_fraction),
        ("epoch/images_skipped", r.images_skipped as f64),
        ("val/images", r.val_images as f64),
        ("val/images_skipped", r.val_skipped as f64),
    ] {
        tb.scalar(tag, v as f32, e)?;
    }
    for (name, v) in &r.extra_val {
        tb.scalar(&format!("val_{name}/top1"), v.top1 as f32, e)?;
        tb.scalar(&format!("val_{name}/top5"), v.top5 as f32, e)?;
    }
    if let Some(from) = r.maps_from_epoch {
        // Epochs of training the cached maps have not seen.
        tb.scalar("saliency/cached_maps_age", (r.epoch - from) as f32, e)?;
    }
    if let (Some(c), Some(d)) = (r.saliency_change, r.saliency_delta) {
        tb.scalar("saliency/one_minus_pearson", c as f32, e)?;
        tb.scalar("saliency/mean_abs_delta", d as f32, e)?;
    }
    if let Some(g) = grid {
        tb.image("saliency/probe", g, e)?;
    }
    Ok(())
}

/// The per-step scalars (also what `bench train` counts as part of the step).
pub fn log_step(tb: &mut EventLog, step: u64, loss: f64, lr: f64, img_per_s: f64) -> Result<()> {
    tb.scalar("train/loss", loss as f32, step as usize)?;
    tb.scalar("train/lr", lr as f32, step as usize)?;
    tb.scalar("train/img_per_s", img_per_s as f32, step as usize)
}
