//! The saliency cache (issue 13, `augment.refresh: K`): cached masks against the augmentation's
//! fresh ones, masks that follow the crop and the flip, stale and foreign caches, and a run that
//! refreshes on its schedule and resumes bit for bit.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use groupcam::augment::cache::{self, CacheMeta, SaliencyCache};
use groupcam::augment::{CacheOf, GroupCamAugment, Precision, Threshold, binarize};
use groupcam::data::{ImageFolder, Loader, Transform, transforms};
use groupcam::models::{Arch, Model};
use tch::{Device, Kind, Tensor};

const S: u32 = 48;

fn synth_data(dir: &Path, per_class: usize) -> PathBuf {
    tiny_data(dir, S, per_class)
}

fn loader(data: ImageFolder, transform: Transform) -> Loader {
    Loader {
        data,
        batch_size: 4,
        shuffle: false,
        drop_last: false,
        transform,
        norm: groupcam::models::Normalization::IMAGENET,
        workers: 1,
        prefetch: 1,
        seed: 3,
        pin_memory: false,
        masks: None,
    }
}

fn meta(data: &ImageFolder, side: u32, epoch: usize) -> CacheMeta {
    CacheMeta {
        version: cache::VERSION,
        samples: data.len(),
        side,
        input_size: S,
        groups: 16,
        score_size: None,
        world: 1,
        fingerprint: cache::fingerprint(data),
        epoch,
        holds: CacheOf::Maps,
        precision: None,
    }
}

/// A score cache's description: G = 16 f16 scores of each whole image at the input size.
fn score_meta(data: &ImageFolder, epoch: usize) -> CacheMeta {
    CacheMeta { side: S, holds: CacheOf::Scores, precision: Some(Precision::F32), ..meta(data, S, epoch) }
}

/// Builds a cache of `data` at `side` px in `dir` with `model`.
fn build(model: &Model, data: &ImageFolder, side: u32, dir: &Path) -> SaliencyCache {
    let m = meta(data, side, 0);
    let whole = loader(data.clone(), Transform::Whole { size: S });
    let stats =
        cache::write_part(model, &GroupCamAugment::default(), &whole, &m, 0, dir, Device::Cpu, &|| false).unwrap();
    assert_eq!(stats.images, data.len());
    cache::publish(dir, &m).unwrap();
    SaliencyCache::open(dir, &m, 0, 1.0).unwrap().unwrap()
}

