//! The augmentation's section of a training config (`augment:`), and the schedule of its map
//! cache. The training config holds it as one field; its keys and their order are the written
//! config.yaml's.

use serde::{Deserialize, Serialize};

use super::{GroupCamAugment, Precision, Threshold};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_aug_groups")]
    pub groups: i64,
    /// Probability that an image of a batch is augmented.
    #[serde(default = "default_one")]
    pub probability: f64,
    /// Images per scoring forward (default: the device's).
    #[serde(default)]
    pub max_batch: Option<i64>,
    /// Score the masked images at this resolution (e.g. 112); the input size when absent.
    #[serde(default)]
    pub score_size: Option<i64>,
    /// image (the mean of each map, the paper) or batch (the official code's mean over the batch).
    #[serde(default = "default_threshold")]
    pub threshold: Threshold,
    /// f32, or f16 (CUDA autocast) for the map's forwards.
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// When the maps are computed: `batch` (at every step, for the batch's own crops: the
    /// paper) or a number K: every K fine-tuning epochs for every whole training image, kept
    /// in a cache that the crops are cut from (`augment::cache`).
    #[serde(default)]
    pub refresh: Refresh,
    /// The cached maps' side in pixels (`refresh` every K epochs); default 56 (a quarter of
    /// 224), or the input size when that is smaller.
    #[serde(default)]
    pub cache_size: Option<u32>,
    /// What the cache of `refresh: K` holds: `maps` (each whole image's map, the crop's mask
    /// cut from it by the loader) or `scores` (each whole image's G group scores; each step
    /// weighs its crop's own group maps with them: [`GroupCamAugment::augment_with_scores`]).
    /// Left out of a written config.yaml when it is `maps`, so runs from before the key read
    /// and write the same config.
    #[serde(default, skip_serializing_if = "CacheOf::is_maps")]
    pub cache: CacheOf,
    /// `groupcam` (the keys above) or `cutmix` (timm's CutMix, alpha 1, soft targets;
    /// `probability` is then the chance that a batch is mixed and the other keys are unused).
    /// Last, so that the keys before it keep their order in a written config.yaml.
    #[serde(default)]
    pub method: Method,
}

/// `augment.cache`: what the saliency cache holds, and so what a step does with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheOf {
    #[default]
    Maps,
    Scores,
}

impl CacheOf {
    pub const ALL: [CacheOf; 2] = [CacheOf::Maps, CacheOf::Scores];
    pub fn name(self) -> &'static str {
        match self {
            CacheOf::Maps => "maps",
            CacheOf::Scores => "scores",
        }
    }
    pub fn is_maps(&self) -> bool {
        *self == CacheOf::Maps
    }
}
crate::choice!(CacheOf);

impl std::str::FromStr for CacheOf {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "maps" => Ok(CacheOf::Maps),
            "scores" => Ok(CacheOf::Scores),
            _ => anyhow::bail!("unknown cache content '{s}' (expected maps or scores)"),
        }
    }
}

/// `augment.method`: which augmentation the fine-tuning batches get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    #[default]
    GroupCam,
    CutMix,
}

impl Method {
    pub const ALL: [Method; 2] = [Method::GroupCam, Method::CutMix];
    pub fn name(self) -> &'static str {
        match self {
            Method::GroupCam => "groupcam",
            Method::CutMix => "cutmix",
        }
    }
}
crate::choice!(Method);

impl std::str::FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "groupcam" | "group-cam" => Ok(Method::GroupCam),
            "cutmix" => Ok(Method::CutMix),
            _ => anyhow::bail!("unknown augmentation method '{s}' (expected groupcam or cutmix)"),
        }
    }
}

/// `augment.refresh`: `batch`, or every K epochs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refresh {
    #[default]
    Batch,
    Epochs(usize),
}

impl Refresh {
    /// The refresh interval in epochs when the maps are cached.
    pub fn every(self) -> Option<usize> {
        match self {
            Refresh::Batch => None,
            Refresh::Epochs(k) => Some(k),
        }
    }
}

impl Serialize for Refresh {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Refresh::Batch => s.serialize_str("batch"),
            Refresh::Epochs(k) => s.serialize_u64(*k as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Refresh {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Epochs(u64),
            Name(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Epochs(k)) => Ok(Refresh::Epochs(k as usize)),
            Ok(Raw::Name(n)) if n == "batch" => Ok(Refresh::Batch),
            Ok(Raw::Name(n)) => match n.parse::<u64>() {
                Ok(k) => Ok(Refresh::Epochs(k as usize)),
                Err(_) => Err(serde::de::Error::custom(format!(
                    "'{n}' is not a refresh interval (expected batch, or a number of epochs)"
                ))),
            },
            Err(_) => Err(serde::de::Error::custom("expected batch, or a number of epochs")),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_aug_groups() -> i64 {
    16
}
fn default_one() -> f64 {
    1.0
}
fn default_threshold() -> Threshold {
    Threshold::ImageMean
}
fn default_precision() -> Precision {
    Precision::F32
}

impl Default for AugmentConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults")
    }
}

impl AugmentConfig {
    /// The augmentation these settings describe.
    pub fn augmenter(&self) -> GroupCamAugment {
        GroupCamAugment {
            groups: self.groups,
            probability: self.probability,
            max_batch: self.max_batch,
            score_size: self.score_size,
            precision: self.precision,
            threshold: self.threshold,
        }
    }

    /// The map cache's side in pixels (`cache_size`) for training crops of `input_size`.
    pub fn cache_side(&self, input_size: u32) -> u32 {
        self.cache_size.unwrap_or(56.min(input_size))
    }

    /// The refresh interval when the augmentation is on and its maps are cached.
    pub fn cached_every(&self) -> Option<usize> {
        self.refresh.every().filter(|_| self.enabled && self.method == Method::GroupCam)
    }

    /// CutMix with these settings (`method: cutmix`).
    pub fn cutmix(&self) -> super::CutMix {
        super::CutMix { probability: self.probability, ..Default::default() }
    }
}
