//! torchvision's RandomResizedCrop + RandomHorizontalFlip and Resize + CenterCrop, on decoded
//! RGB images.
//!
//! The loader's path (`load_into`) decodes with `decode::read_rgb`, resizes the crop box straight
//! from the decoded image with `fast_image_resize` (SIMD, fixed point; the same triangle filter
//! widened by the scale factor as PIL's and the image crate's), and writes the bytes, channels
//! first, into the batch; they are normalised where the model runs (`normalize_bytes`), so a
//! GPU is sent a quarter of the f32 batch's bytes. `load_reference` is the former path on the
//! image crate, kept to measure against.

use std::path::Path;

use anyhow::{Context, Result, bail};
use fast_image_resize as fir;
use image::RgbImage;
use image::imageops::FilterType;
use rand::Rng;
use tch::{Kind, Tensor};

use super::{Transform, decode};
use crate::imageio;
use crate::models::Normalization;

/// Where a transform takes its pixels from: a box of the decoded image (fractional for the
/// evaluation crop, which is a box of the resized image), its output side, and a mirror flag.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropParams {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub size: u32,
    pub flip: bool,
    /// The box is cut out before resizing (RandomResizedCrop: PIL's crop then resize), so the
    /// filter sees no pixel outside it; otherwise it is a box of the resized whole image
    /// (Resize + CenterCrop), whose edge pixels mix in their neighbours outside the box.
    pub crop_first: bool,
}

/// The box and flip of `t` on a `width` x `height` image. The training draws are those of
/// torchvision (box first, then the flip), in the order every seed has always drawn them.
pub fn params(width: u32, height: u32, t: Transform, rng: &mut impl Rng) -> Result<CropParams> {
    match t {
        Transform::Train { size, scale, ratio, flip } => {
            let (x, y, w, h) = random_resized_box(width, height, scale, ratio, rng);
            let flip = rng.random::<f64>() < flip;
            Ok(CropParams { x: x as f64, y: y as f64, w: w as f64, h: h as f64, size, flip, crop_first: true })
        }
        Transform::Whole { size } => {
            Ok(CropParams { x: 0.0, y: 0.0, w: width as f64, h: height as f64, size, flip: false, crop_first: true })
        }
        Transform::Eval { size, resize } => {
            let (w, h) = (width as f64, height as f64);
            if width == size && height == size {
                return Ok(CropParams { x: 0.0, y: 0.0, w, h, size, flip: false, crop_first: false });
            }
            let (nw, nh) = imageio::eval_resized_size(width, height, resize);
            if nw < size || nh < size {
                bail!("cannot crop {size}x{size} from an image resized to {nw}x{nh}");
            }
            let left = ((nw - size) as f64 / 2.0).round();
            let top = ((nh - size) as f64 / 2.0).round();
            let (sx, sy) = (w / nw as f64, h / nh as f64);
            Ok(CropParams {
                x: left * sx,
                y: top * sy,
                w: size as f64 * sx,
                h: size as f64 * sy,
                size,
                flip: false,
                crop_first: false,
            })
        }
    }
}

/// A worker's reusable resizer state and output buffer.
#[derive(Default)]
pub struct Scratch {
    resizer: fir::Resizer,
    out: Vec<u8>,
}

impl Scratch {
    /// The last [`crop_resize`] output: S x S x 3 bytes, row-major, not flipped.
    pub fn out(&self) -> &[u8] {
        &self.out
    }
}

/// Where a sample's pixels came from: its crop and the decoded image's size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placed {
    pub params: CropParams,
    pub width: u32,
    pub height: u32,
}

/// Decodes and transforms one file into `dst`, 3 x S x S bytes (S = the transform's output
/// side); `dst` is left as it was on an error.
pub fn load_into(
    path: &Path,
    t: Transform,
    rng: &mut impl Rng,
    scratch: &mut Scratch,
    dst: &mut [u8],
) -> Result<Placed> {
    let img = decode::read_rgb(path)?;
    let p = params(img.width(), img.height(), t, rng).with_context(|| format!("image {}", path.display()))?;
    crop_resize(&img, &p, scratch)?;
    write_bytes(&scratch.out, p.size as usize, p.flip, dst);
    Ok(Placed { params: p, width: img.width(), height: img.height() })
}