fn agreement(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    a.eq_tensor(b).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// At full resolution and on whole-image crops the cached mask is the augmentation's own mask
/// (only pixels within 1/255 of the mean, where the bytes round, may differ); flipped crops get
/// the mirrored mask; a crop's mask is the cached map's box resized and cut at the crop's own
/// mean, not the whole image's.
#[test]
fn cached_masks_are_the_fresh_masks_and_follow_the_crop_and_the_flip() {
    let dir = tempfile::tempdir().unwrap();
    let data = ImageFolder::open(&synth_data(dir.path(), 2).join("train")).unwrap();
    tch::manual_seed(0);
    let model = Model::new(Arch::Resnet18, data.classes.len() as i64, Device::Cpu);
    let cache = std::sync::Arc::new(build(&model, &data, S, &dir.path().join("cache")));
    assert_eq!(
        std::fs::metadata(dir.path().join("cache/part-0-of-1.u8")).unwrap().len(),
        cache::bytes_needed(data.len(), S)
    );

    // The fresh masks of the whole images, as the augmentation makes them.
    let whole = loader(data.clone(), Transform::Whole { size: S });
    let batch = whole.make_batch(0, &(0..data.len()).collect::<Vec<_>>(), &mut Default::default()).unwrap();
    let (maps, constant) =
        GroupCamAugment::default().maps_for(&model, &batch.images(Device::Cpu), &batch.labels).unwrap();
    let fresh = binarize(&maps, &Tensor::from_slice(&constant), Threshold::ImageMean);
    // Random weights leave some maps constant (every group's gain <= 0): those pass through
    // both ways, and enough others are left to compare.
    assert!(constant.iter().filter(|&&c| !c).count() >= data.len() / 3, "{constant:?}");

    let all: Vec<usize> = (0..data.len()).collect();
    for (flip, want) in [(0.0, fresh.shallow_clone()), (1.0, fresh.flip([3i64]))] {
        let mut l = loader(data.clone(), Transform::Train { size: S, scale: (1.0, 1.0), ratio: (1.0, 1.0), flip });
        l.masks = Some(cache.clone());
        let b = l.make_batch(0, &all, &mut Default::default()).unwrap();
        let masks = b.masks_on(Device::Cpu).expect("a loader with a cache cuts masks");
        let a = agreement(&masks, &want);
        assert!(a > 0.99, "flip {flip}: cached masks agree with the fresh ones on {a:.4} of the pixels");
        let live = constant.iter().filter(|&&c| !c).count();
        assert!(b.masked <= live && b.masked + 1 >= live, "{} masked, {live} maps with an order", b.masked);
        assert!(masks.mean(Kind::Double).double_value(&[]) < 0.9, "the masks hide pixels");
    }

    // Quarter-area crops: the box of the cached map, resized (bilinear) and cut at its own mean.
    let t = Transform::Train { size: S, scale: (0.25, 0.25), ratio: (1.0, 1.0), flip: 0.5 };
    let mut l = loader(data.clone(), t);
    l.masks = Some(cache.clone());
    let b = l.make_batch(1, &all, &mut Default::default()).unwrap();
    let masks = b.masks_on(Device::Cpu).unwrap();
    let mut own_mean_differs = false;
    for &i in &all {
        let p = transforms::params(S, S, t, &mut l.sample_rng(1, i)).unwrap();
        let map = Tensor::from_slice(cache.map(i)).view([1, 1, S as i64, S as i64]).to_kind(Kind::Float);
        let boxed = map.narrow(2, p.y as i64, p.h as i64).narrow(3, p.x as i64, p.w as i64);
        let up = boxed.upsample_bilinear2d([S as i64, S as i64], false, None, None);
        let up = if p.flip { up.flip([3]) } else { up };
        let want = up.ge_tensor(&up.mean(Kind::Float)).to_kind(Kind::Float);
        let a = agreement(&masks.narrow(0, i as i64, 1), &want);
        assert!(a > 0.95, "image {i} ({p:?}): the crop's mask agrees on {a:.4} of the pixels");
        let by_whole = up.ge(map.mean(Kind::Float).double_value(&[])).to_kind(Kind::Float);
        own_mean_differs |= agreement(&want, &by_whole) < 0.99;
    }
    assert!(own_mean_differs, "the test's crops should show that the crop's own mean is used");
}

/// A cache made for other data, other settings or older weights than the epoch allows is not
/// opened, and says why; a missing part is named.
#[test]
fn stale_foreign_and_broken_caches_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = ImageFolder::open(&synth_data(dir.path(), 1).join("train")).unwrap();
    tch::manual_seed(0);
    let model = Model::new(Arch::Resnet18, data.classes.len() as i64, Device::Cpu);
    let at = dir.path().join("cache");
    build(&model, &data, 8, &at);
    let want = meta(&data, 8, 3);
    assert!(SaliencyCache::open(&at, &want, 0, 1.0).unwrap().is_ok(), "maps of epoch 1 serve epoch 4 when due at 1");
    let why = SaliencyCache::open(&at, &want, 2, 1.0).unwrap().unwrap_err().to_string();
    assert!(why.contains("needs maps from epoch 3"), "{why}");
    let other = ImageFolder { samples: data.samples[1..].to_vec(), ..data.clone() };
    let why = SaliencyCache::open(&at, &meta(&other, 8, 0), 0, 1.0).unwrap().unwrap_err().to_string();
    assert!(why.contains("another training set"), "{why}");
    let why = SaliencyCache::open(&at, &meta(&data, 16, 0), 0, 1.0).unwrap().unwrap_err().to_string();
    assert!(why.contains("settings differ"), "{why}");
    std::fs::write(at.join("part-0-of-1.u8"), b"short").unwrap();
    let why = SaliencyCache::open(&at, &meta(&data, 8, 0), 0, 1.0).unwrap().unwrap_err().to_string();
    assert!(why.contains("part-0-of-1.u8") && why.contains("bytes"), "{why}");
    cache::clear(&at).unwrap();
    assert!(std::fs::read_dir(&at).unwrap().next().is_none(), "clear leaves the directory empty");
    let why = SaliencyCache::open(&at, &meta(&data, 8, 0), 0, 1.0).unwrap().unwrap_err().to_string();
    assert_eq!(why, "no cache yet");
    // A pass stopped (Ctrl-C) before its second batch leaves no part behind.
    let calls = std::cell::Cell::new(0);
    let stop = || {
        calls.set(calls.get() + 1);
        calls.get() > 1
    };
    let whole = loader(data.clone(), Transform::Whole { size: S });
    let e =
        cache::write_part(&model, &GroupCamAugment::default(), &whole, &meta(&data, 8, 0), 0, &at, Device::Cpu, &stop)
            .unwrap_err();
    assert!(e.downcast_ref::<cache::Stopped>().is_some_and(|s| s.done == 4), "{e:#}");
    assert!(std::fs::read_dir(&at).unwrap().next().is_none(), "a stopped pass left a file");
    let e = cache::check_space(&at, u64::MAX / 4).unwrap_err().to_string();
    assert!(e.contains("needs") && e.contains("GB") && e.contains(&at.display().to_string()), "{e}");
    assert_eq!(cache::due_epoch(7, 1, 5), 6);
    assert_eq!(cache::due_epoch(5, 1, 5), 1);
    assert_eq!(cache::shard(10, 1, 3), vec![1, 4, 7]);
}

