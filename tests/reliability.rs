//! Issue 9: bad values refused before work, nothing lost or overwritten, no silent failure.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use groupcam::data::{ImageFolder, Loader, Transform};
use groupcam::models::Normalization;
use groupcam::rundir::{Reuse, RunLock};
use groupcam::train::Config;

fn tiny(dir: &Path) -> PathBuf {
    let data = tiny_data(dir, 48, 2);
    let p = dir.join("c.yaml");
    let text = format!(
        "arch: resnet18\n\
         data: {{root: {}, input_size: 48, workers: 2, prefetch: 2}}\n\
         train: {{epochs: 2, batch_size: 6, lr: 0.01, lr_step: 1, seed: 7, device: cpu, threads: 1}}\n\
         augment: {{enabled: false}}\n\
         saliency: {{probe: 0}}\n\
         out: {}\n",
        data.display(),
        dir.join("run").display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// `finetune --quiet ARGS`: exit code and stderr.
fn finetune_rc(args: &[&str]) -> (i32, String) {
    let (rc, _, err) = finetune_out(args);
    (rc, err)
}

/// `finetune --quiet ARGS`: exit code, stdout and stderr.
fn finetune_out(args: &[&str]) -> (i32, String, String) {
    let o = finetune(args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
}

/// Case 4, 11, 12: every numeric key's range, named by its path, before anything is created.
#[test]
fn out_of_range_values_are_refused_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path());
    for (set, key) in [
        ("train.lr_gamma=-1", "train.lr_gamma"),
        ("train.lr=.inf", "train.lr"),
        ("pretrain={epochs: 1, lr: -0.05}", "pretrain.lr"),
        ("train.threads=0", "train.threads"),
        ("data.scale=[1.0,0.5]", "data.scale"),
        ("data.scale=[0,0]", "data.scale"),
        ("data.ratio=[0,0]", "data.ratio"),
        ("data.flip=2.0", "data.flip"),
        ("train.max_steps=0", "train.max_steps"),
        ("data.input_size=1", "data.input_size"),
        ("augment.groups=0", "augment.groups"),
        ("train.momentum=1.5", "train.momentum"),
        ("train.initial_loss_scale=0.5", "train.initial_loss_scale"),
        ("train.tensorboard=sometimes", "train.tensorboard"),
    ] {
        let e = format!("{:#}", Config::load(&cfg, &[set.to_string()]).unwrap_err());
        assert!(e.contains(&format!("'{key}'")), "{set}: {e}");
    }
    let (rc, err) = finetune_rc(&["--config", s(&cfg), "--set", "data.scale=[1.0,0.5]"]);
    assert_eq!(rc, 1, "{err}");
    assert!(!dir.path().join("run").exists(), "a refused config created the run directory");
}

/// Case 8: a failed write leaves the old file and no temporary; a full disk too (tmpfs, as root).
#[test]
fn a_failed_write_leaves_the_old_file_and_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("final.safetensors");
    groupcam::atomic::write_bytes(&p, b"old").unwrap();
    let e = groupcam::atomic::write_with(&p, |tmp| {
        std::fs::write(tmp, b"partial")?;
        anyhow::bail!("injected writer error")
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("final.safetensors"), "{e:#}");
    assert_eq!(std::fs::read(&p).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary was left behind");

    let mnt = dir.path().join("full");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", s(&mnt)])
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("not root: the tmpfs disk-full case is not run");
        return;
    }
    let r = groupcam::atomic::write_bytes(&mnt.join("big.bin"), &vec![7u8; 1 << 20]);
    let left = std::fs::read_dir(&mnt).unwrap().count();
    std::process::Command::new("umount").arg(&mnt).status().unwrap();
    assert!(r.is_err(), "1 MB fitted in 64 kB");
    assert_eq!(left, 0, "a full disk left a partial file or a temporary");
}

/// Case 5 and 6 in the library: one writer, a run only reused on purpose, stale locks taken over,
/// and a directory made for a run that never started removed again.
#[test]
fn run_directories_are_locked_and_never_silently_reused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a/run");
    let first = RunLock::open(&out, Reuse::Fresh).unwrap();
    let e = RunLock::open(&out, Reuse::Resume).unwrap_err().to_string();
    assert!(e.contains("in use") && e.contains(&std::process::id().to_string()), "{e}");
    drop(first);
    assert!(!dir.path().join("a").exists(), "an unstarted run left its directories");

    std::fs::create_dir_all(out.join("checkpoints")).unwrap();
    let e = RunLock::open(&out, Reuse::Fresh).unwrap_err().to_string();
    assert!(e.contains("already holds a run") && e.contains("--resume") && e.contains("--overwrite"), "{e}");
    let mut o = RunLock::open(&out, Reuse::Overwrite).unwrap();
    assert!(out.join("checkpoints").exists(), "cleared before the run started");
    o.start().unwrap();
    assert!(!out.join("checkpoints").exists());
    drop(o);

    // A lock file left by a process killed with -9.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    std::fs::write(out.join(groupcam::rundir::LOCK), child.id().to_string()).unwrap();
    let taken = RunLock::open(&out, Reuse::Fresh).unwrap();
    assert_eq!(taken.stale_pid, Some(child.id()));
}

