//! `groupcam augment`: what the model will be trained on, as PNGs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use tch::Device;

use groupcam::augment::{GroupCamAugment, Outcome, Precision, Threshold, preview};
use groupcam::models::{CamModel, HeadSpec};
use groupcam::outputs::Io;
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
    /// Replace the classifier with a fresh N-way layer first, as `model.reset_head` does at the
    /// start of a fine-tuning run (the preview of its first augmented batch).
    #[arg(long, value_name = "N")]
    reset_head: Option<i64>,
}

pub fn run(a: AugmentArgs, device: Device) -> Result<()> {
    Io::new().input("--weights", [&a.model.weights]).input("--image", &a.image).dir("--out", [&a.out]).check()?;
    let head = HeadSpec { num_classes: a.reset_head, reset: a.reset_head.is_some() };
    if let Some(n) = a.reset_head.filter(|&n| n < 1) {
        bail!("--reset-head {n}: a classifier needs at least 1 class");
    }
    let (model, input_size) = a.model.load_with(device, head)?;
    let aug = GroupCamAugment {
        groups: a.groups,
        score_size: a.score_size,
        threshold: a.threshold,
        max_batch: a.max_batch,
        precision: a.precision,
        ..Default::default()
    };
    let items = preview::preview(&model, &aug, &a.image, &a.label, input_size)?;
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
            imagenet::name_for(it.label, model.num_classes())
        );
    }
    Ok(())
}
