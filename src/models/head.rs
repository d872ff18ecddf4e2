//! Any class count: a built-in model's classifier replaced by a fresh N-way layer, initialised as
//! torchvision initialises it, every other weight loaded strictly; and the class names a run
//! trained on, carried in `final.safetensors`' metadata.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use tch::{Tensor, nn};

use super::{Arch, HeadSpec, weights};

/// The classifier's weight and bias in a built-in architecture's state dict.
pub fn classifier_keys(arch: Arch) -> (&'static str, String) {
    let w = arch.classifier_key();
    (w, format!("{}.bias", w.trim_end_matches(".weight")))
}

/// The class count to build: the file's, or `head.num_classes` when the head is reset; a
/// different count without `reset` is an error naming both counts and the key.
pub fn classes(arch: Arch, tensors: &BTreeMap<String, Tensor>, path: &Path, head: HeadSpec) -> Result<i64> {
    let have = weights::classifier_classes(arch, tensors, path)?;
    match head.num_classes {
        None => Ok(have),
        Some(n) if n == have => Ok(n),
        Some(n) if n < 1 => bail!("model.num_classes must be at least 1, got {n}"),
        Some(n) if head.reset => Ok(n),
        Some(n) => bail!(
            "{}: its classifier '{}' has {have} classes, but {n} are asked for \
             (set model.reset_head: true to replace it with a fresh {n}-way layer)",
            path.display(),
            classifier_keys(arch).0
        ),
    }
}

/// When the file's classifier has another class count than `classes`, gives the model's fresh
/// classifier torchvision's initialisation and puts it in place of the file's, so that the
/// strict `weights::assign` loads every other tensor and keeps the new head.
pub fn keep_fresh_head(
    arch: Arch,
    vs: &nn::VarStore,
    tensors: &mut BTreeMap<String, Tensor>,
    classes: i64,
) -> Result<()> {
    let (wk, bk) = classifier_keys(arch);
    let bk = bk.as_str();
    if tensors.get(wk).map(|t| t.size()[0]) == Some(classes) {
        return Ok(());
    }
    let vars = vs.variables();
    let (w, b) =
        (vars.get(wk).context("the model has no classifier weight")?, vars.get(bk).context("no classifier bias")?);
    tch::no_grad(|| {
        let (mut w, mut b) = (w.shallow_clone(), b.shallow_clone());
        match arch {
            // torchvision's VGG: nn.init.normal_(weight, 0, 0.01), bias 0.
            Arch::Vgg16 | Arch::Vgg19 => {
                let _ = w.normal_(0.0, 0.01);
                let _ = b.zero_();
            }
            // ResNet's fc and EfficientNet-Lite's _fc keep nn.Linear's default, which tch's
            // linear reproduces (weight and bias U(+-1/sqrt(fan_in))).
            _ => {}
        }
    });
    tensors.insert(wk.to_string(), w.detach().to_device(tch::Device::Cpu).copy());
    tensors.insert(bk.to_string(), b.detach().to_device(tch::Device::Cpu).copy());
    Ok(())
}

/// Adds `__metadata__` entries to a safetensors file in place (the header is rewritten, the
/// tensor bytes kept), atomically (`atomic::write_bytes`): a failure leaves the file whole.
pub fn add_safetensors_metadata(path: &Path, entries: &[(&str, String)]) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = || anyhow::anyhow!("{} is not a safetensors file", path.display());
    let n = u64::from_le_bytes(bytes.get(..8).ok_or_else(bad)?.try_into()?) as usize;
    let header = bytes.get(8..8 + n).ok_or_else(bad)?;
    let mut json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).map_err(|_| bad())?;
    let meta = json.entry("__metadata__").or_insert_with(|| serde_json::Value::Object(Default::default()));
    let meta = meta.as_object_mut().ok_or_else(bad)?;
    for (k, v) in entries {
        meta.insert(k.to_string(), serde_json::Value::String(v.clone()));
    }
    let mut header = serde_json::to_vec(&json)?;
    // The data must start 8-byte aligned; safetensors pads the header with spaces.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    crate::atomic::write_bytes(path, &out)
}

/// The `__metadata__` of a safetensors file.
pub fn safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = || anyhow::anyhow!("{} is not a safetensors file", path.display());
    let n = u64::from_le_bytes(bytes.get(..8).ok_or_else(bad)?.try_into()?) as usize;
    let json: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + n).ok_or_else(bad)?).map_err(|_| bad())?;
    let mut out = BTreeMap::new();
    if let Some(m) = json.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in m {
            out.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
    }
    Ok(out)
}