/// Cases 5, 6, 10 through the CLI.
#[test]
fn finetune_refuses_a_second_writer_a_finished_run_and_a_bad_resume_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path());
    let run = dir.path().join("run");
    let mut child =
        bin().args(["finetune", "--quiet", "--config", s(&cfg)]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !run.join(groupcam::rundir::LOCK).exists() {
        assert!(t0.elapsed() < Duration::from_secs(120) && child.try_wait().unwrap().is_none(), "no lock seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (rc, err) = finetune_rc(&["--config", s(&cfg)]);
    assert_eq!(rc, 1);
    assert!(err.contains("in use"), "{err}");
    assert!(child.wait().unwrap().success());

    let (rc, err) = finetune_rc(&["--config", s(&cfg)]);
    assert_eq!(rc, 1);
    assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");

    let before = std::fs::read(run.join("config.yaml")).unwrap();
    let bogus = dir.path().join("bogus.safetensors");
    std::fs::write(&bogus, b"not a checkpoint").unwrap();
    let (rc, err) = finetune_rc(&["--config", s(&cfg), "--set", "train.epochs=3", "--resume", s(&bogus)]);
    assert_eq!(rc, 1);
    assert!(err.contains("bogus.safetensors") && !err.contains("frame #"), "{err}");
    assert_eq!(std::fs::read(run.join("config.yaml")).unwrap(), before, "a failed resume rewrote config.yaml");

    let last = run.join("checkpoints/last.safetensors");
    let (rc, err) =
        finetune_rc(&["--config", s(&cfg), "--set", "train.epochs=3", "--set", "arch=resnet34", "--resume", s(&last)]);
    assert_eq!(rc, 1);
    assert!(err.contains("checkpoint of a resnet18 run, but the config's arch is resnet34"), "{err}");

    let (rc, err) = finetune_rc(&["--config", s(&cfg), "--overwrite"]);
    assert_eq!(rc, 0, "{err}");
}

/// Case 14: the first Ctrl-C stops the run, names the checkpoint and how to resume, exits 130.
#[test]
fn ctrl_c_stops_cleanly_and_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path());
    let run = dir.path().join("run");
    let child = bin()
        .args(["finetune", "--quiet", "--config", s(&cfg), "--set", "train.epochs=50"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !run.join("history.json").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("last.safetensors") && err.contains("--resume"), "{err}");
    assert!(!run.join(groupcam::rundir::LOCK).exists(), "the lock outlived the run");
}

/// Cases 1 and 3: a panicking transform stops the epoch with an error naming the image; a
/// truncated JPEG is refused (the image crate alone decodes it) and counted as a skip.
#[test]
fn loader_failures_are_errors_and_truncated_jpegs_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    std::fs::create_dir_all(root.join("a")).unwrap();
    let img = image::open(photo("coffee.png")).unwrap().to_rgb8();
    let jpg = root.join("a/coffee.jpg");
    img.save(&jpg).unwrap();
    image::RgbImage::from_pixel(40, 40, image::Rgb([1, 2, 3])).save(root.join("a/ok.png")).unwrap();
    let bytes = std::fs::read(&jpg).unwrap();
    let cut = root.join("a/cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    assert!(image::load_from_memory(&bytes[..bytes.len() * 2 / 3]).is_ok(), "premise: image decodes it silently");
    let e = format!("{:#}", groupcam::imageio::load_rgb(&cut).unwrap_err());
    assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");
    assert!(groupcam::imageio::load_rgb(&jpg).is_ok());

    let data = ImageFolder::open(&root).unwrap();
    let mut loader = Loader {
        data,
        batch_size: 3,
        shuffle: false,
        drop_last: false,
        transform: Transform::Train { size: 24, scale: (0.5, 1.0), ratio: (0.75, 1.33), flip: 0.5 },
        norm: Normalization::IMAGENET,
        workers: 2,
        prefetch: 1,
        seed: 0,
        pin_memory: false,
        masks: None,
    };
    let b: Vec<_> = loader.epoch(0, 0).collect::<anyhow::Result<_>>().unwrap();
    let skipped: Vec<_> = b.iter().flat_map(|b| b.skipped.iter()).collect();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].0.ends_with("cut.jpg"));

    loader.transform = Transform::Train { size: 24, scale: (1.0, 0.5), ratio: (0.75, 1.33), flip: 0.5 };
    let items: Vec<_> = loader.epoch(0, 0).collect();
    let e = items.iter().find_map(|r| r.as_ref().err()).expect("a panicking transform ended the epoch silently");
    assert!(format!("{e:#}").contains("panicked"), "{e:#}");
}

