//! One forward per step against batched insertion/deletion curves, in one lane with forwards of
//! the device's single-lane chunk and with the default (or given) lanes; same image, map and
//! process.

use std::path::PathBuf;

use anyhow::Result;
use tch::Device;

use super::methods::{input, model};
use super::{Report, Table, sync, time_interleaved};
use crate::cam::gradcam::GradCam;
use crate::cam::{Batching, Explainer, default_chunk};
use crate::eval::insdel::{self, Mode, Preset, argmax_classes, auc};
use crate::models::Arch;

/// `groupcam bench insdel`'s arguments (clap reads them into this struct directly).
#[derive(clap::Args)]
pub struct InsdelBench {
    #[arg(long, default_value = "efficientnet-lite0", value_parser = crate::choice::parser::<Arch>())]
    pub arch: Arch,
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[arg(long, default_value = "groupcam", value_parser = crate::choice::parser::<Preset>())]
    pub preset: Preset,
    /// Images per forward of the lanes variant (default: the model's).
    #[arg(long)]
    pub chunk: Option<i64>,
    /// Lanes of the lanes variant (default: the model's).
    #[arg(long)]
    pub lanes: Option<usize>,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

pub fn run(b: &InsdelBench, device: Device) -> Result<Report> {
    let model = model(b.arch, &b.weights, device)?;
    let preset = b.preset;
    let x = input(&model, &b.image, 224, device)?;
    let cls = argmax_classes(&model, &x)?;
    let map = GradCam.explain(&model, &x, Some(&cls))?.maps;
    let one = Batching { chunk: default_chunk(device), lanes: 1 };
    let lanes = Batching::with_options(&model, b.chunk, b.lanes)?;
    let notes = vec![format!(
        "{} on {device:?}, {} CPU threads, preset {} ({} points), one lane: chunk {}, lanes: {} x chunk {}, medians of {} after a warm-up",
        model.arch,
        tch::get_num_threads(),
        preset.name,
        preset.points(224 * 224),
        one.chunk,
        lanes.lanes,
        lanes.chunk,
        b.reps
    )];
    let mut t = Table::new(&[
        "mode",
        "one forward per step (s)",
        "batched, one lane (s)",
        "batched, lanes (s)",
        "speed-up one lane",
        "speed-up lanes",
        "AUC stepwise",
        "AUC lanes",
        "max abs diff of curves",
    ]);
    for mode in [Mode::Insertion, Mode::Deletion] {
        let (mut stepwise, mut single, mut multi) = (Vec::new(), Vec::new(), Vec::new());
        let times = time_interleaved(
            b.reps,
            &mut [
                &mut || {
                    stepwise = insdel::curve_stepwise(&model, &x, &map.get(0), cls[0], mode, &preset)?;
                    sync(device);
                    Ok(())
                },
                &mut || {
                    single = insdel::curves(&model, &x, &map, Some(&cls), mode, &preset, Some(one))?.remove(0);
                    sync(device);
                    Ok(())
                },
                &mut || {
                    multi = insdel::curves(&model, &x, &map, Some(&cls), mode, &preset, Some(lanes))?.remove(0);
                    sync(device);
                    Ok(())
                },
            ],
        )?;
        let diff = |u: &[f64]| u.iter().zip(&stepwise).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        t.push(vec![
            mode.name().to_string(),
            format!("{:.3}", times[0]),
            format!("{:.3}", times[1]),
            format!("{:.3}", times[2]),
            format!("{:.2}x", times[0] / times[1]),
            format!("{:.2}x", times[0] / times[2]),
            format!("{:.6}", auc(&stepwise)),
            format!("{:.6}", auc(&multi)),
            format!("{:.1e}", diff(&single).max(diff(&multi))),
        ]);
    }
    Ok(Report { notes, tables: vec![t] })
}
