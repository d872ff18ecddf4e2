//! The baselines compute what their PyTorch references compute (tests/py/baselines.py, written
//! from pytorch-grad-cam and the authors' code) on the real EfficientNet-Lite0 and the committed
//! photos; RISE's masks follow the RISE recipe.

mod common;

use std::process::Command;

use common::*;
use groupcam::cam::Explainer;
use groupcam::cam::gradcam::GradCam;
use groupcam::cam::gradcampp::GradCamPlusPlus;
use groupcam::cam::methods::{METHODS, by_name};
use groupcam::cam::rise::Rise;
use groupcam::cam::scorecam::ScoreCam;
use groupcam::imageio;
use groupcam::models::{Arch, CamModel, Model};
use tch::{Device, Kind, Tensor};

fn effnet() -> Model {
    Model::load(Arch::EfficientNetLite0, &effnet_weights(), Device::Cpu).unwrap()
}

fn input(model: &Model, photo_name: &str, size: u32) -> Tensor {
    imageio::load_batch(&[photo(photo_name)], size, &model.input_norm()).unwrap().0
}

/// Runs tests/py/baselines.py `method` on `x` and returns its map.
fn reference(method: &str, x: &Tensor, extra: &[&str]) -> Tensor {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("x.npy"), dir.path().join("map.npy"));
    x.write_npy(&inp).unwrap();
    let w = effnet_weights();
    let o = Command::new(python())
        .arg(root().join("tests/py/baselines.py"))
        .args([method, "--weights", s(&w), "--input", s(&inp), "--out", s(&out)])
        .args(extra)
        .output()
        .expect("cannot run the venv's python: run `make venv` first");
    assert!(o.status.success(), "baselines.py {method} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    npy(&out)
}

fn compare(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let d = max_abs_diff(got, want);
    eprintln!("{name}: max|d| {d:.2e}");
    assert!(d <= tol, "{name}: maps differ from PyTorch by {d}");
    // Not a degenerate pass: the map has structure.
    assert!(want.std(true).double_value(&[]) > 0.05, "{name}: reference map is nearly flat");
}

#[test]
fn gradcam_equals_pytorch() {
    let model = effnet();
    for p in ["coffee.png", "chelsea.png"] {
        let x = input(&model, p, 224);
        let got = GradCam.explain(&model, &x, None).unwrap();
        compare(&format!("gradcam {p}"), &got.maps.get(0), &reference("gradcam", &x, &[]), 1e-4);
    }
}

#[test]
fn gradcampp_equals_pytorch() {
    let model = effnet();
    for p in ["coffee.png", "chelsea.png"] {
        let x = input(&model, p, 224);
        let got = GradCamPlusPlus.explain(&model, &x, None).unwrap();
        compare(&format!("gradcam++ {p}"), &got.maps.get(0), &reference("gradcampp", &x, &[]), 1e-4);
    }
}

#[test]
fn gradcampp_differs_from_gradcam() {
    let model = effnet();
    let x = input(&model, "coffee.png", 224);
    let a = GradCam.explain(&model, &x, None).unwrap().maps;
    let b = GradCamPlusPlus.explain(&model, &x, None).unwrap().maps;
    assert!(max_abs_diff(&a, &b) > 1e-2, "Grad-CAM++ gave Grad-CAM's map");
}

#[test]
fn scorecam_equals_pytorch() {
    // 96 px keeps the reference's one-forward-per-channel loop short (1280 channels).
    let model = effnet();
    let x = input(&model, "chelsea.png", 96);
    let got = ScoreCam { chunk: Some(16) }.explain(&model, &x, None).unwrap();
    compare("scorecam", &got.maps.get(0), &reference("scorecam", &x, &[]), 1e-4);
}

