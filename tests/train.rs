//! The fine-tuning loop on tiny synthetic data: configs, the loader, resume after kill -9,
//! the NaN stop, saliency tracking and weights PyTorch can load.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use groupcam::data::{ImageFolder, Loader, Transform};
use groupcam::models::{Arch, CamModel, Model, Normalization};
use groupcam::train::Config;
use tch::{Device, Tensor};

/// A tiny dataset: 6 classes of 48 px shapes (ResNet-18 maps of 2 x 2).
fn tiny_data(dir: &Path, train: usize) -> PathBuf {
    common::tiny_data(dir, 48, train)
}

/// A config for a ResNet-18 on `data`: 3 epochs of 2 steps, one of them plain pre-training.
fn tiny_config(dir: &Path, data: &Path, out: &str) -> PathBuf {
    let p = dir.join(format!("{out}.yaml"));
    let text = format!(
        "arch: resnet18\n\
         data: {{root: {}, input_size: 48, workers: 2, prefetch: 2}}\n\
         train: {{epochs: 3, batch_size: 6, lr: 0.01, lr_step: 1, lr_gamma: 0.5, seed: 7, device: cpu, threads: 1}}\n\
         pretrain: {{epochs: 1, lr: 0.02}}\n\
         augment: {{groups: 16}}\n\
         saliency: {{probe: 4, groups: 8}}\n\
         out: {}\n",
        data.display(),
        dir.join(out).display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn config_errors_name_the_key_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), 1);
    let cfg = tiny_config(dir.path(), &data, "run");
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Config::load(&cfg, &sets).unwrap_err())
    };
    assert!(Config::load(&cfg, &[]).is_ok());
    let e = err(&["train.lrr=0.1"]);
    assert!(e.contains("train.lrr") && e.contains("unknown field"), "{e}");
    let e = err(&["train.epochs=ten"]);
    assert!(e.contains("train.epochs") && e.contains("invalid type"), "{e}");
    let e = err(&["data.root=/no/such/dir"]);
    assert!(e.contains("data.train_dir") && e.contains("/no/such/dir"), "{e}");
    let e = err(&["weights=/no/such/weights.pth"]);
    assert!(e.contains("'weights'") && e.contains("/no/such/weights.pth"), "{e}");
    let e = err(&["augment.threshold=median"]);
    assert!(e.contains("augment.threshold"), "{e}");
    // Nothing was created for any of them.
    assert!(!dir.path().join("run").exists());
}

#[test]
fn the_loader_converts_modes_skips_bad_files_and_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    for c in ["a", "b"] {
        std::fs::create_dir_all(root.join(c)).unwrap();
    }
    image::GrayImage::from_pixel(40, 30, image::Luma([100])).save(root.join("a/grey.png")).unwrap();
    image::RgbaImage::from_pixel(30, 40, image::Rgba([1, 2, 3, 0])).save(root.join("a/alpha.png")).unwrap();
    py(&["cmyk", "--out", s(&root.join("b/cmyk.jpg"))]);
    image::RgbImage::from_pixel(50, 50, image::Rgb([200, 10, 10])).save(root.join("b/red.png")).unwrap();
    std::fs::write(root.join("b/empty.jpg"), b"").unwrap();
    let good = std::fs::read(photo("coffee.png")).unwrap();
    std::fs::write(root.join("b/truncated.png"), &good[..2000]).unwrap();
    std::fs::write(root.join("a/notes.txt"), b"not an image").unwrap();

    let data = ImageFolder::open(&root).unwrap();
    assert_eq!(data.classes, vec!["a", "b"]);
    assert_eq!(data.len(), 6, "the .txt is not a sample");
    let loader = Loader {
        data,
        batch_size: 3,
        shuffle: true,
        drop_last: true,
        transform: Transform::Train { size: 24, scale: (0.5, 1.0), ratio: (0.75, 1.33), flip: 0.5 },
        norm: Normalization::IMAGENET,
        workers: 3,
        prefetch: 1,
        seed: 5,
        pin_memory: false,
        masks: None,
    };
    let batches: Vec<_> = loader.epoch(0, 0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 2);
    let skipped: Vec<String> =
        batches.iter().flat_map(|b| b.skipped.iter().map(|(p, _)| p.display().to_string())).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().any(|p| p.ends_with("empty.jpg")) && skipped.iter().any(|p| p.ends_with("truncated.png")));
    let n: i64 = batches.iter().map(|b| b.len() as i64).sum();
    assert_eq!(n, 4);
    for b in &batches {
        assert_eq!(&b.pixels.size()[1..], &[3, 24, 24]);
    }
    // The same epoch twice gives the same tensors; another epoch another order.
    let again: Vec<_> = loader.epoch(0, 0).map(|b| b.unwrap()).collect();
    for (a, b) in batches.iter().zip(&again) {
        assert_eq!(max_abs_diff(&a.images(Device::Cpu), &b.images(Device::Cpu)), 0.0);
    }
    assert_ne!(loader.batches(0), loader.batches(1));
}

