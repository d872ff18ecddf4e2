//! Config range checks: the range of every numeric key of a run's config, checked before any
//! work, each error naming its key path. (Types and unknown keys are the deserializer's; paths
//! are `Config::validate`'s.)

use anyhow::{Result, bail};

use super::Config;

/// Libtorch intra-op threads and loader workers beyond this are a typo, not a machine.
pub const MAX_THREADS: i64 = 1024;

pub fn check(cfg: &Config) -> Result<()> {
    let d = &cfg.data;
    size("data.input_size", d.input_size)?;
    if let Some(r) = d.val_resize {
        if r < d.input_size || r > 2 * crate::imageio::MAX_INPUT_SIZE {
            bail!(
                "key 'data.val_resize': {r} must be between data.input_size ({}) and {}",
                d.input_size,
                2 * crate::imageio::MAX_INPUT_SIZE
            );
        }
    }
    let [s0, s1] = d.scale;
    if !(s0.is_finite() && s1.is_finite() && 0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
        bail!("key 'data.scale': [{s0}, {s1}] must be a crop area range [min, max] with 0 < min <= max <= 1");
    }
    let [r0, r1] = d.ratio;
    if !(r0.is_finite() && r1.is_finite() && 0.0 < r0 && r0 <= r1) {
        bail!("key 'data.ratio': [{r0}, {r1}] must be an aspect ratio range [min, max] with 0 < min <= max");
    }
    unit("data.flip", d.flip)?;
    count("data.workers", d.workers as i64, 1, MAX_THREADS)?;
    count("data.prefetch", d.prefetch as i64, 1, 4096)?;

    if let Some(n) = cfg.model.num_classes {
        count("model.num_classes", n, 1, 1 << 20)?;
    }

    let t = &cfg.train;
    count("train.epochs", t.epochs as i64, 1, 1_000_000)?;
    count("train.batch_size", t.batch_size as i64, 1, 1 << 20)?;
    if let Some(b) = t.val_batch_size {
        count("train.val_batch_size", b as i64, 1, 1 << 20)?;
    }
    positive("train.lr", t.lr)?;
    if !(0.0..1.0).contains(&t.momentum) {
        bail!("key 'train.momentum': {} must be in [0, 1)", t.momentum);
    }
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        bail!("key 'train.weight_decay': {} must be a finite number >= 0", t.weight_decay);
    }
    count("train.lr_step", t.lr_step as i64, 1, i64::MAX)?;
    if !(t.lr_gamma.is_finite() && 0.0 < t.lr_gamma && t.lr_gamma <= 1.0) {
        bail!("key 'train.lr_gamma': {} must be in (0, 1] (the learning rate is multiplied by it)", t.lr_gamma);
    }
    if let Some(m) = t.max_steps {
        count("train.max_steps", m as i64, 1, i64::MAX)?;
    }
    if let Some(v) = t.initial_loss_scale {
        if !(v.is_finite() && v >= 1.0) {
            bail!("key 'train.initial_loss_scale': {v} must be a finite number >= 1");
        }
    }
    if let Some(n) = t.threads {
        count("train.threads", n as i64, 1, MAX_THREADS)?;
    }

    let a = &cfg.augment;
    count("augment.groups", a.groups, 1, i64::MAX)?;
    unit("augment.probability", a.probability)?;
    if let Some(m) = a.max_batch {
        count("augment.max_batch", m, 1, 1 << 20)?;
    }
    if let Some(s) = a.score_size {
        count("augment.score_size", s, 1, crate::imageio::MAX_INPUT_SIZE as i64)?;
    }
    if a.method == crate::augment::Method::CutMix && a.refresh.every().is_some() {
        bail!(
            "key 'augment.refresh': the map cache is Group-CAM's; cutmix mixes each batch's own images \
             (use augment.refresh: batch)"
        );
    }
    if let Some(k) = a.refresh.every() {
        count("augment.refresh", k as i64, 1, i64::MAX)?;
        count("augment.cache_size", cfg.cache_side() as i64, 2, cfg.data.input_size as i64)?;
        if a.threshold == crate::augment::Threshold::BatchMean && a.cache.is_maps() {
            bail!(
                "key 'augment.threshold': batch takes one mean over a batch's fresh maps, which cached maps do \
                 not have (each mask is cut at its own crop's mean); use image, or augment.refresh: batch"
            );
        }
    }

    let s = &cfg.saliency;
    count("saliency.probe", s.probe as i64, 0, 1024)?;
    count("saliency.groups", s.groups, 1, i64::MAX)?;
    if !(s.threshold.is_finite() && s.threshold >= 0.0) {
        bail!("key 'saliency.threshold': {} must be a finite number >= 0", s.threshold);
    }
    count("saliency.patience", s.patience as i64, 1, i64::MAX)?;

    if let Some(p) = &cfg.pretrain {
        positive("pretrain.lr", p.lr)?;
        if let Some(st) = p.lr_step {
            count("pretrain.lr_step", st as i64, 1, i64::MAX)?;
        }
    }

    let dd = &cfg.dist;
    positive("dist.timeout_s", dd.timeout_s)?;
    positive("dist.bucket_mb", dd.bucket_mb)?;
    if dd.bucket_mb > 1024.0 * 1024.0 {
        bail!("key 'dist.bucket_mb': {} MB is more than a bucket can hold (at most 1048576)", dd.bucket_mb);
    }
    Ok(())
}

fn count(key: &str, v: i64, lo: i64, hi: i64) -> Result<()> {
    if v < lo || v > hi {
        if hi == i64::MAX {
            bail!("key '{key}': {v} must be at least {lo}");
        }
        bail!("key '{key}': {v} must be in {lo}..={hi}");
    }
    Ok(())
}

fn positive(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("key '{key}': {v} must be a finite number > 0");
    }
    Ok(())
}

fn unit(key: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        bail!("key '{key}': {v} is a probability: it must be in [0, 1]");
    }
    Ok(())
}

fn size(key: &str, v: u32) -> Result<()> {
    crate::imageio::check_input_size(v).map_err(|e| anyhow::anyhow!("key '{key}': {e}"))
}