fn config(dir: &Path, data: &Path, out: &str, epochs: usize) -> PathBuf {
    config_with(dir, data, out, epochs, "")
}

/// The run of [`config`] with more `augment` keys (`, key: value` each).
fn config_with(dir: &Path, data: &Path, out: &str, epochs: usize, augment: &str) -> PathBuf {
    let p = dir.join(format!("{out}.yaml"));
    let text = format!(
        "arch: resnet18\n\
         data: {{root: {}, input_size: 48, workers: 2, prefetch: 2}}\n\
         train: {{epochs: {epochs}, batch_size: 6, lr: 0.01, lr_step: 2, lr_gamma: 0.5, seed: 7, device: cpu, threads: 1}}\n\
         pretrain: {{epochs: 1, lr: 0.02}}\n\
         augment: {{groups: 16, refresh: 2, cache_size: 24{augment}}}\n\
         saliency: {{probe: 4, groups: 8}}\n\
         out: {}\n",
        data.display(),
        dir.join(out).display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// 1 plain epoch, then 3 fine-tuning epochs with maps refreshed every 2: before epochs 2 and 4.
/// The history and the epoch lines say which weights each epoch's maps came from; a run stopped
/// after epoch 2 and resumed to 4 reuses the cache and ends with the same weights bit for bit.
#[test]
fn a_cached_run_refreshes_on_schedule_and_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path(), 2);
    let out = finetune_ok(&["--config", s(&config(dir.path(), &data, "straight", 4))]);
    let text = String::from_utf8_lossy(&out.stdout);
    let refreshes: Vec<&str> = text.lines().filter(|l| l.contains(" maps of 24 x 24 px")).collect();
    assert_eq!(refreshes.len(), 2, "{text}");
    assert!(refreshes[0].contains("before epoch 2") && refreshes[1].contains("before epoch 4"), "{text}");
    assert!(text.contains("(cached maps: refreshed every 2 epochs, these from before epoch 4)"), "{text}");
    let run = dir.path().join("straight");
    let h = history(&run);
    let from: Vec<Option<u64>> = (0..4).map(|e| h[e]["maps_from_epoch"].as_u64()).collect();
    assert_eq!(from, vec![None, Some(2), Some(2), Some(4)]);
    assert_eq!(h[1]["refresh_every"].as_u64(), Some(2));
    let refreshed: Vec<bool> = (0..4).map(|e| h[e]["refresh_seconds"].as_f64().is_some_and(|s| s > 0.0)).collect();
    assert_eq!(refreshed, vec![false, true, false, true], "the epochs whose refresh pass is recorded");
    assert!(h[1]["augmented_fraction"].as_f64().unwrap() > 0.0 && h[0]["augmented_fraction"].as_f64() == Some(0.0));
    let n = ImageFolder::open(&data.join("train")).unwrap().len();
    assert_eq!(std::fs::metadata(run.join("saliency-cache/part-0-of-1.u8")).unwrap().len(), cache::bytes_needed(n, 24));
    let listed: CacheMeta =
        serde_json::from_str(&std::fs::read_to_string(run.join("saliency-cache/cache.json")).unwrap()).unwrap();
    assert_eq!((listed.epoch, listed.side, listed.samples), (3, 24, n));

    let split = |epochs| config(dir.path(), &data, "split", epochs);
    check_split_run(&run, split, " maps of 24 x 24 px", "maps");
}

