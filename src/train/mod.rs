//! The fine-tuning loop (paper Sec. 5): SGD on a step schedule, every batch augmented by
//! Group-CAM for its labels, with validation, TensorBoard logs, atomic checkpoints, exact
//! resume and per-epoch saliency-convergence tracking. It reads top to bottom.

pub mod checkpoint;
pub mod config;
pub mod report;
pub mod saliency;
pub mod sgd;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor};
use tensorboard_rs::summary_writer::SummaryWriter;

use crate::data::{ImageFolder, Loader, Transform};
use crate::models::{Arch, CamModel, Model, weights};
pub use checkpoint::{EpochRecord, Meta};
pub use config::{Amp, Config};
use sgd::Sgd;

/// What a finished run leaves behind.
#[derive(Debug)]
pub struct Outcome {
    pub out: PathBuf,
    pub history: Vec<EpochRecord>,
    pub best_top1: f64,
}

/// Options that are not part of the experiment.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// A checkpoint to resume from (`<out>/checkpoints/last.safetensors`).
    pub resume: Option<PathBuf>,
    /// Draw progress bars (they draw nothing when stderr is not a terminal anyway).
    pub progress: bool,
}

/// The learning rate and phase of an epoch: the optional plain pre-training, then StepLR from
/// the fine-tuning's own first epoch.
pub fn schedule(cfg: &Config, epoch: usize) -> (f64, &'static str) {
    let t = &cfg.train;
    match &cfg.pretrain {
        Some(p) if epoch < p.epochs => {
            let k = p.lr_step.map(|s| epoch / s.max(1)).unwrap_or(0);
            (p.lr * t.lr_gamma.powi(k as i32), "pretrain")
        }
        p => {
            let start = p.as_ref().map(|p| p.epochs).unwrap_or(0);
            (t.lr * t.lr_gamma.powi(((epoch - start) / t.lr_step) as i32), "finetune")
        }
    }
}

/// Top-1 and top-5 hits of a batch.
fn hits(logits: &Tensor, labels: &Tensor) -> (i64, i64) {
    let k = 5.min(logits.size()[1]);
    let top = logits.topk(k, 1, true, true).1;
    let eq = top.eq_tensor(&labels.unsqueeze(1));
    (eq.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]), eq.sum(Kind::Int64).int64_value(&[]))
}

