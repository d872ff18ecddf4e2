//! The command line end to end: real photos, real weights, and bad input.

mod common;

use common::*;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bin().args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn predict_names_the_espresso() {
    let w = effnet_weights();
    let (ok, stdout, stderr) = run(&[
        "--device",
        "cpu",
        "predict",
        "--arch",
        "efficientnet-lite0",
        "--weights",
        s(&w),
        "--image",
        s(&photo("coffee.png")),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v[0]["top"][0]["class"], 967);
    assert_eq!(v[0]["top"][0]["name"], "espresso");
    assert_eq!(v[0]["top"].as_array().unwrap().len(), 5);
}

#[test]
fn explain_writes_an_overlay_and_a_float32_map_per_image() {
    let w = effnet_weights();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("maps");
    let (ok, _, stderr) = run(&[
        "explain",
        "--arch",
        "efficientnet-lite0",
        "--weights",
        s(&w),
        "--image",
        s(&photo("coffee.png")),
        s(&photo("chelsea.png")),
        "--groups",
        "8",
        "--out",
        s(&out),
    ]);
    assert!(ok, "{stderr}");
    for stem in ["coffee", "chelsea"] {
        let png = image::open(out.join(format!("{stem}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (224, 224));
        let map = npy(&out.join(format!("{stem}.npy")));
        assert_eq!(map.size(), vec![224, 224]);
        assert_eq!(map.kind(), tch::Kind::Float);
        assert!((map.max().double_value(&[]) - 1.0).abs() < 1e-6);
    }
}

/// Each bad input fails with a message naming the cause, and writes nothing.
#[test]
fn bad_input_fails_clearly_and_leaves_no_output() {
    let w = effnet_weights();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corrupt = d.join("corrupt.png");
    let mut bytes = std::fs::read(photo("coffee.png")).unwrap();
    bytes.truncate(300);
    std::fs::write(&corrupt, bytes).unwrap();
    let tiny = d.join("tiny.png");
    image::RgbImage::from_pixel(20, 20, image::Rgb([9, 99, 199])).save(&tiny).unwrap();
    let r18 = d.join("r18.safetensors");
    groupcam::models::weights::save_safetensors(
        &groupcam::Model::new(groupcam::Arch::Resnet18, 1000, tch::Device::Cpu).vs,
        &r18,
    )
    .unwrap();
    let coffee = photo("coffee.png");
    let missing = d.join("missing.jpg");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--arch", "efficientnet-lite0", "--weights", s(&w), "--image", s(&coffee), s(&corrupt)], "corrupt.png"),
        (vec!["--arch", "efficientnet-lite0", "--weights", s(&w), "--image", s(&missing)], "missing.jpg"),
        (
            vec!["--arch", "efficientnet-lite0", "--weights", s(&r18), "--image", s(&coffee)],
            "not a efficientnet-lite0 state dict",
        ),
        (
            vec!["--arch", "efficientnet-lite0", "--weights", s(&w), "--image", s(&coffee), "--class", "1000"],
            "class 1000 is out of range",
        ),
        (
            vec!["--arch", "efficientnet-lite0", "--weights", s(&w), "--image", s(&coffee), "--groups", "2000"],
            "1280 channels",
        ),
        (
            vec!["--arch", "efficientnet-lite0", "--weights", s(&w), "--image", s(&tiny), "--input-size", "20"],
            "too small for the blur",
        ),
        (vec!["--arch", "resnet9", "--weights", s(&w), "--image", s(&coffee)], "unknown architecture 'resnet9'"),
    ];
    for (i, (args, want)) in cases.into_iter().enumerate() {
        let out = d.join(format!("out{i}"));
        let mut all = vec!["explain"];
        all.extend(args);
        all.extend(["--out", s(&out)]);
        let (ok, _, stderr) = run(&all);
        assert!(!ok, "case {i} should fail");
        assert!(stderr.contains(want), "case {i}: stderr does not name '{want}':\n{stderr}");
        assert!(!out.exists(), "case {i} left output behind");
    }
}

#[test]
fn doctor_reports_libtorch_and_devices() {
    let (ok, stdout, _) = run(&["doctor"]);
    assert!(ok);
    assert!(stdout.contains("libtorch 2.11.0"), "{stdout}");
    assert!(stdout.contains("cuda available:") && stdout.contains("cpu threads:"), "{stdout}");
}
