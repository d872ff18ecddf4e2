//! Checkpoints: one safetensors file holding the weights (`model/...`), the optimizer's momentum
//! (`momentum/...`), the last probe maps and the run's state as JSON bytes (`meta`). Written to
//! a temporary file and renamed, so a crash leaves the previous checkpoint whole.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

pub use super::record::EpochRecord;
use super::sgd::Sgd;

/// Everything besides tensors that a resumed run needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Epochs completed.
    pub epoch: usize,
    pub step: u64,
    pub best_top1: f64,
    pub best_epoch: usize,
    pub history: Vec<EpochRecord>,
    pub saliency_streak: usize,
    pub converged_at: Option<usize>,
    pub loss_scale: f64,
    /// Clean fp16 steps since the loss scale last changed (GradScaler's growth tracker).
    #[serde(default)]
    pub loss_scale_clean_steps: u64,
    pub arch: String,
    /// The class names, head index order (the ImageFolder's sorted folders, as torchvision's).
    #[serde(default)]
    pub classes: Vec<String>,
}

pub fn save(path: &Path, vs: &nn::VarStore, sgd: &Sgd, saliency: Option<&Tensor>, meta: &Meta) -> Result<()> {
    let cpu = |t: &Tensor| t.detach().to_device(tch::Device::Cpu).contiguous();
    let mut named: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(k, v)| (format!("model/{k}"), cpu(&v))).collect();
    named.extend(sgd.buffers.iter().map(|(k, v)| (format!("momentum/{k}"), cpu(v))));
    if let Some(s) = saliency {
        named.push(("saliency/prev".into(), cpu(s)));
    }
    let json = serde_json::to_vec(meta)?;
    named.push(("meta".into(), Tensor::from_slice(&json)));
    crate::atomic::write_safetensors(&named, path)
}

/// Restores weights, momentum and state into a model of `arch`; returns the state and the last
/// probe maps. A checkpoint of another architecture is refused by its recorded name first.
pub fn load(
    path: &Path,
    vs: &mut nn::VarStore,
    sgd: &mut Sgd,
    arch: crate::models::Arch,
) -> Result<(Meta, Option<Tensor>)> {
    let named = Tensor::read_safetensors(path).map_err(|e| {
        anyhow::anyhow!("cannot read checkpoint {}: {}", path.display(), crate::models::weights::torch_message(&e))
    })?;
    let mut meta = None;
    let mut saliency = None;
    let mut model = std::collections::BTreeMap::new();
    sgd.buffers.clear();
    let device = vs.device();
    for (k, t) in named {
        if k == "meta" {
            let bytes = Vec::<u8>::try_from(t.to_kind(Kind::Uint8))?;
            meta = Some(
                serde_json::from_slice::<Meta>(&bytes).with_context(|| format!("{}: corrupt meta", path.display()))?,
            );
        } else if k == "saliency/prev" {
            saliency = Some(t);
        } else if let Some(n) = k.strip_prefix("momentum/") {
            sgd.buffers.insert(n.to_string(), t.to_device(device));
        } else if let Some(n) = k.strip_prefix("model/") {
            model.insert(n.to_string(), t);
        } else {
            bail!("{}: unexpected tensor '{k}' in a checkpoint", path.display());
        }
    }
    let meta = meta.with_context(|| format!("{} is not a groupcam checkpoint (no 'meta')", path.display()))?;
    if meta.arch != arch.name() {
        bail!("{} is a checkpoint of a {} run, but the config's arch is {arch}", path.display(), meta.arch);
    }
    crate::models::weights::assign(vs, model, path, arch)?;
    Ok((meta, saliency))
}
