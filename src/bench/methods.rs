//! Time per image of each saliency method on the same model, input and threads.

use std::path::PathBuf;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::{Report, Table, sync, time_interleaved};
use crate::cam::{Method, MethodOptions, methods};
use crate::eval::insdel::argmax_classes;
use crate::imageio;
use crate::models::{Arch, CamModel, Model};

/// `groupcam bench methods`'s arguments (clap reads them into this struct directly).
#[derive(clap::Args)]
pub struct MethodsBench {
    #[arg(long, default_value = "efficientnet-lite0", value_parser = crate::choice::parser::<Arch>())]
    pub arch: Arch,
    /// Weights (default: random; Score-CAM's time depends on them through its skipped constant channels).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "groupcam,gradcam,gradcampp,scorecam,rise",
        value_parser = crate::choice::parser::<Method>())]
    pub methods: Vec<Method>,
    /// An image to explain (default: random noise).
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[arg(long, default_value_t = 224)]
    pub input_size: u32,
    #[arg(long, default_value_t = 4000)]
    pub rise_masks: i64,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

/// The model of a benchmark: loaded weights, or random ones.
pub(crate) fn model(arch: Arch, weights: &Option<PathBuf>, device: Device) -> Result<Model> {
    match weights {
        Some(w) => Model::load(arch, w, device),
        None => Model::build(arch, 1000, device),
    }
}

/// One image of a benchmark, or noise.
pub(crate) fn input(model: &Model, image: &Option<PathBuf>, size: u32, device: Device) -> Result<Tensor> {
    Ok(match image {
        Some(p) => imageio::load_batch(&[p], size, &model.input_norm())?.0.to_device(device),
        None => Tensor::randn([1, 3, size as i64, size as i64], (Kind::Float, device)),
    })
}

pub fn run(b: &MethodsBench, device: Device) -> Result<Report> {
    let model = model(b.arch, &b.weights, device)?;
    let x = input(&model, &b.image, b.input_size, device)?;
    let cls = argmax_classes(&model, &x)?;
    let ms = methods::build_all(&b.methods, &MethodOptions { chunk: None, rise_masks: Some(b.rise_masks) })?;
    let mut fs: Vec<Box<dyn FnMut() -> Result<()> + '_>> = ms
        .iter()
        .map(|m| {
            let (model, x, cls) = (&model, &x, &cls);
            Box::new(move || {
                m.explain(model, x, Some(cls))?;
                sync(device);
                Ok(())
            }) as Box<dyn FnMut() -> Result<()>>
        })
        .collect();
    let mut refs: Vec<&mut dyn FnMut() -> Result<()>> = fs.iter_mut().map(|f| f.as_mut() as _).collect();
    let t = time_interleaved(b.reps, &mut refs)?;
    let notes = vec![format!(
        "{} on {device:?}, {} CPU threads, {}x{} input, RISE N = {}, medians of {} after a warm-up",
        model.arch,
        tch::get_num_threads(),
        b.input_size,
        b.input_size,
        b.rise_masks,
        b.reps
    )];
    let mut table = Table::new(&["method", "s / image", "x Grad-CAM"]);
    let grad = ms.iter().position(|m| m.name() == "gradcam").map(|i| t[i]);
    for (m, s) in ms.iter().zip(&t) {
        let rel = grad.map(|g| format!("{:.1}", s / g)).unwrap_or_else(|| "-".into());
        table.push(vec![m.name().to_string(), format!("{s:.3}"), rel]);
    }
    Ok(Report { notes, tables: vec![table] })
}