/// Runs `tiny_config` with `sets` straight through, and again killed with SIGKILL after its
/// first checkpoint and resumed; asserts that both end with the same weights, bit for bit.
/// Returns the straight run's directory.
fn check_kill_9_and_resume(dir: &Path, sets: &[&str]) -> PathBuf {
    let data = tiny_data(dir, 2);
    let with_sets = |args: &[&str]| -> Vec<String> {
        args.iter().copied().chain(sets.iter().flat_map(|s| ["--set", *s])).map(String::from).collect()
    };
    let straight = tiny_config(dir, &data, "straight");
    let args = with_sets(&["--config", s(&straight)]);
    let out = finetune(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let broken = tiny_config(dir, &data, "broken");
    let run = dir.join("broken");
    let mut child = Command::new(env!("CARGO_BIN_EXE_groupcam"))
        .args(["finetune", "--quiet"])
        .args(with_sets(&["--config", s(&broken)]))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let history = run.join("history.json");
    let t0 = Instant::now();
    while !history.exists() {
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!run.join("final.safetensors").exists(), "killed too late to test anything");
    let ckpt = run.join("checkpoints/last.safetensors");
    let args = with_sets(&["--config", s(&broken), "--resume", s(&ckpt)]);
    let out = finetune(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed from"));

    let (a, b) =
        (sorted_tensors(&dir.join("straight/final.safetensors")), sorted_tensors(&run.join("final.safetensors")));
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(ta.equal(tb), "tensor {ka} differs after resume");
    }
    dir.join("straight")
}

/// A run killed with SIGKILL after its first checkpoint and resumed ends with the same
/// weights, bit for bit, as the same run uninterrupted.
#[test]
fn kill_9_and_resume_gives_the_same_weights_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    check_kill_9_and_resume(dir.path(), &[]);
    // The uninterrupted run changed the weights at all, so the comparison means something.
    let h: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("straight/history.json")).unwrap()).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 3);
    assert!(h[2]["augmented_fraction"].as_f64().unwrap() > 0.0, "the fine-tuning epochs augment");
    assert_eq!(h[0]["augmented_fraction"].as_f64().unwrap(), 0.0, "the pre-training does not");
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), 2);
    let cfg = tiny_config(dir.path(), &data, "nan");
    // Epoch 1 (pre-training) is sane; the fine-tuning's learning rate makes the weights explode.
    let out = finetune(&["--config", s(&cfg), "--set", "train.lr=1e30", "--set", "augment.enabled=false"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loss is") && err.contains("last good checkpoint"), "{err}");
    let ckpt = dir.path().join("nan/checkpoints/last.safetensors");
    let named = sorted_tensors(&ckpt);
    assert!(
        named.iter().all(|(_, t)| t.isfinite().all().int64_value(&[]) == 1),
        "the checkpoint holds non-finite values"
    );
    assert!(!dir.path().join("nan/final.safetensors").exists());
}

#[test]
fn a_run_logs_saliency_and_its_final_weights_load_in_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), 2);
    let cfg = tiny_config(dir.path(), &data, "full");
    let out = finetune(&[
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=2",
        "--set",
        "saliency.threshold=2.0",
        "--set",
        "saliency.patience=1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("device: cpu") && stdout.contains("val top-1"), "{stdout}");
    assert!(stdout.contains("saliency converged at epoch 1"), "{stdout}");
    let run = dir.path().join("full");
    for f in
        ["saliency/epoch-000.png", "saliency/epoch-002.png", "checkpoints/best.safetensors", "report.md", "config.yaml"]
    {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let tb = std::fs::read_dir(run.join("tb")).unwrap().next().unwrap().unwrap().path();
    let events = std::fs::read(tb).unwrap();
    for tag in ["val/top1", "train/loss", "saliency/one_minus_pearson", "epoch/augmented_fraction"] {
        assert!(events.windows(tag.len()).any(|w| w == tag.as_bytes()), "tag {tag} not in the event file");
    }
    // The probe (4 images) spreads over the classes: four different ones, each file listed.
    let probe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("saliency/probe.json")).unwrap()).unwrap();
    let classes: std::collections::HashSet<_> =
        probe.as_array().unwrap().iter().map(|e| e["class"].as_str().unwrap().to_string()).collect();
    assert_eq!((probe.as_array().unwrap().len(), classes.len()), (4, 4), "{probe}");
    assert!(probe.as_array().unwrap().iter().all(|e| Path::new(e["path"].as_str().unwrap()).exists()));
    let h: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("history.json")).unwrap()).unwrap();
    let change = h[1]["saliency_change"].as_f64().unwrap();
    assert!((0.0..=2.0).contains(&change));

    // PyTorch loads final.safetensors strictly and computes the same logits.
    let model = Model::load(Arch::Resnet18, &run.join("final.safetensors"), Device::Cpu).unwrap();
    let x = Tensor::randn([2, 3, 48, 48], (tch::Kind::Float, Device::Cpu));
    let input = dir.path().join("x.npy");
    let logits_path = dir.path().join("logits.npy");
    x.write_npy(&input).unwrap();
    py(&[
        "load-final",
        "--arch",
        "resnet18",
        "--classes",
        "6",
        "--weights",
        s(&run.join("final.safetensors")),
        "--input",
        s(&input),
        "--out",
        s(&logits_path),
    ]);
    let d = max_abs_diff(&tch::no_grad(|| model.logits_eval(&x)), &npy(&logits_path));
    assert!(d < 1e-4, "PyTorch's logits differ by {d}");

    let report = bin().args(["report", s(&run), "--control", s(&run)]).output().unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(text.contains("control") && text.contains("+0.00 pt"), "{text}");
}

