//! Saliency convergence (the paper's Fig. 8 as a tool): full Group-CAM maps of a fixed probe set
//! for their ground-truth classes after every epoch, and how much they moved.

use anyhow::Result;
use image::RgbImage;
use tch::{Kind, Tensor};

use crate::cam::{Explainer, GroupCam};
use crate::imageio;
use crate::models::CamModel;

/// The probe images (normalised, on the model's device), their labels and the photos in [0, 1].
pub struct Probe {
    pub images: Tensor,
    pub labels: Vec<i64>,
    pub photos: Tensor,
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
