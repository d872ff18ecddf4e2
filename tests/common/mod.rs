//! Shared test helpers: the venv's Python makes PyTorch fixtures and reference results.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The set-up's Python (`make venv`), or $GROUPCAM_PYTHON.
pub fn python() -> PathBuf {
    std::env::var_os("GROUPCAM_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"))
}

/// Runs tests/py/fixtures.py with `args`; panics with its stderr when it fails.
pub fn py(args: &[&str]) {
    let out = Command::new(python())
        .arg(root().join("tests/py/fixtures.py"))
        .args(args)
        .output()
        .expect("cannot run the venv's python: run `make venv` first");
    assert!(out.status.success(), "fixtures.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The real EfficientNet-Lite0 weights converted by the set-up.
pub fn effnet_weights() -> PathBuf {
    let p = root().join(".venv/weights/efficientnet-lite0.pth");
    assert!(p.exists(), "{} is missing: run `make venv`", p.display());
    p
}

pub fn photo(name: &str) -> PathBuf {
    root().join("tests/data").join(name)
}

pub fn npy(path: &Path) -> Tensor {
    Tensor::read_npy(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_groupcam"))
}

// ---- whole runs ---------------------------------------------------------------------------

/// `groupcam finetune --quiet ARGS`, not yet run (to spawn, or to add options).
pub fn finetune_cmd(args: &[&str]) -> Command {
    let mut c = bin();
    c.arg("finetune").arg("--quiet").args(args);
    c
}

/// `groupcam finetune --quiet ARGS`, run to its end whatever its exit.
pub fn finetune(args: &[&str]) -> std::process::Output {
    finetune_cmd(args).output().unwrap()
}

/// `finetune`, failing the test with the run's stderr unless it succeeded.
pub fn finetune_ok(args: &[&str]) -> std::process::Output {
    let out = finetune(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A run directory's history.json: one object per epoch.
pub fn history(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("history.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A safetensors file's tensors, sorted by name (files list them in any order).
pub fn sorted_tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `dir/data`: the 6 synthetic shape classes at `size` px, `train` training and 2 validation
/// images per class (seed 1).
pub fn tiny_data(dir: &Path, size: u32, train: usize) -> PathBuf {
    let root = dir.join("data");
    let cfg = groupcam::synth::SynthConfig { size, train_per_class: train, val_per_class: 2, seed: 1 };
    groupcam::synth::write(&root, &cfg).unwrap();
    root
}

/// The tests of one file run on parallel threads and libtorch has one default generator: a
/// test that seeds it and expects the same draws again holds this lock, as does every test of
/// that file that draws from it.
pub fn torch_generator() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An IDX file of unsigned bytes (Fashion-MNIST's format): magic 0x0000 08 nd, big-endian
/// dims, the body.
pub fn write_idx(path: &Path, dims: &[u32], body: &[u8]) {
    let mut data = vec![0u8, 0, 0x08, dims.len() as u8];
    for d in dims {
        data.extend_from_slice(&d.to_be_bytes());
    }
    data.extend_from_slice(body);
    std::fs::write(path, data).unwrap();
}
