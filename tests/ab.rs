//! The A/B's preparation (scripts/ab.py) on tiny synthetic IDX files: conversion and
//! subsampling, the small CNN's plain pre-training, its convergence rule, the pre-trained archive
//! (the run's final tensors, its PyTorch top-1 the run's), the fine-tuning base config, reuse, and
//! clear errors; then `groupcam ab` itself (issue 22). No download.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{python, root, s, write_idx};
use serde_json::Value;

const CLASSES: usize = 3;

/// n 28 x 28 images of CLASSES classes (label i % CLASSES), each class a bright bar at its own
/// height on noise, so that the classes differ.
fn write_split(dir: &Path, prefix: &str, n: usize) {
    let mut images = vec![0u8; n * 28 * 28];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let c = i % CLASSES;
        labels[i] = c as u8;
        for y in 0..28 {
            for x in 0..28 {
                let noise = ((i * 31 + y * 7 + x * 13) % 50) as u8;
                let bar = (4 + 6 * c..10 + 6 * c).contains(&y) && (6..22).contains(&x);
                images[i * 784 + y * 28 + x] = if bar { 230 } else { noise };
            }
        }
    }
    write_idx(&dir.join(format!("{prefix}-images-idx3-ubyte")), &[n as u32, 28, 28], &images);
    write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &[n as u32], &labels);
}

/// 18 of 24 training images, 4 pre-training epochs (x0.1 after 3), 4 fine-tuning epochs.
fn prepare(idx: &Path, work: &Path, extra: &[&str]) -> Output {
    Command::new(python())
        .arg(root().join("scripts/ab.py"))
        .args(["--set", "fmnist", "--idx", s(idx), "--work", s(work), "--bin", env!("CARGO_BIN_EXE_groupcam")])
        .args(["--train-size", "18", "--batch", "8", "--pretrain-epochs", "4", "--pretrain-lr-step", "3"])
        .args(["--pretrain-lr", "0.1", "--epochs", "4", "--workers", "1", "--device", "cpu"])
        .args(extra)
        .output()
        .expect("cannot run the venv's python: run `make venv` first")
}

