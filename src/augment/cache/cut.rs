//! A crop's mask from its whole image's cached map: what the loader asks the cache for, through
//! [`crate::data::MaskSource`], for every training sample it decodes.

use anyhow::{Result, bail};
use fast_image_resize as fir;
use rand::Rng;
use rand::rngs::StdRng;
use tch::Tensor;

use super::SaliencyCache;
use crate::data::MaskSource;
use crate::data::transforms::Placed;

impl SaliencyCache {
    /// Writes sample `i`'s mask for the crop `placed` into `dst` (S x S bytes, 1 = keep): with
    /// chance `probability` (drawn from the sample's generator after its crop and flip) its
    /// cached map cut to the crop, otherwise all ones. Returns whether the mask hides any pixel.
    pub fn write_mask(&self, i: usize, placed: &Placed, rng: &mut impl Rng, dst: &mut [u8]) -> Result<bool> {
        if self.probability < 1.0 && rng.random::<f64>() >= self.probability {
            dst.fill(1);
            return Ok(false);
        }
        cut_mask(self.map(i), self.meta().side, placed, dst)
    }
}

impl MaskSource for SaliencyCache {
    fn write_mask(&self, sample: usize, placed: &Placed, rng: &mut StdRng, dst: &mut [u8]) -> Result<bool> {
        SaliencyCache::write_mask(self, sample, placed, rng, dst)
    }
}

/// The mask of a crop from a whole image's map (`side` x `side` bytes): the crop's box, scaled
/// from the image's pixels to the map's, resized to the crop's size (bilinear), mirrored as the
/// image was, and S = [value >= the mean over the crop] as 0/1 bytes into `dst`. A crop whose
/// map is constant keeps every pixel. Returns whether any pixel is hidden.
pub fn cut_mask(map: &[u8], side: u32, placed: &Placed, dst: &mut [u8]) -> Result<bool> {
    let p = &placed.params;
    let s = p.size as usize;
    if dst.len() != s * s {
        bail!("mask buffer has {} bytes, not {s} x {s}", dst.len());
    }
    let (sx, sy) = (side as f64 / placed.width as f64, side as f64 / placed.height as f64);
    let src = fir::images::ImageRef::new(side, side, map, fir::PixelType::U8)?;
    let mut resized = vec![0u8; s * s];
    let mut out = fir::images::Image::from_slice_u8(p.size, p.size, &mut resized, fir::PixelType::U8)?;
    // The box in the map's pixels, kept inside it: x + w <= width in the image's pixels can
    // land an ulp past the map's side once scaled.
    let (left, top) = ((p.x * sx).clamp(0.0, side as f64), (p.y * sy).clamp(0.0, side as f64));
    let width = (p.w * sx).min(side as f64 - left).max(1e-3);
    let height = (p.h * sy).min(side as f64 - top).max(1e-3);
    let (left, top) = (left.min(side as f64 - width), top.min(side as f64 - height));
    let opts = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
        .crop(left, top, width, height);
    fir::Resizer::new().resize(&src, &mut out, &opts)?;
    let mean = resized.iter().map(|&v| v as u64).sum::<u64>() as f64 / resized.len() as f64;
    let mut hides = false;
    for (row_out, row_in) in dst.chunks_exact_mut(s).zip(resized.chunks_exact(s)) {
        let mut put = |o: &mut u8, v: u8| {
            *o = u8::from(v as f64 >= mean);
            hides |= *o == 0;
        };
        if p.flip {
            row_out.iter_mut().zip(row_in.iter().rev()).for_each(|(o, &v)| put(o, v));
        } else {
            row_out.iter_mut().zip(row_in).for_each(|(o, &v)| put(o, v));
        }
    }
    Ok(hides)
}

/// A cached mask as a tensor (tests and the benchmark): [`cut_mask`] into a 1 x S x S tensor.
pub fn mask_tensor(map: &[u8], side: u32, placed: &Placed) -> Result<Tensor> {
    let s = placed.params.size as i64;
    let mut dst = vec![0u8; (s * s) as usize];
    cut_mask(map, side, placed, &mut dst)?;
    Ok(Tensor::from_slice(&dst).view([1, s, s]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::transforms::CropParams;

    /// Every RandomResizedCrop box of images whose sides do not divide the map's cuts a mask:
    /// scaled boxes that end an ulp past the map are kept inside it.
    #[test]
    fn boxes_at_the_image_edge_cut_masks_at_any_scale() {
        let map: Vec<u8> = (0..56 * 56).map(|i| (i * 7 % 251) as u8).collect();
        let mut dst = vec![0u8; 32 * 32];
        for (w, h) in [(500u32, 375u32), (333, 497), (57, 1000)] {
            for x in 0..w.min(40) {
                let params = CropParams {
                    x: (w - 1 - x) as f64,
                    y: 0.0,
                    w: (x + 1) as f64,
                    h: h as f64,
                    size: 32,
                    flip: false,
                    crop_first: true,
                };
                cut_mask(&map, 56, &Placed { params, width: w, height: h }, &mut dst).unwrap();
            }
        }
    }
}