#[test]
fn synth_boxes_hold_their_objects() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_data(dir.path(), 3);
    let coco: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("boxes.json")).unwrap()).unwrap();
    let images = coco["images"].as_array().unwrap();
    assert_eq!(images.len(), 6 * 5);
    for (img, ann) in images.iter().zip(coco["annotations"].as_array().unwrap()) {
        let photo = image::open(root.join(img["file_name"].as_str().unwrap())).unwrap();
        assert_eq!((photo.width(), photo.height()), (48, 48));
        let b: Vec<u32> = ann["bbox"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert!(b[0] + b[2] <= 48 && b[1] + b[3] <= 48 && b[2] >= 5 && b[3] >= 5, "{b:?}");
        let cat = ann["category_id"].as_u64().unwrap() as usize;
        let class = img["file_name"].as_str().unwrap().split('/').nth(1).unwrap();
        assert_eq!(coco["categories"][cat - 1]["name"], class);
    }
}

/// Issue 15, the fused checks: the fp16 path's loss scaling (autocast is a no-op on the CPU, so
/// its arithmetic runs in f32) reads the loss and every gradient in one go. A scaled step equals
/// the plain step; a scale that overflows f32 is caught, skips the step and halves the scale; a
/// NaN loss changes nothing.
#[test]
fn the_scaled_step_checks_loss_and_gradients_at_once_and_skips_overflows() {
    use groupcam::train::{LossScaler, StepResult, Trainer, sgd::Sgd};
    let fresh = || {
        tch::manual_seed(3);
        Model::new(Arch::Resnet18, 4, Device::Cpu)
    };
    // Variables in name order, copied.
    let params = |m: &Model| -> Vec<Tensor> {
        let mut v: Vec<_> = m.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, t)| t.detach().copy()).collect()
    };
    let max_diff = |a: &[Tensor], b: &[Tensor]| {
        a.iter().zip(b).map(|(x, y)| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max)
    };
    let x = Tensor::randn([4, 3, 48, 48], (tch::Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let trainer = |m: &Model, amp: bool, scale: f64| Trainer {
        sgd: Sgd::new(&m.vs, 0.9, 1e-4),
        scaler: LossScaler::resume(scale, 0),
        amp: amp.then_some(groupcam::autocast::AutocastDtype::F16),
        world: groupcam::dist::World::Single,
    };

    // The second model copies the first's weights: the tests of this file run on parallel
    // threads and draw from libtorch's one default generator, so two seeded builds may differ.
    let (plain, mut scaled) = (fresh(), fresh());
    tch::no_grad(|| scaled.vs.copy(&plain.vs)).unwrap();
    let before = params(&plain);
    assert!(matches!(trainer(&plain, false, 1.0).step(&plain, &x, &y, 0.1).unwrap(), StepResult::Done { .. }));
    assert!(matches!(trainer(&scaled, true, 65536.0).step(&scaled, &x, &y, 0.1).unwrap(), StepResult::Done { .. }));
    assert!(max_diff(&before, &params(&plain)) > 1e-4, "the step changed nothing");
    let d = max_diff(&params(&plain), &params(&scaled));
    assert!(d < 1e-6, "the scaled step differs from the plain one by {d}");

    let over = fresh();
    let before = params(&over);
    let mut t = trainer(&over, true, 1e38);
    assert!(matches!(t.step(&over, &x, &y, 0.1).unwrap(), StepResult::Overflow { .. }));
    assert_eq!(t.scaler.scale(), 5e37, "an overflow halves the scale");
    assert_eq!(max_diff(&before, &params(&over)), 0.0, "an overflowing step changed the weights");

    let nan = x.copy();
    let _ = nan.narrow(0, 0, 1).fill_(f64::NAN);
    for amp in [false, true] {
        let m = fresh();
        let before = params(&m);
        assert!(matches!(trainer(&m, amp, 65536.0).step(&m, &nan, &y, 0.1).unwrap(), StepResult::NonFinite(_)));
        assert_eq!(max_diff(&before, &params(&m)), 0.0, "a NaN step changed the weights (amp {amp})");
    }
}

fn folder_of(n: usize, batch_size: usize, transform: Transform, seed: u64, samples: Vec<(PathBuf, i64)>) -> Loader {
    let samples =
        if samples.is_empty() { (0..n).map(|i| (PathBuf::from(format!("{i}.jpg")), 0)).collect() } else { samples };
    let data = ImageFolder { root: PathBuf::from("."), classes: vec!["a".into()], samples };
    Loader {
        data,
        batch_size,
        shuffle: true,
        drop_last: false,
        transform,
        norm: Normalization::IMAGENET,
        workers: 1,
        prefetch: 1,
        seed,
        pin_memory: false,
        masks: None,
    }
}

/// The crop boxes, flips and batch order for a seed are those the former code drew (golden
/// values printed by it): resume and the distributed sampler rely on them.
#[test]
fn the_loaders_boxes_flips_and_order_are_unchanged_for_a_seed() {
    use groupcam::data::transforms::params;
    let t = Transform::Train { size: 224, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), flip: 0.5 };
    let loader = folder_of(10, 4, t, 7, vec![]);
    let golden: [((u32, u32), [(u32, u32, u32, u32, bool); 6]); 4] = [
        (
            (500, 375),
            [
                (2, 68, 216, 227, true),
                (47, 29, 222, 285, true),
                (96, 97, 135, 123, true),
                (25, 30, 398, 301, true),
                (7, 16, 272, 248, false),
                (278, 70, 192, 235, false),
            ],
        ),
        (
            (375, 500),
            [
                (1, 126, 216, 227, true),
                (26, 69, 222, 285, true),
                (63, 146, 135, 123, true),
                (33, 18, 278, 305, true),
                (3, 32, 272, 248, false),
                (166, 133, 192, 235, false),
            ],
        ),
        (
            (451, 300),
            [
                (1, 49, 184, 193, true),
                (44, 18, 189, 242, true),
                (89, 76, 114, 104, true),
                (28, 18, 338, 256, true),
                (6, 11, 231, 210, false),
                (260, 50, 163, 200, false),
            ],
        ),
        (
            (64, 64),
            [
                (0, 14, 32, 34, true),
                (5, 7, 33, 42, true),
                (11, 18, 20, 18, true),
                (1, 8, 59, 44, true),
                (0, 3, 40, 37, false),
                (33, 15, 28, 35, false),
            ],
        ),
    ];
    for ((w, h), boxes) in golden {
        for (i, want) in boxes.into_iter().enumerate() {
            let p = params(w, h, t, &mut loader.sample_rng(3, i)).unwrap();
            assert!(p.crop_first);
            assert_eq!((p.x as u32, p.y as u32, p.w as u32, p.h as u32, p.flip), want, "{w}x{h} sample {i}");
            assert_eq!((p.x.fract(), p.y.fract(), p.w.fract(), p.h.fract()), (0.0, 0.0, 0.0, 0.0));
        }
    }
    assert_eq!(loader.batches(3), vec![vec![3, 9, 6, 2], vec![5, 1, 4, 7], vec![0, 8]]);
}

