//! A run's set-up, in the order that makes a bad run fail before it changes anything: the
//! device and its precision, the rank's group, the loaders, the model, the resume checkpoint
//! (read and checked before anything is written), the run directory's lock, then the
//! directories, the broadcast of rank 0's weights, the logs and the probe.

use std::collections::HashSet;
use std::path::Path;

use crate::models::CamModel as _;
use anyhow::{Context, Result, bail};
use tch::Device;

use super::checkpoint::{self, Meta};
use super::console::Console;
use super::context::Run;
use super::loaders::Loaders;
use super::probe::ProbeTracker;
use super::saver::{CheckpointSaver, RunPaths};
use super::sgd::Sgd;
use super::step::Trainer;
use super::{Amp, Config, LossScaler, RunOptions};
use crate::augment::{Augmentation, cache};
use crate::autocast::AutocastDtype;
use crate::dist::{Ddp, Group, Launch, World};
use crate::interrupt::Interrupt;
use crate::models::Model;
use crate::rundir::{Reuse, RunLock};
use crate::tb::EventLog;

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
        None => Model::build(cfg.arch, classes, device)?,
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

/// The device (a rank's own GPU under a launch) and its autocast, said on rank 0.
fn device_and_amp(cfg: &Config, launch: Option<&Launch>, main: bool) -> Result<(Device, Option<AutocastDtype>)> {
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
    Ok((device, amp))
}

/// Everything the epochs work with, or the reason the run cannot start (nothing written then).
pub(super) fn start<'a>(cfg: &'a Config, opts: &RunOptions) -> Result<Run<'a>> {
    let launch = opts.launch.as_ref();
    let main = launch.is_none_or(|l| l.rv.rank == 0);
    let (device, amp) = device_and_amp(cfg, launch, main)?;
    // Join the group first: a bad launch fails before any work.
    let group = launch.map(|l| Group::new(&l.rv, device, cfg.dist.timeout())).transpose()?;

    let mut loaders = Loaders::build(cfg)?;
    // Batches in page-locked memory, copied without blocking (pinning needs CUDA).
    (loaders.train.pin_memory, loaders.val.pin_memory) = (device.is_cuda(), device.is_cuda());
    for (_, l) in &mut loaders.extra_val {
        l.pin_memory = device.is_cuda();
    }
    let augmentation = Augmentation::from_config(&cfg.augment);
    let caching = augmentation.cached_every().is_some();
    if caching && main {
        // Refused before any work: a full disk found at the first refresh would waste the set-up.
        let needed = cfg.cache_bytes(loaders.train.data.len());
        cache::check_space(&RunPaths::of(&cfg.out).map_cache, needed)?;
    }
    let mut model = build_model(cfg, loaders.num_classes(), &loaders.train.data.root, device)?;
    // A scripted model's preprocessing comes with it.
    (loaders.train.norm, loaders.val.norm) = (model.input_norm(), model.input_norm());
    for (_, l) in &mut loaders.extra_val {
        l.norm = model.input_norm();
    }
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
    let lock = if main {
        let reuse = match (&opts.resume, opts.overwrite) {
            (Some(_), _) => Reuse::Resume,
            (None, true) => Reuse::Overwrite,
            (None, false) => Reuse::Fresh,
        };
        let mut lock = RunLock::open(&cfg.out, reuse)?;
        if let Some(pid) = lock.stale_pid {
            println!("took over the stale lock of process {pid}, which is no longer running");
        }
        lock.start()?;
        Some(lock)
    } else {
        None
    };
    let interrupt = Interrupt::install();
    let saver = CheckpointSaver::create(&cfg.out, caching, main)?;
    saver.write_file("config.yaml", serde_yaml::to_string(cfg)?.as_bytes())?;
    let world = match group {
        Some(g) => World::Ranks(Ddp::new(g, &model.vs, cfg.dist.bucket_bytes())),
        None => World::Single,
    };
    world.broadcast_state()?;
    let trainer = Trainer { sgd, scaler: LossScaler::resume(meta.loss_scale, meta.loss_scale_clean_steps), amp, world };
    // Ranks other than 0 write nothing: no event file, no probe, no grids.
    let tb = EventLog::create(
        &saver.paths.out.join("tb"),
        if main { cfg.train.tensorboard } else { crate::tb::OnError::Off },
    )?;
    let (probe, grid) = if main {
        ProbeTracker::start(cfg, &loaders.val, &model, prev_maps, &saver.paths.probe, device)?
    } else {
        (ProbeTracker::off(prev_maps), None)
    };
    let mut run = Run {
        cfg,
        device,
        loaders,
        model,
        trainer,
        augmentation,
        saver,
        tb,
        console: Console::new(opts.progress, !main),
        meta,
        probe,
        named_skips: HashSet::new(),
        _interrupt: interrupt,
        _lock: lock,
    };
    if let Some(g) = grid {
        run.logged(|tb| tb.image("saliency/probe", &g, 0))?;
    }
    Ok(run)
}
