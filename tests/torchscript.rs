//! Any model through TorchScript: archives exported by the README's recipes (run by
//! tests/py/fixtures.py `script-models`, once for this file) against PyTorch and against the
//! built-in ResNet-50; bad archives; sanity layers; class-count changes.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use groupcam::augment::GroupCamAugment;
use groupcam::cam::{Explainer, GroupCam};
use groupcam::eval::sanity::Randomizer;
use groupcam::models::{Arch, CamModel, HeadSpec, Model};
use groupcam::train::sgd::Sgd;
use groupcam::train::{LossScaler, StepResult, Trainer};
use tch::{Device, Kind, Tensor};

/// The exported archives and their references, made once per run of this file.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("torchscript-fixtures");
        let _ = std::fs::remove_dir_all(&dir);
        let readme = root().join("README.md");
        py(&["script-models", "--readme", s(&readme), "--classes", "6", "--out", s(&dir)]);
        dir
    })
}

fn scripted(name: &str) -> Model {
    Model::load(Arch::TorchScript, &fixtures().join(format!("{name}.pt")), Device::Cpu).unwrap()
}

fn trainer(model: &Model, momentum: f64, wd: f64) -> Trainer {
    Trainer {
        sgd: Sgd::new(&model.vs, momentum, wd),
        scaler: LossScaler::new(),
        amp: None,
        world: groupcam::dist::World::Single,
    }
}

fn pearson(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.flatten(0, -1).to_kind(Kind::Double), b.flatten(0, -1).to_kind(Kind::Double));
    let (a, b) = (&a - a.mean(Kind::Double), &b - b.mean(Kind::Double));
    ((&a * &b).sum(Kind::Double) / ((&a * &a).sum(Kind::Double) * (&b * &b).sum(Kind::Double)).sqrt()).double_value(&[])
}

#[test]
fn scripted_cnns_and_a_vit_give_pytorchs_logits_and_maps() {
    for name in ["mobilenet_v3_large", "convnext_tiny", "vit"] {
        let model = scripted(name);
        let x = npy(&fixtures().join(format!("{name}-input.npy")));
        let logits = tch::no_grad(|| model.logits_eval(&x));
        let d = max_abs_diff(&logits, &npy(&fixtures().join(format!("{name}-logits.npy"))));
        eprintln!("{name}: max|logits - PyTorch| = {d:.2e}");
        assert!(d < 1e-4, "{name}: logits differ from PyTorch's by {d}");
        assert_eq!(model.num_classes(), 6);

        let cls = npy(&fixtures().join(format!("{name}-class.npy"))).int64_value(&[0]);
        let cam = GroupCam { groups: 8, ..Default::default() };
        let exp = cam.explain(&model, &x.narrow(0, 0, 1), Some(&[cls])).unwrap();
        let r = pearson(&exp.maps.get(0), &npy(&fixtures().join(format!("{name}-map.npy"))));
        eprintln!("{name}: Group-CAM r = {r:.6}");
        assert!(r >= 0.999, "{name}: Group-CAM map correlates {r} with PyTorch's");

        let prep = model.preprocessing();
        assert!(prep.from_module, "{name}: the recipe's mean/std attributes were not read");
        assert_eq!(prep.input_size, Some(x.size()[2]), "{name}: input_size attribute");
        let want_mean = if name == "vit" { [0.5; 3] } else { [0.485, 0.456, 0.406] };
        assert_eq!(prep.norm.mean, want_mean, "{name}");
        assert!(model.concurrent().is_some(), "{name}: the recipe's concurrent_eval was not read");
    }
}

