//! `groupcam predict`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tch::Device;

use groupcam::models::CamModel;
use groupcam::{imageio, predict};

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: super::ModelArgs,
    /// Image files (JPEG or PNG).
    #[arg(long, num_args = 1.., required = true)]
    image: Vec<PathBuf>,
    /// How many classes to list per image.
    #[arg(long, default_value_t = 5)]
    topk: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PredictArgs, device: Device) -> Result<()> {
    let (model, input_size) = a.model.load(device)?;
    let (x, _) = imageio::load_batch(&a.image, input_size, &model.input_norm())?;
    let preds = predict::topk(&model, &x.to_device(device), a.topk)?;
    if a.json {
        let out: Vec<_> = a
            .image
            .iter()
            .zip(&preds)
            .map(|(p, v)| serde_json::json!({ "image": p.display().to_string(), "top": v }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (p, v) in a.image.iter().zip(&preds) {
            println!("{}", p.display());
            for pr in v {
                println!("  {:>4}  {:>7.3}%  {}", pr.class, pr.probability * 100.0, pr.name);
            }
        }
    }
    Ok(())
}
