//! Weights by path: torchvision `.pth`/`.pt` state dicts (PyTorch's zip + pickle format, parsed
//! by candle-core's reader), `.safetensors` and tch `.ot`. Every tensor is checked against the
//! architecture before any variable is touched, so a bad file changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use tch::{Kind, Tensor, nn};

use super::Arch;

/// The magic number that opens PyTorch's legacy (pre-1.6, non-zip) `torch.save` format.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// What `read` takes, for its messages.
const ACCEPTED: &str = "accepted: a torch.save state dict .pth/.pt, .safetensors or .ot";

/// What a torch.save pickle may name besides tensors, storages and the dicts that hold them:
/// anything else is a Python object (a callable, a class) that only Python could rebuild.
const TENSOR_GLOBALS: [&str; 4] = ["torch._utils", "torch.storage", "collections", "torch"];

/// The first global of a pickle that is not a tensor's, as `module.name`: protocol 2's GLOBAL
/// opcode (`c` module `\n` name `\n`) and protocol 4's STACK_GLOBAL after two short strings.
fn foreign_global(pickle: &[u8]) -> Option<String> {
    let ident = |b: &[u8]| !b.is_empty() && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.');
    let allowed = |module: &str| TENSOR_GLOBALS.contains(&module);
    for i in 0..pickle.len() {
        if pickle[i] == b'c' {
            let rest = &pickle[i + 1..];
            let mut parts = rest.splitn(3, |c| *c == b'\n');
            if let (Some(m), Some(n), Some(_)) = (parts.next(), parts.next(), parts.next())
                && ident(m)
                && ident(n)
            {
                let module = String::from_utf8_lossy(m);
                if !allowed(&module) {
                    return Some(format!("{module}.{}", String::from_utf8_lossy(n)));
                }
            }
        }
        // SHORT_BINUNICODE module, [MEMOIZE], SHORT_BINUNICODE name, [MEMOIZE], STACK_GLOBAL.
        if pickle[i] == 0x8c {
            let short = |at: usize| -> Option<(&[u8], usize)> {
                let len = *pickle.get(at + 1)? as usize;
                let s = pickle.get(at + 2..at + 2 + len)?;
                let mut end = at + 2 + len;
                if pickle.get(end) == Some(&0x94) {
                    end += 1;
                }
                Some((s, end))
            };
            if let Some((m, next)) = short(i)
                && pickle.get(next) == Some(&0x8c)
                && let Some((n, end)) = short(next)
                && pickle.get(end) == Some(&0x93)
                && ident(m)
                && ident(n)
            {
                let module = String::from_utf8_lossy(m);
                if !allowed(&module) {
                    return Some(format!("{module}.{}", String::from_utf8_lossy(n)));
                }
            }
        }
    }
    None
}

/// The pickle of a torch.save zip archive (`<name>/data.pkl`), if it can be read.
fn archive_pickle(path: &Path) -> Option<Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(std::fs::File::open(path).ok()?)).ok()?;
    let name = zip.file_names().find(|n| n.ends_with("data.pkl"))?.to_string();
    let mut out = vec![];
    zip.by_name(&name).ok()?.read_to_end(&mut out).ok()?;
    Some(out)
}