/// The same ResNet-50 weights, built in and as TorchScript: the same maps, augmentation masks
/// and training steps (with their BatchNorm statistics).
#[test]
fn builtin_and_scripted_resnet50_agree() {
    let dir = fixtures();
    let builtin = Model::load(Arch::Resnet50, &dir.join("resnet50.pth"), Device::Cpu).unwrap();
    let script = scripted("resnet50");
    let x = npy(&dir.join("resnet50-input.npy"));
    let (fa, fb) = tch::no_grad(|| (builtin.features(&x), script.features(&x)));
    eprintln!(
        "resnet50 features: max|built-in - scripted| = {:.2e} of max {:.2e}",
        max_abs_diff(&fa, &fb),
        fa.abs().max().double_value(&[])
    );
    // One scoring forward for both: the built-in model would otherwise score in lanes of 2
    // images, whose float sums differ from one forward's in the last bits.
    let cam = GroupCam { groups: 16, chunk: Some(64), ..Default::default() };
    let (a, b) = (cam.explain(&builtin, &x, None).unwrap(), cam.explain(&script, &x, None).unwrap());
    assert_eq!(a.classes, b.classes);
    let d = max_abs_diff(&a.maps, &b.maps);
    eprintln!("resnet50 maps: max|built-in - scripted| = {d:.2e}");
    assert!(d < 1e-5, "maps differ by {d}");

    let y = Tensor::from_slice(&[1i64, 4]);
    let aug = GroupCamAugment { groups: 16, ..Default::default() };
    tch::manual_seed(3);
    let ma = aug.augment(&builtin, &x, &y).unwrap();
    tch::manual_seed(3);
    let mb = aug.augment(&script, &x, &y).unwrap();
    let (pa, pb) = (ma.masks.gt(0.5), mb.masks.gt(0.5));
    let inter = pa.logical_and(&pb).sum(Kind::Float).double_value(&[]);
    let union = pa.logical_or(&pb).sum(Kind::Float).double_value(&[]).max(1.0);
    eprintln!("resnet50 augmentation masks: IoU {:.4}", inter / union);
    assert!(inter / union >= 0.99, "mask IoU {}", inter / union);
    assert!(ma.stats.augmented() > 0, "nothing was augmented: the comparison means nothing");

    let mut losses = Vec::new();
    for model in [&builtin, &script] {
        let mut trainer = trainer(model, 0.9, 1e-4);
        model.set_training(true);
        let mut l = Vec::new();
        for i in 0..2 {
            match trainer.step(model, &x, &y, 0.05).unwrap() {
                StepResult::Done { loss, .. } => l.push(loss),
                _ => panic!("step {i} did not complete"),
            }
        }
        model.set_training(false);
        l.push(tch::no_grad(|| model.logits_eval(&x)).abs().sum(Kind::Double).double_value(&[]));
        losses.push((l, tch::no_grad(|| model.logits_eval(&x))));
    }
    let ((la, xa), (lb, xb)) = (&losses[0], &losses[1]);
    eprintln!("resnet50 steps: built-in {la:?}, scripted {lb:?}");
    for (p, q) in la.iter().zip(lb) {
        assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "training steps differ: {la:?} vs {lb:?}");
    }
    let d = max_abs_diff(xa, xb);
    assert!(d < 1e-4, "eval logits after two steps (weights and BatchNorm statistics) differ by {d}");
    assert!(la[0] != la[1], "the step changed nothing");
}

#[test]
fn bad_archives_are_named() {
    let err = |name: &str| {
        let p = fixtures().join(format!("{name}.pt"));
        format!("{:#}", Model::load(Arch::TorchScript, &p, Device::Cpu).err().expect("loading should fail"))
    };
    let e = err("no-features");
    assert!(e.contains("no-features.pt") && e.contains("no method 'features'"), "{e}");
    let e = err("features-2d");
    assert!(e.contains("features(x)") && e.contains("[2, 3]") && e.contains("4-D"), "{e}");
    let e = err("head-1d");
    assert!(e.contains("head(features(x))") && e.contains("[2]") && e.contains("B x classes"), "{e}");
    // A state dict is not an archive, and an archive is not a state dict.
    let e =
        format!("{:#}", Model::load(Arch::TorchScript, &fixtures().join("resnet50.pth"), Device::Cpu).err().unwrap());
    assert!(e.contains("resnet50.pth"), "{e}");
    let e = format!("{:#}", Model::load(Arch::Resnet50, &fixtures().join("resnet50.pt"), Device::Cpu).err().unwrap());
    assert!(e.contains("is a TorchScript archive") && e.contains("--arch torchscript"), "{e}");
}

#[test]
fn sanity_layers_of_a_scripted_model_are_randomised() {
    let model = scripted("mobilenet_v3_large");
    let layers = model.layers();
    assert_eq!(layers.first().unwrap().name, "body.0", "{layers:?}");
    assert_eq!(layers.last().unwrap().name, "top.2", "{layers:?}");
    assert_eq!(layers.len(), 17 + 1, "16+1 feature blocks and the classifier: {layers:?}");
    let x = npy(&fixtures().join("mobilenet_v3_large-input.npy"));
    let trained = tch::no_grad(|| model.logits_eval(&x));
    let mut r = Randomizer::new(&model, 5).unwrap();
    let same = tch::no_grad(|| r.set(&[]).unwrap().logits_eval(&x));
    assert!(max_abs_diff(&same, &trained) < 1e-6, "nothing randomised must be the trained model");
    let top = tch::no_grad(|| r.set(&[layers.len() - 1]).unwrap().logits_eval(&x));
    assert!(max_abs_diff(&top, &trained) > 1e-3, "randomising the classifier changed nothing");
    // The model the randomizer was made from is untouched.
    assert!(max_abs_diff(&tch::no_grad(|| model.logits_eval(&x)), &trained) == 0.0);
}

