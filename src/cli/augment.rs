//! `groupcam augment`: what the model will be trained on, as PNGs.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tch::Device;

use groupcam::augment::{GroupCamAugment, Outcome, Precision, Threshold, preview};
use groupcam::{choice, imagenet};

#[derive(Args)]
pub struct AugmentArgs {
    #[command(flatten)]
    model: super::ModelArgs,
    /// Image files (JPEG or PNG).
    #[arg(long, num_args = 1.., required = true)]
    image: Vec<PathBuf>,
    /// The ground-truth class of each image, or one class for all of them.
    #[arg(long, num_args = 1.., required = true)]
    label: Vec<i64>,
    /// Number of channel groups G.
    #[arg(long, default_value_t = 16)]
    groups: i64,
    /// Score the masked inputs with their shorter side this many pixels (e.g. 112).
    #[arg(long)]
    score_size: Option<i64>,
    /// image (each map's mean, the paper) or batch (one mean over the batch, the official code).
    #[arg(long, default_value = "image", value_parser = choice::parser::<Threshold>())]
    threshold: Threshold,
    /// Images per scoring forward (default: the device's).
    #[arg(long)]
    max_batch: Option<i64>,
    /// f32, or f16 (CUDA autocast) for the map's forwards.
    #[arg(long, default_value = "f32", value_parser = choice::parser::<Precision>())]
    precision: Precision,
    /// Output directory: <stem>-augmented.png and <stem>-mask.png (white: the input is kept).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: AugmentArgs, device: Device) -> Result<()> {
    let model = a.model.load(device)?;
    let aug = GroupCamAugment {
        groups: a.groups,
        score_size: a.score_size,
        threshold: a.threshold,
        max_batch: a.max_batch,
        precision: a.precision,
        ..Default::default()
    };
    let items = preview::preview(&model, &aug, &a.image, &a.label, a.model.input_size)?;
    let paths = preview::write(&items, &a.out)?;
    for (it, path) in items.iter().zip(&paths) {
        let what = match it.outcome {
            Outcome::Augmented { kept } => format!("{:.0}% of the pixels kept", 100.0 * kept),
            Outcome::Constant => "constant map: unchanged".into(),
            Outcome::Skipped => "skipped: unchanged".into(),
        };
        println!(
            "{} -> {} (label {} {}; {what})",
            it.input.display(),
            path.display(),
            it.label,
            imagenet::class_name(it.label)
        );
    }
    Ok(())
}
