//! `groupcam ab`: a controlled A/B of fine-tuning arms over seeds (`groupcam::ab`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct AbArgs {
    /// The base fine-tuning config; its `weights:` is every run's starting point.
    #[arg(long)]
    config: PathBuf,
    /// An arm (repeat): control, faithful, fast, cached, scores, cutmix,
    /// or NAME:key=value,... (default: all
    /// the built-ins; the control is always run).
    #[arg(long = "arm")]
    arms: Vec<String>,
    /// Every arm runs once per seed, with train.seed = the seed.
    #[arg(long, default_value = "0,1,2")]
    seeds: String,
    /// The A/B's directory: runs/, configs/, logs/, reports/, ab.md, ab.json, curves-SET.png.
    #[arg(long)]
    work: PathBuf,
    /// Override a key of the base config in every run (values are YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Data-parallel ranks per run (finetune --nproc N).
    #[arg(long, value_name = "N")]
    nproc: Option<usize>,
}

pub fn run(a: AbArgs) -> Result<()> {
    let seeds = groupcam::ab::parse_seeds(&a.seeds)?;
    let spec = groupcam::ab::Spec { config: a.config, sets: a.sets, arms: a.arms, seeds, work: a.work, nproc: a.nproc };
    groupcam::ab::run(&spec).map(|_| ())
}
