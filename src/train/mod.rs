//! The fine-tuning loop (paper Sec. 5): SGD on a step schedule, every batch augmented by
//! Group-CAM for its labels, with validation, TensorBoard logs, atomic checkpoints, exact
//! resume and per-epoch saliency-convergence tracking. `run` reads top to bottom as timm's
//! train.py does: build the loaders and the model, then per epoch `train_one_epoch`,
//! `evaluate`, `track_saliency` and `save_checkpoints`.

pub mod checkpoint;
pub mod config;
pub mod report;
pub mod saliency;
pub mod scaler;
pub mod sgd;
pub mod validate;

use crate::interrupt::{Interrupt, Interrupted};
use crate::rundir::{Reuse, RunDir as LockedDir};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor};

use crate::augment::{GroupCamAugment, cache};
use crate::autocast::AutocastDtype;
use crate::data::{ImageFolder, Loader, Transform};
use crate::dist::{Ddp, Group, Launch, sampler};
use crate::models::{CamModel, Model, weights};
use crate::tb::EventLog;
pub use checkpoint::{EpochRecord, Meta};
pub use config::{Amp, Config};
pub use scaler::LossScaler;
use sgd::Sgd;

/// What a finished run leaves behind.
#[derive(Debug)]
pub struct RunSummary {
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
    /// Clear a directory that already holds a run (`--overwrite`); otherwise only a resume reuses one.
    pub overwrite: bool,
    /// This process's rank in a data-parallel launch (`dist::launch::from_env`); None: alone.
    pub launch: Option<Launch>,
}

/// The part of the run an epoch belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// The optional plain training before the fine-tuning proper (`pretrain` in the config).
    Pretrain,
    #[default]
    Finetune,
}

impl Phase {
    pub const ALL: [Phase; 2] = [Phase::Pretrain, Phase::Finetune];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pretrain => "pretrain",
            Phase::Finetune => "finetune",
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Phase::ALL.into_iter().find(|p| p.name() == s).with_context(|| format!("unknown phase '{s}'"))
    }
}
crate::choice!(Phase);

/// The learning rate and phase of an epoch: the optional plain pre-training, then StepLR from
/// the fine-tuning's own first epoch.
pub fn lr_schedule(cfg: &Config, epoch: usize) -> (f64, Phase) {
    let t = &cfg.train;
    match &cfg.pretrain {
        Some(p) if epoch < p.epochs => {
            let k = p.lr_step.map(|s| epoch / s.max(1)).unwrap_or(0);
            (p.lr * t.lr_gamma.powi(k as i32), Phase::Pretrain)
        }
        p => {
            let start = p.as_ref().map(|p| p.epochs).unwrap_or(0);
            (t.lr * t.lr_gamma.powi(((epoch - start) / t.lr_step) as i32), Phase::Finetune)
        }
    }
}

/// Top-1 and top-5 hits of a batch, as device scalars: summed there and read once per
/// epoch (a read per batch would stall a GPU twice a step).
fn hits(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let k = 5.min(logits.size()[1]);
    let top = logits.topk(k, 1, true, true).1;
    let eq = top.eq_tensor(&labels.unsqueeze(1));
    (eq.narrow(1, 0, 1).sum(Kind::Int64), eq.sum(Kind::Int64))
}

/// The run's training and validation loaders, as the config describes them.
pub struct Loaders {
    pub train: Loader,
    pub val: Loader,
}

impl Loaders {
    pub fn build(cfg: &Config) -> Result<Loaders> {
        let train_set = ImageFolder::open(&cfg.data.root.join(&cfg.data.train_dir))?;
        let val_set = ImageFolder::open(&cfg.data.root.join(&cfg.data.val_dir))?;
        if train_set.classes != val_set.classes {
            bail!("the class folders of {} and {} differ", train_set.root.display(), val_set.root.display());
        }
        if train_set.classes.len() < 2 {
            bail!(
                "{} has one class folder ({}): cross-entropy over one class is 0 whatever the model does, \
                 so there is nothing to fine-tune (a classifier needs at least 2 classes)",
                train_set.root.display(),
                train_set.classes.join(", ")
            );
        }
        let size = cfg.data.input_size;
        let train = Loader {
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
            norm: cfg.arch.input_norm(),
            workers: cfg.data.workers,
            prefetch: cfg.data.prefetch,
            seed: cfg.train.seed,
            pin_memory: false,
            saliency: None,
        };
        if train.num_batches(0) == 0 {
            bail!("{} images are fewer than one batch of {} (drop_last)", train.data.len(), cfg.train.batch_size);
        }
        let val = Loader {
            data: val_set,
            batch_size: cfg.train.val_batch_size.unwrap_or(cfg.train.batch_size),
            shuffle: false,
            drop_last: false,
            transform: Transform::Eval { size, resize: cfg.val_resize() },
            ..train.clone()
        };
        Ok(Loaders { train, val })
    }

    pub fn num_classes(&self) -> i64 {
        self.train.data.classes.len() as i64
    }
}

/// The starting model: the config's weights, or a seeded random initialisation.
fn build_model(cfg: &Config, classes: i64, data_root: &Path, device: Device) -> Result<Model> {
    if let Some(n) = cfg.model.num_classes.filter(|&n| n != classes) {
        bail!("key 'model.num_classes' is {n} but {} has {classes} class folders", data_root.display());
    }
    // One output per class folder (model.num_classes, when given, is checked equal above), so
    // that a weights file of another count is refused naming its classifier, or reset.
    let head = crate::models::HeadSpec { num_classes: Some(classes), reset: cfg.model.reset_head };
    // Seeded for a random initialisation and for a reset head alike, so that a run repeats.
    tch::manual_seed(cfg.train.seed as i64);
    let model = match &cfg.weights {
        Some(w) => Model::load_with(cfg.arch, w, device, head)?,
        None => Model::new(cfg.arch, classes, device),
    };
    if model.num_classes() != classes {
        bail!(
            "the weights have {} classes but {} has {classes} class folders \
             (set model.reset_head: true to replace the classifier)",
            model.num_classes(),
            data_root.display()
        );
    }
    model.check_checkpointable()?;
    if cfg.arch == crate::models::Arch::TorchScript {
        let prep = model.preprocessing();
        let size = cfg.data.input_size;
        println!("{}; input size {size} (data.input_size)", prep.describe());
        if let Some(m) = prep.input_size.filter(|&m| m != size as i64) {
            println!("note: the module was exported for input size {m}; a ViT accepts only its own");
        }
    }
    Ok(model)
}

