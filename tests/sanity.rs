//! Sanity checks (Adebayo et al.): the layers every architecture randomises, the randomiser's
//! bookkeeping, and Group-CAM's maps losing their likeness to the trained model's as the real
//! EfficientNet-Lite0 is randomised.

mod common;

use common::*;
use groupcam::cam::Explainer;
use groupcam::cam::GroupCam;
use groupcam::cam::gradcam::GradCam;
use groupcam::eval::insdel::argmax_classes;
use groupcam::eval::sanity::{self, Randomization, Randomizer, mean_defined};
use groupcam::imageio;
use groupcam::models::{Arch, CamModel, Model};
use tch::{Device, Tensor};

fn equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}

/// The Randomizer seeds torch's global generator and then draws from it: tests of this file that
/// ran at once in one process drew from each other's sequence (a layer re-drawn differently,
/// failing now one test, now another). They take turns.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn every_architecture_splits_into_layers_that_own_each_variable_once() {
    let _one = one_at_a_time();
    // A conv with its BatchNorm, each residual/MBConv block, each linear layer.
    let want = [
        (Arch::Resnet18, 10),
        (Arch::Resnet34, 18),
        (Arch::Resnet50, 18),
        (Arch::Resnet101, 35),
        (Arch::Resnet152, 52),
        (Arch::Vgg16, 16),
        (Arch::Vgg19, 19),
        (Arch::EfficientNetLite0, 19),
    ];
    for (arch, n) in want {
        let model = Model::new(arch, 5, Device::Cpu);
        // `Randomizer::new` fails when a variable has no layer or several.
        let r = Randomizer::new(&model, 0).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let names: Vec<&str> = r.layers().iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names.len(), n, "{arch}: {names:?}");
        let last = *names.last().unwrap();
        assert!(["fc", "classifier.6", "_fc"].contains(&last), "{arch}: the top layer is {last}");
    }
    let vgg = Model::new(Arch::Vgg19, 5, Device::Cpu);
    let names: Vec<String> = vgg.layers().into_iter().map(|l| l.name).collect();
    assert_eq!(&names[..5], ["features.0", "features.2", "features.5", "features.7", "features.10"]);
    assert_eq!(names[15], "features.34", "the last conv of VGG19");
}

/// A model whose every variable (BatchNorm statistics too) differs from a fresh initialisation.
fn trained_looking(arch: Arch) -> Model {
    let model = Model::new(arch, 5, Device::Cpu);
    tch::no_grad(|| {
        for (_, mut t) in model.vs.variables() {
            let _ = t.copy_(&(t.rand_like() + 0.5));
        }
    });
    model
}

#[test]
fn set_randomises_exactly_the_layers_asked_and_leaves_the_model_alone() {
    let _one = one_at_a_time();
    let model = trained_looking(Arch::Resnet18);
    let before = model.vs.variables();
    let mut r = Randomizer::new(&model, 3).unwrap();
    let layers = r.layers().to_vec();
    let pick = [layers.len() - 1, 4]; // fc and layer2.1
    let work = r.set(&pick).unwrap().vs.variables();
    let mut changed = 0;
    for (name, t) in &work {
        let randomised = pick.iter().any(|&i| layers[i].owns(name));
        let same = equal(t, &before[name]);
        assert_eq!(same, !randomised, "{name}: randomised {randomised} but equal to the trained value {same}");
        changed += randomised as usize;
    }
    assert!(changed >= 2 + 10, "fc (2) and a basic block (10) should change, {changed} did");
    for (name, t) in model.vs.variables() {
        assert!(equal(&t, &before[&name]), "the trained model's {name} was written");
    }
    // Back to trained, then the same seed draws the same random values.
    let work = r.set(&[]).unwrap().vs.variables();
    assert!(work.iter().all(|(n, t)| equal(t, &before[n])));
    let a = Randomizer::new(&model, 3).unwrap().set(&pick).unwrap().vs.variables()["fc.weight"].copy();
    let b = Randomizer::new(&model, 3).unwrap().set(&pick).unwrap().vs.variables()["fc.weight"].copy();
    let c = Randomizer::new(&model, 4).unwrap().set(&pick).unwrap().vs.variables()["fc.weight"].copy();
    assert!(equal(&a, &b) && !equal(&a, &c));
}

