//! Images in and out: decoding, torchvision's evaluation crop, overlays and `.npy` maps.

use std::path::Path;

use anyhow::{Context, Result, bail};
use image::{RgbImage, imageops::FilterType};
use tch::{Kind, Tensor};

use crate::models::Normalization;

/// Input sizes the models accept here: below 16 pixels the networks' target layers have no
/// spatial extent worth explaining; above 1024 one image's activations need many GB.
pub const MIN_INPUT_SIZE: u32 = 16;
pub const MAX_INPUT_SIZE: u32 = 1024;

pub fn check_input_size(size: u32) -> Result<()> {
    if !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&size) {
        bail!("input size {size} is out of range: {MIN_INPUT_SIZE}..={MAX_INPUT_SIZE} pixels");
    }
    Ok(())
}

/// Decodes any supported image (JPEG, PNG; grey, alpha, 16-bit) to 8-bit RGB. A truncated
/// JPEG or PNG is an error ([`check_complete`]), as in PIL, not a silently different image.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    decode_rgb(&bytes, path)
}

/// [`load_rgb`] of bytes already read from `path` (named in errors).
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    check_complete(bytes, path)?;
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    let img =
        reader.decode().with_context(|| format!("cannot decode image {} (corrupt or unsupported)", path.display()))?;
    if img.width() == 0 || img.height() == 0 {
        bail!("image {} is empty", path.display());
    }
    Ok(img.to_rgb8())
}

/// Refuses a JPEG or PNG file that ends before its end marker (JPEG EOI, PNG IEND): the
/// `image` crate decodes a truncated JPEG without an error, filling in what is missing. Other
/// formats pass; their decoders see their own truncation.
pub fn check_complete(bytes: &[u8], path: &Path) -> Result<()> {
    let complete = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg_complete(bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png_complete(bytes)
    } else {
        return Ok(());
    };
    if !complete {
        bail!("image {} is truncated: the file ends before its end-of-image marker", path.display());
    }
    Ok(())
}

/// Walks the JPEG's segments (skipping each by its length, and the entropy-coded data after
/// each SOS up to the next real marker) and says whether an EOI marker is reached.
fn jpeg_complete(b: &[u8]) -> bool {
    let n = b.len();
    let mut i = 2;
    loop {
        // Anything between segments is tolerated (libjpeg warns of "extraneous bytes").
        while i < n && b[i] != 0xFF {
            i += 1;
        }
        while i < n && b[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return false;
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD8 => {}
            _ => {
                if i + 2 > n {
                    return false;
                }
                let len = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                if len < 2 || i + len > n {
                    return false;
                }
                i += len;
                if marker == 0xDA {
                    // Entropy-coded data: FF 00 is a stuffed byte, FF D0-D7 a restart marker.
                    loop {
                        if i + 1 >= n {
                            return false;
                        }
                        if b[i] == 0xFF && b[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&b[i + 1]) {
                            break;
                        }
                        i += 1;
                    }
                }
            }
        }
    }
}

/// Walks the PNG's chunks and says whether the IEND chunk is reached whole.
fn png_complete(b: &[u8]) -> bool {
    let mut i = 8;
    while i + 12 <= b.len() {
        let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let Some(end) = (i + 12).checked_add(len) else { return false };
        if end > b.len() {
            return false;
        }
        if &b[i + 4..i + 8] == b"IEND" {
            return true;
        }
        i = end;
    }
    false
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
    let (nw, nh) = eval_resized_size(w, h, short);
    if nw < size || nh < size {
        bail!("cannot crop {size}x{size} from an image resized to {nw}x{nh}");
    }
    let resized = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let left = ((nw - size) as f64 / 2.0).round() as u32;
    let top = ((nh - size) as f64 / 2.0).round() as u32;
    Ok(image::imageops::crop_imm(&resized, left, top, size, size).to_image())
}

/// The size a `w` x `h` image is resized to so that its shorter side is `short` (torchvision's
/// Resize(int), the longer side truncated).
pub fn eval_resized_size(w: u32, h: u32, short: u32) -> (u32, u32) {
    if w <= h {
        (short, (short as u64 * h as u64 / w as u64) as u32)
    } else {
        ((short as u64 * w as u64 / h as u64) as u32, short)
    }
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
    check_input_size(size)?;
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

/// Writes a map as `.npy` (float32, H x W), atomically.
pub fn write_npy(map: &Tensor, path: &Path) -> Result<()> {
    crate::atomic::write_npy(map, path)
}
