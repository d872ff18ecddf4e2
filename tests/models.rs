//! The models compute what their PyTorch originals compute: random weights from torchvision
//! (or efficientnet-lite-pytorch) saved with torch.save and as safetensors, on random inputs.

mod common;

use common::*;
use groupcam::models::{Arch, CamModel, Model};
use tch::Device;

fn parity(arch: &str, size: i64) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py(&["model", "--arch", arch, "--size", &size.to_string(), "--out", s(d)]);
    let x = npy(&d.join("input.npy"));
    let want_logits = npy(&d.join("logits.npy"));
    let want_feats = npy(&d.join("features.npy"));
    for file in ["weights.pth", "weights.safetensors"] {
        let model = Model::load(arch.parse::<Arch>().unwrap(), &d.join(file), Device::Cpu).unwrap();
        let feats = tch::no_grad(|| model.features_t(&x, false));
        let logits = tch::no_grad(|| model.head_t(&feats, false));
        let scale = want_feats.abs().max().double_value(&[]).max(1.0);
        let df = max_abs_diff(&feats, &want_feats);
        let dl = max_abs_diff(&logits, &want_logits);
        eprintln!("{arch} {file}: features max|d| {df:.2e} (scale {scale:.1}), logits max|d| {dl:.2e}");
        assert!(df <= 1e-4 * scale, "{arch} {file}: features differ by {df}");
        assert!(dl <= 1e-4, "{arch} {file}: logits differ by {dl}");
    }
}

#[test]
fn resnet18_equals_torchvision() {
    parity("resnet18", 64);
}

#[test]
fn resnet34_equals_torchvision() {
    parity("resnet34", 64);
}

#[test]
fn resnet50_equals_torchvision() {
    parity("resnet50", 64);
}

#[test]
fn resnet101_equals_torchvision() {
    parity("resnet101", 64);
}

#[test]
fn resnet152_equals_torchvision() {
    parity("resnet152", 64);
}

#[test]
fn vgg16_equals_torchvision() {
    parity("vgg16", 64);
}

#[test]
fn vgg19_equals_torchvision() {
    parity("vgg19", 64);
}

#[test]
fn efficientnet_lite0_equals_efficientnet_lite_pytorch() {
    // 72 is not a multiple of 32, so TF "same" padding is exercised on odd sizes too.
    parity("efficientnet-lite0", 72);
}

#[test]
fn real_efficientnet_lite0_equals_pytorch_on_the_photos() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(Arch::EfficientNetLite0, &effnet_weights(), Device::Cpu).unwrap();
    let paths = [photo("coffee.png"), photo("chelsea.png")];
    let (x, _) = groupcam::imageio::load_batch(&paths, 224, &model.input_norm()).unwrap();
    let input = dir.path().join("x.npy");
    let out = dir.path().join("logits.npy");
    x.write_npy(&input).unwrap();
    py(&["effnet-logits", "--weights", s(&effnet_weights()), "--input", s(&input), "--out", s(&out)]);
    let logits = tch::no_grad(|| model.logits_eval(&x));
    let d = max_abs_diff(&logits, &npy(&out));
    eprintln!("real EfficientNet-Lite0 on the photos: logits max|d| {d:.2e}");
    assert!(d <= 1e-4, "logits differ by {d}");
    assert_eq!(logits.get(0).argmax(0, false).int64_value(&[]), 967, "the espresso photo's top-1");
}