pub fn run(cfg: &Config, opts: &RunOptions) -> Result<Outcome> {
    let out = cfg.out.clone();
    let device = crate::parse_device(&cfg.train.device).context("key 'train.device'")?;
    if let Some(n) = cfg.train.threads {
        tch::set_num_threads(n);
    }
    let arch: Arch = cfg.arch.parse()?;
    let use_amp = matches!(device, Device::Cuda(_)) && cfg.train.amp != Amp::Off;
    if cfg.train.amp == Amp::Fp16 && !matches!(device, Device::Cuda(_)) {
        bail!("key 'train.amp': fp16 needs a CUDA device (running on {device:?})");
    }
    match device {
        Device::Cuda(i) => println!(
            "device: cuda:{i} ({} CUDA device(s)), amp: {}",
            tch::Cuda::device_count(),
            if use_amp { "fp16" } else { "off" }
        ),
        _ => println!("device: cpu ({} threads)", tch::get_num_threads()),
    }

    // Data.
    let train_set = ImageFolder::open(&cfg.data.root.join(&cfg.data.train_dir))?;
    let val_set = ImageFolder::open(&cfg.data.root.join(&cfg.data.val_dir))?;
    if train_set.classes != val_set.classes {
        bail!("the class folders of {} and {} differ", train_set.root.display(), val_set.root.display());
    }
    let classes = train_set.classes.len() as i64;
    let norm = arch.input_norm();
    let size = cfg.data.input_size;
    let train_loader = Loader {
        data: train_set,
        batch_size: cfg.train.batch_size,
        shuffle: true,
        drop_last: true,
        transform: Transform::Train {
            size,
            scale: (cfg.data.scale[0], cfg.data.scale[1]),
            ratio: (cfg.data.ratio[0], cfg.data.ratio[1]),
            flip: cfg.data.flip,
        },
        norm,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
        seed: cfg.train.seed,
    };
    if train_loader.num_batches(0) == 0 {
        bail!("{} images are fewer than one batch of {} (drop_last)", train_loader.data.len(), cfg.train.batch_size);
    }
    let val_loader = Loader {
        data: val_set,
        batch_size: cfg.train.val_batch_size.unwrap_or(cfg.train.batch_size),
        shuffle: false,
        drop_last: false,
        transform: Transform::Eval { size, resize: cfg.val_resize() },
        ..train_loader.clone()
    };

    // Model and optimizer.
    let mut model = match &cfg.weights {
        Some(w) => Model::load(arch, w, device)?,
        None => {
            tch::manual_seed(cfg.train.seed as i64);
            Model::new(arch, classes, device)
        }
    };
    if model.num_classes() != classes {
        bail!(
            "the weights have {} classes but {} has {classes} class folders",
            model.num_classes(),
            train_loader.data.root.display()
        );
    }
    let mut sgd = Sgd::new(&model.vs, cfg.train.momentum, cfg.train.weight_decay);
    let augmenter = cfg.augmenter()?;

    // Run directory and state.
    let ckpt_dir = out.join("checkpoints");
    let sal_dir = out.join("saliency");
    for d in [&out, &ckpt_dir, &sal_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    std::fs::write(out.join("config.yaml"), serde_yaml::to_string(cfg)?)?;
    let mut meta = Meta { loss_scale: 65536.0, arch: arch.name().to_string(), best_top1: -1.0, ..Default::default() };
    let mut prev_maps = None;
    if let Some(r) = &opts.resume {
        let (m, s) = checkpoint::load(r, &mut model.vs, &mut sgd)?;
        println!("resumed from {} after epoch {}", r.display(), m.epoch);
        (meta, prev_maps) = (m, s);
    }
    let mut tb = SummaryWriter::new(out.join("tb"));

    // The saliency probe: the first N validation images, fixed for the whole run.
    let probe = make_probe(&val_loader, cfg.saliency.probe, device)?;
    if let (Some(p), None) = (&probe, &prev_maps) {
        let maps = saliency::maps(&model, p, cfg.saliency.groups)?;
        save_grid(&mut tb, &sal_dir, p, &maps, 0)?;
        prev_maps = Some(maps);
    }

    let epochs = cfg.train.epochs;
    let bars = MultiProgress::new();
    if !opts.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let epoch_bar = bars.add(ProgressBar::new(epochs as u64));
    epoch_bar
        .set_style(ProgressStyle::with_template("epoch {pos}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise}")?);
    epoch_bar.set_position(meta.epoch as u64);
    let mut named_skips: HashSet<PathBuf> = HashSet::new();
    // Lines go above the bars on a terminal, to stdout otherwise.
    let say = |line: String| {
        if bars.is_hidden() {
            println!("{line}");
        } else {
            bars.println(line).ok();
        }
    };

    for epoch in meta.epoch..epochs {
        let (lr, phase) = schedule(cfg, epoch);
        let augmenting = cfg.augment.enabled && phase == "finetune";
        // Augmentation draws and dropout come from torch's generator: seeded per epoch, a
        // resumed run replays the epoch exactly.
        tch::manual_seed((cfg.train.seed as i64).wrapping_mul(1_000_003).wrapping_add(epoch as i64));
        let steps = train_loader.num_batches(epoch).min(cfg.train.max_steps.unwrap_or(usize::MAX));
        let bar = bars.add(ProgressBar::new(steps as u64));
        bar.set_style(ProgressStyle::with_template("  {pos}/{len} [{bar:30}] {msg} ETA {eta}")?);
        let start = Instant::now();
        let (mut loss_sum, mut seen, mut correct, mut augmented, mut skipped) = (0.0, 0i64, 0i64, 0usize, 0usize);
        model.set_training(true);
        for batch in train_loader.epoch(epoch, 0).take(steps) {
            for (p, why) in &batch.skipped {
                skipped += 1;
                if named_skips.insert(p.clone()) {
                    say(format!("skipped {}: {why}", p.display()));
                }
            }
            let n = batch.images.size()[0];
            if n == 0 {
                continue;
            }
            let (x, y) = (batch.images.to_device(device), batch.labels.to_device(device));
            let x = if augmenting {
                let a = augmenter.augment(&model, &x, &y)?;
                augmented += a.stats.augmented();
                a.images
            } else {
                x
            };
            let (loss_value, hit) = match step(&model, &mut sgd, &mut meta.loss_scale, meta.step, &x, &y, lr, use_amp)?
            {
                Step::Done { loss, top1 } => (loss, top1),
                Step::Overflow { loss, top1 } => {
                    say(format!("fp16 overflow at step {}: loss scale now {}", meta.step, meta.loss_scale));
                    (loss, top1)
                }
                Step::NonFinite(v) => bail!(
                    "loss is {v} at epoch {} step {} (lr {lr}); the last good checkpoint is {}",
                    epoch + 1,
                    meta.step,
                    ckpt_dir.join("last.safetensors").display()
                ),
            };
            meta.step += 1;
            loss_sum += loss_value * n as f64;
            seen += n;
            correct += hit;
            let ips = seen as f64 / start.elapsed().as_secs_f64();
            tb.add_scalar("train/loss", loss_value as f32, meta.step as usize);
            tb.add_scalar("train/lr", lr as f32, meta.step as usize);
            tb.add_scalar("train/img_per_s", ips as f32, meta.step as usize);
            bar.set_message(format!("loss {loss_value:.4} lr {lr:.2e} {ips:.1} img/s"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        model.set_training(false);
        let (val_top1, val_top5) = evaluate(&model, &val_loader, device)?;

        let mut rec = EpochRecord {
            epoch: epoch + 1,
            phase: phase.to_string(),
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: correct as f64 / seen.max(1) as f64,
            val_top1,
            val_top5,
            augmented_fraction: augmented as f64 / seen.max(1) as f64,
            images_skipped: skipped,
            img_per_s: seen as f64 / seconds,
            seconds,
            ..Default::default()
        };
        if let Some(p) = &probe {
            let maps = saliency::maps(&model, p, cfg.saliency.groups)?;
            if let Some(prev) = &prev_maps {
                let (c, d) = saliency::change(prev, &maps);
                (rec.saliency_change, rec.saliency_delta) = (Some(c), Some(d));
                meta.saliency_streak = if c < cfg.saliency.threshold { meta.saliency_streak + 1 } else { 0 };
                if meta.saliency_streak >= cfg.saliency.patience && meta.converged_at.is_none() {
                    meta.converged_at = Some(epoch + 1);
                    say(format!(
                        "saliency converged at epoch {}: 1 - r < {} for {} epochs",
                        epoch + 1,
                        cfg.saliency.threshold,
                        cfg.saliency.patience
                    ));
                }
            }
            save_grid(&mut tb, &sal_dir, p, &maps, epoch + 1)?;
            prev_maps = Some(maps);
        }
        log_epoch(&mut tb, &rec);
        say(format!(
            "epoch {}/{epochs} [{phase}] loss {:.4} train top-1 {:.2}% val top-1 {:.2}% top-5 {:.2}% augmented {:.0}% skipped {} {:.1}s{}",
            rec.epoch,
            rec.train_loss,
            100.0 * rec.train_top1,
            100.0 * rec.val_top1,
            100.0 * rec.val_top5,
            100.0 * rec.augmented_fraction,
            rec.images_skipped,
            rec.seconds,
            rec.saliency_change.map(|c| format!(" saliency change {c:.4}")).unwrap_or_default()
        ));
        let improved = rec.val_top1 > meta.best_top1;
        if improved {
            (meta.best_top1, meta.best_epoch) = (rec.val_top1, rec.epoch);
        }
        meta.history.push(rec);
        meta.epoch = epoch + 1;
        let last = ckpt_dir.join("last.safetensors");
        checkpoint::save(&last, &model.vs, &sgd, prev_maps.as_ref(), &meta)?;
        if improved {
            checkpoint::save(&ckpt_dir.join("best.safetensors"), &model.vs, &sgd, prev_maps.as_ref(), &meta)?;
        }
        report::write_history(&out, &meta.history)?;
        tb.flush();
        epoch_bar.inc(1);
    }
    epoch_bar.finish_and_clear();
    weights::save_torchvision(&model.vs, &out.join("final.safetensors"), meta.step as i64)?;
    std::fs::write(out.join("report.md"), report::render(&meta.history, None, &out, None))?;
    println!("final weights: {}", out.join("final.safetensors").display());
    println!("report: {}", out.join("report.md").display());
    Ok(Outcome { out, history: meta.history, best_top1: meta.best_top1 })
}

/// What one training step did.
pub enum Step {
    Done {
        loss: f64,
        top1: i64,
    },
    /// fp16 gradients overflowed: the step was skipped and the loss scale halved.
    Overflow {
        loss: f64,
        top1: i64,
    },
    /// The loss was NaN or infinite: nothing was changed.
    NonFinite(f64),
}

/// One SGD step on a batch: forward (fp16 autocast with dynamic loss scaling when `amp`),
/// cross-entropy, backward, update. `scale` is the fp16 loss scale, doubled after 2000 clean
/// steps and halved on overflow (torch.cuda.amp.GradScaler's defaults).
#[allow(clippy::too_many_arguments)]
pub fn step(
    model: &dyn CamModel,
    sgd: &mut Sgd,
    scale: &mut f64,
    step: u64,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
    amp: bool,
) -> Result<Step> {
    let logits = tch::autocast(amp, || model.forward(x));
    let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(y);
    let value = loss.double_value(&[]);
    if !value.is_finite() {
        return Ok(Step::NonFinite(value));
    }
    let top1 = hits(&logits.detach(), y).0;
    sgd.zero_grad();
    if !amp {
        loss.backward();
        sgd.step(lr);
        return Ok(Step::Done { loss: value, top1 });
    }
    (loss * *scale).backward();
    let grads = sgd.grads();
    if !grads.iter().all(|g| g.isfinite().all().int64_value(&[]) == 1) {
        *scale /= 2.0;
        return Ok(Step::Overflow { loss: value, top1 });
    }
    tch::no_grad(|| {
        for mut g in grads {
            let _ = g.g_div_scalar_(*scale);
        }
    });
    sgd.step(lr);
    if step % 2000 == 1999 {
        *scale *= 2.0;
    }
    Ok(Step::Done { loss: value, top1 })
}

/// Top-1 and top-5 accuracy over a loader, in eval mode.
pub fn evaluate(model: &dyn CamModel, loader: &Loader, device: Device) -> Result<(f64, f64)> {
    let (mut n, mut t1, mut t5) = (0i64, 0i64, 0i64);
    for batch in loader.epoch(0, 0) {
        if batch.images.size()[0] == 0 {
            continue;
        }
        let logits = tch::no_grad(|| model.logits_eval(&batch.images.to_device(device)));
        let (a, b) = hits(&logits, &batch.labels.to_device(device));
        (n, t1, t5) = (n + batch.images.size()[0], t1 + a, t5 + b);
    }
    if n == 0 {
        bail!("no validation image could be read from {}", loader.data.root.display());
    }
    Ok((t1 as f64 / n as f64, t5 as f64 / n as f64))
}

fn make_probe(val: &Loader, n: usize, device: Device) -> Result<Option<saliency::Probe>> {
    if n == 0 {
        return Ok(None);
    }
    let probe_loader = Loader { batch_size: n, ..val.clone() };
    let batch = probe_loader.epoch(0, 0).next().context("empty validation set")?;
    let photos = val.norm.invert(&batch.images);
    Ok(Some(saliency::Probe {
        images: batch.images.to_device(device),
        labels: Vec::<i64>::try_from(&batch.labels)?,
        photos,
    }))
}

fn save_grid(tb: &mut SummaryWriter, dir: &Path, probe: &saliency::Probe, maps: &Tensor, epoch: usize) -> Result<()> {
    let img = saliency::grid(&probe.photos, maps)?;
    let path = dir.join(format!("epoch-{epoch:03}.png"));
    img.save(&path).with_context(|| format!("cannot write {}", path.display()))?;
    let (w, h) = img.dimensions();
    tb.add_image("saliency/probe", img.as_raw(), &[3, h as usize, w as usize], epoch);
    Ok(())
}

fn log_epoch(tb: &mut SummaryWriter, r: &EpochRecord) {
    let e = r.epoch;
    for (tag, v) in [
        ("epoch/train_loss", r.train_loss),
        ("epoch/train_top1", r.train_top1),
        ("val/top1", r.val_top1),
        ("val/top5", r.val_top5),
        ("epoch/lr", r.lr),
        ("epoch/img_per_s", r.img_per_s),
        ("epoch/augmented_fraction", r.augmented_fraction),
        ("epoch/images_skipped", r.images_skipped as f64),
    ] {
        tb.add_scalar(tag, v as f32, e);
    }
    if let (Some(c), Some(d)) = (r.saliency_change, r.saliency_delta) {
        tb.add_scalar("saliency/one_minus_pearson", c as f32, e);
        tb.add_scalar("saliency/mean_abs_delta", d as f32, e);
    }
}