/// A run of `split(2)` (its config for 2 epochs), resumed with `split(4)` into the same
/// directory (each config written when its run starts: they share a file), refreshes once (before epoch 4: epoch 3 reuses what was made before epoch 2; `line` marks a
/// refresh on stdout) and ends with the weights of the straight `run`, bit for bit.
fn check_split_run(run: &Path, split: impl Fn(usize) -> PathBuf, line: &str, what: &str) {
    let first = split(2);
    finetune_ok(&["--config", s(&first)]);
    let dir = first.parent().unwrap().join("split");
    let out = finetune_ok(&["--config", s(&split(4)), "--resume", s(&dir.join("checkpoints/last.safetensors"))]);
    let text = String::from_utf8_lossy(&out.stdout);
    let refreshes: Vec<&str> = text.lines().filter(|l| l.contains(line)).collect();
    assert_eq!(refreshes.len(), 1, "epoch 3 reuses the {what} made before epoch 2: {text}");
    assert!(refreshes[0].contains("before epoch 4"), "{text}");
    let a = Tensor::read_safetensors(run.join("final.safetensors")).unwrap();
    let b = Tensor::read_safetensors(dir.join("final.safetensors")).unwrap();
    assert_eq!(a.len(), b.len());
    let b: std::collections::HashMap<_, _> = b.into_iter().collect();
    for (k, t) in &a {
        assert!(t.equal(&b[k]), "tensor {k} differs after the resume");
    }
}

/// The keys are checked before any work.
#[test]
fn cache_settings_are_checked_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path(), 1);
    let cfg = config(dir.path(), &data, "bad", 2);
    for (set, want) in [
        ("augment.refresh=0", "key 'augment.refresh': 0 must be at least 1"),
        ("augment.refresh=often", "'often' is not a refresh interval"),
        ("augment.cache_size=96", "key 'augment.cache_size': 96 must be in 2..=48"),
        ("augment.threshold=batch", "key 'augment.threshold': batch"),
    ] {
        let out = bin().args(["finetune", "--quiet", "--config", s(&cfg), "--set", set]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{set}: {err}");
        assert!(!dir.path().join("bad").exists(), "{set}: the run directory was created");
    }
}

/// A score cache holds the augmentation's own scores of the whole images (f16); one made for
/// other data, older weights, or holding maps is not opened and says why; a broken part is
/// named; a stopped pass leaves nothing.
#[test]
fn stale_foreign_and_broken_score_caches_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = ImageFolder::open(&synth_data(dir.path(), 1).join("train")).unwrap();
    tch::manual_seed(0);
    let model = Model::new(Arch::Resnet18, data.classes.len() as i64, Device::Cpu);
    let at = dir.path().join("cache");
    let whole = loader(data.clone(), Transform::Whole { size: S });
    let aug = GroupCamAugment::default();
    let m = score_meta(&data, 0);
    let stats = cache::write_part(&model, &aug, &whole, &m, 0, &at, Device::Cpu, &|| false).unwrap();
    assert_eq!(stats.images, data.len());
    cache::publish(&at, &m).unwrap();
    let part = at.join("part-0-of-1.f16");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), cache::score_bytes_needed(data.len(), 16));
    assert_eq!(cache::score_bytes_needed(1_281_167, 16), 40_997_344, "ImageNet at G = 16: 41 MB");
    let c = SaliencyCache::open(&at, &score_meta(&data, 3), 0, 1.0).unwrap().unwrap();
    // The scores are the augmentation's own of the whole images, to f16's rounding.
    let all: Vec<usize> = (0..data.len()).collect();
    let batch = whole.make_batch(0, &all, &mut Default::default()).unwrap();
    let fresh = aug.scores_for(&model, &batch.images(Device::Cpu), &batch.labels).unwrap();
    let stored = c.scores(&all).unwrap();
    let d = max_abs_diff(&stored, &fresh);
    assert!(d <= 1e-3 * (1.0 + fresh.abs().max().double_value(&[])), "stored scores differ by {d}");
    assert!(fresh.gt(0.0).any().int64_value(&[]) == 1, "some group scores are positive");
    let rev: Vec<usize> = all.iter().rev().copied().collect();
    assert!(c.scores(&rev).unwrap().equal(&stored.flip([0])), "rows follow the sample indices");
    assert!(c.scores(&[data.len()]).unwrap_err().to_string().contains("not in the score cache"));

    let why = SaliencyCache::open(&at, &score_meta(&data, 3), 2, 1.0).unwrap().unwrap_err().to_string();
    assert!(why.contains("needs maps from epoch 3"), "{why}");
    let other = ImageFolder { samples: data.samples[1..].to_vec(), ..data.clone() };
    let why = SaliencyCache::open(&at, &score_meta(&other, 0), 0, 1.0).unwrap().unwrap_err().to_string();
    assert!(why.contains("another training set"), "{why}");
    let why = SaliencyCache::open(&at, &meta(&data, S, 0), 0, 1.0).unwrap().unwrap_err().to_string();
    assert_eq!(why, "it holds scores, and the run caches maps (augment.cache: maps)");
    let f16 = CacheMeta { precision: Some(Precision::F16Autocast), ..score_meta(&data, 0) };
    let why = SaliencyCache::open(&at, &f16, 0, 1.0).unwrap().unwrap_err().to_string();
    assert!(why.contains("settings differ"), "{why}");
    std::fs::write(&part, b"short").unwrap();
    let why = SaliencyCache::open(&at, &score_meta(&data, 0), 0, 1.0).unwrap().unwrap_err().to_string();
    assert!(why.contains("part-0-of-1.f16") && why.contains("bytes"), "{why}");
    cache::clear(&at).unwrap();
    assert!(std::fs::read_dir(&at).unwrap().next().is_none(), "clear leaves the directory empty");
    let calls = std::cell::Cell::new(0);
    let stop = || {
        calls.set(calls.get() + 1);
        calls.get() > 1
    };
    let e = cache::write_part(&model, &aug, &whole, &score_meta(&data, 0), 0, &at, Device::Cpu, &stop).unwrap_err();
    assert!(e.downcast_ref::<cache::Stopped>().is_some_and(|s| s.done == 4), "{e:#}");
    assert!(std::fs::read_dir(&at).unwrap().next().is_none(), "a stopped pass left a file");
}