fn idx_dir(tmp: &Path) -> std::path::PathBuf {
    let idx = tmp.join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    write_split(&idx, "train", 24);
    write_split(&idx, "t10k", 12);
    idx
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn pngs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for class in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(class.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

/// The plateau rule of the test is loose (+100 points), the tiny pre-training's curve is
/// whatever it is; everything else is the README's procedure.
#[test]
fn prepare_pretrains_the_small_cnn_and_writes_the_fine_tuning_base() {
    let tmp = tempfile::tempdir().unwrap();
    let (idx, work) = (idx_dir(tmp.path()), tmp.path().join("work"));
    let out = prepare(&idx, &work, &["--plateau", "100"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ab.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    // Conversion: a stratified subset of 6 per class for training, the whole test set as val,
    // 28 px RGB PNGs in ImageFolder layout.
    let (train, val) = (pngs(&work.join("data/train")), pngs(&work.join("data/val")));
    assert_eq!((train.len(), val.len()), (18, 12));
    for c in std::fs::read_dir(work.join("data/train")).unwrap() {
        assert_eq!(std::fs::read_dir(c.unwrap().path()).unwrap().count(), 6);
    }
    let img = image::open(&val[0]).unwrap();
    assert_eq!((img.width(), img.height(), img.color()), (28, 28, image::ColorType::Rgb8));

    // The pre-training: plain, from the seeded random archive, its curve recorded with the rule.
    let archive = work.join("model/small-cnn-s0-c3-32.pt");
    let pre = &json(&work.join("runs/pretrain/ab-config.json"))["config"];
    assert_eq!((pre["arch"].as_str(), pre["weights"].as_str()), (Some("torchscript"), Some(s(&archive))));
    assert_eq!((pre["augment"]["enabled"].as_bool(), pre["train"]["lr_step"].as_i64()), (Some(false), Some(3)));
    let history = json(&work.join("runs/pretrain/history.json"));
    let record = json(&work.join("pretrain.json"));
    let curve: Vec<f64> = history.as_array().unwrap().iter().map(|h| h["val_top1"].as_f64().unwrap()).collect();
    assert_eq!(record["val_top1"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>(), curve);
    let gain = record["gain_points"].as_f64().unwrap();
    assert!((gain - 100.0 * (curve[3] - curve[0])).abs() < 1e-9, "{record}");
    assert_eq!(record["converged"], true);

    // pretrained.pt holds exactly the pre-training's final tensors, and its PyTorch top-1 is
    // the run's (to one image of 12).
    let (pretrained, final_) = (work.join("pretrained.pt"), work.join("runs/pretrain/final.safetensors"));
    let code = format!(
        "import torch, safetensors.torch as st; m = torch.jit.load({:?}); f = st.load_file({:?}); h = m.state_dict(); \
         print(set(h) == set(f) and all(torch.equal(h[k], f[k]) for k in f)); print(tuple(m(torch.zeros(2, 3, 32, 32)).shape))",
        s(&pretrained),
        s(&final_)
    );
    let check = Command::new(python()).args(["-c", &code]).output().unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert_eq!(text.lines().collect::<Vec<_>>(), ["True", "(2, 3)"], "{text}");
    let stamp = json(&work.join("pretrained.pt.json"));
    let (py, run) = (stamp["val_top1_pytorch"].as_f64().unwrap(), stamp["val_top1_run"].as_f64().unwrap());
    assert!((py - run).abs() <= 1.01 / 12.0, "PyTorch {py} against the run's {run}");
    assert_eq!(run, *curve.last().unwrap());

    // The base: the pre-trained archive at lr / 100 for 4 epochs, x0.1 after 3 (3/4 of them).
    let base = json(&work.join("base.yaml"));
    assert_eq!(base["weights"].as_str(), Some(s(&pretrained)));
    assert_eq!((base["train"]["epochs"].as_i64(), base["train"]["lr_step"].as_i64()), (Some(4), Some(3)));
    assert!((base["train"]["lr"].as_f64().unwrap() - 0.001).abs() < 1e-12);
    assert_eq!((base["data"]["input_size"].as_i64(), base["augment"]["enabled"].as_bool()), (Some(32), Some(false)));

    // A second call reuses the pre-training and the converted archive.
    let again = prepare(&idx, &work, &["--plateau", "100"]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&again.stderr));
    assert!(stdout.contains("pretrain: reusing") && !stdout.contains("pretrained: "), "{stdout}");
}

/// A pre-training that misses the rule is an error and writes no base; a bad IDX file is named
/// before anything runs.
#[test]
fn an_unconverged_start_or_a_bad_idx_file_stops_before_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let (idx, work) = (idx_dir(tmp.path()), tmp.path().join("work"));
    let out = prepare(&idx, &work, &["--plateau", "-1000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has not converged"), "{err}");
    assert!(
        work.join("pretrain.json").is_file()
            && !work.join("base.yaml").exists()
            && !work.join("pretrained.pt").exists()
    );

    let work = tmp.path().join("bad");
    let bad = idx.join("t10k-labels-idx1-ubyte");
    std::fs::write(&bad, b"\x00\x00\x08\x03not labels").unwrap();
    let out = prepare(&idx, &work, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(s(&bad)) && err.contains("not an IDX file of 1-D"), "{err}");
    assert!(!work.join("runs").exists(), "a run started despite the bad file");

    std::fs::remove_file(&bad).unwrap();
    let out = prepare(&idx, &work, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("t10k-labels-idx1-ubyte(.gz) is missing"), "{err}");
}

// ---- `groupcam ab` (issue 22): the A/B as a command of the product ----

/// A tiny base config: ResNet-18 at 48 px on the synthetic shapes (12 training and 12
/// validation images), one epoch of 2 steps, from a seeded random start saved in torchvision's
/// names; `val` again as the extra validation set `again`.
fn ab_base(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use groupcam::synth::{self, SynthConfig};
    let data = dir.join("data");
    synth::write(&data, &SynthConfig { size: 48, train_per_class: 2, val_per_class: 2, seed: 1 }).unwrap();
    tch::manual_seed(0);
    let m = groupcam::models::Model::new(groupcam::models::Arch::Resnet18, 6, tch::Device::Cpu);
    let weights = dir.join("start.safetensors");
    groupcam::models::weights::save_torchvision(&m.vs, &weights, 0).unwrap();
    let cfg = dir.join("base.yaml");
    let text = format!(
        "arch: resnet18\nweights: {}\n\
         data: {{root: {}, input_size: 48, workers: 1, prefetch: 2, extra_val: {{again: val}}}}\n\
         train: {{epochs: 1, batch_size: 6, lr: 0.01, lr_step: 1, device: cpu, threads: 1, tensorboard: 'off'}}\n\
         augment: {{enabled: false}}\nsaliency: {{probe: 0}}\nout: {}\n",
        s(&weights),
        s(&data),
        s(&dir.join("unused"))
    );
    std::fs::write(&cfg, text).unwrap();
    (cfg, weights)
}

fn groupcam_ab(cfg: &Path, work: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_groupcam"))
        .args(["ab", "--config", s(cfg), "--work", s(work)])
        .args(args)
        .output()
        .unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// 2 arms x 2 seeds, 1 epoch: ab.json's per-seed top-1 is each run's own history, the paired
/// differences and t-intervals are recomputed here from them, every validation set has its
/// columns and curves, each run starts from the shared weights with its seed; a second call
/// trains nothing, and one more arm trains only that arm.
#[test]
fn groupcam_ab_pairs_arms_by_seed_and_reuses_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, weights) = ab_base(tmp.path());
    let work = tmp.path().join("work");
    let arms = ["--seeds", "0,1", "--arm", "control", "--arm", "cutmix"];
    let out = groupcam_ab(&cfg, &work, &arms);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches(": training ").count(), 4, "{stdout}");

    let r = json(&work.join("ab.json"));
    assert_eq!(r["val_sets"], serde_json::json!(["val", "again"]));
    let arms_json = r["arms"].as_array().unwrap();
    assert_eq!(arms_json.iter().map(|a| a["name"].as_str().unwrap()).collect::<Vec<_>>(), ["control", "cutmix"]);
    let top1 = |arm: &Value, set: &str| -> Vec<f64> {
        arm["runs"].as_array().unwrap().iter().map(|x| f(&x["last"][set]["top1"])).collect()
    };
    for arm in arms_json {
        let runs = arm["runs"].as_array().unwrap();
        assert_eq!(runs.iter().map(|x| x["seed"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1]);
        for run in runs {
            let dir = Path::new(run["run"].as_str().unwrap());
            assert_eq!(dir, work.join(format!("runs/{}-s{}", arm["name"].as_str().unwrap(), run["seed"])));
            let last = json(&dir.join("history.json")).as_array().unwrap().last().unwrap().clone();
            assert_eq!(run["last"]["val"]["top1"], last["val_top1"]);
            assert_eq!(run["last"]["val"]["images"], 12);
            assert_eq!(run["last"]["again"]["top1"], last["extra_val"]["again"]["top1"]);
            let written: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(dir.join("config.yaml")).unwrap()).unwrap();
            assert_eq!(written["train"]["seed"].as_u64(), run["seed"].as_u64());
            assert_eq!(written["weights"].as_str(), Some(s(&weights)));
        }
        for (k, set) in ["val", "again"].into_iter().enumerate() {
            let by = &arm["by_set"][k];
            assert_eq!(by["set"], set);
            let v = top1(arm, set);
            let m = (v[0] + v[1]) / 2.0;
            assert!((f(&by["top1_mean"]) - m).abs() < 1e-12);
            assert!((f(&by["top1_std"]) - (v[0] - v[1]).abs() / 2f64.sqrt()).abs() < 1e-12);
            if arm["name"] == "control" {
                assert!(by["diff"].is_null());
                continue;
            }
            let c = top1(&arms_json[0], set);
            let d = [v[0] - c[0], v[1] - c[1]];
            let diff = &by["diff"];
            for i in 0..2 {
                assert!((f(&diff["per_seed"][i]) - d[i]).abs() < 1e-12, "{diff}");
            }
            let dm = (d[0] + d[1]) / 2.0;
            let h = 12.706 * ((d[0] - d[1]).abs() / 2f64.sqrt()) / 2f64.sqrt();
            assert!((f(&diff["mean"]) - dm).abs() < 1e-12);
            assert!(
                (f(&diff["ci95"][0]) - (dm - h)).abs() < 1e-12 && (f(&diff["ci95"][1]) - (dm + h)).abs() < 1e-12,
                "{diff}"
            );
        }
    }
    let (control, cutmix) = (&arms_json[0], &arms_json[1]);
    assert_eq!(f(&control["augmented_mean"]), 0.0);
    assert!(f(&cutmix["augmented_mean"]) > 0.5, "cutmix mixed {}", cutmix["augmented_mean"]);
    assert!((f(&cutmix["wall_ratio"]) - f(&cutmix["wall_s_mean"]) / f(&control["wall_s_mean"])).abs() < 1e-12);

    let table = std::fs::read_to_string(work.join("ab.md")).unwrap();
    for cell in [
        "| cutmix |",
        "again top-1 % (mean +- std)",
        "val minus control, pt",
        "| 0 |",
        "| 1 |",
        "again: cutmix - control",
    ] {
        assert!(table.contains(cell), "no '{cell}' in\n{table}");
    }
    for set in ["val", "again"] {
        let png = image::open(work.join(format!("curves-{set}.png"))).unwrap();
        assert!(png.width() > 100);
    }
    let report = std::fs::read_to_string(work.join("reports/cutmix-s1.md")).unwrap();
    assert!(report.contains("## control") && report.contains("final again top-1"), "{report}");

    // Again: every run is reused, nothing is written into the runs.
    let mtimes = || -> Vec<std::time::SystemTime> {
        ["control-s0", "control-s1", "cutmix-s0", "cutmix-s1"]
            .iter()
            .map(|r| {
                std::fs::metadata(work.join("runs").join(r).join("final.safetensors")).unwrap().modified().unwrap()
            })
            .collect()
    };
    let before = mtimes();
    let again = groupcam_ab(&cfg, &work, &arms);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!((stdout.matches(": reusing ").count(), stdout.matches(": training ").count()), (4, 0), "{stdout}");
    assert_eq!(mtimes(), before);
    assert_eq!(json(&work.join("ab.json"))["arms"][1]["by_set"], cutmix["by_set"]);

    // One more arm: only its two runs train.
    let more = groupcam_ab(&cfg, &work, &[&arms[..], &["--arm", "slower:train.lr=0.005"]].concat());
    let stdout = String::from_utf8_lossy(&more.stdout);
    assert!(more.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&more.stderr));
    assert_eq!((stdout.matches(": reusing ").count(), stdout.matches(": training ").count()), (4, 2), "{stdout}");
    assert!(stdout.contains("slower-s0: training") && stdout.contains("slower-s1: training"), "{stdout}");
    assert_eq!(mtimes(), before);
}

/// Bad arms and seeds are refused, named, before anything is written.
#[test]
fn groupcam_ab_refuses_bad_arms_and_seeds_before_any_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = ab_base(tmp.path());
    let work = tmp.path().join("work");
    for (args, want) in [
        (&["--arm", "bad:augment.groupz=3"][..], &["arm 'bad'", "augment.groupz", "unknown field"][..]),
        (&["--arm", "longer:train.epochs=2"], &["arm 'longer'", "schedule differs"]),
        (&["--arm", "steps:train.lr_step=2"], &["arm 'steps'", "schedule differs"]),
        (&["--arm", "nosuch"], &["'nosuch'", "not a built-in"]),
        (&["--arm", "x:train.seed=4"], &["train.seed", "set by the A/B"]),
        (&["--seeds", ""], &["no seeds"]),
        (&["--seeds", "0,1,0"], &["seed 0 is given twice"]),
        (&["--set", "weights=null"], &["'weights' is missing"]),
    ] {
        let out = groupcam_ab(&cfg, &work, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        for w in want {
            assert!(err.contains(w), "{args:?}: no '{w}' in: {err}");
        }
        assert!(!work.exists(), "{args:?}: the work directory was created");
    }
}
