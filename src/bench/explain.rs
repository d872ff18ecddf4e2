//! Explain time against its own parts: one forward+backward, one (G+1)-image scoring forward.

use std::path::PathBuf;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::{Report, Table, sync, time_interleaved};
use crate::cam::{self, Batching, Explainer, GroupCam};
use crate::models::{Arch, Model};

/// `groupcam bench explain`'s arguments (clap reads them into this struct directly).
#[derive(clap::Args)]
pub struct ExplainBench {
    /// Architectures to measure.
    #[arg(long = "arch", value_name = "ARCH", value_delimiter = ',', default_value = "resnet50,efficientnet-lite0",
        value_parser = crate::choice::parser::<Arch>())]
    pub archs: Vec<Arch>,
    /// Weights for a single --arch (default: random weights; timing does not depend on them).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub groups: i64,
    #[arg(long, default_value_t = 224)]
    pub input_size: i64,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

pub fn run(b: &ExplainBench, device: Device) -> Result<Report> {
    let mut t =
        Table::new(&["arch", "G", "explain (s)", "fwd+bwd (s)", "(G+1)-image fwd (s)", "parts (s)", "explain / parts"]);
    for &arch in &b.archs {
        let model = match &b.weights {
            Some(w) => Model::load(arch, w, device)?,
            None => Model::build(arch, 1000, device)?,
        };
        let s = b.input_size;
        let x = Tensor::rand([1, 3, s, s], (Kind::Float, device));
        let gc = GroupCam { groups: b.groups, ..Default::default() };
        // The bare scoring forwards, batched as the explainer batches them.
        let groups = x.repeat([b.groups + 1, 1, 1, 1]);
        let batching = Batching::default_for(&model);
        let cls = Tensor::zeros([b.groups + 1], (Kind::Int64, device));
        let times = time_interleaved(
            b.reps,
            &mut [
                &mut || {
                    gc.explain(&model, &x, None)?;
                    sync(device);
                    Ok(())
                },
                &mut || {
                    cam::activations(&model, &x, None, true)?;
                    sync(device);
                    Ok(())
                },
                &mut || {
                    let _ = cam::score_batched(&model, b.groups + 1, batching, &cls, &|s, l| groups.narrow(0, s, l));
                    sync(device);
                    Ok(())
                },
            ],
        )?;
        let (explain, fwd_bwd, score) = (times[0], times[1], times[2]);
        let parts = fwd_bwd + score;
        t.push(vec![
            arch.to_string(),
            b.groups.to_string(),
            format!("{explain:.3}"),
            format!("{fwd_bwd:.3}"),
            format!("{score:.3}"),
            format!("{parts:.3}"),
            format!("{:.3}", explain / parts),
        ]);
    }
    Ok(Report { notes: vec![], tables: vec![t] })
}