/// Reads every tensor of a weights file, as CPU float tensors keyed by name.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .with_context(|| format!("cannot open weights file {}", path.display()))?
        .read(&mut head)
        .with_context(|| format!("cannot read weights file {}", path.display()))?;
    let head = &head[..n];
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let named: Vec<(String, Tensor)> = if head.starts_with(b"PK\x03\x04") {
        read_torch_zip(path)?
    } else if head.len() >= 14 && head[0] == 0x80 && head[4..14] == LEGACY_MAGIC {
        bail!(
            "{} is in PyTorch's legacy (pre-1.6) serialization format, which groupcam does not parse; \
             convert it once with: python -c \"import torch; torch.save(torch.load('{0}', map_location='cpu'), 'converted.pth')\"",
            path.display()
        )
    } else if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        bail!(
            "{} is a plain Python pickle, not a torch.save archive: groupcam loads only tensors and runs no code \
             from weights files ({ACCEPTED})",
            path.display()
        )
    } else if ext == "safetensors" {
        Tensor::read_safetensors(path)
            .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file: {}", path.display(), torch_message(&e)))?
    } else if ext == "ot" {
        Tensor::load_multi(path)
            .map_err(|e| anyhow::anyhow!("{} is not a valid tch .ot file: {}", path.display(), torch_message(&e)))?
    } else {
        bail!("{}: unrecognised weights format ({ACCEPTED})", path.display())
    };
    let mut out = BTreeMap::new();
    for (name, t) in named {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        out.insert(name, t.to_kind(Kind::Float));
    }
    if out.is_empty() {
        bail!("{} holds no tensors", path.display());
    }
    Ok(out)
}

/// A libtorch error without its C++ backtrace: the first line, which says what went wrong.
pub fn torch_message(e: &tch::TchError) -> String {
    let text = e.to_string();
    let text = text.split("Exception raised from").next().unwrap_or("");
    let first = text.lines().next().unwrap_or("").trim();
    first.strip_prefix("Internal torch error: ").unwrap_or(first).to_string()
}