/// Case 7, 11, 12 through the CLI: inputs never overwritten, sizes bounded, clear weights errors.
#[test]
fn cli_bounds_and_inputs_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rand = d.join("rand.ot");
    std::fs::write(&rand, (0..5000u32).map(|i| (i * 2654435761u32 >> 13) as u8).collect::<Vec<u8>>()).unwrap();
    let coffee = photo("coffee.png");
    let syn = d.join("syn");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["predict", "--arch", "resnet18", "--weights", s(&rand), "--image", s(&coffee)], "rand.ot"),
        (vec!["synth", "--out", s(&syn), "--size", "0"], "size 0"),
    ];
    for (args, want) in cases {
        let o = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want) && !err.contains("frame #") && !err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!d.join("syn").exists(), "synth --size 0 left a folder");
    // explain --image dir/x.png --out dir must not replace the photo with its overlay.
    let photo_in = d.join("x.png");
    std::fs::copy(&coffee, &photo_in).unwrap();
    let w = effnet_weights();
    let o = bin()
        .args(["explain", "--arch", "efficientnet-lite0", "--weights", s(&w), "--image", s(&photo_in), "--out", s(d)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("overwrite the input"), "{err}");
    assert_eq!(std::fs::read(&photo_in).unwrap(), std::fs::read(&coffee).unwrap(), "the input photo changed");
    assert!(groupcam::imageio::check_input_size(100000).is_err() && groupcam::imageio::check_input_size(0).is_err());
    let e = groupcam::atomic::check_not_inputs(&[coffee.clone()], &[coffee.clone()]).unwrap_err().to_string();
    assert!(e.contains("overwrite the input"), "{e}");
}