/// The crop box of `p` resized to `p.size` squared into `scratch.out` (RGB, row-major).
pub fn crop_resize(img: &RgbImage, p: &CropParams, scratch: &mut Scratch) -> Result<()> {
    let s = p.size;
    scratch.out.resize((s * s * 3) as usize, 0);
    let whole = p.x == 0.0 && p.y == 0.0 && p.w == img.width() as f64 && p.h == img.height() as f64;
    if whole && img.width() == s && img.height() == s {
        scratch.out.copy_from_slice(img.as_raw());
        return Ok(());
    }
    let src = fir::images::ImageRef::new(img.width(), img.height(), img.as_raw(), fir::PixelType::U8x3)?;
    let mut dst = fir::images::Image::from_slice_u8(s, s, &mut scratch.out, fir::PixelType::U8x3)?;
    let opts = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
    if p.crop_first {
        // A view of the box (no copy): fir's `crop` option would let the filter read the pixels
        // around the box, which PIL's crop-then-resize (and the former path) never sees.
        let (x, y, w, h) = (p.x as u32, p.y as u32, p.w as u32, p.h as u32);
        let view = fir::images::CroppedImage::new(&src, x, y, w, h)?;
        scratch.resizer.resize(&view, &mut dst, &opts)?;
    } else {
        scratch.resizer.resize(&src, &mut dst, &opts.crop(p.x, p.y, p.w, p.h))?;
    }
    Ok(())
}

/// `px` (S x S x 3 bytes, row-major RGB) as 3 x S x S bytes, mirrored if `flip`.
pub fn write_bytes(px: &[u8], s: usize, flip: bool, dst: &mut [u8]) {
    assert_eq!(dst.len(), 3 * s * s, "destination is not 3 x {s} x {s}");
    for c in 0..3 {
        let plane = &mut dst[c * s * s..(c + 1) * s * s];
        for (y, row) in plane.chunks_exact_mut(s).enumerate() {
            let src = &px[y * s * 3..(y + 1) * s * 3];
            if flip {
                for (o, p) in row.iter_mut().zip(src.chunks_exact(3).rev()) {
                    *o = p[c];
                }
            } else {
                for (o, p) in row.iter_mut().zip(src.chunks_exact(3)) {
                    *o = p[c];
                }
            }
        }
    }
}

/// N x 3 x S x S bytes as the model's input, `(px / 255 - mean) / std` in f32, computed where
/// `x` lies as `px * (1 / (255 std)) + (-mean / std)`: two f32 roundings per pixel, the same on
/// every device, so a batch normalised on a GPU equals the CPU's bit for bit.
pub fn normalize_bytes(x: &Tensor, norm: &Normalization) -> Tensor {
    let out = x.to_kind(Kind::Float);
    for c in 0..3 {
        let a = 1.0 / (255.0 * norm.std[c]);
        let b = -norm.mean[c] / norm.std[c];
        let _ = out.narrow(1, c as i64, 1).g_mul_scalar_(a).g_add_scalar_(b);
    }
    out
}

/// The former path: the image crate's decoder, crop copy, `imageops::resize` and flip, to
/// 3 x S x S in [0, 1] (not normalised). Kept as the reference the new path is measured and
/// tested against.
pub fn load_reference(path: &Path, t: Transform, rng: &mut impl Rng) -> Result<Tensor> {
    let img = imageio::load_rgb(path)?;
    Ok(imageio::to_tensor(&reference_transform(&img, t, rng)?))
}

/// The former transform of a decoded image.
pub fn reference_transform(img: &RgbImage, t: Transform, rng: &mut impl Rng) -> Result<RgbImage> {
    Ok(match t {
        Transform::Train { size, scale, ratio, flip } => {
            let (x, y, w, h) = random_resized_box(img.width(), img.height(), scale, ratio, rng);
            let crop = image::imageops::crop_imm(img, x, y, w, h).to_image();
            let mut out = image::imageops::resize(&crop, size, size, FilterType::Triangle);
            if rng.random::<f64>() < flip {
                out = image::imageops::flip_horizontal(&out);
            }
            out
        }
        Transform::Eval { size, resize } => imageio::eval_crop(img, size, resize)?,
        Transform::Whole { size } => image::imageops::resize(img, size, size, FilterType::Triangle),
    })
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
