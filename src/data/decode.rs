//! The loader's image decoding: JPEGs straight through zune-jpeg into RGB (no `DynamicImage`
//! and no `to_rgb8` copy), refusing truncated files with `imageio::check_complete` as the rest
//! of the project does; anything else (PNG, CMYK JPEG...) through `imageio::decode_rgb`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use crate::imageio;

/// Decodes a file to 8-bit RGB, as `imageio::load_rgb` does, and errors on a truncated JPEG.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    decode_rgb(&bytes, path)
}

/// [`read_rgb`] of bytes already read from `path` (named in errors).
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return imageio::decode_rgb(bytes, path);
    }
    // zune-jpeg pads a truncated scan with grey instead of failing; PIL refuses such files.
    imageio::check_complete(bytes, path)?;
    match decode_jpeg(bytes) {
        Ok(Some(img)) => Ok(img),
        // A colour space zune's RGB output would not convert as the image crate does (CMYK, YCCK).
        Ok(None) => imageio::decode_rgb(bytes, path),
        Err(e) => Err(e).with_context(|| format!("cannot decode image {} (corrupt or unsupported)", path.display())),
    }
}

/// RGB pixels of a JPEG in YCbCr, RGB or greyscale; `None` for other colour spaces.
fn decode_jpeg(bytes: &[u8]) -> Result<Option<RgbImage>> {
    // As the image crate sets them, so that the same files decode.
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    dec.decode_headers().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if !matches!(dec.input_colorspace(), Some(ColorSpace::YCbCr | ColorSpace::RGB | ColorSpace::Luma)) {
        return Ok(None);
    }
    let (w, h) = dec.dimensions().context("no dimensions in the JPEG header")?;
    if w == 0 || h == 0 {
        bail!("image is empty");
    }
    let mut px = vec![0u8; dec.output_buffer_size().context("no output size")?];
    dec.decode_into(&mut px).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    px.truncate(w * h * 3);
    Ok(RgbImage::from_raw(w as u32, h as u32, px))
}
