//! The score-cached mode (`augment.refresh: K` with `augment.cache: scores`): each step weighs
//! its crops' own group maps with the scores the cache holds for their whole images.

use std::sync::Arc;

use anyhow::{Context, Result};
use tch::Tensor;

use super::GroupCamAugment;
use super::cache::SaliencyCache;
use crate::cam::GroupCam;
use crate::data::Batch;
use crate::models::CamModel;

/// The augmenter, the refresh interval, and the epoch's score cache once the loop has opened it.
#[derive(Clone, Debug)]
pub struct ScoreCached {
    pub aug: GroupCamAugment,
    pub every: usize,
    pub cache: Option<Arc<SaliencyCache>>,
}

impl ScoreCached {
    /// `images` as the step trains on them, and how many were changed:
    /// [`GroupCamAugment::augment_with_scores`] with the cached scores of the batch's samples.
    pub fn apply(&self, model: &dyn CamModel, images: Tensor, batch: &Batch) -> Result<(Tensor, usize)> {
        let cache =
            self.cache.as_ref().context("a step of a score-cached run came before its score cache was opened")?;
        let groups = GroupCam { groups: self.aug.groups, ..Default::default() }.group_count(model.target_channels());
        // The cache pads to G columns where torch.chunk makes fewer groups.
        let scores = cache.scores(&batch.samples)?.narrow(1, 0, groups);
        let a = self.aug.augment_with_scores(model, &images, Some(&batch.labels), &scores)?;
        Ok((a.images, a.stats.augmented()))
    }
}
