//! Group-CAM (Zhang, Rao and Yang, "Group-CAM: Group Score-Weighted Visual Explanations for Deep
//! Convolutional Networks", Sec. 3, Algorithm 1).
//!
//! `Variant::Official` follows the authors' code: alpha_l = ReLU(p_c(I'_l) - p_c(blur)) and
//! map = minmax(sum_l alpha_l * up(M_l)), with M_l before its min-max. `Variant::Paper` follows
//! Eq. 6-7: alpha_l = p_c(I'_l) - p_c(blur), map = minmax(ReLU(sum_l alpha_l * M'_l)).
//! With G = 1 and no de-noise both reduce to Grad-CAM (up to the final min-max).

use anyhow::{Result, bail};
use tch::{Kind, Tensor};

use super::{Batching, Explainer, Explanation, activations, finish, score_batched};
use crate::models::CamModel;
use crate::ops::{self, Blur};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Official,
    Paper,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Official, Variant::Paper];
    pub fn name(self) -> &'static str {
        match self {
            Variant::Official => "official",
            Variant::Paper => "paper",
        }
    }
}
crate::choice!(Variant);

impl std::str::FromStr for Variant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "official" => Ok(Variant::Official),
            "paper" => Ok(Variant::Paper),
            _ => bail!("unknown Group-CAM variant '{s}' (expected official or paper)"),
        }
    }
}

/// How channels are weighted before grouping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelWeights {
    /// w^c = spatial mean of dlogit_c/dA (Eq. 1).
    Gradient,
    /// w^c = 1: no backward pass (the fine-tuning variant of Sec. 5).
    Ones,
}

#[derive(Clone, Debug)]
pub struct GroupCam {
    pub groups: i64,
    /// Eq. 3: zero each group's values at or below this percentile (0-100).
    pub denoise: Option<f64>,
    pub variant: Variant,
    pub weights: ChannelWeights,
    pub blur: Blur,
    /// Images per scoring forward; `None` picks the device's default.
    pub chunk: Option<i64>,
}

impl Default for GroupCam {
    fn default() -> Self {
        GroupCam {
            groups: 32,
            denoise: None,
            variant: Variant::Official,
            weights: ChannelWeights::Gradient,
            blur: Blur::GROUP_CAM,
            chunk: None,
        }
    }
}

/// All N x (G + 1) scoring inputs share chunked forwards; the result equals N single calls.
impl Explainer for GroupCam {
    fn name(&self) -> &'static str {
        "groupcam"
    }

    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        let (_, _, h, w) = x.size4()?;
        self.blur.check(h, w)?;
        self.explain_against(model, x, &self.blur.apply(x)?, classes, (h, w))
    }
}

impl GroupCam {
    /// `explain` with the baseline `blurred` = blur(x) given (the augmentation composes its
    /// output from the same blurred batch, so the crate blurs once), scoring the masked inputs
    /// resized to `score_hw`. The masks and the map keep the activations' geometry at full
    /// size; only the weights alpha_l come from the smaller forwards, which are most of the cost.
    pub fn explain_against(
        &self,
        model: &dyn CamModel,
        x: &Tensor,
        blurred: &Tensor,
        classes: Option<&[i64]>,
        score_hw: (i64, i64),
    ) -> Result<Explanation> {
        let (_, _, h, w) = x.size4()?;
        let (act, masks, alpha) = self.scored(model, (x, blurred), classes, score_hw)?;
        finish(&self.combine(&masks, &alpha, h, w).squeeze_dim(1), &act.classes)
    }

    /// The group scores alone (N x G): alpha_l = ReLU(p_c(I'_l) - p_c(blur)) for the official
    /// variant, p_c(I'_l) - p_c(blur) for the paper's, 0 for a constant group, scoring at
    /// `score_hw` as [`GroupCam::explain_against`] does. With [`GroupCam::explain_with_scores`]
    /// on the same images they give its map; on other images (a crop of these) they weigh that
    /// image's own groups.
    pub fn group_scores(
        &self,
        model: &dyn CamModel,
        x: &Tensor,
        classes: Option<&[i64]>,
        score_hw: (i64, i64),
    ) -> Result<Tensor> {
        let (_, _, h, w) = x.size4()?;
        self.blur.check(h, w)?;
        Ok(self.scored(model, (x, &self.blur.apply(x)?), classes, score_hw)?.2)
    }

    /// The map of each image from its group maps M_l (one forward of the features) weighed by
    /// the given scores `alpha` (N x G, as [`GroupCam::group_scores`] makes them), with no
    /// scoring forward: the second half of [`GroupCam::explain_against`].
    pub fn explain_with_scores(
        &self,
        model: &dyn CamModel,
        x: &Tensor,
        alpha: &Tensor,
        classes: Option<&[i64]>,
    ) -> Result<Explanation> {
        let (n, _, h, w) = x.size4()?;
        self.check(model)?;
        let groups = self.group_count(model.target_channels());
        if alpha.size() != [n, groups] {
            bail!("group scores of shape {:?} for {n} images of {groups} channel groups", alpha.size());
        }
        let act = activations(model, x, classes, self.weights == ChannelWeights::Gradient)?;
        let masks = self.masks_of(&act, n, model.target_channels(), x.device());
        let alpha = alpha.to_device(x.device()).to_kind(Kind::Float);
        finish(&self.combine(&masks, &alpha, h, w).squeeze_dim(1), &act.classes)
    }

    /// The groups that `torch.chunk` makes of `k` channels: G, or fewer when G does not divide
    /// them evenly enough (K = 10, G = 6: 5 groups of 2).
    pub fn group_count(&self, k: i64) -> i64 {
        let per = (k + self.groups - 1) / self.groups;
        (k + per - 1) / per
    }

