//! `groupcam explain`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tch::Device;

use groupcam::cam::{GroupCam, Variant};
use groupcam::models::CamModel;
use groupcam::outputs::Io;
use groupcam::{choice, explain, imagenet};

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    model: super::ModelArgs,
    /// Image files (JPEG or PNG).
    #[arg(long, num_args = 1.., required = true)]
    image: Vec<PathBuf>,
    /// Class to explain for every image (default: each image's top-1).
    #[arg(long)]
    class: Option<i64>,
    /// Number of channel groups G.
    #[arg(long, default_value_t = 32)]
    groups: i64,
    /// De-noise percentile theta (paper Eq. 3; the paper uses 70). Off by default, as in the official code.
    #[arg(long)]
    denoise: Option<f64>,
    /// official (the authors' code) or paper (Eq. 6-7).
    #[arg(long, default_value = "official", value_parser = choice::parser::<Variant>())]
    variant: Variant,
    /// Images per scoring forward (default: 2 per lane on a multi-threaded CPU, 64 on CUDA).
    #[arg(long)]
    chunk: Option<i64>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ExplainArgs, device: Device) -> Result<()> {
    Io::new().input("--weights", [&a.model.weights]).input("--image", &a.image).dir("--out", [&a.out]).check()?;
    let (model, input_size) = a.model.load(device)?;
    let cam =
        GroupCam { groups: a.groups, denoise: a.denoise, variant: a.variant, chunk: a.chunk, ..Default::default() };
    let items = explain::explain_files(&model, &cam, &a.image, input_size, a.class)?;
    let pngs = explain::write(&items, &a.out)?;
    for (it, png) in items.iter().zip(&pngs) {
        let note = if it.constant { " (constant map)" } else { "" };
        println!(
            "{} -> {} class {} ({}){note}",
            it.input.display(),
            png.display(),
            it.class,
            imagenet::name_for(it.class, model.num_classes())
        );
    }
    Ok(())
}
