//! The loader's images/s per worker thread (decode + RandomResizedCrop + flip), and the
//! trainer's real step (`train::Trainer::step` plus the loop's per-step logging) against the
//! bare forward/backward/update of the same batch.

use std::time::Instant;

use crate::tb::{EventLog, OnError};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::{Report, Table, TempDir, median, sync};
use crate::data::{ImageFolder, Loader, Transform};
use crate::models::{Arch, CamModel, Model, Normalization};
use crate::synth::{self, SynthConfig};
use crate::train::{LossScaler, Trainer, log_step, sgd::Sgd};

/// `groupcam bench train`'s arguments (clap reads them into this struct directly).
#[derive(clap::Args)]
pub struct TrainBench {
    /// Architecture of the step measurement.
    #[arg(long, default_value = "resnet50", value_parser = crate::choice::parser::<Arch>())]
    pub arch: Arch,
    #[arg(long, default_value_t = 16)]
    pub batch: i64,
    #[arg(long, default_value_t = 224)]
    pub size: i64,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Loader worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// Synthetic training images (320 x 320 PNG) decoded per loader measurement.
    #[arg(long, default_value_t = 96)]
    pub images: usize,
    /// The trainer's step with fp16 autocast and loss scaling, as `train.amp` does (CUDA).
    #[arg(long)]
    pub amp: bool,
}

pub fn run(b: &TrainBench, device: Device) -> Result<Report> {
    if b.amp && !device.is_cuda() {
        anyhow::bail!("--amp is fp16 autocast, which needs a CUDA device (running on {device:?})");
    }
    let data_dir = TempDir::new("train");
    let per_class = b.images.div_ceil(synth::SHAPES.len());
    synth::write(&data_dir.0, &SynthConfig { size: 320, train_per_class: per_class, val_per_class: 0, seed: 0 })?;
    let data = ImageFolder::open(&data_dir.0.join("train"))?;
    let mut loader_t = Table::new(&["loader workers", "images", "s", "images/s", "images/s per worker"]);
    for &w in &b.workers {
        let loader = Loader {
            data: data.clone(),
            batch_size: 16,
            shuffle: true,
            drop_last: false,
            transform: Transform::Train {
                size: b.size as u32,
                scale: (0.08, 1.0),
                ratio: (0.75, 4.0 / 3.0),
                flip: 0.5,
            },
            norm: Normalization::IMAGENET,
            workers: w,
            prefetch: 8,
            seed: 0,
            pin_memory: false,
            masks: None,
        };
        let t = Instant::now();
        let mut got = 0i64;
        for b in loader.epoch(0, 0) {
            got += b?.images(tch::Device::Cpu).size()[0];
        }
        let s = t.elapsed().as_secs_f64();
        loader_t.push(vec![
            w.to_string(),
            got.to_string(),
            format!("{s:.2}"),
            format!("{:.1}", got as f64 / s),
            format!("{:.1}", got as f64 / s / w as f64),
        ]);
    }
    drop(data_dir);

    let model = Model::build(b.arch, 1000, device)?;
    model.set_training(true);
    let x = Tensor::randn([b.batch, 3, b.size, b.size], (Kind::Float, device));
    let y = Tensor::randint(1000, [b.batch], (Kind::Int64, device));
    let mut trainer = Trainer {
        sgd: Sgd::new(&model.vs, 0.9, 1e-4),
        scaler: LossScaler::new(),
        amp: b.amp.then_some(crate::autocast::AutocastDtype::F16),
        world: crate::dist::World::Single,
    };
    let mut bare_sgd = Sgd::new(&model.vs, 0.9, 1e-4);
    let tb_dir = TempDir::new("tb");
    let mut tb = EventLog::create(&tb_dir.0, OnError::Stop)?;
    let (mut loop_t, mut bare_t) = (Vec::new(), Vec::new());
    for rep in 0..=b.reps.max(1) {
        let t = Instant::now();
        let _ = trainer.step(&model, &x, &y, 1e-4)?;
        log_step(&mut tb, rep as u64, 0.0, 1e-4, 0.0)?;
        sync(device);
        let lt = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let loss = model.forward(&x).cross_entropy_for_logits(&y);
        bare_sgd.zero_grad();
        loss.backward();
        bare_sgd.step(1e-4);
        sync(device);
        let bt = t.elapsed().as_secs_f64();
        if rep > 0 {
            loop_t.push(lt);
            bare_t.push(bt);
        }
    }
    drop(tb);
    let (l, bare) = (median(loop_t), median(bare_t));
    let mut step_t = Table::new(&["arch", "batch", "trainer step (s)", "bare fwd+bwd+update (s)", "overhead"]);
    step_t.push(vec![
        b.arch.to_string(),
        b.batch.to_string(),
        format!("{l:.3}"),
        format!("{bare:.3}"),
        format!("{:+.1}%", 100.0 * (l / bare - 1.0)),
    ]);
    Ok(Report { notes: vec![], tables: vec![loader_t, step_t] })
}