/// Where a run writes: the directory, its checkpoints and its saliency grids.
struct RunDir {
    out: PathBuf,
    checkpoints: PathBuf,
    saliency: PathBuf,
    /// The saliency cache (`augment.refresh: K`).
    cache: PathBuf,
}

/// The Ctrl-C error, naming the last checkpoint when there is one.
fn interrupted(run: &Run, at: String) -> anyhow::Error {
    let last = run.dir.last();
    let checkpoint = last.exists().then(|| (last, run.meta.epoch));
    Interrupted { at, checkpoint }.into()
}

/// Where a failed run can go on from: the last checkpoint, or that none was written yet.
fn resume_hint(dir: &RunDir, epochs_done: usize) -> String {
    match last_checkpoint(dir, epochs_done) {
        Some(last) => {
            format!("the last checkpoint, {last}, is intact: continue with --resume {}", dir.last().display())
        }
        None => NO_CHECKPOINT.into(),
    }
}

const NO_CHECKPOINT: &str = "no checkpoint was written yet (the run stopped in its first epoch)";

fn last_checkpoint(dir: &RunDir, epochs_done: usize) -> Option<String> {
    let last = dir.last();
    last.exists().then(|| format!("{} (after epoch {epochs_done})", last.display()))
}

impl RunDir {
    fn create(cfg: &Config) -> Result<RunDir> {
        let dir = RunDir::of(cfg);
        let cache = cfg.augment.enabled && cfg.augment.refresh.every().is_some();
        for d in [&dir.out, &dir.checkpoints, &dir.saliency].into_iter().chain(cache.then_some(&dir.cache)) {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        crate::atomic::write_bytes(&dir.out.join("config.yaml"), serde_yaml::to_string(cfg)?.as_bytes())?;
        Ok(dir)
    }

    /// The paths of the run directory without creating anything (ranks other than 0).
    fn of(cfg: &Config) -> RunDir {
        let out = cfg.out.clone();
        RunDir {
            checkpoints: out.join("checkpoints"),
            saliency: out.join("saliency"),
            cache: out.join("saliency-cache"),
            out,
        }
    }

    fn last(&self) -> PathBuf {
        self.checkpoints.join("last.safetensors")
    }
}

/// Progress bars, and lines that go above them on a terminal (to stdout otherwise).
struct Console {
    bars: MultiProgress,
    /// Ranks other than 0 print only errors.
    silent: bool,
}

impl Console {
    fn new(progress: bool, silent: bool) -> Console {
        let bars = MultiProgress::new();
        if !progress || silent {
            bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Console { bars, silent }
    }

    fn say(&self, line: String) {
        if self.silent {
            return;
        }
        if self.bars.is_hidden() {
            println!("{line}");
        } else {
            self.bars.println(line).ok();
        }
    }
}

/// What one epoch of training saw.
#[derive(Clone, Debug, Default)]
pub struct EpochStats {
    /// With cached maps: the refresh interval, and the 1-based epoch whose weights made them.
    pub cache: Option<(usize, usize)>,
    /// The refresh pass before the epoch, when it had one (not in `seconds`).
    pub refresh_seconds: Option<f64>,
    pub loss_sum: f64,
    pub seen: i64,
    pub correct: i64,
    pub augmented: usize,
    pub skipped: usize,
    pub seconds: f64,
}

impl EpochStats {
    /// The stats of all ranks together (the time is this rank's).
    fn summed(self, d: &Ddp) -> Result<EpochStats> {
        let s =
            d.sum(&[self.loss_sum, self.seen as f64, self.correct as f64, self.augmented as f64, self.skipped as f64])?;
        Ok(EpochStats {
            loss_sum: s[0],
            seen: s[1] as i64,
            correct: s[2] as i64,
            augmented: s[3] as usize,
            skipped: s[4] as usize,
            seconds: self.seconds,
            cache: self.cache,
            refresh_seconds: self.refresh_seconds,
        })
    }

