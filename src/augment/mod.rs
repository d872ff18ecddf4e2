//! Group-CAM as a training-time augmentation (paper Sec. 5), for any tch training loop.
//!
//! For a batch of normalised images I and their ground-truth labels y, each image gets
//!
//! - the explainer's map for its label, official variant, w^c = 1 for every channel (no
//!   backward pass) and no de-noise, G = 16 groups ([`crate::cam::GroupCam`] does the work);
//! - the binary mask S = [map >= mean(map)], the mean per image ([`Threshold::ImageMean`]) or
//!   over the batch as the official code takes it ([`Threshold::BatchMean`]);
//! - the output I * S + blur(I) * (1 - S) with the explainer's blur: the paper's Eq. 5 with S as
//!   the mask. The official fine-tuning code adds `(1 - S)` where Eq. 5 multiplies the blur by
//!   it; this crate follows Eq. 5.
//!
//! An image whose map is constant (or NaN) carries no ordering: it passes through unchanged
//! and is counted in [`Stats`].
//!
//! ```no_run
//! # fn step(model: &groupcam::Model, images: &tch::Tensor, labels: &tch::Tensor) -> anyhow::Result<()> {
//! use groupcam::augment::GroupCamAugment;
//! let aug = GroupCamAugment::default(); // configured once
//! let batch = aug.augment(model, images, labels)?; // then on every batch, before the forward
//! let logits = groupcam::CamModel::forward(model, &batch.images);
//! # Ok(()) }
//! ```
//!
//! The call builds no autograd graph, runs BatchNorm and dropout in eval mode and leaves the
//! model's mode, its parameters, buffers and gradients as it found them. Its cost is one
//! forward of the batch's features plus (G + 1) scoring forwards per image (the blurred
//! baseline and G masked inputs), in forwards of at most `max_batch` images: about
//! (G + 2) / 3 training steps of the same batch for G = 16 at full resolution.
//!
//! The measured cost of each speed option (score resolution, apply probability, f16) is in
//! BENCHMARKS.md, "Augmentation" (`groupcam bench augment`).

pub mod cache;
pub mod config;
pub mod cutmix;
mod mask;
mod mode;
pub mod preview;
mod scored;

pub use config::{AugmentConfig, CacheOf, Method, Refresh};
pub use cutmix::CutMix;
pub use mask::{Threshold, binarize, compose};
pub use mode::{Applied, Augmentation};
pub use scored::ScoreCached;

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

use crate::cam::{ChannelWeights, GroupCam, Variant, default_chunk};
use crate::models::CamModel;
use crate::ops::Blur;

/// The precision of the map's forwards (the output is always composed in the input's kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// CUDA autocast (float16) around the map's forwards. Only the mask depends on them, so
    /// half precision can only move pixels that lie at the threshold (the head runs in f32:
    /// [`crate::cam::head_f32`]). Needs a CUDA device; untested on a GPU so far.
    F16Autocast,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::F16Autocast];
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16Autocast => "f16",
        }
    }
}
crate::choice!(Precision);

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "f16" | "fp16" => Ok(Precision::F16Autocast),
            _ => bail!("unknown score precision '{s}' (expected f32 or f16)"),
        }
    }
}

/// The augmentation's settings, configured once; [`GroupCamAugment::augment`] on each batch.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupCamAugment {
    /// G, the number of channel groups (16 in the paper's fine-tuning).
    pub groups: i64,
    /// The chance that an image is augmented; the others pass through unchanged and cost
    /// nothing. A batch of B draws a random subset of about pB images (see `draw`), from
    /// torch's generator, so `tch::manual_seed` makes it reproducible.
    pub probability: f64,
    /// Images per scoring forward (bounds the memory of the scoring passes). `None`: the
    /// device's default for full-size images ([`default_chunk`]), scaled up by the pixel ratio
    /// when scoring at a lower resolution, so that a forward holds about as many pixels.
    pub max_batch: Option<i64>,
    /// Score the blurred baseline and the G masked inputs resized so that their shorter side
    /// is this many pixels (e.g. 112: a quarter of the pixels of 224). The activations, the
    /// masks and the map stay at full size: only the weights alpha_l come from the smaller
    /// forwards, which are G + 1 of the G + 2 forwards. (Computing the activations at the small
    /// size too changed 21-43% of the mask at 112 on the test photos, against 7-15% this way.)
    /// `None`, or a size not below the shorter side: full resolution.
    pub score_size: Option<i64>,
    pub precision: Precision,
    pub threshold: Threshold,
}

