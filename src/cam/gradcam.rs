//! Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
//! Gradient-based Localization", ICCV 2017, Eq. 1-2).
//!
//! alpha_k = spatial mean of dy_c/dA^k (y_c the raw logit), map = ReLU(sum_k alpha_k A^k),
//! upsampled bilinearly to the input size and min-max normalised, as in pytorch-grad-cam's
//! `GradCAM` (which normalises before resizing; min-max after the upsampling is what the
//! crate's other methods do, and changes no ordering inside a cell).

use anyhow::Result;
use tch::{Kind, Tensor};

use super::{Explanation, activations, finish};
use crate::models::CamModel;
use crate::ops;

#[derive(Clone, Copy, Debug, Default)]
pub struct GradCam;

impl GradCam {
    /// Explains a normalised N x 3 x H x W batch for `classes` (the argmax when `None`).
    pub fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        let (_, _, h, w) = x.size4()?;
        let act = activations(model, x, classes, true)?;
        let grad = act.grad.as_ref().expect("activations were asked for a gradient");
        let weights = grad.mean_dim([2i64, 3].as_slice(), true, Kind::Float);
        let cam = (act.a.to_kind(Kind::Float) * weights).sum_dim_intlist(1, true, Kind::Float).relu();
        finish(&ops::upsample(&cam, h, w).squeeze_dim(1), &act.classes)
    }
}
