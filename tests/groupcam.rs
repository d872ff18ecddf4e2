//! Group-CAM computes what the foundation issue specifies: compared with a PyTorch reference
//! (tests/py/fixtures.py, one image and one group at a time) on the real EfficientNet-Lite0.

mod common;

use common::*;
use groupcam::cam::Explainer;
use groupcam::cam::{GroupCam, Variant};
use groupcam::models::{Arch, CamModel, Model};
use groupcam::ops::Blur;
use groupcam::{imageio, ops};
use tch::{Device, Kind, Tensor};

fn effnet() -> Model {
    Model::load(Arch::EfficientNetLite0, &effnet_weights(), Device::Cpu).unwrap()
}

fn photo_batch(model: &Model, names: &[&str]) -> Tensor {
    let paths: Vec<_> = names.iter().map(|n| photo(n)).collect();
    imageio::load_batch(&paths, 224, &model.input_norm()).unwrap().0
}

/// Rust's map and the reference's for one image and settings.
fn compare(model: &Model, x: &Tensor, cam: &GroupCam, with_gradcam: bool) -> (Tensor, Tensor, Option<Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.npy");
    x.write_npy(&input).unwrap();
    let ours = cam.explain(model, x, None).unwrap();
    let out = dir.path().join("ref.npy");
    let gc = dir.path().join("gradcam.npy");
    let groups = cam.groups.to_string();
    let variant = match cam.variant {
        Variant::Official => "official",
        Variant::Paper => "paper",
    };
    let denoise = cam.denoise.map(|d| d.to_string());
    let weights = effnet_weights();
    let mut args = vec!["groupcam", "--weights", s(&weights), "--input", s(&input), "--groups", &groups];
    args.extend(["--variant", variant, "--out", s(&out)]);
    if let Some(d) = &denoise {
        args.extend(["--denoise", d]);
    }
    if with_gradcam {
        args.extend(["--gradcam-out", s(&gc)]);
    }
    py(&args);
    (ours.maps.get(0), npy(&out), with_gradcam.then(|| npy(&gc)))
}

#[test]
fn official_variant_equals_reference() {
    let model = effnet();
    let x = photo_batch(&model, &["coffee.png"]);
    let (ours, want, _) = compare(&model, &x, &GroupCam::default(), false);
    let d = max_abs_diff(&ours, &want);
    eprintln!("official G=32: max|d| = {d:.2e}");
    assert!(d < 1e-4, "official map differs from the reference by {d}");
}

#[test]
fn paper_variant_with_denoise_and_uneven_groups_equals_reference() {
    let model = effnet();
    let x = photo_batch(&model, &["chelsea.png"]);
    // 1280 channels in 24 groups: torch.chunk makes 24 groups of 54 and a last of 38.
    let cam = GroupCam { groups: 24, denoise: Some(70.0), variant: Variant::Paper, ..Default::default() };
    let (ours, want, _) = compare(&model, &x, &cam, false);
    let d = max_abs_diff(&ours, &want);
    eprintln!("paper G=24 theta=70: max|d| = {d:.2e}");
    assert!(d < 1e-4, "paper map differs from the reference by {d}");
}

#[test]
fn one_group_without_denoise_is_gradcam() {
    let model = effnet();
    let x = photo_batch(&model, &["coffee.png"]);
    for variant in [Variant::Official, Variant::Paper] {
        let cam = GroupCam { groups: 1, variant, ..Default::default() };
        let (ours, _, gradcam) = compare(&model, &x, &cam, true);
        let d = max_abs_diff(&ours, &gradcam.unwrap());
        eprintln!("{variant:?} G=1 vs Grad-CAM: max|d| = {d:.2e}");
        assert!(d < 1e-4, "G=1 differs from Grad-CAM by {d}");
    }
}