    fn record(&self, epoch: usize, phase: Phase, lr: f64, val: &Validation) -> EpochRecord {
        let seen = self.seen.max(1) as f64;
        EpochRecord {
            epoch: epoch + 1,
            phase,
            lr,
            train_loss: self.loss_sum / seen,
            train_top1: self.correct as f64 / seen,
            val_top1: val.top1,
            val_top5: val.top5,
            val_images: val.images,
            val_skipped: val.unreadable,
            augmented_fraction: self.augmented as f64 / seen,
            images_skipped: self.skipped,
            img_per_s: self.seen as f64 / self.seconds,
            seconds: self.seconds,
            refresh_every: self.cache.map(|c| c.0),
            maps_from_epoch: self.cache.map(|c| c.1),
            refresh_seconds: self.refresh_seconds,
            ..Default::default()
        }
    }
}

/// Everything an epoch works with.
struct Run<'a> {
    cfg: &'a Config,
    device: Device,
    loaders: Loaders,
    model: Model,
    trainer: Trainer,
    augmenter: GroupCamAugment,
    dir: RunDir,
    /// The TensorBoard log (off on ranks other than 0, which write no files).
    tb: EventLog,
    console: Console,
    meta: Meta,
    saliency: SaliencyTracker,
    named_skips: HashSet<PathBuf>,
}

pub fn run(cfg: &Config, opts: &RunOptions) -> Result<RunSummary> {
    let launch = opts.launch.as_ref();
    let device =
        crate::dist::launch::device(crate::parse_device(&cfg.train.device).context("key 'train.device'")?, launch)?;
    if let Some(l) = launch {
        if cfg.train.batch_size % l.rv.world != 0 {
            bail!(
                "key 'train.batch_size': the global batch {} is not divisible by the world size {}",
                cfg.train.batch_size,
                l.rv.world
            );
        }
    }
    let main = launch.is_none_or(|l| l.rv.rank == 0);
    if let Some(n) = cfg.train.threads {
        tch::set_num_threads(n);
    }
    let amp = match (cfg.train.amp, device) {
        (Amp::Off, _) | (Amp::Auto, Device::Cpu) => None,
        (Amp::Auto | Amp::Fp16, Device::Cuda(_)) => Some(AutocastDtype::F16),
        (Amp::Bf16, Device::Cuda(_)) => Some(AutocastDtype::Bf16),
        (a, d) => bail!("key 'train.amp': {a:?} autocast needs a CUDA device (running on {d:?})"),
    };
    if main && cfg.train.device == "auto" && device == Device::Cpu {
        // An old driver or a CPU-only libtorch would otherwise turn an ImageNet run into a
        // CPU run without AMP, found out hours later.
        eprintln!(
            "warning: train.device is auto and libtorch sees no usable CUDA device ({} found): training on \
             the CPU with AMP off; set train.device: cuda to make this an error",
            tch::Cuda::device_count()
        );
    }
    if device.is_cuda() {
        // Fixed input sizes: cuDNN's autotuner picks each convolution's fastest algorithm once.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    match device {
        _ if !main => {}
        Device::Cuda(i) => println!(
            "device: cuda:{i} ({} CUDA device(s)), amp: {}",
            tch::Cuda::device_count(),
            match amp {
                Some(AutocastDtype::F16) => "fp16 (loss-scaled)",
                Some(AutocastDtype::Bf16) => "bf16",
                None => "off",
            }
        ),
        _ => println!("device: cpu ({} threads)", tch::get_num_threads()),
    }
    if let (true, Some(l)) = (main, launch) {
        println!(
            "data-parallel: {} ranks ({} launch), {} per rank",
            l.rv.world,
            l.source,
            cfg.train.batch_size / l.rv.world
        );
    }
    // Join the group first: a bad launch fails before any work.
    let group = launch.map(|l| Group::new(&l.rv, device, cfg.dist.timeout())).transpose()?;

    let mut loaders = Loaders::build(cfg)?;
    // Batches in page-locked memory, copied without blocking (pinning needs CUDA).
    (loaders.train.pin_memory, loaders.val.pin_memory) = (device.is_cuda(), device.is_cuda());
    let caching = cfg.augment.enabled && cfg.augment.refresh.every().is_some();
    if caching && main {
        // Refused before any work: a full disk found at the first refresh would waste the set-up.
        cache::check_space(&RunDir::of(cfg).cache, cache::bytes_needed(loaders.train.data.len(), cfg.cache_side()))?;
    }
    let mut model = build_model(cfg, loaders.num_classes(), &loaders.train.data.root, device)?;
    // A scripted model's preprocessing comes with it.
    (loaders.train.norm, loaders.val.norm) = (model.input_norm(), model.input_norm());
    let class_names = loaders.train.data.classes.clone();
    let mut sgd = Sgd::new(&model.vs, cfg.train.momentum, cfg.train.weight_decay);
    let mut meta = Meta {
        loss_scale: cfg.train.initial_loss_scale.unwrap_or(LossScaler::INITIAL),
        arch: cfg.arch.name().to_string(),
        best_top1: -1.0,
        classes: class_names.clone(),
        ..Default::default()
    };
    let mut prev_maps = None;
    // The checkpoint is read and checked before anything is written: a failed resume changes nothing.
    if let Some(r) = &opts.resume {
        let (m, s) = checkpoint::load(r, &mut model.vs, &mut sgd, cfg.arch)?;
        if m.epoch >= cfg.train.epochs {
            bail!(
                "{} already holds {} epochs and train.epochs is {}: nothing to resume (raise train.epochs)",
                r.display(),
                m.epoch,
                cfg.train.epochs
            );
        }
        if !m.classes.is_empty() && m.classes != class_names {
            bail!("{} was trained on the classes {:?}, the data has {:?}", r.display(), m.classes, class_names);
        }
        if main {
            println!("resumed from {} after epoch {}", r.display(), m.epoch);
        }
        (meta, prev_maps) = (m, s);
    }
    // Only rank 0 writes into the run directory, so only rank 0 holds its lock; another rank
    // learns of a refused directory when rank 0 leaves the group (the broadcast below fails).
    let _lock = if main {
        let reuse = match (&opts.resume, opts.overwrite) {
            (Some(_), _) => Reuse::Resume,
            (None, true) => Reuse::Overwrite,
            (None, false) => Reuse::Fresh,
        };
        let mut lock = LockedDir::open(&cfg.out, reuse)?;
        if let Some(pid) = lock.stale_pid {
            println!("took over the stale lock of process {pid}, which is no longer running");
        }
        lock.start()?;
        Some(lock)
    } else {
        None
    };
    let _interrupt = Interrupt::install();
    let dir = if main { RunDir::create(cfg)? } else { RunDir::of(cfg) };
    let ddp = group.map(|g| Ddp::new(g, &model.vs, cfg.dist.bucket_bytes()));
    if let Some(d) = &ddp {
        d.broadcast_state()?;
    }
    let trainer = Trainer { sgd, scaler: LossScaler::resume(meta.loss_scale, meta.loss_scale_clean_steps), amp, ddp };
    // Ranks other than 0 write nothing: no event file, no probe, no grids.
    let tb = EventLog::create(&dir.out.join("tb"), if main { cfg.train.tensorboard } else { crate::tb::OnError::Off })?;
    let (saliency, grid) = if main {
        SaliencyTracker::start(cfg, &loaders.val, &model, prev_maps, &dir.saliency, device)?
    } else {
        (SaliencyTracker { probe: None, prev: prev_maps }, None)
    };
    let mut run = Run {
        cfg,
        device,
        loaders,
        model,
        trainer,
        augmenter: cfg.augmenter(),
        dir,
        tb,
        console: Console::new(opts.progress, !main),
        meta,
        saliency,
        named_skips: HashSet::new(),
    };
    if let Some(g) = grid {
        run.logged(|tb| tb.image("saliency/probe", &g, 0))?;
    }

    let epochs = cfg.train.epochs;
    let epoch_bar = run.console.bars.add(ProgressBar::new(epochs as u64));
    epoch_bar
        .set_style(ProgressStyle::with_template("epoch {pos}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise}")?);
    epoch_bar.set_position(run.meta.epoch as u64);
    for epoch in run.meta.epoch..epochs {
        let (lr, phase) = lr_schedule(cfg, epoch);
        let stats = run.train_one_epoch(epoch, lr, phase)?;
        run.model.set_training(false);
        let val = evaluate_sharded(&run.model, &run.loaders.val, device, run.trainer.ddp.as_ref())?;
        run.say_skips(&val.skipped);
        let mut rec = stats.record(epoch, phase, lr, &val);
        let grid = run.track_saliency(&mut rec)?;
        run.console.say(summary_line(&rec, epochs));
        // The checkpoint first: a TensorBoard failure after it loses nothing.
        run.save_checkpoints(rec.clone())?;
        run.logged(|tb| {
            log_epoch(tb, &rec, grid.as_ref())?;
            tb.flush()
        })?;
        epoch_bar.inc(1);
        if run.stop_requested()? && epoch + 1 < epochs {
            return Err(interrupted(&run, format!("the end of epoch {}", epoch + 1)));
        }
    }
    epoch_bar.finish_and_clear();
    run.finish()
}

impl Run<'_> {
    /// One pass over the training loader (at most `train.max_steps` batches), each batch
    /// augmented in the fine-tuning phase, then one SGD step.
    fn train_one_epoch(&mut self, epoch: usize, lr: f64, phase: Phase) -> Result<EpochStats> {
        let augmenting = self.cfg.augment.enabled && phase == Phase::Finetune;
        // Augmentation draws and dropout come from torch's generator: seeded per epoch (and
        // rank; rank 0 as a single process), a resumed run replays the epoch exactly.
        let rank = self.trainer.ddp.as_ref().map_or(0, |d| d.rank()) as i64;
        tch::manual_seed(
            (self.cfg.train.seed as i64)
                .wrapping_mul(1_000_003)
                .wrapping_add(epoch as i64)
                .wrapping_add(rank.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64)),
        );
        let (cache, refresh_seconds) = match (augmenting, self.cfg.augment.refresh.every()) {
            (true, Some(every)) => {
                let (c, secs) = self.saliency_cache(epoch, every)?;
                (Some(std::sync::Arc::new(c)), secs)
            }
            _ => (None, None),
        };
        self.loaders.train.saliency = cache;
        let cached = self.loaders.train.saliency.as_ref().map(|c| c.meta().epoch + 1);
        let plan = self.train_batches(epoch);
        let steps = plan.len().min(self.cfg.train.max_steps.unwrap_or(usize::MAX));
        let bar = self.console.bars.add(ProgressBar::new(steps as u64));
        bar.set_style(ProgressStyle::with_template("  {pos}/{len} [{bar:30}] {msg} ETA {eta}")?);
        let start = Instant::now();
        let mut stats =
            EpochStats { cache: self.cfg.augment.refresh.every().zip(cached), refresh_seconds, ..Default::default() };
        let mut correct = Tensor::zeros([], (Kind::Int64, self.device));
        self.model.set_training(!self.cfg.train.freeze_bn);
        for batch in self.loaders.train.epoch_of(epoch, plan, 0).take(steps) {
            let batch = batch?;
            if self.stop_requested()? {
                return Err(interrupted(self, format!("epoch {}, step {}", epoch + 1, self.meta.step)));
            }
            stats.skipped += batch.skipped.len();
            self.say_skips(&batch.skipped);
            let n = batch.len() as i64;
            if n == 0 && self.trainer.ddp.is_none() {
                continue;
            }
            let (x, y) = (batch.images(self.device), batch.labels.to_device(self.device));
            let x = match (augmenting && n > 0, batch.masks_on(self.device)) {
                (true, Some(masks)) => {
                    // Cached maps: the loader cut each mask with its image's crop; only the blend is left.
                    stats.augmented += batch.masked;
                    tch::no_grad(|| -> Result<Tensor> {
                        Ok(crate::augment::compose(&x, &crate::ops::Blur::GROUP_CAM.apply(&x)?, &masks))
                    })?
                }
                (true, None) => {
                    // The loader's CPU labels: reading them back from the device would sync.
                    let a = self.augmenter.augment(&self.model, &x, &batch.labels)?;
                    stats.augmented += a.stats.augmented();
                    a.images
                }
                (false, _) => x,
            };
            let result = match n {
                0 => self.trainer.step_empty(lr)?,
                _ => self.trainer.step(&self.model, &x, &y, lr)?,
            };
            let (loss, top1) = match result {
                StepResult::Done { loss, top1 } => (loss, top1),
                StepResult::Overflow { loss, top1 } => {
                    self.console.say(format!(
                        "fp16 overflow at step {}: loss scale now {}",
                        self.meta.step,
                        self.trainer.scaler.scale()
                    ));
                    (loss, top1)
                }
                StepResult::NonFinite(v) => bail!(
                    "loss is {v}{} at epoch {} step {} (lr {lr:e}): lower the learning rate; {}",
                    if self.trainer.ddp.is_some() { " on at least one rank" } else { "" },
                    epoch + 1,
                    self.meta.step,
                    last_checkpoint(&self.dir, self.meta.epoch)
                        .map(|c| format!("the last good checkpoint is {c}"))
                        .unwrap_or(NO_CHECKPOINT.into())
                ),
            };
            self.meta.step += 1;
            stats.loss_sum += loss * n as f64;
            stats.seen += n;
            correct += top1;
            let every = self.cfg.dist.check_every;
            if let (Some(d), true) = (&self.trainer.ddp, every > 0 && self.meta.step % every == 0) {
                d.check_agreement(self.meta.step)?;
            }
            let ips = stats.seen as f64 / start.elapsed().as_secs_f64();
            let step = self.meta.step;
            self.logged(|tb| log_step(tb, step, loss, lr, ips))?;
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {ips:.1} img/s"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        stats.correct = correct.int64_value(&[]);
        stats.seconds = start.elapsed().as_secs_f64();
        if let Some(d) = &self.trainer.ddp {
            // Every rank takes the same decision below from the counts of all.
            d.check_agreement(self.meta.step)?;
            stats = stats.summed(d)?;
        }
        if stats.seen == 0 {
            bail!(
                "epoch {} trained on no image: every image of its {steps} batches was skipped as unreadable \
                 (see the 'skipped' lines above)",
                epoch + 1
            );
        }
        Ok(stats)
    }

