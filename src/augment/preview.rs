//! `groupcam augment` as a library call: what the model will be trained on, as images.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use image::RgbImage;
use tch::{Device, Tensor};

use super::{GroupCamAugment, Outcome};
use crate::models::CamModel;
use crate::{files, imageio};

/// One augmented image and its mask (white: the input is kept).
pub struct Preview {
    pub input: PathBuf,
    pub stem: String,
    pub label: i64,
    pub image: RgbImage,
    pub mask: RgbImage,
    pub outcome: Outcome,
}

/// Augments the files for their labels (one per image, or one for all); everything is computed
/// before anything is written.
pub fn preview(
    model: &dyn CamModel,
    aug: &GroupCamAugment,
    inputs: &[PathBuf],
    labels: &[i64],
    input_size: u32,
) -> Result<Vec<Preview>> {
    let labels = match labels.len() {
        1 => vec![labels[0]; inputs.len()],
        n if n == inputs.len() => labels.to_vec(),
        n => bail!("{n} labels for {} images: give one per image, or one for all", inputs.len()),
    };
    let norm = model.input_norm();
    let (x, _) = imageio::load_batch(inputs, input_size, &norm)?;
    let out = aug.augment(model, &x.to_device(model.device()), &Tensor::from_slice(&labels))?;
    let images = norm.invert(&out.images).to_device(Device::Cpu);
    let masks = out.masks.to_device(Device::Cpu);
    inputs
        .iter()
        .enumerate()
        .map(|(i, path)| {
            Ok(Preview {
                input: path.clone(),
                stem: files::unique_stem(path, i, inputs),
                label: labels[i],
                image: imageio::to_image(&images.get(i as i64))?,
                mask: imageio::to_image(&masks.get(i as i64).expand([3, -1, -1], false))?,
                outcome: out.stats.outcomes[i],
            })
        })
        .collect()
}

/// Writes `<stem>-augmented.png` and `<stem>-mask.png` per image; returns the image paths.
pub fn write(items: &[Preview], dir: &Path) -> Result<Vec<PathBuf>> {
    files::write_per_input(
        dir,
        items,
        |it| (&it.input, &it.stem),
        &["-augmented.png", "-mask.png"],
        |it, paths| {
            crate::atomic::save_png(&it.image, &paths[0])?;
            crate::atomic::save_png(&it.mask, &paths[1])?;
            Ok(paths[0].clone())
        },
    )
}
