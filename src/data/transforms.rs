//! torchvision's RandomResizedCrop + RandomHorizontalFlip and Resize + CenterCrop, on decoded
//! RGB images.

use std::path::Path;

use anyhow::Result;
use image::imageops::FilterType;
use rand::Rng;
use tch::Tensor;

use super::Transform;
use crate::imageio;

/// Decodes (grey, CMYK JPEG, alpha all become RGB) and transforms one file to 3 x S x S in [0, 1].
pub fn load(path: &Path, t: Transform, rng: &mut impl Rng) -> Result<Tensor> {
    let img = imageio::load_rgb(path)?;
    let out = match t {
        Transform::Train { size, scale, ratio, flip } => {
            let (x, y, w, h) = random_resized_box(img.width(), img.height(), scale, ratio, rng);
            let crop = image::imageops::crop_imm(&img, x, y, w, h).to_image();
            let mut out = image::imageops::resize(&crop, size, size, FilterType::Triangle);
            if rng.random::<f64>() < flip {
                out = image::imageops::flip_horizontal(&out);
            }
            out
        }
        Transform::Eval { size, resize } => imageio::eval_crop(&img, size, resize)?,
    };
    Ok(imageio::to_tensor(&out))
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and log-uniform
/// aspect ratio, then a centre crop clamped to the ratio range.
pub fn random_resized_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> (u32, u32, u32, u32) {
    let (w0, h0) = (width as f64, height as f64);
    let area = w0 * h0;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= w0 && h <= h0 {
            let (w, h) = (w as u32, h as u32);
            let x = rng.random_range(0..=width - w);
            let y = rng.random_range(0..=height - h);
            return (x, y, w, h);
        }
    }
    let in_ratio = w0 / h0;
    let (w, h) = if in_ratio < ratio.0 {
        (w0, (w0 / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((h0 * ratio.1).round(), h0)
    } else {
        (w0, h0)
    };
    let (w, h) = (w as u32, h as u32);
    ((width - w) / 2, (height - h) / 2, w, h)
}