impl Default for GroupCamAugment {
    /// The paper-faithful setting.
    fn default() -> Self {
        GroupCamAugment {
            groups: 16,
            probability: 1.0,
            max_batch: None,
            score_size: None,
            precision: Precision::F32,
            threshold: Threshold::ImageMean,
        }
    }
}

/// An augmented batch.
#[derive(Debug)]
pub struct Augmented {
    /// The training inputs: B x 3 x H x W, the input's kind and device.
    pub images: Tensor,
    /// S: B x 1 x H x W floats, 1 where the input was kept, 0 where the blur shows
    /// (all ones for images that passed through).
    pub masks: Tensor,
    pub stats: Stats,
}

/// What happened to each image of a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Augmented; `kept` is the fraction of its pixels that kept the input.
    Augmented { kept: f64 },
    /// Its map was constant or NaN: passed through unchanged.
    Constant,
    /// Not drawn (`probability` < 1): passed through unchanged, not scored.
    Skipped,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub outcomes: Vec<Outcome>,
}

impl Stats {
    pub fn augmented(&self) -> usize {
        self.outcomes.iter().filter(|o| matches!(o, Outcome::Augmented { .. })).count()
    }
    pub fn constant(&self) -> usize {
        self.outcomes.iter().filter(|o| **o == Outcome::Constant).count()
    }
    pub fn skipped(&self) -> usize {
        self.outcomes.iter().filter(|o| **o == Outcome::Skipped).count()
    }
}

impl GroupCamAugment {
    /// The fast setting: half of the images, scored at 112 pixels (its cost: BENCHMARKS.md).
    pub fn fast() -> Self {
        GroupCamAugment { score_size: Some(112), probability: 0.5, ..Default::default() }
    }

    /// Augments a normalised B x 3 x H x W batch for its labels (B integers, a tensor on any
    /// device): see the module's documentation.
    pub fn augment(&self, model: &dyn CamModel, images: &Tensor, labels: &Tensor) -> Result<Augmented> {
        tch::no_grad(|| self.augment_batch(model, images, Some(labels), None))
    }

