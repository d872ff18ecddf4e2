//! `explain` as a library call: Group-CAM maps of image files, and their overlay PNGs and raw
//! `.npy` maps.

use std::path::{Path, PathBuf};

use anyhow::Result;
use image::RgbImage;
use tch::{Device, Tensor};

use crate::cam::{Explainer, GroupCam};
use crate::models::CamModel;
use crate::{files, imageio};

/// One explained image.
pub struct ExplainedImage {
    pub input: PathBuf,
    /// The output name (the input's stem, made unique among the inputs).
    pub stem: String,
    /// The map as a jet heatmap blended half and half over the photo.
    pub overlay: RgbImage,
    /// H x W in [0, 1], on the CPU.
    pub map: Tensor,
    pub class: i64,
    pub constant: bool,
}

/// Decodes and explains every file (for `class`, else each image's top-1) before anything is
/// written, so a bad input leaves no partial output.
pub fn explain_files(
    model: &dyn CamModel,
    cam: &GroupCam,
    inputs: &[PathBuf],
    input_size: u32,
    class: Option<i64>,
) -> Result<Vec<ExplainedImage>> {
    let (x, photos) = imageio::load_batch(inputs, input_size, &model.input_norm())?;
    let classes = class.map(|c| vec![c; inputs.len()]);
    let exp = cam.explain(model, &x.to_device(model.device()), classes.as_deref())?;
    let maps = exp.maps.to_device(Device::Cpu);
    inputs
        .iter()
        .enumerate()
        .map(|(i, path)| {
            Ok(ExplainedImage {
                input: path.clone(),
                stem: files::unique_stem(path, i, inputs),
                overlay: imageio::overlay(&photos.get(i as i64), &maps.get(i as i64))?,
                map: maps.get(i as i64),
                class: exp.classes[i],
                constant: exp.constant[i],
            })
        })
        .collect()
}

/// Writes `<stem>.png` and `<stem>.npy` per image into `dir`; returns the PNG paths.
pub fn write(items: &[ExplainedImage], dir: &Path) -> Result<Vec<PathBuf>> {
    files::write_per_input(
        dir,
        items,
        |it| (&it.input, &it.stem),
        &[".png", ".npy"],
        |it, paths| {
            crate::atomic::save_png(&it.overlay, &paths[0])?;
            imageio::write_npy(&it.map, &paths[1])?;
            Ok(paths[0].clone())
        },
    )
}
