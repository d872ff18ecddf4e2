//! Grad-CAM++ (Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-based Visual
//! Explanations for Deep Convolutional Networks", WACV 2018, Eq. 19).
//!
//! With Y_c = exp(S_c) the second and third derivatives of Y_c are powers of the first
//! derivative of the logit S_c, g = dS_c/dA, which gives the closed form pytorch-grad-cam's
//! `GradCAMPlusPlus` uses:
//!
//! a_ij^k = g^2 / (2 g^2 + sum_ab A^k_ab * g^3 + 1e-6)   (0 where g = 0),
//! w_k = sum_ij a_ij^k * ReLU(g_ij^k),  map = ReLU(sum_k w_k A^k),
//!
//! then bilinear upsampling to the input size and min-max, as in `GradCam`.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::{Explanation, activations, finish};
use crate::models::CamModel;
use crate::ops;

#[derive(Clone, Copy, Debug, Default)]
pub struct GradCamPlusPlus;

impl GradCamPlusPlus {
    /// Explains a normalised N x 3 x H x W batch for `classes` (the argmax when `None`).
    pub fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        let (_, _, h, w) = x.size4()?;
        let act = activations(model, x, classes, true)?;
        let g = act.grad.as_ref().expect("activations were asked for a gradient").to_kind(Kind::Float);
        let a = act.a.to_kind(Kind::Float);
        let g2 = &g * &g;
        let g3 = &g2 * &g;
        let sum_a = a.sum_dim_intlist([2i64, 3].as_slice(), true, Kind::Float);
        let aij = &g2 / (&g2 * 2.0 + sum_a * g3 + 1e-6);
        let aij = aij.where_self(&g.ne(0.0), &aij.zeros_like());
        let weights = (aij * g.relu()).sum_dim_intlist([2i64, 3].as_slice(), true, Kind::Float);
        let cam = (a * weights).sum_dim_intlist(1, true, Kind::Float).relu();
        finish(&ops::upsample(&cam, h, w).squeeze_dim(1), &act.classes)
    }
}