    /// The saliency cache `epoch` trains with (see [`cache`]): the one on disk when its maps
    /// come from the due refresh epoch or later, else rebuilt now with the current weights, each
    /// rank computing its shard (with the pass's seconds). Every rank takes the same decision.
    fn saliency_cache(&mut self, epoch: usize, every: usize) -> Result<(cache::SaliencyCache, Option<f64>)> {
        let cfg = self.cfg;
        let start = cfg.pretrain.as_ref().map_or(0, |p| p.epochs);
        let due = cache::due_epoch(epoch, start, every);
        let (rank, world) = self.trainer.ddp.as_ref().map_or((0, 1), |d| (d.rank(), d.world()));
        let want = cache::CacheMeta {
            version: cache::VERSION,
            samples: self.loaders.train.data.len(),
            side: cfg.cache_side(),
            input_size: cfg.data.input_size,
            groups: cfg.augment.groups,
            score_size: cfg.augment.score_size,
            world,
            fingerprint: cache::fingerprint(&self.loaders.train.data),
            epoch,
        };
        let dir = self.dir.cache.clone();
        let p = cfg.augment.probability;
        let opened = cache::SaliencyCache::open(&dir, &want, due, p)?;
        let stale = self.trainer.any_rank(opened.is_err())?;
        let why = match opened {
            Ok(c) if !stale => return Ok((c, None)),
            Ok(_) => "another rank cannot read it".to_string(),
            Err(why) => why,
        };
        if epoch != due {
            self.console.say(format!(
                "saliency cache: rebuilt before epoch {} with its weights ({why}); an uninterrupted run would use \
                 the maps made before epoch {}",
                epoch + 1,
                due + 1
            ));
        } else if epoch != start {
            self.console.say(format!("saliency cache: refreshing before epoch {} ({why})", epoch + 1));
        }
        if self.writes() {
            cache::clear(&dir)?;
        }
        self.barrier()?;
        let whole = Loader {
            transform: Transform::Whole { size: cfg.data.input_size },
            shuffle: false,
            drop_last: false,
            batch_size: cfg.train.val_batch_size.unwrap_or(cfg.train.batch_size),
            saliency: None,
            ..self.loaders.train.clone()
        };
        let stop = crate::interrupt::requested;
        let stats = cache::write_part(&self.model, &self.augmenter, &whole, &want, rank, &dir, self.device, &stop)
            .map_err(|e| match e.downcast_ref::<cache::Stopped>() {
                Some(s) => interrupted(
                    self,
                    format!(
                        "the saliency cache's refresh pass before epoch {} ({} of {} images done, none kept)",
                        epoch + 1,
                        s.done,
                        s.of
                    ),
                ),
                None => e,
            })?;
        self.barrier()?;
        if self.writes() {
            cache::publish(&dir, &want)?;
        }
        self.barrier()?;
        let opened = cache::SaliencyCache::open(&dir, &want, due, p)?.map_err(|why| {
            anyhow::anyhow!(
                "rank {rank} cannot read the saliency cache it just helped build in {}: {why} (on several \
                 machines the run directory must be on a filesystem that every rank sees)",
                dir.display()
            )
        })?;
        let seconds = stats.seconds;
        self.console.say(format!(
            "saliency cache: {} maps of {s} x {s} px before epoch {} in {seconds:.1} s ({:.1} img/s{}){}",
            stats.images,
            epoch + 1,
            stats.images as f64 / seconds.max(1e-9),
            if world > 1 { format!(" on rank {rank} of {world}") } else { String::new() },
            if stats.constant > 0 { format!(", {} constant (passed through)", stats.constant) } else { String::new() },
            s = cfg.cache_side()
        ));
        Ok((opened, Some(seconds)))
    }

