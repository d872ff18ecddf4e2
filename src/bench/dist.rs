//! The data-parallel gradient all-reduce against the step it follows: `world` CPU ranks over
//! Gloo (rank 0 here, the others as threads of this process that only join the collectives),
//! each holding a model's gradients; rank 0 alternates its own training step with the
//! all-reduce, so the two are timed interleaved on the same machine.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tch::{Device, Kind, Tensor};

use super::{Report, Table, median};
use crate::dist::{Ddp, Group, Rendezvous};
use crate::models::{Arch, CamModel, Model};
use crate::train::{LossScaler, Trainer, sgd::Sgd};

/// `groupcam bench dist`'s arguments (clap reads them into this struct directly).
#[derive(clap::Args)]
pub struct DistBench {
    /// Architecture whose gradients are averaged (resnet50: 25.6 M floats).
    #[arg(long, default_value = "resnet50", value_parser = crate::choice::parser::<Arch>())]
    pub arch: Arch,
    /// Rank 0's step batch (one rank's share of the global batch).
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    #[arg(long, default_value_t = 224)]
    pub size: i64,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Ranks (threads of this process, over Gloo on 127.0.0.1).
    #[arg(long, default_value_t = 2)]
    pub world: usize,
    /// Gradient bucket size in MB (DDP's default).
    #[arg(long, default_value_t = 25.0)]
    pub bucket_mb: f64,
}

/// One rank's model with defined gradients and its DDP buckets.
fn rank_model(arch: Arch, rv: &Rendezvous, bucket_bytes: usize) -> Result<(Model, Ddp)> {
    let group = Group::new(rv, Device::Cpu, Duration::from_secs(600))?;
    let model = Model::build(arch, 1000, Device::Cpu)?;
    Sgd::new(&model.vs, 0.9, 0.0).zero_loss().backward();
    let ddp = Ddp::new(group, &model.vs, bucket_bytes);
    Ok((model, ddp))
}

pub fn run(b: &DistBench) -> Result<Report> {
    if b.world < 2 {
        bail!("--world {}: an all-reduce needs at least 2 ranks", b.world);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free local port for the benchmark's rendezvous")?
        .port();
    let rv = |rank| Rendezvous { addr: "127.0.0.1".into(), port, rank, world: b.world, agent_store: false };
    let bucket_bytes = (b.bucket_mb * 1024.0 * 1024.0) as usize;
    let reps = b.reps.max(1);
    let others: Vec<_> = (1..b.world)
        .map(|rank| {
            let (arch, rv) = (b.arch, rv(rank));
            std::thread::spawn(move || -> Result<()> {
                let (model, ddp) = rank_model(arch, &rv, bucket_bytes)?;
                let flat = flat_like(&model);
                for _ in 0..=reps {
                    ddp.average_gradients()?;
                    ddp.group.all_reduce_sum(&[&flat])?;
                }
                ddp.group.finish()
            })
        })
        .collect();
    let (model, ddp) = rank_model(b.arch, &rv(0), bucket_bytes)?;
    let flat = flat_like(&model);
    let floats = flat.numel();
    model.set_training(true);
    let x = Tensor::randn([b.batch, 3, b.size, b.size], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(1000, [b.batch], (Kind::Int64, Device::Cpu));
    let mut trainer = Trainer {
        sgd: Sgd::new(&model.vs, 0.9, 1e-4),
        scaler: LossScaler::new(),
        amp: None,
        world: crate::dist::World::Single,
    };
    let (mut step_t, mut ddp_t, mut flat_t) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..=reps {
        let t = Instant::now();
        let _ = trainer.step(&model, &x, &y, 1e-4)?;
        let st = t.elapsed().as_secs_f64();
        let t = Instant::now();
        ddp.average_gradients()?;
        let dt = t.elapsed().as_secs_f64();
        let t = Instant::now();
        ddp.group.all_reduce_sum(&[&flat])?;
        let ft = t.elapsed().as_secs_f64();
        if rep > 0 {
            step_t.push(st);
            ddp_t.push(dt);
            flat_t.push(ft);
        }
    }
    let buckets = ddp.bucket_bytes();
    ddp.group.finish()?;
    for h in others {
        h.join().map_err(|_| anyhow::anyhow!("a benchmark rank panicked"))??;
    }
    let (step, avg, raw) = (median(step_t), median(ddp_t), median(flat_t));
    let bytes = (floats * 4) as f64;
    let n = b.world as f64;
    // NCCL's convention: bus bandwidth = algorithm bandwidth x 2(n-1)/n, what each link carried.
    let bus = |s: f64| bytes / s * 2.0 * (n - 1.0) / n / 1e9;
    let mut t = Table::new(&["what", "s (median)", "x step", "bus GB/s"]);
    t.push(vec![
        format!("{} training step, batch {} at {} px (rank 0)", b.arch, b.batch, b.size),
        format!("{step:.3}"),
        "1.00".into(),
        "-".into(),
    ]);
    t.push(vec![
        format!("gradient average, {} buckets (flatten + Gloo all-reduce + copy back)", buckets.len()),
        format!("{avg:.3}"),
        format!("{:.3}", avg / step),
        format!("{:.2}", bus(avg)),
    ]);
    t.push(vec![
        format!("one all-reduce of {:.1} M floats (Gloo only)", floats as f64 / 1e6),
        format!("{raw:.3}"),
        format!("{:.3}", raw / step),
        format!("{:.2}", bus(raw)),
    ]);
    let notes = vec![format!(
        "{} CPU ranks over Gloo on 127.0.0.1, {} gradient floats ({:.1} MB), buckets of {} MB, {} libtorch threads, {reps} reps interleaved",
        b.world,
        floats,
        bytes / 1e6,
        b.bucket_mb,
        tch::get_num_threads()
    )];
    Ok(Report { notes, tables: vec![t] })
}

/// One flat f32 tensor with as many elements as the model has trainable parameters.
fn flat_like(model: &Model) -> Tensor {
    let n: i64 = model.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    Tensor::ones([n], (Kind::Float, Device::Cpu))
}