/// On ImageNet-like JPEGs the new path (zune-jpeg, fast_image_resize, fused normalisation) gives
/// the former path's pixels (image crate decode + imageops::resize) within one 8-bit level
/// (measured: max 1, mean 0.15 over 64 crops; the bound allows 2), on the same boxes, for the
/// training and the evaluation transform, through the loader's batches too.
#[test]
fn the_fast_loader_path_gives_the_former_pixels() {
    use groupcam::bench::loader::{JpegConfig, flipped, write_jpegs};
    use groupcam::data::transforms::{self, Scratch};
    let dir = tempfile::tempdir().unwrap();
    let photos = vec![photo("coffee.png"), photo("chelsea.png")];
    let files = write_jpegs(dir.path(), &photos, &JpegConfig { images: 8, quality: 90, seed: 3 }).unwrap();
    assert_eq!(files.len(), 8);
    let train = Transform::Train { size: 224, scale: (0.08, 1.0), ratio: (0.75, 4.0 / 3.0), flip: 0.5 };
    let eval = Transform::Eval { size: 224, resize: 256 };
    let mut scratch = Scratch::default();
    let (mut sum, mut count, mut flips) = (0u64, 0u64, 0);
    for (i, f) in files.iter().enumerate() {
        let img = groupcam::data::decode::read_rgb(f).unwrap();
        let (w, h) = img.dimensions();
        assert!((400..=500).contains(&w.max(h)) && w.min(h) * 8 >= w.max(h) * 5, "{w}x{h}");
        assert_eq!(img.dimensions(), groupcam::imageio::load_rgb(f).unwrap().dimensions());
        for t in [train, eval] {
            let loader = folder_of(8, 4, t, 11, vec![]);
            let old = transforms::reference_transform(
                &groupcam::imageio::load_rgb(f).unwrap(),
                t,
                &mut loader.sample_rng(0, i),
            )
            .unwrap();
            let p = transforms::params(w, h, t, &mut loader.sample_rng(0, i)).unwrap();
            transforms::crop_resize(&img, &p, &mut scratch).unwrap();
            flips += p.flip as usize;
            let new = flipped(scratch.out(), p.size, p.flip);
            assert_eq!(old.dimensions(), new.dimensions());
            for (a, b) in old.as_raw().iter().zip(new.as_raw()) {
                let d = a.abs_diff(*b);
                assert!(d <= 2, "{} ({t:?}): a pixel differs by {d} levels", f.display());
                sum += d as u64;
                count += 1;
            }
        }
    }
    assert!(flips > 0 && flips < 8, "the flip draws should vary: {flips}");
    let mean = sum as f64 / count as f64;
    assert!(mean < 0.5, "mean difference {mean} levels");

    // The loader's batches: the same rows as bytes, and normalised (2 levels over the smallest
    // std, 0.224).
    let samples: Vec<(PathBuf, i64)> = files.iter().map(|f| (f.clone(), 0)).collect();
    for t in [train, eval] {
        let loader = folder_of(8, 4, t, 11, samples.clone());
        for idx in loader.batches(0) {
            let new = loader.make_batch(0, &idx, &mut scratch).unwrap();
            let old = loader.make_batch_reference(0, &idx, &mut scratch).unwrap();
            assert_eq!(new.pixels.size(), [idx.len() as i64, 3, 224, 224]);
            assert_eq!(new.pixels.kind(), tch::Kind::Uint8);
            let levels = max_abs_diff(&new.pixels.to_kind(tch::Kind::Float), &old.pixels.to_kind(tch::Kind::Float));
            assert!(levels <= 2.0, "{t:?}: batch {idx:?} differs by {levels} levels");
            let d = max_abs_diff(&new.images(Device::Cpu), &old.images(Device::Cpu));
            assert!(d <= 2.0 / 255.0 / 0.224 + 1e-5, "{t:?}: batch {idx:?} differs by {d}");
            assert_eq!(Vec::<i64>::try_from(&new.labels).unwrap(), Vec::<i64>::try_from(&old.labels).unwrap());
        }
    }
}