    /// Waits for every rank (nothing alone).
    fn barrier(&self) -> Result<()> {
        match &self.trainer.ddp {
            Some(d) => d.group.barrier(),
            None => Ok(()),
        }
    }

    /// Whether this process writes the run's files (rank 0, or the only process).
    fn writes(&self) -> bool {
        self.trainer.ddp.as_ref().is_none_or(|d| d.rank() == 0)
    }

    /// Ctrl-C, decided together: a rank stops when any rank was interrupted, so that all of them
    /// stop at the same step (one that stopped alone would leave the others waiting on it).
    fn stop_requested(&self) -> Result<bool> {
        self.trainer.any_rank(crate::interrupt::requested())
    }

    /// This rank's batches of `epoch`: all of the loader's alone, else its DistributedSampler
    /// shard in batches of `train.batch_size / world`.
    fn train_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let loader = &self.loaders.train;
        match &self.trainer.ddp {
            None => loader.batches(epoch),
            Some(d) => sampler::batches(
                &sampler::shard(&loader.order(epoch), d.rank(), d.world(), true),
                loader.batch_size / d.world(),
                loader.drop_last,
            ),
        }
    }

    /// Names each unreadable file once per run (train and validation alike).
    fn say_skips(&mut self, skipped: &[(PathBuf, String)]) {
        for (p, why) in skipped {
            if self.named_skips.insert(p.clone()) {
                self.console.say(format!("skipped {}: {why}", p.display()));
            }
        }
    }

    /// Runs TensorBoard writes: a failure stops the run naming the intact checkpoint, or
    /// (`train.tensorboard: continue`) is said once and training goes on.
    fn logged<T>(&mut self, f: impl FnOnce(&mut EventLog) -> Result<T>) -> Result<T> {
        let r = f(&mut self.tb);
        if let Some(w) = self.tb.take_warning() {
            self.console.say(w);
        }
        r.map_err(|e| anyhow::anyhow!("{e:#}; {}", resume_hint(&self.dir, self.meta.epoch)))
    }

    /// The probe's maps after this epoch and how far they moved (see [`SaliencyTracker`]).
    /// Returns the epoch's grid, for TensorBoard once the checkpoint is safe.
    fn track_saliency(&mut self, rec: &mut EpochRecord) -> Result<Option<image::RgbImage>> {
        let (line, grid) = self.saliency.track(self.cfg, &self.model, rec, &mut self.meta, &self.dir.saliency)?;
        if let Some(line) = line {
            self.console.say(line);
        }
        Ok(grid)
    }

    /// `last` every epoch and `best` when val top-1 improved, each written atomically, then
    /// the history.
    fn save_checkpoints(&mut self, rec: EpochRecord) -> Result<()> {
        let improved = rec.val_top1 > self.meta.best_top1;
        if improved {
            (self.meta.best_top1, self.meta.best_epoch) = (rec.val_top1, rec.epoch);
        }
        self.meta.epoch = rec.epoch;
        self.meta.history.push(rec);
        (self.meta.loss_scale, self.meta.loss_scale_clean_steps) = self.trainer.scaler.state();
        if !self.writes() {
            return Ok(());
        }
        let (vs, sgd, maps) = (&self.model.vs, &self.trainer.sgd, self.saliency.prev.as_ref());
        checkpoint::save(&self.dir.last(), vs, sgd, maps, &self.meta)?;
        if improved {
            checkpoint::save(&self.dir.checkpoints.join("best.safetensors"), vs, sgd, maps, &self.meta)?;
        }
        report::write_history(&self.dir.out, &self.meta.history)?;
        Ok(())
    }

    /// Final weights and the report (rank 0), then the group's last barrier.
    fn finish(mut self) -> Result<RunSummary> {
        let out = self.dir.out;
        let summary = |meta: Meta| RunSummary { out: out.clone(), history: meta.history, best_top1: meta.best_top1 };
        if let Some(d) = self.trainer.ddp.take() {
            // Rank 0 writes while the others wait, so that every rank's success means a whole run.
            d.check_identical()?;
            let main = d.rank() == 0;
            if main {
                write_outputs(&self.model, &self.meta, &out)?;
            }
            d.group.finish()?;
            return Ok(summary(self.meta));
        }
        write_outputs(&self.model, &self.meta, &out)?;
        Ok(summary(self.meta))
    }
}

