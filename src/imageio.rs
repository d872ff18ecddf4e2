//! Images in and out: decoding, torchvision's evaluation crop, overlays and `.npy` maps.

use std::path::Path;

use anyhow::{Context, Result, bail};
use image::{RgbImage, imageops::FilterType};
use tch::{Kind, Tensor};

use crate::models::Normalization;

/// Decodes any supported image (JPEG, PNG; grey, alpha, 16-bit) to 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    let img =
        reader.decode().with_context(|| format!("cannot decode image {} (corrupt or unsupported)", path.display()))?;
    if img.width() == 0 || img.height() == 0 {
        bail!("image {} is empty", path.display());
    }
    Ok(img.to_rgb8())
}

/// The evaluation resize for an input size: 256 at 224, in proportion elsewhere.
pub fn eval_resize(size: u32) -> u32 {
    (size as f64 * 256.0 / 224.0).round() as u32
}

/// Torchvision's evaluation transform, Resize(shorter side `short`) + CenterCrop(`size`),
/// except that an image already `size` x `size` is used as is, with no resampling.
pub fn eval_crop(img: &RgbImage, size: u32, short: u32) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    if w == size && h == size {
        return Ok(img.clone());
    }
    let (nw, nh) = if w <= h {
        (short, (short as u64 * h as u64 / w as u64) as u32)
    } else {
        ((short as u64 * w as u64 / h as u64) as u32, short)
    };
    if nw < size || nh < size {
        bail!("cannot crop {size}x{size} from an image resized to {nw}x{nh}");
    }
    let resized = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let left = ((nw - size) as f64 / 2.0).round() as u32;
    let top = ((nh - size) as f64 / 2.0).round() as u32;
    Ok(image::imageops::crop_imm(&resized, left, top, size, size).to_image())
}

/// 3 x H x W float in [0, 1].
pub fn to_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw()).view([h as i64, w as i64, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 255.0
}

/// 3 x H x W in [0, 1] back to an image (values clamped).
pub fn to_image(x: &Tensor) -> Result<RgbImage> {
    let (_, h, w) = x.size3()?;
    let bytes = (x.clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
    let data = Vec::<u8>::try_from(bytes.to_device(tch::Device::Cpu).flatten(0, -1))?;
    Ok(RgbImage::from_raw(w as u32, h as u32, data).expect("buffer size matches"))
}

/// Loads, crops and normalises images into one N x 3 x S x S batch; the photos in [0, 1] come back too.
pub fn load_batch(paths: &[impl AsRef<Path>], size: u32, norm: &Normalization) -> Result<(Tensor, Tensor)> {
    let mut raw = Vec::new();
    for p in paths {
        let img = eval_crop(&load_rgb(p.as_ref())?, size, eval_resize(size))
            .with_context(|| format!("image {}", p.as_ref().display()))?;
        raw.push(to_tensor(&img));
    }
    let rgb = Tensor::stack(&raw, 0);
    Ok((norm.apply(&rgb), rgb))
}

/// The "jet" colormap (OpenCV's COLORMAP_JET shape), v in [0, 1].
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let ch = |c: f32| ((1.5 - (4.0 * v - c).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [ch(3.0), ch(2.0), ch(1.0)]
}

/// A heatmap of `map` (H x W, [0, 1]) blended half and half over the photo (3 x H x W, [0, 1]).
pub fn overlay(photo: &Tensor, map: &Tensor) -> Result<RgbImage> {
    let mut img = to_image(photo)?;
    let values = crate::ops::to_f32_vec(map)?;
    for (px, v) in img.pixels_mut().zip(values) {
        let c = jet(v);
        for i in 0..3 {
            px[i] = ((px[i] as u16 + c[i] as u16) / 2) as u8;
        }
    }
    Ok(img)
}

/// Writes a map as `.npy` (float32, H x W).
pub fn write_npy(map: &Tensor, path: &Path) -> Result<()> {
    map.to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous()
        .write_npy(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