/// A truncated or corrupt JPEG on the loader's path is a skip naming the file, and the other
/// rows of its batch are kept.
#[test]
fn the_fast_loader_path_skips_truncated_and_corrupt_jpegs_by_name() {
    use groupcam::bench::loader::{JpegConfig, write_jpegs};
    let dir = tempfile::tempdir().unwrap();
    let files =
        write_jpegs(&dir.path().join("ds"), &[photo("chelsea.png")], &JpegConfig { images: 1, quality: 90, seed: 0 })
            .unwrap();
    let bytes = std::fs::read(&files[0]).unwrap();
    let cut = dir.path().join("ds/chelsea/cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    // The frame header's height and width (after FF C0, length, precision) set to zero.
    let mut bad = bytes.clone();
    let sof = bad.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline frame header");
    bad[sof + 5..sof + 9].fill(0);
    let corrupt = dir.path().join("ds/chelsea/corrupt.jpg");
    std::fs::write(&corrupt, &bad).unwrap();
    for (f, want) in [(&cut, "truncated"), (&corrupt, "corrupt")] {
        let e = format!("{:#}", groupcam::data::decode::read_rgb(f).unwrap_err());
        assert!(e.contains(&f.display().to_string()) && e.contains(want), "{e}");
    }
    let loader =
        Loader { workers: 2, shuffle: false, ..folder_of(3, 3, Transform::Eval { size: 64, resize: 73 }, 0, vec![]) };
    let loader = Loader { data: ImageFolder::open(&dir.path().join("ds")).unwrap(), ..loader };
    let batches: Vec<_> = loader.epoch(0, 0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].pixels.size(), [1, 3, 64, 64]);
    let mut named: Vec<_> = batches[0]
        .skipped
        .iter()
        .map(|(p, why)| (p.file_name().unwrap().to_owned(), why.contains(&p.display().to_string())))
        .collect();
    named.sort();
    assert_eq!(named, vec![("corrupt.jpg".into(), true), ("cut.jpg".into(), true)]);
}