/// Final weights in torchvision's names and the report.
fn write_outputs(model: &Model, meta: &Meta, out: &Path) -> Result<()> {
    let final_path = out.join("final.safetensors");
    weights::save_torchvision(&model.vs, &final_path, meta.step as i64)?;
    // The class names by head index travel with the weights and the report.
    let classes = &meta.classes;
    crate::models::head::add_safetensors_metadata(&final_path, &[("classes", serde_json::to_string(classes)?)])?;
    let mut report_md = report::render(&meta.history, None, out, None);
    report_md.push_str(&report::classes_section(classes));
    crate::atomic::write_bytes(&out.join("report.md"), report_md.as_bytes())?;
    println!("final weights: {}", out.join("final.safetensors").display());
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

fn summary_line(rec: &EpochRecord, epochs: usize) -> String {
    format!(
        "epoch {}/{epochs} [{}] loss {:.4} train top-1 {:.2}% val top-1 {:.2}% top-5 {:.2}% (of {} images{}) augmented {:.0}% skipped {} {:.1}s{}",
        rec.epoch,
        rec.phase,
        rec.train_loss,
        100.0 * rec.train_top1,
        100.0 * rec.val_top1,
        100.0 * rec.val_top5,
        rec.val_images,
        if rec.val_skipped > 0 { format!(", {} unreadable skipped", rec.val_skipped) } else { String::new() },
        100.0 * rec.augmented_fraction,
        rec.images_skipped,
        rec.seconds,
        rec.saliency_change.map(|c| format!(" saliency change {c:.4}")).unwrap_or_default()
            + &rec
                .refresh_every
                .zip(rec.maps_from_epoch)
                .map(|(k, e)| {
                    let every = if k == 1 { "epoch".to_string() } else { format!("{k} epochs") };
                    format!(" (cached maps: refreshed every {every}, these from before epoch {e})")
                })
                .unwrap_or_default()
    )
}

/// What one training step did.
pub enum StepResult {
    Done {
        loss: f64,
        /// Top-1 hits, on the device.
        top1: Tensor,
    },
    /// fp16 gradients overflowed: the step was skipped and the loss scale halved.
    Overflow { loss: f64, top1: Tensor },
    /// The loss was NaN or infinite: nothing was changed.
    NonFinite(f64),
}

/// The optimizer side of a step: SGD, autocast, and the fp16 loss scale.
pub struct Trainer {
    pub sgd: Sgd,
    pub scaler: LossScaler,
    /// CUDA autocast: fp16 with dynamic loss scaling, or bf16 (no scaling). Autocast is a no-op
    /// on the CPU, where fp16 still runs the loss-scaling arithmetic (what the CPU tests check).
    pub amp: Option<AutocastDtype>,
    /// Gradients averaged over the ranks after each backward (data-parallel runs).
    pub ddp: Option<Ddp>,
}

impl Trainer {
    /// One SGD step on a batch: forward (under `amp`'s autocast), cross-entropy, backward
    /// (scaled for fp16), update.
    pub fn step(&mut self, model: &dyn CamModel, x: &Tensor, y: &Tensor, lr: f64) -> Result<StepResult> {
        let logits = crate::autocast::autocast(self.amp, x.device(), || model.forward(x));
        let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(y);
        let top1 = hits(&logits.detach(), y).0;
        self.sgd.zero_grad();
        if !self.loss_scaled() {
            // The step's one read from the device: the loss, checked before it can do harm.
            let value = loss.double_value(&[]);
            // Decided together: a rank that stopped alone would leave the others in the all-reduce.
            if self.any_rank(!value.is_finite())? {
                return Ok(StepResult::NonFinite(if value.is_finite() { f64::NAN } else { value }));
            }
            loss.backward();
            self.average_gradients()?;
            self.sgd.step(lr);
            return Ok(StepResult::Done { loss: value, top1 });
        }
        let scale = self.scaler.scale();
        (&loss * scale).backward();
        self.finish_amp(Some(&loss), scale, lr, top1)
    }

    /// This rank's part of a step when its whole batch was unreadable (data-parallel runs):
    /// zero gradients into the average, then the same update as every other rank, with the
    /// same collectives in the same order as [`Trainer::step`], so that the weights stay
    /// identical (alone, such a batch is simply skipped).
    pub fn step_empty(&mut self, lr: f64) -> Result<StepResult> {
        self.sgd.zero_grad();
        let zero = self.sgd.zero_loss();
        let top1 = Tensor::zeros([], (Kind::Int64, zero.device()));
        if !self.loss_scaled() {
            if self.any_rank(false)? {
                return Ok(StepResult::NonFinite(f64::NAN));
            }
            zero.backward();
            self.average_gradients()?;
            self.sgd.step(lr);
            return Ok(StepResult::Done { loss: 0.0, top1 });
        }
        let scale = self.scaler.scale();
        zero.backward();
        self.finish_amp(None, scale, lr, top1)
    }

    /// The fp16 step after its scaled backward: gradients averaged over the ranks (before the
    /// overflow check, so that every rank takes the same decision), one read of the loss and
    /// the gradients' sum, then the unscaled update or, on overflow, a lower scale.
    fn finish_amp(&mut self, loss: Option<&Tensor>, scale: f64, lr: f64, top1: Tensor) -> Result<StepResult> {
        self.average_gradients()?;
        let grads = self.sgd.grads();
        // One read for the loss and every gradient (it was one per parameter): a gradient's sum
        // is non-finite when one of its elements is, and a sum that overflows f32 is an
        // overflow of the step in any case.
        let sums: Vec<Tensor> = grads.iter().map(|g| g.sum(Kind::Float)).collect();
        let grad_total = Tensor::stack(&sums, 0).sum(Kind::Float);
        let loss = loss.map_or_else(|| grad_total.zeros_like(), |l| l.detach());
        let checks = Tensor::stack(&[loss, grad_total], 0);
        let checks = Vec::<f64>::try_from(checks.to_kind(Kind::Double).to_device(Device::Cpu))?;
        let (value, grad_sum) = (checks[0], checks[1]);
        if self.any_rank(!value.is_finite())? {
            return Ok(StepResult::NonFinite(if value.is_finite() { f64::NAN } else { value }));
        }
        let finite = grad_sum.is_finite();
        self.scaler.update(!finite);
        if !finite {
            return Ok(StepResult::Overflow { loss: value, top1 });
        }
        tch::no_grad(|| {
            for mut g in grads {
                let _ = g.g_div_scalar_(scale);
            }
        });
        self.sgd.step(lr);
        Ok(StepResult::Done { loss: value, top1 })
    }

    /// fp16 needs its loss scaled (bf16 has fp32's exponent range).
    fn loss_scaled(&self) -> bool {
        self.amp == Some(AutocastDtype::F16)
    }

    /// Whether `here` holds on any rank (just `here` alone).
    fn any_rank(&self, here: bool) -> Result<bool> {
        match &self.ddp {
            None => Ok(here),
            Some(d) => Ok(d.sum(&[if here { 1.0 } else { 0.0 }])?[0] > 0.0),
        }
    }
}

impl Trainer {
    fn average_gradients(&self) -> Result<()> {
        match &self.ddp {
            Some(d) => d.average_gradients(),
            None => Ok(()),
        }
    }
}

/// What validation measured, and over which images.
#[derive(Clone, Debug, Default)]
pub struct Validation {
    pub top1: f64,
    pub top5: f64,
    /// Images the accuracies are over (all ranks' together).
    pub images: usize,
    /// Files that could not be read, all ranks' together: counted, left out of the accuracies.
    pub unreadable: usize,
    /// This rank's unreadable files, with why (named in the log).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Top-1 and top-5 accuracy over a loader, in eval mode.
pub fn evaluate(model: &dyn CamModel, loader: &Loader, device: Device) -> Result<Validation> {
    evaluate_sharded(model, loader, device, None)
}

/// [`evaluate`] with the images split over the ranks (each exactly once, no padding) and the
/// counts summed, so that every rank gets the whole set's accuracy.
pub fn evaluate_sharded(
    model: &dyn CamModel,
    loader: &Loader,
    device: Device,
    ddp: Option<&Ddp>,
) -> Result<Validation> {
    let batches = match ddp {
        None => loader.batches(0),
        Some(d) => {
            sampler::batches(&sampler::shard(&loader.order(0), d.rank(), d.world(), false), loader.batch_size, false)
        }
    };
    let mut n = 0i64;
    let (mut t1, mut t5) = (Tensor::zeros([], (Kind::Int64, device)), Tensor::zeros([], (Kind::Int64, device)));
    let mut skipped = Vec::new();
    for batch in loader.epoch_of(0, batches, 0) {
        let batch = batch?;
        skipped.extend(batch.skipped.iter().cloned());
        if batch.is_empty() {
            continue;
        }
        let logits = tch::no_grad(|| model.logits_eval(&batch.images(device)));
        let (a, b) = hits(&logits, &batch.labels.to_device(device));
        (n, t1, t5) = (n + batch.len() as i64, t1 + a, t5 + b);
    }
    let (mut t1, mut t5) = (t1.int64_value(&[]), t5.int64_value(&[]));
    let mut unreadable = skipped.len();
    if let Some(d) = ddp {
        let s = d.sum(&[n as f64, t1 as f64, t5 as f64, unreadable as f64])?;
        (n, t1, t5, unreadable) = (s[0] as i64, s[1] as i64, s[2] as i64, s[3] as usize);
    }
    if n == 0 {
        bail!(
            "no validation image could be read from {} ({} unreadable, the first: {})",
            loader.data.root.display(),
            unreadable,
            skipped.first().map(|(p, why)| format!("{}: {why}", p.display())).unwrap_or_default()
        );
    }
    Ok(Validation { top1: t1 as f64 / n as f64, top5: t5 as f64 / n as f64, images: n as usize, unreadable, skipped })
}

/// Saliency convergence: a fixed probe of validation images, its maps after every epoch, and
/// the change against the previous epoch's.
struct SaliencyTracker {
    probe: Option<saliency::Probe>,
    /// The last maps (also checkpointed, so that a resumed run compares against them).
    prev: Option<Tensor>,
}

impl SaliencyTracker {
    /// The probe (`saliency.probe` validation images over the classes) and, on a fresh run, its
    /// maps before any training (epoch 0) with their grid.
    fn start(
        cfg: &Config,
        val: &Loader,
        model: &dyn CamModel,
        prev: Option<Tensor>,
        dir: &Path,
        device: Device,
    ) -> Result<(SaliencyTracker, Option<image::RgbImage>)> {
        let probe = make_probe(val, cfg.saliency.probe, cfg.train.seed, dir, device)?;
        let mut tracker = SaliencyTracker { probe, prev };
        let mut grid = None;
        if let (Some(p), None) = (&tracker.probe, &tracker.prev) {
            let maps = saliency::maps(model, p, cfg.saliency.groups)?;
            grid = Some(save_grid(dir, p, &maps, 0)?);
            tracker.prev = Some(maps);
        }
        Ok((tracker, grid))
    }

    /// Records the change in `rec`, updates the convergence streak in `meta`, saves the grid;
    /// returns the "converged" line the first time the streak reaches the patience, and the grid.
    fn track(
        &mut self,
        cfg: &Config,
        model: &dyn CamModel,
        rec: &mut EpochRecord,
        meta: &mut Meta,
        dir: &Path,
    ) -> Result<(Option<String>, Option<image::RgbImage>)> {
        let Some(p) = &self.probe else { return Ok((None, None)) };
        let maps = saliency::maps(model, p, cfg.saliency.groups)?;
        let mut line = None;
        if let Some(prev) = &self.prev {
            let (c, d) = saliency::change(prev, &maps);
            (rec.saliency_change, rec.saliency_delta) = (Some(c), Some(d));
            meta.saliency_streak = if c < cfg.saliency.threshold { meta.saliency_streak + 1 } else { 0 };
            if meta.saliency_streak >= cfg.saliency.patience && meta.converged_at.is_none() {
                meta.converged_at = Some(rec.epoch);
                line = Some(format!(
                    "saliency converged at epoch {}: 1 - r < {} for {} epochs",
                    rec.epoch, cfg.saliency.threshold, cfg.saliency.patience
                ));
            }
        }
        let grid = save_grid(dir, p, &maps, rec.epoch)?;
        self.prev = Some(maps);
        Ok((line, Some(grid)))
    }
}
/// The probe (see [`saliency::pick`]), its files recorded in `saliency/probe.json`; a resumed run
/// must find the same files there, or its saliency change would compare other images.
fn make_probe(val: &Loader, n: usize, seed: u64, dir: &Path, device: Device) -> Result<Option<saliency::Probe>> {
    if n == 0 {
        return Ok(None);
    }
    let picked = saliency::pick(&val.data.samples, n, seed);
    let entries: Vec<saliency::ProbeEntry> = picked
        .iter()
        .map(|&i| {
            let (path, label) = val.data.samples[i].clone();
            saliency::ProbeEntry { class: val.data.classes[label as usize].clone(), path, label }
        })
        .collect();
    let subset =
        ImageFolder { samples: entries.iter().map(|e| (e.path.clone(), e.label)).collect(), ..val.data.clone() };
    let probe_loader = Loader { data: subset, batch_size: n, shuffle: false, ..val.clone() };
    let batch = probe_loader.epoch(0, 0).next().context("empty validation set")??;
    // Unreadable picks are left out of the probe (validation names and counts them).
    let entries: Vec<_> = entries.into_iter().filter(|e| !batch.skipped.iter().any(|(p, _)| p == &e.path)).collect();
    if entries.is_empty() {
        bail!(
            "no probe image could be read from {} (set saliency.probe: 0 to run without the probe)",
            val.data.root.display()
        );
    }
    let listed = dir.join("probe.json");
    if listed.exists() {
        let text = std::fs::read_to_string(&listed).with_context(|| format!("cannot read {}", listed.display()))?;
        let before: Vec<saliency::ProbeEntry> =
            serde_json::from_str(&text).with_context(|| format!("{} is not a probe list", listed.display()))?;
        if before != entries {
            bail!(
                "{} lists other images than the validation set gives now (was it changed?): the saliency change \
                 would compare different images; restore the set, or start a new run",
                listed.display()
            );
        }
    } else {
        crate::atomic::write_bytes(&listed, &serde_json::to_vec_pretty(&entries)?)?;
    }
    let photos = batch.pixels.to_kind(Kind::Float) / 255.0;
    Ok(Some(saliency::Probe { images: batch.images(device), labels: Vec::<i64>::try_from(&batch.labels)?, photos }))
}

/// Saves the epoch's grid as a PNG and returns it for TensorBoard.
fn save_grid(dir: &Path, probe: &saliency::Probe, maps: &Tensor, epoch: usize) -> Result<image::RgbImage> {
    let img = saliency::grid(&probe.photos, maps)?;
    let path = dir.join(format!("epoch-{epoch:03}.png"));
    crate::atomic::save_png(&img, &path)?;
    Ok(img)
}

fn log_epoch(tb: &mut EventLog, r: &EpochRecord, grid: Option<&image::RgbImage>) -> Result<()> {
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
        ("val/images", r.val_images as f64),
        ("val/images_skipped", r.val_skipped as f64),
    ] {
        tb.scalar(tag, v as f32, e)?;
    }
    if let Some(from) = r.maps_from_epoch {
        // Epochs of training the cached maps have not seen.
        tb.scalar("saliency/cached_maps_age", (r.epoch - from) as f32, e)?;
    }
    if let (Some(c), Some(d)) = (r.saliency_change, r.saliency_delta) {
        tb.scalar("saliency/one_minus_pearson", c as f32, e)?;
        tb.scalar("saliency/mean_abs_delta", d as f32, e)?;
    }
    if let Some(g) = grid {
        tb.image("saliency/probe", g, e)?;
    }
    Ok(())
}

/// The per-step scalars (also what `bench train` counts as part of the step).
pub fn log_step(tb: &mut EventLog, step: u64, loss: f64, lr: f64, img_per_s: f64) -> Result<()> {
    tb.scalar("train/loss", loss as f32, step as usize)?;
    tb.scalar("train/lr", lr as f32, step as usize)?;
    tb.scalar("train/img_per_s", img_per_s as f32, step as usize)
}