/// Case 2, 1 ("an epoch that trained on no batch"), 12 (one class), 13 (the NaN message):
/// unreadable validation images are named and counted and the accuracy says over how many
/// images it is; an epoch of unreadable images, a one-class dataset and a NaN before the first
/// checkpoint are errors that say what happened.
#[test]
fn validation_skips_are_counted_and_empty_epochs_one_class_and_early_nans_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path());
    let data = dir.path().join("data");
    for i in 0..3 {
        std::fs::write(data.join(format!("val/circle/bad{i}.png")), b"").unwrap();
    }
    let (rc, out, err) = finetune_out(&["--config", s(&cfg), "--set", "train.epochs=1"]);
    assert_eq!(rc, 0, "{err}");
    for i in 0..3 {
        let lines = out.lines().filter(|l| l.starts_with("skipped") && l.contains(&format!("bad{i}.png"))).count();
        assert_eq!(lines, 1, "bad{i}.png not named once:\n{out}");
    }
    assert!(out.contains("(of 12 images, 3 unreadable skipped)"), "{out}");
    let h = history(&dir.path().join("run"));
    assert_eq!((h[0]["val_images"].as_u64(), h[0]["val_skipped"].as_u64()), (Some(12), Some(3)));

    let nan = dir.path().join("nan");
    let (rc, _, err) =
        finetune_out(&["--config", s(&cfg), "--set", "train.lr=1e38", "--set", &format!("out={}", nan.display())]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("no checkpoint was written yet") && !err.contains("last.safetensors"), "{err}");

    for f in groupcam::data::ImageFolder::open(&data.join("train")).unwrap().samples {
        std::fs::write(&f.0, b"").unwrap();
    }
    let empty = dir.path().join("empty");
    let (rc, _, err) = finetune_out(&["--config", s(&cfg), "--set", &format!("out={}", empty.display())]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("epoch 1 trained on no image"), "{err}");
    assert!(!empty.join("final.safetensors").exists());

    let one = dir.path().join("one");
    for split in ["train", "val"] {
        std::fs::create_dir_all(one.join(split).join("cat")).unwrap();
        for i in 0..6 {
            image::RgbImage::from_pixel(48, 48, image::Rgb([i * 40, 9, 9]))
                .save(one.join(split).join(format!("cat/{i}.png")))
                .unwrap();
        }
    }
    let one_run = dir.path().join("one-run");
    let (rc, _, err) = finetune_out(&[
        "--config",
        s(&cfg),
        "--set",
        &format!("data.root={}", one.display()),
        "--set",
        &format!("out={}", one_run.display()),
    ]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("one class folder (cat)"), "{err}");
    assert!(!one_run.exists(), "a refused dataset created the run directory");
}

/// Case 9: a full disk under TensorBoard (a 4 kB tmpfs over the run's tb/, as root) stops the
/// run after the epoch's checkpoint, naming the log and how to resume; with
/// `train.tensorboard: continue` it is said once and the run finishes. (The library test
/// `tb::tests` injects the same error without root.)
#[test]
fn a_full_disk_under_tensorboard_stops_with_the_checkpoint_intact_or_goes_on_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path());
    let run = dir.path().join("run");
    let probe = ["--set", "saliency.probe=2"];
    let (rc, _, err) = finetune_out(&[&["--config", s(&cfg), "--set", "train.epochs=1"][..], &probe[..]].concat());
    assert_eq!(rc, 0, "{err}");
    let tb = run.join("tb");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs", s(&tb)])
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("not root: the TensorBoard disk-full case is not run");
        return;
    }
    let last = run.join("checkpoints/last.safetensors");
    let resume = |epochs: &str, extra: &[&str]| {
        let args = [&["--config", s(&cfg), "--resume", s(&last), "--set", epochs][..], &probe[..], extra].concat();
        finetune_out(&args)
    };
    let stopped = resume("train.epochs=2", &[]);
    let went_on = resume("train.epochs=3", &["--set", "train.tensorboard=continue"]);
    std::process::Command::new("umount").arg(&tb).status().unwrap();

    let (rc, _, err) = stopped;
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("cannot write the TensorBoard log") && err.contains("tb/events.out.tfevents"), "{err}");
    assert!(err.contains("is intact: continue with --resume") && err.contains("train.tensorboard: continue"), "{err}");
    let (rc, out, err) = went_on;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.matches("cannot write the TensorBoard log").count(), 1, "{out}");
    let h = history(&run);
    assert_eq!(h.len(), 3, "the stopped run lost its epoch's checkpoint, or the continued run stopped");
}