/// ImageNet-sized (1000-way) ResNet-18 weights fine-tuned onto the 6 synthetic classes: refused
/// without `model.reset_head`, naming the classifier and both counts; with it, the run trains a
/// fresh 6-way `fc` and starts every other tensor from the file.
#[test]
fn reset_head_fine_tunes_1000_class_weights_onto_the_class_folders() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), 1);
    let weights = dir.path().join("imagenet-r18.safetensors");
    tch::manual_seed(11);
    let start = Model::new(Arch::Resnet18, 1000, Device::Cpu);
    groupcam::models::weights::save_safetensors(&start.vs, &weights).unwrap();
    let cfg = tiny_config(dir.path(), &data, "reset");
    let sets = |reset: bool| {
        vec![
            "--config".to_string(),
            s(&cfg).to_string(),
            "--set".into(),
            format!("weights={}", weights.display()),
            "--set".into(),
            format!("model.reset_head={reset}"),
            "--set".into(),
            "train.epochs=2".into(),
            "--set".into(),
            "train.lr=1e-6".into(),
            "--set".into(),
            "pretrain.lr=1e-6".into(),
        ]
    };
    let args = sets(false);
    let out = finetune(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("'fc.weight' has 1000 classes, but 6 are asked for") && err.contains("reset_head: true"),
        "{err}"
    );

    let args = sets(true);
    let out = finetune(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fin: std::collections::BTreeMap<String, Tensor> =
        sorted_tensors(&dir.path().join("reset/final.safetensors")).into_iter().collect();
    assert_eq!(fin["fc.weight"].size(), [6, 512]);
    let vars = start.vs.variables();
    let d = max_abs_diff(&fin["conv1.weight"], &vars["conv1.weight"]);
    assert!(d < 1e-3, "conv1 did not start from the file (moved {d} at lr 1e-6)");
    // A fresh head, not the file's first 6 rows.
    let fc = &vars["fc.weight"].narrow(0, 0, 6);
    assert!(max_abs_diff(&fin["fc.weight"], fc) > 1e-2, "fc is the file's, not a fresh layer");
}

