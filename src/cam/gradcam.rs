//! Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
//! Gradient-based Localization", ICCV 2017, Eq. 1-2).
//!
//! alpha_k = spatial mean of dy_c/dA^k (y_c the raw logit); the map is the shared
//! [`super::GradientCam`] one, ReLU(sum_k alpha_k A^k) upsampled and min-max normalised, as in
//! pytorch-grad-cam's `GradCAM` (which normalises before resizing; min-max after the upsampling
//! is what the crate's other methods do, and changes no ordering inside a cell).

use tch::{Kind, Tensor};

use super::GradientCam;

#[derive(Clone, Copy, Debug, Default)]
pub struct GradCam;

impl GradientCam for GradCam {
    fn name(&self) -> &'static str {
        "gradcam"
    }
    fn weights(&self, _a: &Tensor, grad: &Tensor) -> Tensor {
        grad.mean_dim([2i64, 3].as_slice(), true, Kind::Float)
    }
}
