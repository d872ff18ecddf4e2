//! Every file the tool writes goes through here: written to a temporary file in the target's own
//! directory, synced, then renamed over the target. A failed write (full disk, bad path, an
//! encoder error) leaves the old file or none, never a partial one, and removes its temporary;
//! only a kill between the write and the rename can leave a `.<name>.<pid>.tmp` behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::RgbImage;
use tch::Tensor;

/// Writes `path` through `write`, which is handed the temporary path to write to.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary(path)?;
    let done = write(&tmp).and_then(|()| commit(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done.with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        Ok(())
    })
}

/// An image as PNG (encoded in memory first: an encoder error writes nothing).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    write_bytes(path, &buf)
}

/// A map as `.npy` (float32, on the CPU).
pub fn write_npy(t: &Tensor, path: &Path) -> Result<()> {
    let t = t.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu).contiguous();
    write_with(path, |tmp| Ok(t.write_npy(tmp)?))
}

/// Named tensors as safetensors.
pub fn write_safetensors(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    write_with(path, |tmp| Ok(Tensor::write_safetensors(named, tmp)?))
}

/// A hidden sibling of `path`, unique to this process.
fn temporary(path: &Path) -> Result<PathBuf> {
    let Some(name) = path.file_name() else { bail!("{} is not a file path", path.display()) };
    let tmp = format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(tmp))
}

/// Syncs the temporary, renames it over the target and syncs the directory, so that the new
/// name survives a power cut too.
fn commit(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Some file systems cannot sync a directory; the rename itself is done by then.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuses outputs that would replace one of the inputs (same file, through any path or link).
pub fn check_not_inputs(outputs: &[PathBuf], inputs: &[PathBuf]) -> Result<()> {
    let inputs: Vec<(PathBuf, PathBuf)> = inputs.iter().filter_map(|p| resolved(p).map(|r| (p.clone(), r))).collect();
    for out in outputs {
        let Some(r) = resolved(out) else { continue };
        if let Some((input, _)) = inputs.iter().find(|(_, i)| *i == r) {
            bail!(
                "output {} would overwrite the input {}: choose another output directory",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// The canonical path of a file, or of its directory joined with its name when the file does
/// not exist yet (None when not even the directory exists: nothing there can be an input).
fn resolved(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(dir.canonicalize().ok()?.join(p.file_name()?))
}