/// The loader hands out bytes and the model's side normalises them: the result is the former
/// CPU path's floats, `p * (1 / (255 std)) + (-mean / std)` in f32, bit for bit, for both
/// normalisations; page-locked batches need CUDA and say so.
#[test]
fn byte_batches_normalise_to_the_former_floats_bit_for_bit() {
    use groupcam::data::transforms;
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), 2);
    let t = Transform::Train { size: 48, scale: (0.5, 1.0), ratio: (0.75, 1.33), flip: 0.5 };
    for norm in [Normalization::IMAGENET, Normalization::TF_LITE] {
        let loader =
            Loader { norm, data: ImageFolder::open(&data.join("train")).unwrap(), ..folder_of(0, 4, t, 2, vec![]) };
        let b = loader.make_batch(0, &[0, 1, 2, 3], &mut Default::default()).unwrap();
        assert_eq!((b.pixels.kind(), b.len()), (tch::Kind::Uint8, 4));
        let px = Vec::<u8>::try_from(b.pixels.flatten(0, -1)).unwrap();
        let plane = 48 * 48;
        let want: Vec<f32> = px
            .iter()
            .enumerate()
            .map(|(k, &p)| {
                let c = (k / plane) % 3;
                let a = (1.0 / (255.0 * norm.std[c])) as f32;
                let bias = (-norm.mean[c] / norm.std[c]) as f32;
                p as f32 * a + bias
            })
            .collect();
        let got = Vec::<f32>::try_from(b.images(Device::Cpu).flatten(0, -1)).unwrap();
        assert_eq!(got.len(), want.len());
        let differ = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
        assert_eq!(differ, 0, "{norm:?}: {differ} values differ from the former path");
        let d = max_abs_diff(
            &transforms::normalize_bytes(&b.pixels, &norm),
            &norm.apply(&(b.pixels.to_kind(tch::Kind::Float) / 255.0)),
        );
        assert!(d < 1e-5, "{d}");
    }
    if !tch::Cuda::is_available() {
        let loader = Loader {
            pin_memory: true,
            data: ImageFolder::open(&data.join("train")).unwrap(),
            ..folder_of(0, 4, t, 2, vec![])
        };
        let e = format!("{:#}", loader.make_batch(0, &[0], &mut Default::default()).err().expect("pinning needs CUDA"));
        assert!(e.contains("page-locked"), "{e}");
    }
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Issue 22, `data.extra_val`: each set is validated every epoch as `val` is and logged in the
/// history, TensorBoard, the epoch line and the report; a set that is `val` again gives val's
/// figures exactly. A missing folder or other class folders are refused naming the set and the
/// path, before anything is written; without extra sets nothing of them is written.
#[test]
fn extra_validation_sets_are_evaluated_logged_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), 2);
    let cfg = tiny_config(dir.path(), &data, "extra");
    let fast = ["--set", "train.epochs=2", "--set", "augment.enabled=false", "--set", "saliency.probe=0"];
    let out =
        finetune(&[&["--config", s(&cfg), "--set", "data.extra_val={same: val, seen: train}"][..], &fast[..]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let run = dir.path().join("extra");
    let h = json_of(&run.join("history.json"));
    assert_eq!(h.as_array().unwrap().len(), 2);
    for r in h.as_array().unwrap() {
        let same = &r["extra_val"]["same"];
        assert_eq!(
            (&same["top1"], &same["top5"], &same["images"]),
            (&r["val_top1"], &r["val_top5"], &r["val_images"]),
            "{r}"
        );
        assert_eq!(r["extra_val"]["seen"]["images"], 12, "the 12 training images: {r}");
        assert_eq!(r["extra_val"].as_object().unwrap().len(), 2);
    }
    assert_eq!(stdout.matches(" | same top-1 ").count(), 2, "{stdout}");
    assert_eq!(stdout.matches(" | seen top-1 ").count(), 2, "{stdout}");
    let tb = std::fs::read_dir(run.join("tb")).unwrap().next().unwrap().unwrap().path();
    let events = std::fs::read(tb).unwrap();
    for tag in ["val_same/top1", "val_same/top5", "val_seen/top1", "val/top1"] {
        assert!(events.windows(tag.len()).any(|w| w == tag.as_bytes()), "tag {tag} not in the event file");
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("- final same top-1: ") && report.contains("| same top-1 | seen top-1 |"), "{report}");
    assert!(
        serde_yaml::to_string(&Config::load(&run.join("config.yaml"), &[]).unwrap()).unwrap().contains("extra_val")
    );

    // Without extra sets: no key in the written config or a record.
    let plain = Config::load(&cfg, &[]).unwrap();
    assert!(!serde_yaml::to_string(&plain).unwrap().contains("extra_val"));
    assert!(!serde_json::to_string(&groupcam::train::EpochRecord::default()).unwrap().contains("extra_val"));

    let e = format!("{:#}", Config::load(&cfg, &["data.extra_val={gone: /no/such/set}".into()]).unwrap_err());
    assert!(e.contains("data.extra_val.gone") && e.contains("/no/such/set"), "{e}");
    // A set with one class folder fewer.
    let fewer = data.join("fewer");
    for c in std::fs::read_dir(data.join("val")).unwrap().map(|c| c.unwrap().path()).skip(1) {
        let to = fewer.join(c.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&c).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let bad = tiny_config(dir.path(), &data, "mismatched");
    let out = finetune(&[&["--config", s(&bad), "--set", "data.extra_val={fewer: fewer}"][..], &fast[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("data.extra_val.fewer") && err.contains(s(&fewer)) && err.contains("differ"), "{err}");
    assert!(!dir.path().join("mismatched").exists(), "a run directory was made for a refused set");
}

/// Issue 22, `augment.method: cutmix`: its boxes are drawn from the loop's seeded generator, so
/// a run killed with SIGKILL and resumed ends bit for bit as the uninterrupted one; the
/// fine-tuning epochs mix, the pre-training does not; the written config says the method last.
#[test]
fn cutmix_runs_resume_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let run = check_kill_9_and_resume(dir.path(), &["augment.method=cutmix"]);
    let h = json_of(&run.join("history.json"));
    assert_eq!(h.as_array().unwrap().len(), 3);
    assert_eq!(h[0]["augmented_fraction"].as_f64(), Some(0.0), "the pre-training does not mix");
    for e in [1, 2] {
        // Batches of 6 pair every image with another: all of them change unless a box is empty.
        assert!(h[e]["augmented_fraction"].as_f64().unwrap() > 0.4, "{}", h[e]);
    }
    let written = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    let augment = written.split("augment:").nth(1).unwrap();
    assert!(augment.contains("  cache_size: null\n  method: cutmix\n"), "{written}");
    let e = format!(
        "{:#}",
        Config::load(&dir.path().join("straight.yaml"), &["augment.method=cutmix".into(), "augment.refresh=1".into()])
            .unwrap_err()
    );
    assert!(e.contains("augment.refresh") && e.contains("cutmix"), "{e}");
    let e =
        format!("{:#}", Config::load(&dir.path().join("straight.yaml"), &["augment.method=mixup".into()]).unwrap_err());
    assert!(e.contains("augment.method") && e.contains("groupcam or cutmix"), "{e}");
}

/// The step's loss against soft targets is soft-target cross-entropy computed directly (in
/// f64 from the same logits), and one-hot targets give plain cross-entropy.
#[test]
fn the_soft_target_step_is_soft_cross_entropy() {
    use groupcam::train::{LossScaler, StepResult, Trainer, sgd::Sgd, soft_cross_entropy};
    tch::manual_seed(5);
    let m = Model::new(Arch::Resnet18, 4, Device::Cpu);
    let x = Tensor::randn([4, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let one_hot = y.one_hot(4).to_kind(tch::Kind::Float);
    let soft = &one_hot * 0.7 + one_hot.flip([0]) * 0.3;
    m.set_training(true);
    // Train-mode BatchNorm normalises by the batch's own statistics: the step's forward gives these logits.
    let logits = tch::no_grad(|| m.forward(&x));
    let (l, t) = (
        Vec::<Vec<f64>>::try_from(logits.to_kind(tch::Kind::Double)).unwrap(),
        Vec::<Vec<f64>>::try_from(soft.to_kind(tch::Kind::Double)).unwrap(),
    );
    let direct = l
        .iter()
        .zip(&t)
        .map(|(row, target)| {
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let log_z = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            -row.iter().zip(target).map(|(v, p)| p * (v - log_z)).sum::<f64>()
        })
        .sum::<f64>()
        / 4.0;
    let hard = soft_cross_entropy(&logits, &one_hot).double_value(&[]);
    assert!((hard - logits.cross_entropy_for_logits(&y).double_value(&[])).abs() < 1e-6);
    assert!((soft_cross_entropy(&logits, &soft).double_value(&[]) - direct).abs() < 1e-5);
    let mut trainer = Trainer::new(Sgd::new(&m.vs, 0.9, 0.0), LossScaler::resume(1.0, 0), None);
    let StepResult::Done { loss, .. } = trainer.step_with(&m, &x, &y, Some(&soft), 0.1).unwrap() else {
        panic!("the step did not finish")
    };
    assert!((loss - direct).abs() < 1e-5, "step loss {loss}, soft-target cross-entropy {direct}");
    assert!((loss - hard).abs() > 1e-3, "the soft targets made no difference");
}