    /// The augmentation's own group scores of each image for its label (B x G floats on the
    /// images' device, G as [`GroupCam::group_count`] makes it): alpha_l = ReLU(p(I'_l) - p(blur))
    /// with the same G, eval mode, no backward, `score_size` and `precision` as
    /// [`GroupCamAugment::augment`], on every image (no draw). What the score cache stores.
    pub fn scores_for(&self, model: &dyn CamModel, images: &Tensor, labels: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let (_, _, h, w) = images.size4()?;
            let labels = self.check(model, images, Some(labels))?.expect("labels were given");
            let (cam, dims) = (self.explainer(images.device(), h * w, self.score_dims(h, w)), self.score_dims(h, w));
            self.precise(images.device(), || cam.group_scores(model, images, Some(&labels), dims))
        })
    }

    /// [`GroupCamAugment::augment`] with the group scores given (B x G, from
    /// [`GroupCamAugment::scores_for`], e.g. of each image's whole picture, cached): one forward
    /// of the batch's features gives each image's own group maps M_l, map = minmax(sum_l alpha_l
    /// up(M_l)), then the same mask and Eq. 5 as `augment`, and the same draw. No scoring
    /// forward: its cost is that one forward. `labels`, when given, are checked as `augment`
    /// checks them; the scores already hold the class.
    pub fn augment_with_scores(
        &self,
        model: &dyn CamModel,
        images: &Tensor,
        labels: Option<&Tensor>,
        scores: &Tensor,
    ) -> Result<Augmented> {
        tch::no_grad(|| self.augment_batch(model, images, labels, Some(scores)))
    }

    /// The augmentation with fresh scores (`scores` None, `labels` given) or given ones.
    fn augment_batch(
        &self,
        model: &dyn CamModel,
        images: &Tensor,
        labels: Option<&Tensor>,
        scores: Option<&Tensor>,
    ) -> Result<Augmented> {
        let (n, _, h, w) = images.size4()?;
        let labels = self.check(model, images, labels)?;
        if let Some(s) = scores {
            let groups = GroupCam { groups: self.groups, ..Default::default() }.group_count(model.target_channels());
            if s.size() != [n, groups] || !s.is_floating_point() {
                bail!(
                    "group scores must be {n} x {groups} floats (one row per image, one score per channel group), \
                     got a {:?} tensor of shape {:?}",
                    s.kind(),
                    s.size()
                );
            }
        }
        let mut outcomes = vec![Outcome::Skipped; n as usize];
        let chosen = self.draw(n);
        if chosen.is_empty() {
            let masks = Tensor::ones([n, 1, h, w], (Kind::Float, images.device()));
            return Ok(Augmented { images: images.copy(), masks, stats: Stats { outcomes } });
        }
        let idx = Tensor::from_slice(&chosen).to_device(images.device());
        let x = images.index_select(0, &idx);
        let cam = self.explainer(images.device(), h * w, self.score_dims(h, w));
        let blurred = cam.blur.apply(&x)?;
        let chosen_labels: Option<Vec<i64>> = labels.map(|labels| chosen.iter().map(|&i| labels[i as usize]).collect());
        let exp = match scores {
            None => {
                let labels = chosen_labels.as_deref().expect("fresh scores need the labels");
                let dims = self.score_dims(h, w);
                self.precise(x.device(), || cam.explain_against(model, &x, &blurred, Some(labels), dims))?
            }
            Some(s) => {
                let alpha = s.to_device(x.device()).index_select(0, &idx);
                self.precise(x.device(), || cam.explain_with_scores(model, &x, &alpha, chosen_labels.as_deref()))?
            }
        };
        let (maps, constant) = (exp.maps.unsqueeze(1), Tensor::from_slice(&exp.constant).to_device(x.device()));
        let masks = binarize(&maps, &constant, self.threshold);
        let out = compose(&x, &blurred, &masks);
        let kept =
            Vec::<f64>::try_from(masks.mean_dim([1i64, 2, 3].as_slice(), false, Kind::Double).to_device(Device::Cpu))?;
        let constant = Vec::<bool>::try_from(constant.to_device(Device::Cpu))?;
        for (j, &i) in chosen.iter().enumerate() {
            outcomes[i as usize] = if constant[j] { Outcome::Constant } else { Outcome::Augmented { kept: kept[j] } };
        }
        Ok(Augmented {
            images: images.index_copy(0, &idx, &out),
            masks: Tensor::ones([n, 1, h, w], (Kind::Float, images.device())).index_copy(0, &idx, &masks),
            stats: Stats { outcomes },
        })
    }

    /// The settings and labels (when given), checked before any work; the labels come back as
    /// integers.
    fn check(&self, model: &dyn CamModel, images: &Tensor, labels: Option<&Tensor>) -> Result<Option<Vec<i64>>> {
        let n = images.size()[0];
        if !(0.0..=1.0).contains(&self.probability) {
            bail!("apply probability {} is out of range 0..=1", self.probability);
        }
        if let Some(m) = self.max_batch.filter(|&m| m < 1) {
            bail!("max_batch {m} must be at least 1");
        }
        if let Some(s) = self.score_size.filter(|&s| s < 1) {
            bail!("score size {s} must be at least 1 pixel");
        }
        if self.precision == Precision::F16Autocast && !images.device().is_cuda() {
            bail!("score precision f16 uses CUDA autocast: the images are on {:?}", images.device());
        }
        let Some(labels) = labels else { return Ok(None) };
        if labels.size() != [n] || labels.is_floating_point() {
            bail!(
                "labels must be {n} integers (one per image), got a {:?} tensor of shape {:?}",
                labels.kind(),
                labels.size()
            );
        }
        let labels = Vec::<i64>::try_from(labels.to_kind(Kind::Int64).to_device(Device::Cpu))?;
        let classes = model.num_classes();
        if let Some(c) = labels.iter().find(|&&c| c < 0 || c >= classes) {
            bail!("label {c} is out of range: the model has {classes} classes (0..{})", classes - 1);
        }
        Ok(Some(labels))
    }

    /// `run` under the map's precision (CUDA autocast for f16).
    fn precise<T>(&self, device: Device, run: impl FnOnce() -> Result<T>) -> Result<T> {
        match self.precision {
            Precision::F32 => run(),
            Precision::F16Autocast => crate::autocast::autocast(Some(crate::autocast::AutocastDtype::F16), device, run),
        }
    }

    /// Each image's map for its label (m x 1 x H x W in [0, 1]) and whether it came out
    /// constant: the map step of [`GroupCamAugment::augment`] on every image, with no draw, mask
    /// or blend (the saliency cache's refresh pass). `labels` as for `augment`.
    pub fn maps_for(&self, model: &dyn CamModel, images: &Tensor, labels: &Tensor) -> Result<(Tensor, Vec<bool>)> {
        tch::no_grad(|| {
            let (_, _, h, w) = images.size4()?;
            let labels = self.check(model, images, Some(labels))?.expect("labels were given");
            let cam = self.explainer(images.device(), h * w, self.score_dims(h, w));
            let blurred = cam.blur.apply(images)?;
            let dims = self.score_dims(h, w);
            let exp =
                self.precise(images.device(), || cam.explain_against(model, images, &blurred, Some(&labels), dims))?;
            Ok((exp.maps.unsqueeze(1), exp.constant))
        })
    }

    /// The images to augment, in order: a random subset of floor(pB) or ceil(pB) images (the
    /// latter with chance frac(pB)), so that each image is drawn with chance p exactly while
    /// the step's cost stays steady from batch to batch.
    pub fn draw(&self, n: i64) -> Vec<i64> {
        if self.probability >= 1.0 {
            return (0..n).collect();
        }
        let expected = self.probability * n as f64;
        let extra = Tensor::rand([1], (Kind::Double, Device::Cpu)).double_value(&[0]) < expected.fract();
        let k = expected.floor() as i64 + i64::from(extra);
        let order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
        let mut chosen = Vec::<i64>::try_from(order.narrow(0, 0, k)).expect("a 1-D int64 tensor");
        chosen.sort_unstable();
        chosen
    }

    /// The scoring resolution: the shorter side `score_size`, the aspect ratio kept.
    pub fn score_dims(&self, h: i64, w: i64) -> (i64, i64) {
        let short = h.min(w);
        match self.score_size {
            Some(s) if s < short => {
                let scale = |side: i64| ((side * s) as f64 / short as f64).round() as i64;
                (scale(h), scale(w))
            }
            _ => (h, w),
        }
    }

    /// The explainer the paper's Sec. 5 prescribes, scoring `dims`-sized images.
    fn explainer(&self, device: Device, full_pixels: i64, dims: (i64, i64)) -> GroupCam {
        let chunk = self.max_batch.unwrap_or_else(|| (default_chunk(device) * full_pixels / (dims.0 * dims.1)).max(1));
        GroupCam {
            groups: self.groups,
            denoise: None,
            variant: Variant::Official,
            weights: ChannelWeights::Ones,
            blur: Blur::GROUP_CAM,
            chunk: Some(chunk),
        }
    }
}