#[test]
fn a_batch_equals_its_images_one_by_one() {
    let model = effnet();
    let x = photo_batch(&model, &["coffee.png", "chelsea.png"]);
    // A chunk of 5 splits the 2 x 33 scoring inputs across image boundaries.
    let cam = GroupCam { groups: 32, chunk: Some(5), ..Default::default() };
    let both = cam.explain(&model, &x, Some(&[967, 285])).unwrap();
    for (i, c) in [967i64, 285].into_iter().enumerate() {
        let one = cam.explain(&model, &x.narrow(0, i as i64, 1), Some(&[c])).unwrap();
        let d = max_abs_diff(&both.maps.get(i as i64), &one.maps.get(0));
        assert!(d < 1e-5, "image {i}: batched map differs from the single one by {d}");
        assert_eq!(both.classes[i], c);
    }
}

#[test]
fn the_espresso_map_peaks_on_the_cup() {
    let model = effnet();
    let x = photo_batch(&model, &["coffee.png"]);
    let exp = GroupCam::default().explain(&model, &x, None).unwrap();
    assert_eq!(exp.classes[0], 967, "top-1 of the espresso photo");
    let map = exp.maps.get(0);
    let peak = map.flatten(0, -1).argmax(0, false).int64_value(&[]);
    let (row, col) = (peak / 224, peak % 224);
    // The cup (rim to bottom) in the 224 centre crop, measured on the photo; the saucer and
    // the spoon lie outside it.
    assert!((20..=140).contains(&row) && (25..=200).contains(&col), "peak at row {row}, col {col} is off the cup");
    // Nothing is NaN and the map spans [0, 1].
    assert_eq!(map.isnan().any().int64_value(&[]), 0);
    assert!((map.max().double_value(&[]) - 1.0).abs() < 1e-6 && map.min().double_value(&[]).abs() < 1e-6);
}

#[test]
fn the_blur_equals_kornia() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(3);
    let x = Tensor::randn([2, 3, 60, 70], (Kind::Float, Device::Cpu));
    let input = dir.path().join("x.npy");
    x.write_npy(&input).unwrap();
    for (blur, k, sg, border) in [(Blur::GROUP_CAM, "51", "50", "reflect"), (Blur::RISE, "11", "5", "constant")] {
        let out = dir.path().join(format!("blur{k}.npy"));
        py(&["blur", "--input", s(&input), "--ksize", k, "--sigma", sg, "--border", border, "--out", s(&out)]);
        let d = max_abs_diff(&blur.apply(&x).unwrap(), &npy(&out));
        assert!(d < 1e-5, "blur k={k} differs from kornia's by {d}");
    }
}

#[test]
fn constant_and_nan_maps_are_flagged_not_nan() {
    let raw = Tensor::stack(
        &[
            Tensor::full([4, 4], 2.0, (Kind::Float, Device::Cpu)),
            Tensor::full([4, 4], f64::NAN, (Kind::Float, Device::Cpu)),
            Tensor::arange(16, (Kind::Float, Device::Cpu)).view([4, 4]),
        ],
        0,
    );
    let (m, constant) = ops::minmax(&raw);
    assert_eq!(Vec::<bool>::try_from(constant).unwrap(), vec![true, true, false]);
    assert_eq!(m.isnan().any().int64_value(&[]), 0);
    assert_eq!(m.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert!((m.get(2).max().double_value(&[]) - 1.0).abs() < 1e-7);
}

#[test]
fn out_of_range_settings_are_errors() {
    let model = effnet();
    let x = photo_batch(&model, &["coffee.png"]);
    let err = |cam: GroupCam, cls: Option<&[i64]>| cam.explain(&model, &x, cls).unwrap_err().to_string();
    assert!(err(GroupCam { groups: 1281, ..Default::default() }, None).contains("1280 channels"));
    assert!(err(GroupCam { groups: 0, ..Default::default() }, None).contains("groups"));
    assert!(err(GroupCam::default(), Some(&[1000])).contains("class 1000 is out of range"));
    assert!(err(GroupCam { denoise: Some(120.0), ..Default::default() }, None).contains("percentile"));
    let small = x.narrow(2, 0, 20).narrow(3, 0, 20);
    let e = GroupCam::default().explain(&model, &small, None).unwrap_err().to_string();
    assert!(e.contains("too small for the blur"), "{e}");
}
