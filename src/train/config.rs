//! One YAML config in; everything the run does is derived from it. Unknown keys and wrong
//! types are named with their path, and missing paths are caught before any work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use crate::augment::{AugmentConfig, Refresh};
use crate::models::Arch;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// resnet18/34/50/101/152, vgg16, vgg19, efficientnet-lite0.
    pub arch: Arch,
    /// Starting weights (a torchvision state dict, safetensors or .ot); random init when absent.
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// The classifier's class count and whether a different one replaces the head.
    #[serde(default)]
    pub model: ModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub augment: AugmentConfig,
    #[serde(default)]
    pub saliency: SaliencyConfig,
    /// Epochs of plain training from the initial weights before the fine-tuning proper
    /// (the demo pre-trains a ResNet-18 from scratch this way).
    #[serde(default)]
    pub pretrain: Option<PretrainConfig>,
    /// The run directory (checkpoints, TensorBoard logs, saliency grids, report).
    #[serde(default = "default_out")]
    pub out: PathBuf,
    /// Data-parallel settings (timeouts, weight checks, buckets) for runs on several ranks.
    #[serde(default)]
    pub dist: crate::dist::DistConfig,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Classes of the head (default: the weights' count; with `reset_head`, the class folders').
    #[serde(default)]
    pub num_classes: Option<i64>,
    /// Replace a classifier of another class count by a fresh one (torchvision's initialisation).
    #[serde(default)]
    pub reset_head: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// An ImageFolder root holding `train/` and `val/`.
    pub root: PathBuf,
    #[serde(default = "default_train_dir")]
    pub train_dir: String,
    #[serde(default = "default_val_dir")]
    pub val_dir: String,
    /// RandomResizedCrop size for training and CenterCrop size for validation.
    #[serde(default = "default_input_size")]
    pub input_size: u32,
    /// Validation Resize (shorter side); 256 at 224, proportional elsewhere when absent.
    #[serde(default)]
    pub val_resize: Option<u32>,
    #[serde(default = "default_scale")]
    pub scale: [f64; 2],
    #[serde(default = "default_ratio")]
    pub ratio: [f64; 2],
    /// Horizontal flip probability.
    #[serde(default = "default_flip")]
    pub flip: f64,
    /// Decoding threads.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Batches decoded ahead.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// More validation sets, evaluated every epoch beside `val`: NAME: PATH (an ImageFolder of
    /// the training classes; relative to `root`). Absent from the written config when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_val: BTreeMap<String, PathBuf>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Amp {
    /// fp16 autocast with dynamic loss scaling on CUDA, full precision on CPU.
    Auto,
    /// fp16 autocast with dynamic loss scaling (CUDA only).
    Fp16,
    /// bfloat16 autocast (CUDA only): fp32's exponent range, so no loss scaling.
    Bf16,
    Off,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// StepLR: lr x `lr_gamma` every `lr_step` epochs.
    #[serde(default = "default_lr_step")]
    pub lr_step: usize,
    #[serde(default = "default_gamma")]
    pub lr_gamma: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_amp")]
    pub amp: Amp,
    /// auto, cpu, cuda or cuda:N.
    #[serde(default = "default_device")]
    pub device: String,
    /// Stop each epoch after this many steps (smoke runs).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Validation batch size (default: the training batch size).
    #[serde(default)]
    pub val_batch_size: Option<usize>,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[serde(default)]
    pub threads: Option<i32>,
    /// What a failed TensorBoard write does: `stop` the run (default), `continue` without
    /// TensorBoard after one warning, or `off` (no log).
    #[serde(default)]
    pub tensorboard: crate::tb::OnError,
    /// The fp16 loss scale a fresh run starts from (GradScaler's 65536); a resumed run
    /// continues from its checkpoint's.
    #[serde(default)]
    pub initial_loss_scale: Option<f64>,
    /// Keep BatchNorm in eval mode (running statistics frozen) while the rest trains. The
    /// networks run their eval-mode forward, so dropout is off too.
    #[serde(default)]
    pub freeze_bn: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SaliencyConfig {
    /// The first `probe` validation images are explained after every epoch (0: off).
    #[serde(default = "default_probe")]
    pub probe: usize,
    /// Groups of the full Group-CAM used for the probe maps.
    #[serde(default = "default_probe_groups")]
    pub groups: i64,
    /// "Converged" once 1 - mean Pearson r between epochs stays under this ...
    #[serde(default = "default_sal_threshold")]
    pub threshold: f64,
    /// ... for this many consecutive epochs.
    #[serde(default = "default_patience")]
    pub patience: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub epochs: usize,
    pub lr: f64,
    /// StepLR step inside the pre-training (default: no decay).
    #[serde(default)]
    pub lr_step: Option<usize>,
}

