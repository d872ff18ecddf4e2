//! The saliency cache (`augment.refresh: K`): what the augmentation needs of every training
//! image, computed every K epochs instead of at every step: its map (`augment.cache: maps`, the
//! map cache below) or its G group scores (`augment.cache: scores`, the score cache).
//!
//! The score cache: the refresh pass gives each whole training image, resized to the input
//! size, the augmentation's own scores ([`GroupCamAugment::scores_for`]: same G, class = the
//! label, eval mode, no backward, `score_size` and `precision` apply), G f16 per image
//! (`part-R-of-W.f16`, 32 bytes at G = 16; ImageNet: 41 MB). Each step then weighs its crops'
//! own group maps with them ([`GroupCamAugment::augment_with_scores`]): the spatial detail a
//! small crop needs is in its own maps, which one forward of the features gives; the scores only
//! say which channel groups matter for the class, and they are what costs G + 1 forwards.
//! The rest (parts per rank, the description, rebuilds and their reasons, the space check,
//! Ctrl-C) is the map cache's, below; `cache.json`'s `holds` says which of the two a cache is.
//!
//! [`GroupCamAugment::scores_for`]: crate::augment::GroupCamAugment::scores_for
//! [`GroupCamAugment::augment_with_scores`]: crate::augment::GroupCamAugment::augment_with_scores
//!
//! The map cache:
//! A refresh pass ([`refresh`]) runs the augmentation's own map step (same G, class = the
//! label, eval mode, no backward) on each whole training image resized to the input size,
//! averages the map down to `side` x `side` (`augment.cache_size`) and stores it as bytes,
//! `round(255 map)`. During training the loader cuts each image's box out of its cached map
//! with the image's own RandomResizedCrop box and flip ([`cut`]), resizes it to the crop
//! (bilinear), and takes S = [map >= its mean over the crop]; the step then blends with the blur
//! as Eq. 5 does. A map that came out constant is stored as zeros, so its S is all ones and the
//! image passes through.
//!
//! On disk (`<run>/saliency-cache/`, [`store`]): `part-R-of-W.u8` per rank R of W, holding the
//! maps of the samples i with i % W == R at row i / W (each rank writes its own file, so no two
//! processes write one page; every rank memory-maps all of them), and `cache.json`, written
//! last, which says what the maps are of: the dataset's fingerprint, the settings, and the epoch
//! of the weights they were computed with. A cache whose `cache.json` does not match what the
//! run needs now is stale or foreign and is rebuilt, with its [`Rebuild`] reason. Size: samples
//! x side^2 bytes (ImageNet's 1,281,167 images at 56 px: 4.0 GB), refused before any work when
//! the disk lacks it.

pub mod cut;
pub mod refresh;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::augment::{CacheOf, Precision};
use crate::data::ImageFolder;

pub use cut::{cut_mask, mask_tensor};
pub use refresh::{RefreshStats, Stopped, to_cache, to_score_rows, write_part};
pub use store::{Rebuild, SaliencyCache, bytes_needed, check_space, clear, free_bytes, publish, score_bytes_needed};

/// What a cache holds and what it was computed with: equal to the run's wish, or rebuilt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub version: u32,
    pub samples: usize,
    /// The maps' side in pixels.
    pub side: u32,
    pub input_size: u32,
    pub groups: i64,
    pub score_size: Option<i64>,
    pub world: usize,
    /// The training set's files and labels, hashed (`fingerprint`).
    pub fingerprint: String,
    /// The 0-based epoch before which the maps were computed: the weights they come from.
    pub epoch: usize,
    /// What each row is: a map of `side` x `side` bytes, or G f16 group scores of the whole
    /// image resized to `side` (= `input_size`) squared. Maps in caches from before the key.
    #[serde(default)]
    pub holds: CacheOf,
    /// The scores' precision (a score cache's; maps leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

impl CacheMeta {
    /// Bytes per sample in a part file.
    pub fn row_bytes(&self) -> u64 {
        match self.holds {
            CacheOf::Maps => self.side as u64 * self.side as u64,
            CacheOf::Scores => 2 * self.groups.max(0) as u64,
        }
    }
}

pub const VERSION: u32 = 1;

/// A 64-bit FNV-1a hash of the samples' paths (relative to the root) and labels.
pub fn fingerprint(data: &ImageFolder) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, label) in &data.samples {
        let rel = path.strip_prefix(&data.root).unwrap_or(path);
        for b in rel.to_string_lossy().bytes().chain(label.to_le_bytes()).chain([0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The samples of rank `rank` of `world`: every world-th from `rank` on.
pub fn shard(samples: usize, rank: usize, world: usize) -> Vec<usize> {
    (rank..samples).step_by(world.max(1)).collect()
}

/// The 0-based epoch whose weights the cache must hold during `epoch`: the last refresh
/// epoch at or before it, refreshing every `every` epochs from the fine-tuning's first.
pub fn due_epoch(epoch: usize, finetune_start: usize, every: usize) -> usize {
    let every = every.max(1);
    finetune_start + (epoch - finetune_start) / every * every
}
