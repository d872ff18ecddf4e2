//! Grad-CAM++ (Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-based Visual
//! Explanations for Deep Convolutional Networks", WACV 2018, Eq. 19).
//!
//! With Y_c = exp(S_c) the second and third derivatives of Y_c are powers of the first
//! derivative of the logit S_c, g = dS_c/dA, which gives the closed form pytorch-grad-cam's
//! `GradCAMPlusPlus` uses:
//!
//! a_ij^k = g^2 / (2 g^2 + sum_ab A^k_ab * g^3 + 1e-6)   (0 where g = 0),
//! w_k = sum_ij a_ij^k * ReLU(g_ij^k),
//!
//! then the shared [`super::GradientCam`] map, ReLU(sum_k w_k A^k), as in `GradCam`.

use tch::{Kind, Tensor};

use super::GradientCam;

#[derive(Clone, Copy, Debug, Default)]
pub struct GradCamPlusPlus;

impl GradientCam for GradCamPlusPlus {
    fn name(&self) -> &'static str {
        "gradcampp"
    }
    fn weights(&self, a: &Tensor, grad: &Tensor) -> Tensor {
        let g = grad.to_kind(Kind::Float);
        let g2 = &g * &g;
        let g3 = &g2 * &g;
        let sum_a = a.sum_dim_intlist([2i64, 3].as_slice(), true, Kind::Float);
        let aij = &g2 / (&g2 * 2.0 + sum_a * g3 + 1e-6);
        let aij = aij.where_self(&g.ne(0.0), &aij.zeros_like());
        (aij * g.relu()).sum_dim_intlist([2i64, 3].as_slice(), true, Kind::Float)
    }
}
