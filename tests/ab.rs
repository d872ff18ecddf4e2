//! The A/B harness (scripts/ab.py, issue 13) on tiny synthetic IDX files: conversion,
//! subsampling, one shared plain starting point (ResNet-18, or the scripted small CNN of
//! scripts/ab_model.py re-saved with its pre-trained weights), the arms' configs, the table and
//! the JSON, the reuse of finished runs, the t-interval, and a clear error for a bad IDX file.
//! No download.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{python, root, s};
use serde_json::Value;

const CLASSES: usize = 3;

/// An IDX file of unsigned bytes: magic 0x0000 08 nd, big-endian dims, the body.
fn write_idx(path: &Path, dims: &[u32], body: &[u8]) {
    let mut data = vec![0u8, 0, 0x08, dims.len() as u8];
    for d in dims {
        data.extend_from_slice(&d.to_be_bytes());
    }
    data.extend_from_slice(body);
    std::fs::write(path, data).unwrap();
}

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

/// ResNet-18 at 64 px.
fn ab(idx: &Path, work: &Path) -> Output {
    ab_with(idx, work, &["--input-size", "64"])
}

fn ab_with(idx: &Path, work: &Path, extra: &[&str]) -> Output {
    Command::new(python())
        .arg(root().join("scripts/ab.py"))
        .args(["--idx", s(idx), "--work", s(work), "--bin", env!("CARGO_BIN_EXE_groupcam")])
        .args(["--seeds", "0", "--train-size", "18", "--batch", "8"])
        .args(["--pretrain-epochs", "1", "--epochs", "1", "--workers", "1", "--device", "cpu"])
        .args(extra)
        .output()
        .expect("cannot run the venv's python: run `make venv` first")
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

#[test]
fn smoke_run_writes_the_table_and_json_and_reuses_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (idx, work) = (tmp.path().join("idx"), tmp.path().join("work"));
    std::fs::create_dir_all(&idx).unwrap();
    write_split(&idx, "train", 24);
    write_split(&idx, "t10k", 12);

    let out = ab(&idx, &work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ab.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    // Conversion: a stratified subset of 6 per class for training, the whole test set as val,
    // 28 px RGB PNGs in ImageFolder layout.
    let train = pngs(&work.join("data/train"));
    let val = pngs(&work.join("data/val"));
    assert_eq!((train.len(), val.len()), (18, 12));
    for c in std::fs::read_dir(work.join("data/train")).unwrap() {
        assert_eq!(std::fs::read_dir(c.unwrap().path()).unwrap().count(), 6);
    }
    let img = image::open(&val[0]).unwrap();
    assert_eq!((img.width(), img.height(), img.color()), (28, 28, image::ColorType::Rgb8));

    let r = json(&work.join("ab.json"));
    let arms = r["arms"].as_object().unwrap();
    assert_eq!(arms.keys().map(String::as_str).collect::<Vec<_>>(), ["cached", "control", "faithful", "fast"]); // serde_json sorts keys
    assert!(r["missing"].as_object().unwrap().is_empty(), "{}", r["missing"]);
    let start = work.join("runs/pretrain/final.safetensors");
    assert!(start.is_file());
    for (name, arm) in arms {
        let runs = arm["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{name}");
        let run = &runs[0];
        assert_eq!(run["seed"], 0);
        assert_eq!(run["val_images"], 12, "{name}: the whole test set");
        // The figure is the run's own final val top-1, not something else.
        let dir = Path::new(run["run"].as_str().unwrap());
        let history = json(&dir.join("history.json"));
        let last = history.as_array().unwrap().last().unwrap();
        assert_eq!(run["top1"], last["val_top1"], "{name}");
        assert!(run["wall_s"].as_f64().unwrap() > 0.0);
        // Every arm starts from the shared plain checkpoint, with the seed as its data order.
        let cfg = &json(&dir.join("ab-config.json"))["config"];
        assert_eq!(cfg["weights"].as_str().unwrap(), s(&start), "{name}");
        assert_eq!(cfg["train"]["seed"], 0, "{name}");
        assert_eq!(cfg["data"]["input_size"], 64);
    }
    let aug = |n: &str| arms[n]["augmented_mean"].as_f64().unwrap();
    assert_eq!(aug("control"), 0.0);
    assert!(aug("faithful") > 0.0, "faithful augmented nothing");
    assert!(aug("fast") > 0.0 && aug("fast") <= 0.5 + 1e-9, "fast draws half of each batch: {}", aug("fast"));
    let cfg = |n: &str| json(&work.join(format!("runs/{n}-s0/ab-config.json")))["config"]["augment"].clone();
    assert_eq!(cfg("control")["enabled"], false);
    assert_eq!(cfg("faithful")["enabled"], true);
    assert_eq!((cfg("fast")["probability"].as_f64(), cfg("fast")["score_size"].as_i64()), (Some(0.5), Some(32)));
    assert_eq!(cfg("cached")["refresh"], 1);
    assert!(aug("cached") > 0.0, "the cached arm masked nothing");
    let cached = json(&work.join("runs/cached-s0/history.json"));
    assert_eq!(cached[0]["maps_from_epoch"], 1, "one fine-tuning epoch, its maps made before it");

    // The paired difference per seed; one seed has no interval.
    for n in ["faithful", "fast", "cached"] {
        let d = &arms[n]["diff"];
        let want = arms[n]["runs"][0]["top1"].as_f64().unwrap() - arms["control"]["runs"][0]["top1"].as_f64().unwrap();
        assert!((d["per_seed"][0].as_f64().unwrap() - want).abs() < 1e-12, "{n}: {d}");
        assert!(d["ci95"].is_null());
    }

    let table = std::fs::read_to_string(work.join("ab.md")).unwrap();
    let top1 = format!("{:.2}", 100.0 * arms["faithful"]["top1_mean"].as_f64().unwrap());
    let faithful_row = table.lines().find(|l| l.starts_with("| faithful |")).expect("a faithful row");
    assert!(faithful_row.contains(&top1), "{faithful_row} lacks {top1}");
    for row in ["| control |", "| fast |", "| cached | G = 16, maps of whole images cached"] {
        assert!(table.contains(row), "no '{row}' row in\n{table}");
    }
    assert!(table.contains("12 images) as validation"), "{table}");
    let report = std::fs::read_to_string(work.join("reports/faithful-s0.md")).unwrap();
    assert!(report.contains("## control"), "groupcam report with the control beside it:\n{report}");

    // A second call finds every run done with the same config and reuses it.
    let again = ab(&idx, &work);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(stdout.matches(": reusing ").count(), 5, "{stdout}");
    assert_eq!(json(&work.join("ab.json"))["arms"]["faithful"]["top1_mean"], arms["faithful"]["top1_mean"]);
}

#[test]
fn small_cnn_arms_start_from_the_pretrained_archive() {
    // --arch small-cnn: scripts/ab_model.py's archive (random, seeded) is pre-trained through
    // `weights:`, its final.safetensors loaded back into it as runs/pretrain/pretrained.pt, and
    // every arm fine-tunes that archive. About 10 s.
    let tmp = tempfile::tempdir().unwrap();
    let (idx, work) = (tmp.path().join("idx"), tmp.path().join("work"));
    std::fs::create_dir_all(&idx).unwrap();
    write_split(&idx, "train", 24);
    write_split(&idx, "t10k", 12);
    let out = ab_with(&idx, &work, &["--arch", "small-cnn"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ab.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    let r = json(&work.join("ab.json"));
    // The archive's own input size (32) and its 8 x 8 target layer; a 3-way head for 3 classes.
    assert_eq!((r["setup"]["input_size"].as_i64(), r["setup"]["target_layer"].as_str()), (Some(32), Some("8 x 8")));
    let archive = work.join("model/small-cnn-s0-c3-32.pt");
    assert!(archive.is_file());
    let pre = &json(&work.join("runs/pretrain/ab-config.json"))["config"];
    assert_eq!((pre["arch"].as_str(), pre["weights"].as_str()), (Some("torchscript"), Some(s(&archive))));
    assert_eq!(pre["augment"]["enabled"], false);

    // pretrained.pt holds exactly the pre-training's final tensors, and its PyTorch top-1 is
    // the run's (to one image of 12).
    let (pretrained, final_) = (work.join("runs/pretrain/pretrained.pt"), work.join("runs/pretrain/final.safetensors"));
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
    let stamp = json(&work.join("runs/pretrain/pretrained.pt.json"));
    let (py, run) = (stamp["val_top1_pytorch"].as_f64().unwrap(), stamp["val_top1_run"].as_f64().unwrap());
    assert!((py - run).abs() <= 1.01 / 12.0, "PyTorch {py} against the run's {run}");

    let arms = r["arms"].as_object().unwrap();
    assert_eq!(arms.keys().map(String::as_str).collect::<Vec<_>>(), ["cached", "control", "faithful", "fast"]); // serde_json sorts keys
    for name in ["control", "faithful", "fast", "cached"] {
        let cfg = &json(&work.join(format!("runs/{name}-s0/ab-config.json")))["config"];
        assert_eq!(cfg["arch"], "torchscript", "{name}");
        assert_eq!(cfg["weights"].as_str().unwrap(), s(&pretrained), "{name}");
        assert_eq!(cfg["data"]["input_size"], 32, "{name}");
    }
    let fast = &json(&work.join("runs/fast-s0/ab-config.json"))["config"]["augment"];
    assert_eq!(fast["score_size"], 16, "half the archive's input size");
    assert_eq!(arms["control"]["augmented_mean"].as_f64(), Some(0.0));
    assert!(arms["faithful"]["augmented_mean"].as_f64().unwrap() > 0.0);
    let table = std::fs::read_to_string(work.join("ab.md")).unwrap();
    assert!(table.contains("small-cnn at 32 px (8 x 8 target-layer positions)"), "{table}");

    // Everything is reused on a second call, the converted starting point included.
    let again = ab_with(&idx, &work, &["--arch", "small-cnn"]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(stdout.matches(": reusing ").count(), 5, "{stdout}");
    assert!(!stdout.contains("pretrained: "), "pretrained.pt was converted again:\n{stdout}");
}

#[test]
fn a_bad_idx_file_is_named_and_nothing_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (idx, work) = (tmp.path().join("idx"), tmp.path().join("work"));
    std::fs::create_dir_all(&idx).unwrap();
    write_split(&idx, "train", 24);
    write_split(&idx, "t10k", 12);
    let bad = idx.join("t10k-labels-idx1-ubyte");
    std::fs::write(&bad, b"\x00\x00\x08\x03not labels").unwrap();
    let out = ab(&idx, &work);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(s(&bad)) && err.contains("not an IDX file of 1-D"), "{err}");
    assert!(!work.join("runs").exists(), "a run started despite the bad file");

    std::fs::remove_file(&bad).unwrap();
    let out = ab(&idx, &work);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("t10k-labels-idx1-ubyte(.gz) is missing"), "{err}");
}

#[test]
fn paired_difference_interval_is_students_t() {
    // ab.py's t_interval on three pairs against the textbook formula, t(0.975, 2) = 4.303.
    let code = "import json, sys; sys.path.insert(0, 'scripts'); import ab; \
                print(json.dumps(ab.t_interval([0.01, 0.03, -0.01])))";
    let out = Command::new(python()).current_dir(root()).args(["-c", code]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = [0.01f64, 0.03, -0.01];
    let m = d.iter().sum::<f64>() / 3.0;
    let sd = (d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 2.0).sqrt();
    let h = 4.303 * sd / 3f64.sqrt();
    assert!((v[0].as_f64().unwrap() - m).abs() < 1e-12);
    assert!((v[1][0].as_f64().unwrap() - (m - h)).abs() < 1e-12, "{v}");
    assert!((v[1][1].as_f64().unwrap() - (m + h)).abs() < 1e-12, "{v}");
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