#[test]
fn a_scripted_head_resets_to_a_new_class_count() {
    let path = fixtures().join("mobilenet_v3_large.pt");
    let e = format!(
        "{:#}",
        Model::load_with(Arch::TorchScript, &path, Device::Cpu, HeadSpec { num_classes: Some(3), reset: false })
            .err()
            .unwrap()
    );
    assert!(e.contains("6 classes") && e.contains("3 are asked for") && e.contains("'top.2.3.weight'"), "{e}");
    let model = Model::load_with(Arch::TorchScript, &path, Device::Cpu, HeadSpec { num_classes: Some(3), reset: true })
        .unwrap();
    assert_eq!(model.num_classes(), 3);
    assert_eq!(model.vs.variables()["top.2.3.weight"].size(), [3, 1280]);
    let x = npy(&fixtures().join("mobilenet_v3_large-input.npy"));
    let y = Tensor::from_slice(&[0i64, 2]);
    let mut trainer = trainer(&model, 0.9, 0.0);
    model.set_training(true);
    let mut losses = Vec::new();
    for _ in 0..4 {
        if let StepResult::Done { loss, .. } = trainer.step(&model, &x, &y, 0.05).unwrap() {
            losses.push(loss);
        }
    }
    assert!(losses.last().unwrap() < &losses[0], "the reset head does not train: {losses:?}");
}

