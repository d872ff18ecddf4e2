//! `groupcam sanity`: cascade and independent randomisation of a trained model's layers, with the
//! Spearman rank correlation of each method's maps against the trained model's (paper Sec. 4.5).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use image::imageops::{FilterType, resize};
use serde_json::{Value, json};
use tch::Device;

use groupcam::eval::insdel::argmax_classes;
use groupcam::eval::sanity::{self, Randomization, Randomizer, mean_defined};
use groupcam::models::CamModel;
use groupcam::{imageio, plot};

#[derive(Args)]
pub struct SanityArgs {
    #[command(flatten)]
    model: super::ModelArgs,
    /// Image files, or a directory of .png/.jpg/.jpeg.
    #[arg(long, num_args = 1.., required = true)]
    images: Vec<PathBuf>,
    /// Methods to check: groupcam, gradcam, gradcampp, scorecam, rise.
    #[arg(long, value_delimiter = ',', default_value = "groupcam")]
    methods: Vec<String>,
    /// Randomisations: cascade (top layer down, cumulative), independent (one layer at a time).
    #[arg(long, value_delimiter = ',', default_value = "cascade,independent")]
    modes: Vec<String>,
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

pub fn sanity_cmd(a: SanityArgs, device: Device) -> Result<()> {
    let modes: Vec<Randomization> = a.modes.iter().map(|m| m.parse()).collect::<Result<_>>()?;
    if modes.is_empty() {
        bail!("--modes is empty");
    }
    let methods = super::cli_eval::explainers(&a.methods, a.chunk, a.rise_masks)?;
    let files = super::cli_eval::image_files(&a.images)?;
    let model = super::load_model(&a.model, device)?;
    let (x, photos) = imageio::load_batch(&files, a.model.input_size, &model.input_norm())?;
    let x = x.to_device(device);
    let classes = argmax_classes(&model, &x)?;
    let mut randomizer = Randomizer::new(&model, a.seed)?;
    let layers: Vec<String> = randomizer.layers().iter().map(|l| l.name.clone()).collect();
    println!(
        "{}: {} layers randomised top down ({} ... {}), {} images, seed {}",
        model.arch,
        layers.len(),
        layers.last().map(String::as_str).unwrap_or(""),
        layers.first().map(String::as_str).unwrap_or(""),
        files.len(),
        a.seed
    );

    let thumb = |map: &tch::Tensor| -> Result<image::RgbImage> {
        Ok(resize(&imageio::overlay(&photos.get(0), &map.get(0).to_device(Device::Cpu))?, 96, 96, FilterType::Triangle))
    };
    let mut report = serde_json::Map::new();
    let (mut panels, mut strips) = (Vec::new(), Vec::new());
    for m in &methods {
        let reference = m.explain(&model, &x, Some(&classes)).with_context(|| format!("method {}", m.name()))?;
        let mut per_mode = serde_json::Map::new();
        let mut lines = Vec::new();
        let mut table: Vec<Vec<String>> = Vec::new();
        for &mode in &modes {
            let steps = sanity::run(&mut randomizer, m.as_ref(), &x, &classes, &reference.maps, mode)?;
            let means: Vec<Option<f64>> = steps.iter().map(|s| mean_defined(&s.spearman)).collect();
            // Step 0, the trained model, correlates perfectly with itself.
            lines.push(std::iter::once(1.0).chain(means.iter().map(|v| v.unwrap_or(f64::NAN))).collect());
            let mut tiles = vec![("trained".to_string(), thumb(&reference.maps)?)];
            for s in &steps {
                tiles.push((s.label.clone(), thumb(&s.maps)?));
            }
            strips.push(plot::strip(&format!("{} {}, {}", m.name(), mode.name(), files[0].display()), &tiles));
            for (k, (s, mean)) in steps.iter().zip(&means).enumerate() {
                if table.len() <= k {
                    table.push(vec![(k + 1).to_string(), s.label.clone()]);
                }
                table[k].push(mean.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()));
            }
            let rows: Vec<Value> = steps
                .iter()
                .zip(&means)
                .enumerate()
                .map(|(k, (s, mean))| {
                    json!({
                        "step": k + 1,
                        "layer": s.label,
                        "randomized": s.randomized,
                        "mean_spearman": mean,
                        "spearman": s.spearman,
                        "same_prediction": s.same_prediction,
                    })
                })
                .collect();
            per_mode.insert(mode.name().into(), json!(rows));
        }
        println!("{}: mean Spearman rank correlation with the trained model's maps", m.name());
        let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
        println!("| step | layer | {} |", names.join(" | "));
        println!("|---|---|{}", "---|".repeat(names.len()));
        for row in &table {
            println!("| {} |", row.join(" | "));
        }
        per_mode.insert("trained_constant_map".into(), json!(reference.constant));
        report.insert(m.name().into(), Value::Object(per_mode));
        panels.push(plot::Panel { title: m.name().into(), lines, y_range: (-1.0, 1.0) });
    }
    let images: Vec<Value> = files
        .iter()
        .zip(&classes)
        .map(|(f, &c)| json!({ "image": f.display().to_string(), "class": c, "class_name": groupcam::imagenet::class_name(c) }))
        .collect();
    let out = json!({
        "arch": model.arch.name(),
        "weights": a.model.weights.display().to_string(),
        "seed": a.seed,
        "layers_input_to_output": layers,
        "images": images,
        "methods": report,
    });
    super::cli_eval::write_json(&out, &a.json)?;
    if let Some(p) = &a.figure {
        let legend: Vec<String> = modes.iter().map(|m| m.name().to_string()).collect();
        let mut parts = vec![plot::chart(&panels, &legend)];
        parts.extend(strips);
        plot::save(&plot::stack(&parts), p)?;
        println!("figure: {}", p.display());
    }
    Ok(())
}
