//! `groupcam finetune`, `synth` and `report`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use groupcam::dist::launch;
use groupcam::outputs::Io;
use groupcam::synth::{self, SynthConfig};
use groupcam::train::{self, Config, RunOptions, report};

#[derive(Args)]
pub struct FinetuneArgs {
    /// The run's YAML config (see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Resume from a checkpoint (e.g. <out>/checkpoints/last.safetensors).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Override a config key, e.g. --set train.lr=0.01 --set data.workers=2 (values are YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// The run directory (overrides the config's `out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Clear a directory that already holds a run before starting a new one there.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Spawn N local data-parallel ranks of this command (Gloo on CPU, NCCL on cuda:0..N-1).
    #[arg(long, value_name = "N")]
    nproc: Option<usize>,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Where to write train/, val/ and boxes.json.
    #[arg(long)]
    out: PathBuf,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Training images per class.
    #[arg(long, default_value_t = 100)]
    train: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = 20)]
    val: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct ReportArgs {
    /// A run directory.
    run: PathBuf,
    /// A control run to put beside it.
    #[arg(long)]
    control: Option<PathBuf>,
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
    let mut sets = a.sets.clone();
    if let Some(o) = &a.out {
        sets.push(format!("out={}", o.display()));
    }
    let cfg = Config::load(&a.config, &sets)?;
    let io =
        Io::new().input("--config", [&a.config]).input("weights", &cfg.weights).input("data.root", [&cfg.data.root]);
    io.resumed("--resume", a.resume.as_ref()).dir(if a.out.is_some() { "--out" } else { "out" }, [&cfg.out]).check()?;
    let launch = launch::from_env()?;
    if let Some(n) = a.nproc {
        if let Some(l) = launch {
            bail!("--nproc {n}: this process is already rank {} of a {} launch", l.rv.rank, l.source);
        }
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        // The ranks time out on their own; the grace only covers one that hangs for good.
        return launch::spawn_local(n, &launch::without_nproc(&args), cfg.dist.timeout() * 2 + Duration::from_secs(10));
    }
    train::run(&cfg, &RunOptions { resume: a.resume, progress: !a.quiet, overwrite: a.overwrite, launch })?;
    Ok(())
}

pub fn synth(a: SynthArgs) -> Result<()> {
    let cfg = SynthConfig { size: a.size, train_per_class: a.train, val_per_class: a.val, seed: a.seed };
    let n = synth::write(&a.out, &cfg)?;
    println!("{n} images of {} classes in {} (boxes in boxes.json)", synth::SHAPES.len(), a.out.display());
    Ok(())
}

pub fn report(a: ReportArgs) -> Result<()> {
    let run = report::read_history(&a.run)?;
    let control = a.control.as_ref().map(|c| report::read_history(c)).transpose()?;
    print!("{}", report::render(&run, control.as_deref(), &a.run, a.control.as_deref()));
    Ok(())
}