/// The score cache's run: scores refreshed every 2 epochs before epochs 2 and 4, the epoch lines
/// and history say so, and a run stopped after epoch 2 and resumed to 4 ends with the same
/// weights bit for bit.
#[test]
fn a_score_cached_run_refreshes_on_schedule_and_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path(), 2);
    let scores = ", cache: scores";
    let out = finetune_ok(&["--config", s(&config_with(dir.path(), &data, "straight", 4, scores))]);
    let text = String::from_utf8_lossy(&out.stdout);
    let refreshes: Vec<&str> =
        text.lines().filter(|l| l.contains(" 16 group scores (whole images at 48 px)")).collect();
    assert_eq!(refreshes.len(), 2, "{text}");
    assert!(refreshes[0].contains("before epoch 2") && refreshes[1].contains("before epoch 4"), "{text}");
    assert!(text.contains("(cached scores: refreshed every 2 epochs, these from before epoch 4)"), "{text}");
    let run = dir.path().join("straight");
    let h = history(&run);
    let from: Vec<Option<u64>> = (0..4).map(|e| h[e]["maps_from_epoch"].as_u64()).collect();
    assert_eq!(from, vec![None, Some(2), Some(2), Some(4)]);
    assert_eq!(h[1]["cached"].as_str(), Some("scores"));
    assert!(h[1]["augmented_fraction"].as_f64().unwrap() > 0.0 && h[0]["augmented_fraction"].as_f64() == Some(0.0));
    let n = ImageFolder::open(&data.join("train")).unwrap().len();
    let part = run.join("saliency-cache/part-0-of-1.f16");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), cache::score_bytes_needed(n, 16));
    let listed: CacheMeta =
        serde_json::from_str(&std::fs::read_to_string(run.join("saliency-cache/cache.json")).unwrap()).unwrap();
    assert_eq!((listed.epoch, listed.holds, listed.side, listed.samples), (3, CacheOf::Scores, 48, n));
    let written = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(written.contains("cache: scores"), "{written}");

    let split = |epochs| config_with(dir.path(), &data, "split", epochs, scores);
    check_split_run(&run, split, " group scores (whole images", "scores");
}

/// Scores cached on 2 ranks: each rank scores every second image into its own part of the run
/// directory's cache and trains with the scores of both parts; the ranks' weights stay
/// bit-identical (checked by the run at every step and at the end).
#[test]
fn two_ranks_share_a_score_cache_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path(), 1);
    let cfg = config_with(dir.path(), &data, "ranks", 2, ", cache: scores");
    let out = finetune_ok(&["--config", s(&cfg), "--nproc", "2", "--set", "dist.check_every=1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("group scores (whole images at 48 px) before epoch 2") && text.contains("on rank 0 of 2"),
        "{text}"
    );
    let n = ImageFolder::open(&data.join("train")).unwrap().len() as u64;
    for (r, rows) in [(0, n.div_ceil(2)), (1, n / 2)] {
        let part = dir.path().join(format!("ranks/saliency-cache/part-{r}-of-2.f16"));
        assert_eq!(std::fs::metadata(&part).unwrap().len(), rows * 16 * 2, "{}", part.display());
    }
    let h = history(&dir.path().join("ranks"));
    assert!(h[1]["augmented_fraction"].as_f64().unwrap() > 0.0, "{h:?}");
    assert_eq!(h[1]["maps_from_epoch"], 2);
    assert_eq!(h[1]["cached"], "scores");
}
