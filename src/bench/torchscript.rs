//! A scripted ResNet-50 (an archive of the README's recipe) against the built-in ResNet-50:
//! eval forward, Group-CAM explain and training step, interleaved in one run; and whether the
//! scripted module's scoring forwards gain from lanes (two threads calling the same CModule).

use std::path::PathBuf;

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

use super::{Report, Table, sync, time_interleaved};
use crate::cam::{self, Batching, Explainer, GroupCam};
use crate::models::{Arch, CamModel, ConcurrentEval, Model, Normalization};
use crate::train::{LossScaler, Trainer, sgd::Sgd};

/// `groupcam bench torchscript`'s arguments (clap reads them into this struct directly).
#[derive(clap::Args)]
pub struct TorchScriptBench {
    /// A TorchScript archive of a torchvision ResNet-50 (README: export_cnn(resnet50(), path)).
    #[arg(long)]
    pub archive: PathBuf,
    /// Images per forward and per training step.
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    #[arg(long, default_value_t = 32)]
    pub groups: i64,
    /// Timed repetitions after one warm-up, interleaved across the rows.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
}

/// A model offered to the scoring lanes whatever it says of itself: for measuring whether a
/// scripted module's forwards gain from running on two threads. Sound on the Rust side (the
/// scripted backbone's calls in its current mode take a read lock); on the libtorch side it
/// holds for modules whose eval-mode methods write no attribute, as the recipe's do.
struct Lanes<'a>(&'a Model);

impl CamModel for Lanes<'_> {
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.0.features_t(x, train)
    }
    fn head_t(&self, a: &Tensor, train: bool) -> Tensor {
        self.0.head_t(a, train)
    }
    fn training(&self) -> bool {
        self.0.training()
    }
    fn set_training(&self, on: bool) {
        self.0.set_training(on)
    }
    fn input_norm(&self) -> Normalization {
        self.0.input_norm()
    }
    fn num_classes(&self) -> i64 {
        self.0.num_classes()
    }
    fn target_channels(&self) -> i64 {
        self.0.target_channels()
    }
    fn device(&self) -> Device {
        self.0.device()
    }
    fn concurrent(&self) -> Option<&dyn ConcurrentEval> {
        Some(self)
    }
}

// SAFETY: see `Lanes`; only the benchmark uses it, on the recipe's modules.
unsafe impl ConcurrentEval for Lanes<'_> {}

fn numel(m: &Model) -> i64 {
    m.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

pub fn run(b: &TorchScriptBench, device: Device) -> Result<Report> {
    if let Some(t) = b.threads {
        tch::set_num_threads(t);
    }
    let script = Model::load(Arch::TorchScript, &b.archive, device)?;
    let builtin = Model::new(Arch::Resnet50, script.num_classes(), device);
    if numel(&script) != numel(&builtin) {
        bail!(
            "{} has {} parameters, a ResNet-50 of {} classes {}: export a torchvision resnet50 with the README's recipe",
            b.archive.display(),
            numel(&script),
            script.num_classes(),
            numel(&builtin)
        );
    }
    let size = script.input_size(None) as i64;
    let x = Tensor::rand([b.batch, 3, size, size], (Kind::Float, device));
    let y = Tensor::randint(script.num_classes(), [b.batch], (Kind::Int64, device));
    let one = x.narrow(0, 0, 1);
    let gc = GroupCam { groups: b.groups, ..Default::default() };
    let n = b.groups + 1;
    let inputs = one.repeat([n, 1, 1, 1]);
    let cls = Tensor::zeros([n], (Kind::Int64, device));
    let one_lane = Batching { chunk: cam::default_chunk(device), lanes: 1 };
    let threads = tch::get_num_threads().max(1) as usize;
    let lanes = Batching { chunk: 2, lanes: threads };
    let lanes_script = Lanes(&script);
    let mut trainers = [&builtin, &script].map(|m| Trainer {
        sgd: Sgd::new(&m.vs, 0.9, 1e-4),
        scaler: LossScaler::new(),
        amp: None,
        world: crate::dist::World::Single,
    });
    let [tb, ts] = &mut trainers;
    let fwd = |m: &Model| {
        let _ = tch::no_grad(|| m.logits_eval(&x));
        sync(device);
        Ok(())
    };
    let explain = |m: &Model| {
        gc.explain(m, &one, None)?;
        sync(device);
        Ok(())
    };
    let score = |m: &dyn CamModel, batching: Batching| {
        let _ = cam::score_batched(m, n, batching, &cls, &|s, l| inputs.narrow(0, s, l));
        sync(device);
        Ok(())
    };
    let step = |m: &Model, t: &mut Trainer| {
        m.set_training(true);
        let r = t.step(m, &x, &y, 1e-4);
        m.set_training(false);
        sync(device);
        r.map(|_| ())
    };
    let t = time_interleaved(
        b.reps,
        &mut [
            &mut || fwd(&builtin),
            &mut || fwd(&script),
            &mut || explain(&builtin),
            &mut || explain(&script),
            &mut || score(&builtin, one_lane),
            &mut || score(&script, one_lane),
            &mut || score(&builtin, lanes),
            &mut || score(&lanes_script, lanes),
            &mut || step(&builtin, tb),
            &mut || step(&script, ts),
        ],
    )?;
    // The lanes' scores against one lane's, so that the timing is of a correct computation.
    let (a, l) = tch::no_grad(|| {
        (
            cam::score_batched(&script, n, one_lane, &cls, &|s, l| inputs.narrow(0, s, l)),
            cam::score_batched(&lanes_script, n, lanes, &cls, &|s, l| inputs.narrow(0, s, l)),
        )
    });
    let lanes_diff = (&a - &l).abs().max().double_value(&[]);

    let mut table = Table::new(&["ResNet-50", "built-in (s)", "TorchScript (s)", "TorchScript / built-in"]);
    let row =
        |what: String, bi: f64, ts: f64| vec![what, format!("{bi:.3}"), format!("{ts:.3}"), format!("{:.3}", ts / bi)];
    table.push(row(format!("eval forward, batch {}", b.batch), t[0], t[1]));
    table.push(row(format!("explain (G = {}, default batching)", b.groups), t[2], t[3]));
    table.push(row(format!("{n}-image scoring, 1 lane x {} images", one_lane.chunk), t[4], t[5]));
    table.push(row(format!("{n}-image scoring, {threads} lanes x 2 images"), t[6], t[7]));
    table.push(row(format!("training step, batch {}", b.batch), t[8], t[9]));
    let notes = vec![
        format!(
            "{}: input {size} px, {threads} threads; explain's default scoring lanes: built-in {}, scripted {} \
             (its concurrent_eval attribute)",
            b.archive.display(),
            cam::Batching::default_for(&builtin).lanes,
            cam::Batching::default_for(&script).lanes
        ),
        format!(
            "scripted scoring in {threads} lanes: {:.3}x the time of 1 lane (max |score difference| {lanes_diff:.1e})",
            t[7] / t[5]
        ),
    ];
    Ok(Report { notes, tables: vec![table] })
}