/// `groupcam ARGS`: exit code and stderr.
fn run_cli(args: &[&str]) -> (i32, String) {
    let o = bin().args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Issue 24, case 1: every command that writes files refuses, before any work (the weights are
/// junk, so any work would fail differently), an output that is an input, lies inside an input
/// directory or is a directory holding one; the error names both paths and flags, and the
/// input is left byte for byte.
#[test]
fn no_command_writes_over_into_or_around_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let photos = d.join("photos");
    std::fs::create_dir(&photos).unwrap();
    let c = photos.join("c.png");
    std::fs::copy(photo("coffee.png"), &c).unwrap();
    let junk = d.join("junk.ot");
    std::fs::write(&junk, b"not weights").unwrap();
    let (c_, p_, j_) = (s(&c), s(&photos), s(&junk));
    let maps = photos.join("maps");
    let rj = d.join("r.json");
    let r_ = s(&rj);
    let inside = format!("{p_}/r.json");
    let model = ["--arch", "resnet18", "--weights", j_];
    let cases: Vec<(Vec<&str>, [&str; 3])> = vec![
        (vec!["eval", "--images", c_, "--json", c_], ["--json", "--images", "would overwrite the input"]),
        (
            vec!["eval", "--images", p_, "--json", r_, "--save-maps", s(&maps)],
            ["--save-maps", "--images", "inside the input directory"],
        ),
        (
            vec!["eval", "--images", c_, "--json", r_, "--plot", j_],
            ["--plot", "--weights", "would overwrite the input"],
        ),
        (vec!["explain", "--image", c_, "--out", p_], ["--out", "--image", "holds the input"]),
        (vec!["augment", "--image", c_, "--label", "1", "--out", p_], ["--out", "--image", "overwrite the input"]),
        (vec!["sanity", "--images", p_, "--json", &inside], ["--json", "--images", "inside the input directory"]),
        (
            vec!["sanity", "--images", c_, "--json", r_, "--figure", c_],
            ["--figure", "--images", "would overwrite the input"],
        ),
    ];
    for (args, want) in &cases {
        let args: Vec<&str> = args.iter().chain(&model).copied().collect();
        let (rc, err) = run_cli(&args);
        assert_eq!(rc, 1, "{args:?}: {err}");
        assert!(want.iter().all(|w| err.contains(w)) && !err.contains("junk.ot is"), "{args:?}: {err}");
        assert!(err.contains(s(&c)) || err.contains(p_) || err.contains(j_), "{args:?} names no path: {err}");
    }
    let (rc, err) = run_cli(&["bench", "loader", "--photos", c_, "--dump", p_, "--no-torchvision"]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("--dump") && err.contains("holds the input --photos"), "{err}");
    assert_eq!(std::fs::read(&c).unwrap(), std::fs::read(photo("coffee.png")).unwrap(), "an input changed");
    assert_eq!(std::fs::read(&junk).unwrap(), b"not weights");
    assert!(!maps.exists() && !rj.exists(), "a refused command wrote something");

    // eval with real weights: the photo is not replaced by the JSON report.
    let w = effnet_weights();
    let (rc, err) = run_cli(&[
        "eval",
        "--arch",
        "efficientnet-lite0",
        "--weights",
        s(&w),
        "--images",
        c_,
        "--methods",
        "gradcam",
        "--metrics",
        "deletion",
        "--json",
        c_,
    ]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("--json") && err.contains("would overwrite the input --images"), "{err}");
    assert_eq!(std::fs::read(&c).unwrap(), std::fs::read(photo("coffee.png")).unwrap(), "eval replaced its input");

    // finetune: a run directory inside the data, one holding the starting weights (which
    // --overwrite would clear) or the config; its own checkpoint is what --resume continues.
    let cfg = tiny(d);
    let data = d.join("data");
    let (rc, err) = finetune_rc(&["--config", s(&cfg), "--out", s(&data.join("run"))]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("--out") && err.contains("inside the input directory data.root"), "{err}");
    assert!(!data.join("run").exists());
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let start = run.join("start.safetensors");
    std::fs::write(&start, b"weights").unwrap();
    let (rc, err) =
        finetune_rc(&["--config", s(&cfg), "--set", &format!("weights={}", start.display()), "--overwrite"]);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains("out ") && err.contains("holds the input weights") && err.contains("start.safetensors"),
        "{err}"
    );
    assert_eq!(std::fs::read(&start).unwrap(), b"weights");
    let inner = run.join("c.yaml");
    std::fs::copy(&cfg, &inner).unwrap();
    let (rc, err) = finetune_rc(&["--config", s(&inner)]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("holds the input --config"), "{err}");
    // A checkpoint deeper in the run directory than its own checkpoints/ is not its own.
    let deeper = d.join("outer/inner/checkpoints/last.safetensors");
    std::fs::create_dir_all(deeper.parent().unwrap()).unwrap();
    std::fs::write(&deeper, b"x").unwrap();
    let (rc, err) = finetune_rc(&["--config", s(&cfg), "--out", s(&d.join("outer")), "--resume", s(&deeper)]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("--out") && err.contains("holds the input --resume"), "{err}");
}