fn read_torch_zip(path: &Path) -> Result<Vec<(String, Tensor)>> {
    // candle-core parses the pickle; the storages are read here because candle refuses
    // non-contiguous (e.g. channels-last) tensors, which torch.save keeps as they are.
    let mut last_err = None;
    // Full checkpoints often nest the state dict under a key.
    for key in [None, Some("state_dict"), Some("model"), Some("model_state_dict")] {
        match candle_core::pickle::read_pth_tensor_info(path, false, key) {
            Ok(infos) if !infos.is_empty() => return read_storages(path, infos),
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    // The parse failed: say so in the file's own terms when its pickle names a Python object.
    if let Some(object) = archive_pickle(path).as_deref().and_then(foreign_global) {
        bail!(
            "{} holds a Python object ({object}) where tensors were expected: groupcam loads only tensors and \
             runs no code from weights files ({ACCEPTED}; save model.state_dict())",
            path.display()
        );
    }
    match last_err {
        // candle's errors carry a backtrace after the first line.
        Some(e) => bail!(
            "cannot parse {} as a torch.save state dict: {}",
            path.display(),
            e.to_string().lines().next().unwrap_or("")
        ),
        None => bail!("{} holds no tensors", path.display()),
    }
}

fn read_storages(path: &Path, infos: Vec<candle_core::pickle::TensorInfo>) -> Result<Vec<(String, Tensor)>> {
    use candle_core::DType;
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a readable zip archive", path.display()))?;
    let mut out = Vec::new();
    for info in infos {
        if info.name.ends_with("num_batches_tracked") {
            continue;
        }
        let kind = match info.dtype {
            DType::F32 => Kind::Float,
            DType::F64 => Kind::Double,
            DType::F16 => Kind::Half,
            DType::BF16 => Kind::BFloat16,
            DType::I64 => Kind::Int64,
            DType::U8 => Kind::Uint8,
            other => bail!("tensor '{}' in {} has unsupported dtype {other:?}", info.name, path.display()),
        };
        let mut buf = Vec::new();
        zip.by_name(&info.path)
            .with_context(|| format!("tensor '{}': storage {} missing from {}", info.name, info.path, path.display()))?
            .read_to_end(&mut buf)
            .with_context(|| format!("tensor '{}': cannot read its storage from {}", info.name, path.display()))?;
        let numel = (buf.len() / kind.elt_size_in_bytes()) as i64;
        let shape: Vec<i64> = info.layout.shape().dims().iter().map(|&d| d as i64).collect();
        let stride: Vec<i64> = info.layout.stride().iter().map(|&d| d as i64).collect();
        let offset = info.layout.start_offset() as i64;
        let needed = 1 + offset + shape.iter().zip(&stride).map(|(d, s)| (d - 1).max(0) * s).sum::<i64>();
        if shape.iter().all(|&d| d > 0) && needed > numel {
            bail!(
                "tensor '{}' in {} is truncated: its storage holds {numel} values, the view needs {needed}",
                info.name,
                path.display()
            );
        }
        let storage = Tensor::from_data_size(&buf, &[numel], kind);
        out.push((info.name, storage.as_strided(shape, stride, offset).contiguous()));
    }
    Ok(out)
}

/// The class count of a state dict, read from its classifier; a file without the
/// architecture's classifier is named as belonging to another architecture.
pub fn classifier_classes(arch: Arch, tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<i64> {
    let key = arch.classifier_key();
    match tensors.get(key) {
        Some(t) if t.dim() == 2 => Ok(t.size()[0]),
        Some(t) => {
            bail!("tensor '{key}' in {} has shape {:?}, expected a 2-D classifier weight", path.display(), t.size())
        }
        None => bail!(
            "{} has no tensor '{key}': it is not a {arch} state dict (its first keys: {})",
            path.display(),
            tensors.keys().take(4).cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Copies `tensors` into the store's variables after checking that the names and shapes match
/// exactly (`num_batches_tracked` is ignored).
pub fn assign(vs: &mut nn::VarStore, tensors: BTreeMap<String, Tensor>, path: &Path, arch: Arch) -> Result<()> {
    let vars = vs.variables();
    let want: BTreeSet<&String> = vars.keys().collect();
    let have: BTreeSet<&String> = tensors.keys().collect();
    let list = |s: Vec<&&String>| {
        let n = s.len();
        let mut names: Vec<String> = s.into_iter().take(5).map(|k| format!("'{k}'")).collect();
        if n > 5 {
            names.push(format!("and {} more", n - 5));
        }
        names.join(", ")
    };
    let missing: Vec<_> = want.difference(&have).collect();
    if !missing.is_empty() {
        bail!(
            "{} is missing tensor(s) {} that {arch} needs (weights for another architecture?)",
            path.display(),
            list(missing)
        );
    }
    let unexpected: Vec<_> = have.difference(&want).collect();
    if !unexpected.is_empty() {
        bail!(
            "{} has unexpected tensor(s) {} for {arch} (weights for another architecture?)",
            path.display(),
            list(unexpected)
        );
    }
    for (name, var) in &vars {
        let t = &tensors[name];
        if t.size() != var.size() {
            bail!("tensor '{name}' in {} has shape {:?}; {arch} expects {:?}", path.display(), t.size(), var.size());
        }
    }
    tch::no_grad(|| {
        for (name, mut var) in vars {
            var.copy_(&tensors[&name]);
        }
    });
    Ok(())
}

/// Writes the store as safetensors with the same (torchvision) names, loadable in PyTorch
/// with `safetensors.torch.load_file`.
pub fn save_safetensors(vs: &nn::VarStore, path: &Path) -> Result<()> {
    save_torchvision(vs, path, 0)
}

/// The store's tensors plus a `num_batches_tracked` (= `steps`) per BatchNorm, so that
/// `model.load_state_dict(safetensors.torch.load_file(path))` loads strictly in PyTorch.
pub fn save_torchvision(vs: &nn::VarStore, path: &Path, steps: i64) -> Result<()> {
    let vars = vs.variables();
    let mut named: Vec<(String, Tensor)> =
        vars.iter().map(|(k, v)| (k.clone(), v.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    for k in vars.keys() {
        if let Some(prefix) = k.strip_suffix(".running_mean") {
            named.push((format!("{prefix}.num_batches_tracked"), Tensor::from(steps)));
        }
    }
    crate::atomic::write_safetensors(&named, path)
}
