//! `groupcam finetune`, `synth` and `report`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

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
    train::run(&cfg, &RunOptions { resume: a.resume, progress: !a.quiet })?;
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

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Architecture of the step measurement.
    #[arg(long, default_value = "resnet50")]
    arch: String,
    #[arg(long, default_value_t = 16)]
    batch: i64,
    #[arg(long, default_value_t = 224)]
    size: i64,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Loader worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Synthetic training images (320 x 320 PNG) decoded per loader measurement.
    #[arg(long, default_value_t = 96)]
    images: usize,
}

/// The loader's images/s per worker thread (decode + RandomResizedCrop + flip), and the
/// trainer's step against the bare forward/backward/update of the same batch.
pub fn bench_train(a: BenchTrainArgs, device: tch::Device) -> Result<()> {
    use groupcam::data::{ImageFolder, Loader, Transform};
    use groupcam::models::{Arch, CamModel, Model};
    use std::time::Instant;
    use tch::{Kind, Tensor};

    let dir = std::env::temp_dir().join(format!("groupcam-bench-train-{}", std::process::id()));
    let per_class = a.images.div_ceil(synth::SHAPES.len());
    synth::write(&dir, &SynthConfig { size: 320, train_per_class: per_class, val_per_class: 0, seed: 0 })?;
    let data = ImageFolder::open(&dir.join("train"))?;
    println!("| loader workers | images | s | images/s | images/s per worker |");
    println!("|---|---|---|---|---|");
    for &w in &a.workers {
        let loader = Loader {
            data: data.clone(),
            batch_size: 16,
            shuffle: true,
            drop_last: false,
            transform: Transform::Train {
                size: a.size as u32,
                scale: (0.08, 1.0),
                ratio: (0.75, 4.0 / 3.0),
                flip: 0.5,
            },
            norm: groupcam::models::Normalization::IMAGENET,
            workers: w,
            prefetch: 8,
            seed: 0,
        };
        let t = Instant::now();
        let got: i64 = loader.epoch(0, 0).map(|b| b.images.size()[0]).sum();
        let s = t.elapsed().as_secs_f64();
        println!("| {w} | {got} | {s:.2} | {:.1} | {:.1} |", got as f64 / s, got as f64 / s / w as f64);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let arch: Arch = a.arch.parse()?;
    let model = Model::new(arch, 1000, device);
    model.set_training(true);
    let x = Tensor::randn([a.batch, 3, a.size, a.size], (Kind::Float, device));
    let y = Tensor::randint(1000, [a.batch], (Kind::Int64, device));
    let mut sgd = groupcam::train::sgd::Sgd::new(&model.vs, 0.9, 1e-4);
    let mut bare_sgd = groupcam::train::sgd::Sgd::new(&model.vs, 0.9, 1e-4);
    let mut tb = tensorboard_rs::summary_writer::SummaryWriter::new(
        std::env::temp_dir().join(format!("groupcam-bench-tb-{}", std::process::id())),
    );
    let (mut scale, mut k) = (65536.0, 0u64);
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let (mut loop_t, mut bare_t) = (Vec::new(), Vec::new());
    for rep in 0..=a.reps.max(1) {
        let t = Instant::now();
        if let groupcam::train::Step::Done { loss, .. } =
            groupcam::train::step(&model, &mut sgd, &mut scale, k, &x, &y, 1e-4, false)?
        {
            tb.add_scalar("train/loss", loss as f32, k as usize);
            tb.add_scalar("train/lr", 1e-4, k as usize);
            tb.add_scalar("train/img_per_s", 0.0, k as usize);
        }
        sync();
        k += 1;
        let lt = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let loss = model.forward(&x).cross_entropy_for_logits(&y);
        bare_sgd.zero_grad();
        loss.backward();
        bare_sgd.step(1e-4);
        sync();
        let bt = t.elapsed().as_secs_f64();
        if rep > 0 {
            loop_t.push(lt);
            bare_t.push(bt);
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (l, b) = (med(loop_t), med(bare_t));
    println!();
    println!("| arch | batch | trainer step (s) | bare fwd+bwd+update (s) | overhead |");
    println!("|---|---|---|---|---|");
    println!("| {arch} | {} | {l:.3} | {b:.3} | {:+.1}% |", a.batch, 100.0 * (l / b - 1.0));
    Ok(())
}
