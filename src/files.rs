//! The files a command reads and writes: image lists, output names and JSON results.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The image extensions every reader accepts (ImageFolder, directory arguments).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Whether a path has one of [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files of the arguments: files as given, directories expanded to their images, sorted.
pub fn image_files(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in args {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| is_image(f))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("directory {} holds no .{} images", p.display(), IMAGE_EXTENSIONS.join("/."));
            }
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("image {} does not exist", p.display());
        }
    }
    Ok(out)
}

/// The file stem of `all[i]`, made unique when two inputs share it.
pub fn unique_stem(path: &Path, i: usize, all: &[PathBuf]) -> String {
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let s = stem(path);
    if all.iter().filter(|p| stem(p) == s).count() > 1 { format!("{s}-{i}") } else { s }
}

/// Writes results as pretty JSON (keys sorted), creating the directory.
pub fn write_json(value: &impl serde::Serialize, path: &Path) -> Result<()> {
    let value = serde_json::to_value(value)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::atomic::write_bytes(path, serde_json::to_string_pretty(&value)?.as_bytes())
}

/// Creates a directory (and its parents), naming it on failure.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Files named after their inputs in `dir`, `STEM` + each of `suffixes` per input (an input is
/// its path and output stem): refused before `dir` is made when one would replace an input,
/// then `write` makes each input's files (their paths in `suffixes` order) and returns the one
/// to show.
pub fn write_per_input<T>(
    dir: &Path,
    items: &[T],
    input_of: impl Fn(&T) -> (&Path, &str),
    suffixes: &[&str],
    mut write: impl FnMut(&T, &[PathBuf]) -> Result<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let names =
        |it: &T| -> Vec<PathBuf> { suffixes.iter().map(|e| dir.join(format!("{}{e}", input_of(it).1))).collect() };
    let outputs: Vec<PathBuf> = items.iter().flat_map(names).collect();
    let inputs: Vec<PathBuf> = items.iter().map(|it| input_of(it).0.to_path_buf()).collect();
    crate::atomic::check_not_inputs(&outputs, &inputs)?;
    create_dir(dir)?;
    items.iter().map(|it| write(it, &names(it))).collect()
}