    fn check(&self, model: &dyn CamModel) -> Result<()> {
        let k = model.target_channels();
        if self.groups < 1 || self.groups > k {
            bail!("G = {} groups is out of range: the target layer has {k} channels (1..={k})", self.groups);
        }
        if let Some(t) = self.denoise {
            if !(0.0..=100.0).contains(&t) {
                bail!("de-noise percentile {t} is out of range 0..=100");
            }
        }
        Ok(())
    }

    /// The activations, the group maps M_l and the scores of `explain_against`, for the images
    /// and their baseline `(x, blurred)`.
    fn scored(
        &self,
        model: &dyn CamModel,
        (x, blurred): (&Tensor, &Tensor),
        classes: Option<&[i64]>,
        score_hw: (i64, i64),
    ) -> Result<(super::Activations, Tensor, Tensor)> {
        let (n, _, h, w) = x.size4()?;
        if blurred.size() != x.size() {
            bail!("baseline of shape {:?} for images of shape {:?}", blurred.size(), x.size());
        }
        if score_hw.0 < 1 || score_hw.1 < 1 {
            bail!("scoring size {score_hw:?} has no pixels");
        }
        self.check(model)?;
        let act = activations(model, x, classes, self.weights == ChannelWeights::Gradient)?;
        let masks = self.masks_of(&act, n, model.target_channels(), x.device());
        let groups = masks.size()[1];
        let probs = if score_hw == (h, w) {
            self.score(model, x, blurred, &masks, &act.classes)
        } else {
            let resize = |t: &Tensor| ops::upsample(t, score_hw.0, score_hw.1);
            self.score(model, &resize(x), &resize(blurred), &masks, &act.classes)
        };
        let base = probs.narrow(1, 0, 1);
        // A constant group is no mask at all: weight 0 whatever its forward returned.
        let flat = masks.flatten(2, 3);
        let live = (flat.amax(2, false) - flat.amin(2, false)).gt(0.0);
        let gain = (probs.narrow(1, 1, groups) - base) * live;
        let alpha = match self.variant {
            Variant::Official => gain.relu(),
            Variant::Paper => gain,
        };
        Ok((act, masks, alpha))
    }

    /// M_l with the method's channel weights (w^c = 1, or the gradient's spatial mean).
    fn masks_of(&self, act: &super::Activations, n: i64, k: i64, device: tch::Device) -> Tensor {
        let weights = match &act.grad {
            Some(g) => g.mean_dim([2i64, 3].as_slice(), false, Kind::Float),
            None => Tensor::ones([n, k], (Kind::Float, device)),
        };
        self.group_masks(&act.a, &weights)
    }

    /// The raw map (N x 1 x H x W, before its min-max) from the group maps and their scores.
    fn combine(&self, masks: &Tensor, alpha: &Tensor, h: i64, w: i64) -> Tensor {
        let (n, groups) = (masks.size()[0], masks.size()[1]);
        let alpha = alpha.view([n, groups, 1, 1]);
        match self.variant {
            // Upsampling is linear, so sum_l alpha_l up(M_l) = up(sum_l alpha_l M_l).
            Variant::Official => ops::upsample(&(masks * alpha).sum_dim_intlist(1, true, Kind::Float), h, w),
            Variant::Paper => {
                let normed = ops::minmax(&ops::upsample(&masks.reshape([n * groups, 1, -1, masks.size()[3]]), h, w)).0;
                (normed.view([n, groups, h, w]) * alpha).sum_dim_intlist(1, true, Kind::Float).relu()
            }
        }
    }

    /// M_l = ReLU(sum of w_k A^k over group l), groups split like `torch.chunk`, then Eq. 3.
    pub fn group_masks(&self, a: &Tensor, weights: &Tensor) -> Tensor {
        let wa = a.to_kind(Kind::Float) * weights.unsqueeze(-1).unsqueeze(-1);
        let sums: Vec<Tensor> =
            wa.chunk(self.groups, 1).iter().map(|g| g.sum_dim_intlist(1, true, Kind::Float)).collect();
        let m = Tensor::cat(&sums, 1).relu();
        match self.denoise {
            None => m,
            Some(theta) => {
                let s = m.size();
                let flat = m.reshape([s[0] * s[1], -1]);
                let q = flat.quantile_scalar(theta / 100.0, 1, true, "linear");
                flat.where_self(&flat.gt_tensor(&q), &flat.zeros_like()).reshape(s)
            }
        }
    }

    /// p_c of each image's baseline (column 0) and of its G masked inputs (columns 1..=G),
    /// where I'_l = I * M'_l + blur * (1 - M'_l); the baseline is the all-zero mask.
    fn score(&self, model: &dyn CamModel, x: &Tensor, blurred: &Tensor, masks: &Tensor, classes: &Tensor) -> Tensor {
        let (n, g, mh, mw) = masks.size4().expect("masks are 4-D");
        let (h, w) = (x.size()[2], x.size()[3]);
        let per = g + 1;
        let ext =
            Tensor::cat(&[masks.zeros_like().narrow(1, 0, 1), masks.shallow_clone()], 1).reshape([n * per, 1, mh, mw]);
        let owner = Tensor::arange(n * per, (Kind::Int64, x.device())).floor_divide_scalar(per);
        let cls = classes.index_select(0, &owner);
        let batching = Batching::with_chunk(model, self.chunk);
        let make = |start: i64, len: i64| {
            let m = ops::minmax(&ops::upsample(&ext.narrow(0, start, len), h, w)).0.to_kind(x.kind());
            let idx = owner.narrow(0, start, len);
            let (xi, bi) = (x.index_select(0, &idx), blurred.index_select(0, &idx));
            &xi * &m + &bi * (1.0 - &m)
        };
        score_batched(model, n * per, batching, &cls, &make).view([n, per])
    }
}
