//! Weight files: what loads, and what a bad file is told.

mod common;

use common::*;
use groupcam::models::{Arch, CamModel, Model, weights};
use tch::{Device, Kind, Tensor};

fn err(arch: Arch, path: &std::path::Path) -> String {
    format!("{:#}", Model::load(arch, path, Device::Cpu).err().expect("loading should fail"))
}

#[test]
fn a_safetensors_round_trip_keeps_every_value_and_the_class_count() {
    let dir = tempfile::tempdir().unwrap();
    let a = Model::new(Arch::Resnet18, 7, Device::Cpu);
    let p = dir.path().join("r18.safetensors");
    weights::save_safetensors(&a.vs, &p).unwrap();
    let b = Model::load(Arch::Resnet18, &p, Device::Cpu).unwrap();
    assert_eq!(b.num_classes(), 7);
    let x = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let d = max_abs_diff(&tch::no_grad(|| a.logits_eval(&x)), &tch::no_grad(|| b.logits_eval(&x)));
    assert_eq!(d, 0.0);
}

#[test]
fn weights_of_another_architecture_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r18.safetensors");
    weights::save_safetensors(&Model::new(Arch::Resnet18, 10, Device::Cpu).vs, &p).unwrap();
    let e = err(Arch::Resnet50, &p);
    assert!(e.contains("missing tensor(s)") && e.contains("conv3"), "{e}");
    let e = err(Arch::Vgg16, &p);
    assert!(e.contains("no tensor 'classifier.6.weight'") && e.contains("not a vgg16"), "{e}");
}

#[test]
fn a_misshaped_or_extra_tensor_is_named_and_nothing_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::new(Arch::Resnet18, 10, Device::Cpu);
    let mut named: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    for (k, v) in named.iter_mut() {
        if k == "layer2.0.conv1.weight" {
            *v = Tensor::zeros([128, 64, 1, 3], (Kind::Float, Device::Cpu));
        }
    }
    let p = dir.path().join("bad.safetensors");
    Tensor::write_safetensors(&named, &p).unwrap();
    let e = err(Arch::Resnet18, &p);
    assert!(e.contains("'layer2.0.conv1.weight'") && e.contains("[128, 64, 1, 3]"), "{e}");

    named.retain(|(k, _)| k != "layer2.0.conv1.weight");
    named.push(("layer9.weight".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu))));
    let p = dir.path().join("extra.safetensors");
    Tensor::write_safetensors(&named, &p).unwrap();
    let e = err(Arch::Resnet18, &p);
    assert!(e.contains("'layer2.0.conv1.weight'"), "{e}");

    // A failed load leaves the variables as they were.
    let mut target = Model::new(Arch::Resnet18, 10, Device::Cpu);
    let before = target.vs.variables()["fc.weight"].copy();
    let tensors = weights::read(&p).unwrap();
    assert!(weights::assign(&mut target.vs, tensors, &p, Arch::Resnet18).is_err());
    assert_eq!(max_abs_diff(&before, &target.vs.variables()["fc.weight"]), 0.0);
}

#[test]
fn legacy_missing_and_garbage_files_get_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("legacy.pth");
    py(&["legacy", "--out", s(&legacy)]);
    let e = err(Arch::Resnet18, &legacy);
    assert!(e.contains("legacy") && e.contains("torch.save(torch.load("), "{e}");

    let e = err(Arch::Resnet18, &dir.path().join("nope.pth"));
    assert!(e.contains("cannot open weights file") && e.contains("nope.pth"), "{e}");

    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    let e = err(Arch::Resnet18, &junk);
    assert!(e.contains("junk.pth") && e.contains("unrecognised weights format"), "{e}");

    // A zip cut short: the torch.save file of a real model, truncated.
    let full = std::fs::read(effnet_weights()).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let e = err(Arch::EfficientNetLite0, &cut);
    assert!(e.contains("cut.pth"), "{e}");
}

/// Issue 24, case 3: a torch.save archive whose pickle holds a callable, and a plain pickle,
/// are refused naming what was found and the accepted formats; their `__reduce__` (which would
/// create a marker file) never runs.
#[test]
fn weights_files_holding_python_objects_are_named_and_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let (zip, pickle, marker) = (dir.path().join("objects.pth"), dir.path().join("plain.pkl"), dir.path().join("ran"));
    py(&["python-objects", "--zip", s(&zip), "--pickle", s(&pickle), "--marker", s(&marker)]);
    assert!(!marker.exists(), "the fixture itself ran the object");
    let e = err(Arch::Resnet18, &zip);
    assert!(e.contains("objects.pth") && e.contains("a Python object (io.open)"), "{e}");
    assert!(e.contains("runs no code") && e.contains(".safetensors"), "{e}");
    let e = err(Arch::Resnet18, &pickle);
    assert!(e.contains("plain.pkl") && e.contains("plain Python pickle") && e.contains(".safetensors"), "{e}");
    let out = bin()
        .args([
            "explain",
            "--arch",
            "resnet18",
            "--weights",
            s(&zip),
            "--image",
            s(&root().join("tests/data/chelsea.png")),
        ])
        .args(["--out", s(&dir.path().join("maps"))])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("io.open"));
    assert!(!marker.exists(), "loading a weights file ran its Python object");
}

#[test]
fn torchvision_state_dicts_load_with_num_batches_tracked() {
    // fixtures.py saves model.state_dict() with torch.save: num_batches_tracked included.
    let dir = tempfile::tempdir().unwrap();
    py(&["model", "--arch", "resnet18", "--classes", "5", "--out", s(dir.path())]);
    let m = Model::load(Arch::Resnet18, &dir.path().join("weights.pth"), Device::Cpu).unwrap();
    assert_eq!(m.num_classes(), 5);
}
