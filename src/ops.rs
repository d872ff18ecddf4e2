//! The crate's one blur, one normalisation and one upsampling. Every method, metric and the
//! augmentation call these, so that a map or a baseline means the same thing everywhere.

use anyhow::{Result, bail};
use tch::{Kind, Tensor};

/// How the blur treats the border.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Mirror without repeating the edge pixel (kornia's and torch's "reflect").
    Reflect,
    /// Zeros outside the image (the RISE code's `nn.Conv2d(padding=k//2)`).
    Zeros,
}

/// A separable Gaussian blur with kornia's kernel (`gaussian_blur2d`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Blur {
    pub ksize: i64,
    pub sigma: f64,
    pub padding: Padding,
}

impl Blur {
    /// The Group-CAM baseline of the official code: kernel 51, sigma 50, reflect padding.
    pub const GROUP_CAM: Blur = Blur { ksize: 51, sigma: 50.0, padding: Padding::Reflect };
    /// The RISE evaluation's insertion baseline: kernel 11, sigma 5, zero padding.
    pub const RISE: Blur = Blur { ksize: 11, sigma: 5.0, padding: Padding::Zeros };

    /// The normalised 1-D kernel, exactly kornia's `get_gaussian_kernel1d`.
    pub fn kernel1d(&self) -> Vec<f64> {
        let k = self.ksize;
        let shift = if k % 2 == 0 { 0.5 } else { 0.0 };
        let g: Vec<f64> = (0..k)
            .map(|i| {
                let x = (i - k / 2) as f64 + shift;
                (-x * x / (2.0 * self.sigma * self.sigma)).exp()
            })
            .collect();
        let s: f64 = g.iter().sum();
        g.into_iter().map(|v| v / s).collect()
    }

    /// The 1-D kernel as a tensor on `device`. On a GPU it is computed there (the same formula
    /// in f64): uploading it from the host on every call was a blocking copy per batch.
    pub fn kernel_on(&self, device: tch::Device) -> Tensor {
        if device == tch::Device::Cpu {
            return Tensor::from_slice(&self.kernel1d());
        }
        self.kernel_computed(device)
    }

    fn kernel_computed(&self, device: tch::Device) -> Tensor {
        let k = self.ksize;
        let shift = if k % 2 == 0 { 0.5 } else { 0.0 };
        let x = Tensor::arange(k, (Kind::Double, device)) - (k / 2) as f64 + shift;
        let g = (-(&x * &x) / (2.0 * self.sigma * self.sigma)).exp();
        &g / g.sum(Kind::Double)
    }

    /// Reflect padding of `ksize/2` needs every side longer than that.
    pub fn check(&self, height: i64, width: i64) -> Result<()> {
        let pad = self.ksize / 2;
        if self.padding == Padding::Reflect && (height <= pad || width <= pad) {
            bail!(
                "image of {height}x{width} pixels is too small for the blur (kernel {}, reflect padding needs more than {pad} pixels per side)",
                self.ksize
            );
        }
        Ok(())
    }

    /// Blurs an N x C x H x W tensor channel by channel.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.size4()?;
        self.check(h, w)?;
        let pad = self.ksize / 2;
        let kern = self.kernel_on(x.device()).to_kind(x.kind());
        let kx = kern.view([1, 1, 1, self.ksize]).expand([c, 1, 1, self.ksize], false);
        let ky = kern.view([1, 1, self.ksize, 1]).expand([c, 1, self.ksize, 1], false);
        let out = match self.padding {
            Padding::Reflect => {
                let t = x.reflection_pad2d([pad, pad, 0, 0]).conv2d(&kx, None::<Tensor>, 1, 0, 1, c);
                t.reflection_pad2d([0, 0, pad, pad]).conv2d(&ky, None::<Tensor>, 1, 0, 1, c)
            }
            Padding::Zeros => {
                let t = x.conv2d(&kx, None::<Tensor>, 1, [0, pad], 1, c);
                t.conv2d(&ky, None::<Tensor>, 1, [pad, 0], 1, c)
            }
        };
        Ok(out)
    }
}

/// Min-max normalises each map of an N x ... tensor to [0, 1] over all but the first dim.
/// A constant map becomes all zeros (weight 0), never NaN; the second value flags those maps.
pub fn minmax(x: &Tensor) -> (Tensor, Tensor) {
    let n = x.size()[0];
    let flat = x.reshape([n, -1]);
    let lo = flat.amin(1, true);
    let hi = flat.amax(1, true);
    let range = &hi - &lo;
    // A map containing NaN or inf is treated like a constant one: it carries no ordering.
    let constant = range.le(0.0).logical_or(&range.isfinite().logical_not()).squeeze_dim(1);
    let safe = range.where_self(&range.gt(0.0), &range.ones_like());
    let out = ((&flat - &lo) / safe).where_self(&constant.unsqueeze(1).logical_not(), &flat.zeros_like());
    (out.reshape(x.size()), constant)
}

/// Bilinear upsampling of N x C x h x w maps to H x W with align_corners=false (torch's
/// `F.interpolate(mode="bilinear")`).
pub fn upsample(x: &Tensor, height: i64, width: i64) -> Tensor {
    x.upsample_bilinear2d([height, width], false, None, None)
}

/// Float32 view used wherever results leave the tensor world.
pub fn to_f32_vec(x: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(x.to_kind(Kind::Float).to_device(tch::Device::Cpu).flatten(0, -1))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_side_kernel_is_the_host_kernel() {
        for b in [Blur::GROUP_CAM, Blur::RISE, Blur { ksize: 4, sigma: 1.5, padding: Padding::Zeros }] {
            let host = Tensor::from_slice(&b.kernel1d());
            let dev = b.kernel_computed(tch::Device::Cpu);
            let d = (&host - &dev).abs().max().double_value(&[]);
            assert!(d < 1e-15, "{b:?}: {d}");
        }
    }
}