#[test]
fn group_cam_maps_lose_their_likeness_under_cascade_randomisation() {
    let _one = one_at_a_time();
    let model = Model::load(Arch::EfficientNetLite0, &effnet_weights(), Device::Cpu).unwrap();
    let (x, _) = imageio::load_batch(&[photo("chelsea.png"), photo("coffee.png")], 224, &model.input_norm()).unwrap();
    let classes = argmax_classes(&model, &x).unwrap();
    let cam = GroupCam { groups: 16, ..Default::default() };
    let reference = cam.explain(&model, &x, Some(&classes)).unwrap().maps;
    let mut r = Randomizer::new(&model, 0).unwrap();
    // The same model gives the same maps: a correlation of 1.
    let again = cam.explain(r.set(&[]).unwrap(), &x, Some(&classes)).unwrap().maps;
    for v in sanity::compare(&reference, &again).unwrap() {
        assert!(v.unwrap() > 0.999, "{v:?}");
    }
    let steps = sanity::run(&mut r, &cam, &x, &classes, &reference, Randomization::Cascade).unwrap();
    assert_eq!(steps.len(), 19);
    assert_eq!(steps[0].label, "_fc");
    assert_eq!(steps[18].randomized.len(), 19);
    let means: Vec<f64> = steps.iter().map(|s| mean_defined(&s.spearman).unwrap_or(0.0)).collect();
    eprintln!("cascade mean Spearman by step: {:?}", means.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>());
    // The fully randomised network's maps are far from the trained one's (measured ~0.1-0.3),
    // and the trained network's top-1 is gone.
    assert!(means[18] < 0.5, "after randomising every layer the maps still correlate at {:.3}", means[18]);
    assert!(steps[18].same_prediction.iter().all(|s| !s));
}

#[test]
fn independent_randomisation_changes_one_layer_at_a_time() {
    let _one = one_at_a_time();
    let model = Model::new(Arch::Resnet18, 4, Device::Cpu);
    let x = Tensor::randn([1, 3, 64, 64], (tch::Kind::Float, Device::Cpu));
    let classes = [2];
    let reference = GradCam.explain(&model, &x, Some(&classes)).unwrap().maps;
    let mut r = Randomizer::new(&model, 1).unwrap();
    let steps = sanity::run(&mut r, &GradCam, &x, &classes, &reference, Randomization::Independent).unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(names[0], "fc");
    assert_eq!(names[9], "conv1");
    assert!(steps.iter().all(|s| s.randomized.len() == 1));
    // Each step's maps are those of the trained model with that one layer random.
    let k = 3;
    let mut check = Randomizer::new(&model, 1).unwrap();
    let idx = check.layers().iter().position(|l| l.name == steps[k].label).unwrap();
    let direct = GradCam.explain(check.set(&[idx]).unwrap(), &x, Some(&classes)).unwrap().maps;
    assert!(max_abs_diff(&direct, &steps[k].maps) < 1e-6);
}

#[test]
fn cli_sanity_writes_correlations_and_a_figure() {
    let dir = tempfile::tempdir().unwrap();
    let (json, fig) = (dir.path().join("s.json"), dir.path().join("s.png"));
    let w = effnet_weights();
    let cat = photo("chelsea.png");
    let base = ["sanity", "--arch", "efficientnet-lite0", "--weights", s(&w), "--images", s(&cat)];
    let out = bin()
        .args(["--device", "cpu"])
        .args(base)
        .args(["--methods", "gradcam", "--json", s(&json), "--figure", s(&fig)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| step | layer | cascade | independent |") && stdout.contains("| 1 | _fc |"), "{stdout}");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["layers_input_to_output"].as_array().unwrap().len(), 19);
    let class = j["images"][0]["class"].as_i64().unwrap();
    assert!((281..=285).contains(&class), "the trained model's class {class} is not a domestic cat");
    for mode in ["cascade", "independent"] {
        let steps = j["methods"]["gradcam"][mode].as_array().unwrap();
        assert_eq!(steps.len(), 19);
        assert_eq!(steps[0]["layer"], "_fc");
        let last = &steps[18];
        let n = if mode == "cascade" { 19 } else { 1 };
        assert_eq!(last["randomized"].as_array().unwrap().len(), n);
        let per: Vec<Option<f64>> = serde_json::from_value(last["spearman"].clone()).unwrap();
        assert_eq!(per.len(), 1);
        assert_eq!(last["mean_spearman"].as_f64(), per[0]);
    }
    let png = image::open(&fig).unwrap().to_rgb8();
    // The chart, then one strip (title, captions, 96-pixel tiles) per mode.
    assert!(png.height() > 300 + 2 * 96, "{}x{}", png.width(), png.height());
    assert!(png.width() >= 20 * 96, "a strip of the trained map and 19 steps: {}", png.width());

    let bad = bin().args(base).args(["--modes", "cascade,shuffle", "--json", s(&json)]).output().unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("unknown randomisation 'shuffle'"), "{err}");
}