fn default_out() -> PathBuf {
    "runs/groupcam".into()
}
fn default_train_dir() -> String {
    "train".into()
}
fn default_val_dir() -> String {
    "val".into()
}
fn default_input_size() -> u32 {
    224
}
fn default_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn default_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}
fn default_flip() -> f64 {
    0.5
}
fn default_workers() -> usize {
    4
}
fn default_prefetch() -> usize {
    4
}
fn default_epochs() -> usize {
    20
}
fn default_batch() -> usize {
    256
}
fn default_lr() -> f64 {
    1e-3
}
fn default_momentum() -> f64 {
    0.9
}
fn default_wd() -> f64 {
    1e-4
}
fn default_lr_step() -> usize {
    15
}
fn default_gamma() -> f64 {
    0.1
}
fn default_amp() -> Amp {
    Amp::Auto
}
fn default_device() -> String {
    "auto".into()
}
fn default_probe() -> usize {
    16
}
fn default_probe_groups() -> i64 {
    32
}
fn default_sal_threshold() -> f64 {
    0.02
}
fn default_patience() -> usize {
    2
}

impl Default for TrainConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults")
    }
}
impl Default for SaliencyConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults")
    }
}

impl Config {
    /// Reads a YAML file, applies `key.path=value` overrides (values parsed as YAML), and
    /// checks types, unknown keys, values and paths.
    pub fn load(path: &Path, sets: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("{} is not valid YAML", path.display()))?;
        for s in sets {
            set(&mut value, s).with_context(|| format!("override {s}"))?;
        }
        Config::from_value(value).with_context(|| format!("config {}", path.display()))
    }

    pub fn from_value(value: serde_yaml::Value) -> Result<Config> {
        let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("key '{path}': {}", e.into_inner())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Values and paths, checked before any work starts.
    pub fn validate(&self) -> Result<()> {
        super::ranges::check(self)?;
        if self.arch == Arch::TorchScript && self.weights.is_none() {
            bail!("key 'weights': arch torchscript needs the archive (weights: model.pt)");
        }
        let t = &self.train;
        if let Some(p) = &self.pretrain {
            if p.epochs >= t.epochs {
                bail!("key 'pretrain.epochs' ({}) must be smaller than 'train.epochs' ({})", p.epochs, t.epochs);
            }
        }
        if self.data.val_resize.is_some_and(|r| r < self.data.input_size) {
            bail!("key 'data.val_resize' must be at least 'data.input_size'");
        }
        if let Some(w) = &self.weights {
            if !w.is_file() {
                bail!("key 'weights': file {} does not exist", w.display());
            }
        }
        for (key, dir) in [("data.train_dir", &self.data.train_dir), ("data.val_dir", &self.data.val_dir)] {
            let p = self.data.root.join(dir);
            if !p.is_dir() {
                bail!(
                    "key '{key}': data folder {} does not exist (key 'data.root' is {})",
                    p.display(),
                    self.data.root.display()
                );
            }
        }
        for (name, dir) in &self.data.extra_val {
            // The name becomes TensorBoard tags and table headers.
            if name.is_empty()
                || name == "val"
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bail!("key 'data.extra_val.{name}': a set's name must be letters, digits, '_' or '-', and not 'val'");
            }
            let p = self.data.root.join(dir);
            if !p.is_dir() {
                bail!("key 'data.extra_val.{name}': data folder {} does not exist", p.display());
            }
        }
        Ok(())
    }

    /// The saliency cache's bytes on disk for `samples` training images (`augment.cache`).
    pub fn cache_bytes(&self, samples: usize) -> u64 {
        match self.augment.cache {
            crate::augment::CacheOf::Maps => crate::augment::cache::bytes_needed(samples, self.cache_side()),
            crate::augment::CacheOf::Scores => crate::augment::cache::score_bytes_needed(samples, self.augment.groups),
        }
    }

    /// The saliency cache's map side (`augment.cache_size`).
    pub fn cache_side(&self) -> u32 {
        self.augment.cache_side(self.data.input_size)
    }

    pub fn val_resize(&self) -> u32 {
        self.data.val_resize.unwrap_or_else(|| crate::imageio::eval_resize(self.data.input_size))
    }
}

/// Applies one `a.b.c=value` override.
fn set(root: &mut serde_yaml::Value, s: &str) -> Result<()> {
    let (key, raw) = s.split_once('=').context("expected key=value")?;
    let value: serde_yaml::Value = serde_yaml::from_str(raw).with_context(|| format!("value '{raw}' is not YAML"))?;
    let mut cur = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = match cur {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => {
                *cur = serde_yaml::Value::Mapping(Default::default());
                match cur {
                    serde_yaml::Value::Mapping(m) => m,
                    _ => unreachable!(),
                }
            }
            _ => bail!("key '{}' is not a mapping", parts[..i].join(".")),
        };
        let k = serde_yaml::Value::String(part.to_string());
        if i == parts.len() - 1 {
            map.insert(k, value);
            return Ok(());
        }
        cur = map.entry(k).or_insert(serde_yaml::Value::Null);
    }
    Ok(())
}
