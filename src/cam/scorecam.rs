//! Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
//! Neural Networks", CVPR-W 2020), as its authors' code computes it (haofanwang/Score-CAM):
//!
//! for each channel k: M_k = up(A^k) (bilinear, align_corners=false); skipped when constant;
//! s_k = softmax(f(x * minmax(M_k)))_c, the masked input being zero in normalised space outside
//! the mask; map = minmax(ReLU(sum_k s_k M_k)).
//!
//! This differs from pytorch-grad-cam's `ScoreCAM`, which weights by a softmax over channels of
//! the raw logits; the authors' probabilities are what the Group-CAM paper compares against and
//! what Group-CAM's own scoring generalises (Group-CAM with G = K, a zero baseline and no
//! blur is this method). All N x K masked inputs are scored in chunked forwards.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::{Batching, Explainer, Explanation, activations, finish, score_batched};
use crate::models::CamModel;
use crate::ops;

#[derive(Clone, Copy, Debug, Default)]
pub struct ScoreCam {
    /// Images per scoring forward; `None` picks the device's default.
    pub chunk: Option<i64>,
}

impl Explainer for ScoreCam {
    fn name(&self) -> &'static str {
        "scorecam"
    }

    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        let (n, _, h, w) = x.size4()?;
        let act = activations(model, x, classes, false)?;
        let a = act.a.to_kind(Kind::Float);
        let (_, k, ah, aw) = a.size4()?;
        let maps = a.reshape([n * k, 1, ah, aw]);
        // A constant map is skipped (weight 0), as in the authors' code: it costs no forward.
        let flat = maps.flatten(1, 3);
        let live = (flat.amax(1, false) - flat.amin(1, false)).gt(0.0);
        let idx = live.nonzero().squeeze_dim(1);
        let count = idx.size()[0];
        let owner = idx.floor_divide_scalar(k);
        let cls = act.classes.index_select(0, &owner);
        let batching = Batching::with_chunk(model, self.chunk);
        let make = |start: i64, len: i64| {
            let sel = maps.index_select(0, &idx.narrow(0, start, len));
            let m = ops::minmax(&ops::upsample(&sel, h, w)).0.to_kind(x.kind());
            x.index_select(0, &owner.narrow(0, start, len)) * m
        };
        let mut scores = Tensor::zeros([n * k], (Kind::Float, x.device()));
        if count > 0 {
            let s = score_batched(model, count, batching, &cls, &make).to_kind(Kind::Float);
            let _ = scores.index_put_(&[Some(idx.shallow_clone())], &s, false);
        }
        let weights = scores.view([n, k, 1, 1]);
        // Upsampling is linear: sum_k s_k up(A^k) = up(sum_k s_k A^k).
        let cam = ops::upsample(&(a * weights).sum_dim_intlist(1, true, Kind::Float), h, w).relu();
        finish(&cam.squeeze_dim(1), &act.classes)
    }
}