#[test]
fn scorecam_batch_equals_single_images() {
    let model = effnet();
    let x = Tensor::cat(&[input(&model, "coffee.png", 96), input(&model, "chelsea.png", 96)], 0);
    let cam = ScoreCam { chunk: Some(5) };
    let both = cam.explain(&model, &x, Some(&[967, 285])).unwrap();
    for i in 0..2 {
        let one = cam.explain(&model, &x.narrow(0, i, 1), Some(&[[967, 285][i as usize]])).unwrap();
        assert!(max_abs_diff(&both.maps.get(i), &one.maps.get(0)) < 1e-5);
    }
}

#[test]
fn rise_equals_pytorch_on_the_same_masks() {
    let model = effnet();
    let x = input(&model, "coffee.png", 128);
    let rise = Rise { masks: 48, cells: 8, keep: 0.5, seed: 7, chunk: Some(5) };
    let got = rise.explain(&model, &x, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let masks = dir.path().join("masks.npy");
    rise.generate(128, 128, Device::Cpu).unwrap().write_npy(&masks).unwrap();
    let want = reference("rise", &x, &["--masks", s(&masks), "--keep", "0.5"]);
    compare("rise", &got.maps.get(0), &want, 1e-4);
}

#[test]
fn rise_masks_follow_the_recipe() {
    let rise = Rise { masks: 400, cells: 7, keep: 0.3, seed: 1, chunk: None };
    let m = rise.generate(64, 80, Device::Cpu).unwrap();
    assert_eq!(m.size(), [400, 1, 64, 80]);
    let (lo, hi) = (m.min().double_value(&[]), m.max().double_value(&[]));
    assert!(lo >= 0.0 && hi <= 1.0 && hi > 0.99 && lo < 0.01, "masks span [{lo}, {hi}]");
    let mean = m.mean(Kind::Float).double_value(&[]);
    assert!((mean - 0.3).abs() < 0.03, "mean mask value {mean}, keep probability 0.3");
    // Smooth: neighbouring pixels differ by at most one cell's linear ramp (cell = 10 and 12 px).
    let dy = (m.narrow(2, 1, 63) - m.narrow(2, 0, 63)).abs().max().double_value(&[]);
    assert!(dy <= 1.0 / 10.0 + 1e-6, "vertical step {dy}");
    // Seeded: the same seed gives the same masks, another seed others.
    assert!(max_abs_diff(&m, &rise.generate(64, 80, Device::Cpu).unwrap()) == 0.0);
    let other = Rise { seed: 2, ..rise }.generate(64, 80, Device::Cpu).unwrap();
    assert!(max_abs_diff(&m, &other) > 0.5);
    // Shifts: the masks do not all start on the same cell boundary.
    let firsts: std::collections::HashSet<i64> =
        (0..40).map(|i| (m.get(i).get(0).get(0).double_value(&[0]) * 1e6) as i64).collect();
    assert!(firsts.len() > 2);
}

#[test]
fn rise_bad_settings_are_named() {
    let model = effnet();
    let x = Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let e = Rise { keep: 0.0, ..Default::default() }.explain(&model, &x, None).unwrap_err();
    assert!(format!("{e:#}").contains("keep probability"), "{e:#}");
    let e = Rise { masks: 0, ..Default::default() }.explain(&model, &x, None).unwrap_err();
    assert!(format!("{e:#}").contains("mask"), "{e:#}");
}

#[test]
fn methods_by_name() {
    let model = effnet();
    let x = input(&model, "chelsea.png", 96);
    for name in METHODS {
        let m = by_name(name, Some(8)).unwrap();
        assert_eq!(m.name(), name);
        if name == "rise" || name == "scorecam" {
            continue; // explained above, at their own sizes
        }
        let e = m.explain(&model, &x, Some(&[285])).unwrap();
        assert_eq!(e.maps.size(), [1, 96, 96]);
        assert_eq!(e.classes, [285]);
    }
    assert_eq!(by_name("Grad-CAM++", None).unwrap().name(), "gradcampp");
    let e = by_name("lime", None).err().unwrap();
    assert!(format!("{e}").contains("unknown method 'lime'") && format!("{e}").contains("scorecam"));
    let _ = model.num_classes();
}
