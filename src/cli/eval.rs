//! `groupcam eval`: insertion, deletion and the pointing game over the methods.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use tch::Device;

use groupcam::cam::{Batching, Method, MethodOptions, methods};
use groupcam::eval::insdel::{self, InsdelOptions, Preset};
use groupcam::eval::pointing::{self, Coco};
use groupcam::eval::{EvalReport, Metric};
use groupcam::outputs::Io;
use groupcam::{choice, files};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: super::ModelArgs,
    /// Image files, or a directory of images (for the pointing game: the directory the boxes
    /// file's file_name entries are relative to).
    #[arg(long, num_args = 1.., required = true)]
    images: Vec<PathBuf>,
    /// Methods to compare.
    #[arg(long, value_delimiter = ',', default_value = "groupcam,gradcam,gradcampp,scorecam,rise",
        value_parser = choice::parser::<Method>())]
    methods: Vec<Method>,
    /// Metrics.
    #[arg(long, value_delimiter = ',', default_value = "insertion,deletion", value_parser = choice::parser::<Metric>())]
    metrics: Vec<Metric>,
    /// Insertion/deletion protocol: groupcam (448 px/step, blur 51/50) or rise (224 px/step, blur 11/5).
    #[arg(long, default_value = "groupcam", value_parser = choice::parser::<Preset>())]
    preset: Preset,
    /// COCO-format boxes for the pointing game.
    #[arg(long)]
    boxes: Option<PathBuf>,
    /// Where to write the per-image curves and AUCs.
    #[arg(long)]
    json: PathBuf,
    /// Write each method's maps (.npy and an overlay .png) under DIR/METHOD/.
    #[arg(long)]
    save_maps: Option<PathBuf>,
    /// Plot of the mean insertion and deletion curves per method (PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Images per scoring forward (default: 2 per lane on a multi-threaded CPU, 64 on CUDA).
    #[arg(long)]
    chunk: Option<i64>,
    /// Insertion/deletion forwards run side by side on CPU (default: one per CPU thread).
    #[arg(long)]
    lanes: Option<usize>,
    /// Images explained and scored together.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// RISE's number of masks N.
    #[arg(long, default_value_t = 4000)]
    rise_masks: i64,
}

pub fn run(a: EvalArgs, device: Device) -> Result<()> {
    let io = Io::new().input("--weights", [&a.model.weights]).input("--images", &a.images).input("--boxes", &a.boxes);
    io.file("--json", [&a.json]).file("--plot", &a.plot).dir("--save-maps", &a.save_maps).check()?;
    let modes: Vec<insdel::Mode> = a.metrics.iter().filter_map(|m| m.mode()).collect();
    let pointing_on = a.metrics.contains(&Metric::Pointing);
    let boxes = match (&a.boxes, pointing_on) {
        (None, true) => bail!("--metrics pointing needs --boxes FILE (COCO-format JSON)"),
        (b, _) => b.clone(),
    };
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let opts = MethodOptions { chunk: a.chunk, rise_masks: Some(a.rise_masks) };
    let methods = methods::build_all(&a.methods, &opts).map_err(|e| anyhow::anyhow!("--methods: {e:#}"))?;
    let (model, input_size) = a.model.load(device)?;
    let mut report = EvalReport {
        arch: model.arch.name().to_string(),
        weights: a.model.weights.display().to_string(),
        input_size: input_size,
        insdel: None,
        pointing: None,
    };
    if !modes.is_empty() {
        let files = files::image_files(&a.images)?;
        let batching =
            Batching::with_options(&model, a.chunk, a.lanes).map_err(|e| anyhow::anyhow!("--chunk/--lanes: {e:#}"))?;
        let opts = InsdelOptions {
            modes: modes.clone(),
            preset: a.preset,
            input_size: input_size,
            batching,
            batch: a.batch,
            save_maps: a.save_maps.clone(),
        };
        let r = insdel::evaluate(&model, &methods, &files, &opts)?;
        print!("{}", r.table());
        if let Some(p) = &a.plot {
            r.plot(&modes, p)?;
            println!("plot: {}", p.display());
        }
        report.insdel = Some(r);
    }
    if let Some(boxes) = boxes.filter(|_| pointing_on) {
        let coco = Coco::load(&boxes)?;
        let [dir] = a.images.as_slice() else {
            bail!(
                "--metrics pointing needs --images to be the one directory the file_name entries of {} are in",
                boxes.display()
            );
        };
        if !dir.is_dir() {
            bail!(
                "--images {} is not a directory (the pointing game reads the boxes file's file_name entries from it)",
                dir.display()
            );
        }
        let r = pointing::play(&model, &methods, &coco, &boxes, dir, input_size)?;
        print!("{}", r.table());
        report.pointing = Some(r);
    }
    files::write_json(&report, &a.json)?;
    println!("results: {}", a.json.display());
    Ok(())
}
