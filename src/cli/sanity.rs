//! `groupcam sanity`: cascade and independent randomisation of a trained model's layers, with the
//! Spearman rank correlation of each method's maps against the trained model's (paper Sec. 4.5).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tch::Device;

use groupcam::cam::{Method, MethodOptions, methods};
use groupcam::eval::sanity::{self, Randomization};
use groupcam::outputs::Io;
use groupcam::{choice, files, plot};

#[derive(Args)]
pub struct SanityArgs {
    #[command(flatten)]
    model: super::ModelArgs,
    /// Image files, or a directory of images.
    #[arg(long, num_args = 1.., required = true)]
    images: Vec<PathBuf>,
    /// Methods to check.
    #[arg(long, value_delimiter = ',', default_value = "groupcam", value_parser = choice::parser::<Method>())]
    methods: Vec<Method>,
    /// Randomisations: cascade (top layer down, cumulative), independent (one layer at a time).
    #[arg(long, value_delimiter = ',', default_value = "cascade,independent",
        value_parser = choice::parser::<Randomization>())]
    modes: Vec<Randomization>,
    /// Seed of the random layer values.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Where to write the correlations per image, step and method.
    #[arg(long)]
    json: PathBuf,
    /// Figure (PNG): mean correlation per step, and the first image's maps at each step.
    #[arg(long)]
    figure: Option<PathBuf>,
    /// Images per scoring forward (default: the device's).
    #[arg(long)]
    chunk: Option<i64>,
    /// RISE's number of masks N.
    #[arg(long, default_value_t = 4000)]
    rise_masks: i64,
}

pub fn run(a: SanityArgs, device: Device) -> Result<()> {
    let io = Io::new().input("--weights", [&a.model.weights]).input("--images", &a.images);
    io.file("--json", [&a.json]).file("--figure", &a.figure).check()?;
    let opts = MethodOptions { chunk: a.chunk, rise_masks: Some(a.rise_masks) };
    let methods = methods::build_all(&a.methods, &opts).map_err(|e| anyhow::anyhow!("--methods: {e:#}"))?;
    let images = files::image_files(&a.images)?;
    let (model, input_size) = a.model.load(device)?;
    let r =
        sanity::check(&model, &a.model.weights, &methods, &images, &a.modes, a.seed, input_size, a.figure.is_some())?;
    print!("{}", r.text);
    files::write_json(&r.json, &a.json)?;
    println!("results: {}", a.json.display());
    if let (Some(p), Some(fig)) = (&a.figure, &r.figure) {
        plot::save(fig, p)?;
        println!("figure: {}", p.display());
    }
    Ok(())
}
