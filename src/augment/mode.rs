//! What the training loop applies to a fine-tuning batch, chosen once from the config: the
//! loop calls [`Augmentation::apply`] whatever the mode, and never blends masks itself.

use anyhow::{Context, Result};
use tch::Tensor;

use std::sync::Arc;

use super::cache::SaliencyCache;
use super::scored::ScoreCached;
use super::{AugmentConfig, CacheOf, CutMix, GroupCamAugment, Method, compose};
use crate::data::{Batch, Loader};
use crate::models::CamModel;
use crate::ops::Blur;

/// The augmentation of a run's fine-tuning batches.
#[derive(Clone, Debug)]
pub enum Augmentation {
    /// Plain training (`augment.enabled: false`).
    Off,
    /// Fresh maps at every step, for the batch's own crops (the paper).
    PerBatch(GroupCamAugment),
    /// Masks the loader cut from the map cache (`augment.refresh: K`); the augmenter makes the
    /// cache's maps every `every` fine-tuning epochs.
    Cached { aug: GroupCamAugment, every: usize },
    /// Each crop's own group maps weighed by its whole image's cached scores
    /// (`augment.cache: scores`), refreshed every `every` fine-tuning epochs.
    Scored(ScoreCached),
    /// CutMix on every batch (`augment.method: cutmix`): the step trains on soft targets.
    CutMix(CutMix),
}

/// A batch as the step trains on it.
pub struct Applied {
    pub images: Tensor,
    /// Images whose pixels the augmentation changed.
    pub augmented: usize,
    /// Soft targets (B x classes) when the labels were mixed; the batch's labels otherwise.
    pub targets: Option<Tensor>,
}

impl Augmentation {
    pub fn from_config(a: &AugmentConfig) -> Augmentation {
        match (a.enabled, a.method, a.refresh.every()) {
            (false, ..) => Augmentation::Off,
            (true, Method::CutMix, _) => Augmentation::CutMix(a.cutmix()),
            (true, Method::GroupCam, None) => Augmentation::PerBatch(a.augmenter()),
            (true, Method::GroupCam, Some(every)) if a.cache == CacheOf::Scores => {
                Augmentation::Scored(ScoreCached { aug: a.augmenter(), every, cache: None })
            }
            (true, Method::GroupCam, Some(every)) => Augmentation::Cached { aug: a.augmenter(), every },
        }
    }

    /// The refresh interval when the maps are cached.
    pub fn cached_every(&self) -> Option<usize> {
        match self {
            Augmentation::Cached { every, .. } => Some(*every),
            Augmentation::Scored(s) => Some(s.every),
            _ => None,
        }
    }

    /// Hands the epoch's cache to whoever reads it: the loader (masks cut from maps) or the
    /// step (scores).
    pub fn serve(&mut self, cache: Arc<SaliencyCache>, loader: &mut Loader) {
        match self {
            Augmentation::Scored(s) => s.cache = Some(cache),
            _ => loader.masks = Some(cache),
        }
    }

    /// `images` (the batch's, normalised, on the model's device) as the step trains on them.
    /// `batch` gives the labels (on the CPU: reading them back from the device would sync) and,
    /// in the cached mode, the masks its loader cut.
    pub fn apply(&self, model: &dyn CamModel, images: Tensor, batch: &Batch) -> Result<Applied> {
        match self {
            Augmentation::Off => Ok(Applied { images, augmented: 0, targets: None }),
            Augmentation::PerBatch(aug) => {
                let a = aug.augment(model, &images, &batch.labels)?;
                Ok(Applied { augmented: a.stats.augmented(), images: a.images, targets: None })
            }
            Augmentation::CutMix(c) => {
                let m = c.apply(&images, &batch.labels, model.num_classes())?;
                Ok(Applied { images: m.images, augmented: m.augmented, targets: m.targets })
            }
            Augmentation::Cached { .. } => {
                let masks = batch
                    .masks_on(images.device())
                    .context("a batch of a cached-maps run came without its masks (the loader has no map cache)")?;
                let images = tch::no_grad(|| -> Result<Tensor> {
                    Ok(compose(&images, &Blur::GROUP_CAM.apply(&images)?, &masks))
                })?;
                Ok(Applied { images, augmented: batch.masked, targets: None })
            }
            Augmentation::Scored(s) => {
                let (images, augmented) = s.apply(model, images, batch)?;
                Ok(Applied { images, augmented, targets: None })
            }
        }
    }
}