/// A fine-tuning config for the 1000-way scripted ResNet-18 on `data`: 3 epochs of 2 steps,
/// the first plain pre-training, its head reset to the 6 class folders when `reset`.
fn scripted_config(dir: &Path, data: &Path, out: &str, reset: bool) -> PathBuf {
    let p = dir.join(format!("{out}.yaml"));
    let text = format!(
        "arch: torchscript\n\
         weights: {}\n\
         model: {{reset_head: {reset}}}\n\
         data: {{root: {}, input_size: 48, workers: 2, prefetch: 2}}\n\
         train: {{epochs: 3, batch_size: 6, lr: 0.01, lr_step: 1, lr_gamma: 0.5, seed: 7, device: cpu, threads: 1}}\n\
         pretrain: {{epochs: 1, lr: 0.02}}\n\
         augment: {{groups: 16}}\n\
         saliency: {{probe: 4, groups: 8}}\n\
         out: {}\n",
        fixtures().join("resnet18-1000.pt").display(),
        data.display(),
        dir.join(out).display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// The scripted ResNet-18 (1000 classes) fine-tuned onto the 6 synthetic classes with
/// `reset_head`: refused without it; its BatchNorm statistics are in the checkpoints, so a run
/// killed with SIGKILL and resumed ends bit for bit where the uninterrupted one does; and its
/// `final.safetensors` loads strictly into a fresh scripted copy and into the README's eager
/// `Split` in PyTorch, with the same logits.
#[test]
fn a_scripted_model_finetunes_with_a_reset_head_and_resumes_exactly_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let synth = groupcam::synth::SynthConfig { size: 48, train_per_class: 2, val_per_class: 2, seed: 1 };
    groupcam::synth::write(&data, &synth).unwrap();

    let out = finetune(&["--config", s(&scripted_config(dir.path(), &data, "no-reset", false))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("'top.2.weight' has 1000 classes, but 6 are asked for") && err.contains("reset_head: true"),
        "{err}"
    );

    let straight = scripted_config(dir.path(), &data, "straight", true);
    let out = finetune(&["--config", s(&straight)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("preprocessing:") && stdout.contains("from the module's attributes"), "{stdout}");

    let broken = scripted_config(dir.path(), &data, "broken", true);
    let run = dir.path().join("broken");
    let mut child = bin()
        .args(["finetune", "--quiet", "--config", s(&broken)])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !run.join("history.json").exists() {
        assert!(t0.elapsed().as_secs() < 300, "no checkpoint after 300 s");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!run.join("final.safetensors").exists(), "killed too late to test anything");
    let ckpt = run.join("checkpoints/last.safetensors");
    let bn = "body.1.running_mean";
    let in_ckpt = format!("model/{bn}");
    assert!(sorted_tensors(&ckpt).iter().any(|(k, _)| *k == in_ckpt), "the checkpoint has no BatchNorm statistics");
    let out = finetune(&["--config", s(&broken), "--resume", s(&ckpt)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let final_path = dir.path().join("straight/final.safetensors");
    let (a, b) = (sorted_tensors(&final_path), sorted_tensors(&run.join("final.safetensors")));
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(ta.equal(tb), "tensor {ka} differs after resume");
    }
    // The statistics are trained ones, not the archive's: the comparison covers them.
    let archive = scripted("resnet18-1000");
    let start = &archive.vs.variables()[bn];
    let trained = &a.iter().find(|(k, _)| k == bn).expect("final.safetensors has no BatchNorm statistics").1;
    assert!(max_abs_diff(start, trained) > 1e-4, "the BatchNorm statistics did not move");
    let fc = &a.iter().find(|(k, _)| k == "top.2.weight").unwrap().1;
    assert_eq!(fc.size(), [6, 512]);

    // Strict loads: into a fresh scripted copy (every store variable, no other) and in PyTorch.
    let head = HeadSpec { num_classes: Some(6), reset: true };
    let mut copy =
        Model::load_with(Arch::TorchScript, &fixtures().join("resnet18-1000.pt"), Device::Cpu, head).unwrap();
    let tensors = groupcam::models::weights::read(&final_path).unwrap();
    groupcam::models::weights::assign(&mut copy.vs, tensors, &final_path, Arch::TorchScript).unwrap();
    let x = Tensor::randn([2, 3, 48, 48], (Kind::Float, Device::Cpu));
    let (input, logits) = (dir.path().join("x.npy"), dir.path().join("logits.npy"));
    x.write_npy(&input).unwrap();
    let readme = root().join("README.md");
    let args = ["load-split", "--readme", s(&readme), "--arch", "resnet18", "--classes", "6"];
    py(&[&args[..], &["--weights", s(&final_path), "--input", s(&input), "--out", s(&logits)]].concat());
    let d = max_abs_diff(&tch::no_grad(|| copy.logits_eval(&x)), &npy(&logits));
    eprintln!("scripted ResNet-18 after fine-tuning: max|groupcam - PyTorch| = {d:.2e}");
    assert!(d < 1e-4, "PyTorch's logits of final.safetensors differ by {d}");
}

/// A module whose `state_buffers()` misses its BatchNorm statistics (TorchScript's
/// non-recursive `named_buffers()`) explains, but is refused for fine-tuning, by name.
#[test]
fn state_a_checkpoint_would_miss_is_named() {
    scripted("resnet18-1000").check_checkpointable().unwrap();
    let model = scripted("flat-buffers");
    let e = format!("{:#}", model.check_checkpointable().unwrap_err());
    assert!(e.contains("flat-buffers.pt") && e.contains("'body.1.running_mean'") && e.contains("named_modules"), "{e}");
    assert!(!e.contains("num_batches_tracked"), "{e}");
    assert!(model.concurrent().is_none(), "concurrent_eval = False must score in one lane");
}

/// The commands take an archive without `--arch` and read its input size; a state dict without
/// `--arch` is refused by name; the augment preview resets the head to a new class count.
#[test]
fn commands_detect_an_archive_read_its_input_size_and_reset_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let photo = photo("chelsea.png");
    let run = |args: &[&str]| {
        let out = bin().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let mobilenet = fixtures().join("mobilenet_v3_large.pt");
    let (ok, stdout, stderr) =
        run(&["predict", "--weights", s(&mobilenet), "--image", s(&photo), "--topk", "2", "--json"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("from the module's attributes")
            && stderr.contains("input size 96 (the module's input_size attribute)"),
        "{stderr}"
    );
    let top: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let name = top[0]["top"][0]["name"].as_str().unwrap();
    assert!(name.starts_with("class "), "a 6-way head's class has no ImageNet name: {name}");
    let (ok, _, stderr) = run(&["predict", "--weights", s(&mobilenet), "--image", s(&photo), "--input-size", "64"]);
    assert!(
        ok && stderr.contains("input size 64 (--input-size)") && stderr.contains("exported for input size 96"),
        "{stderr}"
    );

    let pth = fixtures().join("resnet50.pth");
    let (ok, _, stderr) = run(&["explain", "--weights", s(&pth), "--image", s(&photo), "--out", s(dir.path())]);
    assert!(!ok && stderr.contains("--arch is needed") && stderr.contains("resnet50.pth"), "{stderr}");

    let r18 = fixtures().join("resnet18-1000.pt");
    let out = dir.path().join("aug");
    let aug = ["augment", "--weights", s(&r18), "--image", s(&photo), "--label", "5", "--out", s(&out)];
    let (ok, stdout, stderr) = run(&[&aug[..], &["--reset-head", "6"]].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("label 5 class 5"), "{stdout}");
    assert!(out.join("chelsea-mask.png").exists() && out.join("chelsea-augmented.png").exists());
    let (ok, _, stderr) = run(&[&aug[..], &["--reset-head", "0"]].concat());
    assert!(!ok && stderr.contains("--reset-head 0"), "{stderr}");
}
