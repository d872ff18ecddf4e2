//! The saliency cache's fidelity, measured on this crate's own code path: for random
//! RandomResizedCrops of real photos, the mask the loader cuts from the cached whole-image map
//! (`augment::cache::cut_mask`) against the augmentation's fresh mask of the crop, with the
//! noise floor of a fresh mask against the fresh mask of the same box moved by 2 px (pixel for
//! pixel). IoU of the kept pixels, per crop-scale band (box area over image area), the
//! statistic of scripts/cache_fidelity.py. The score cache beside it: the crop's own group maps
//! weighed by the whole image's cached scores (`GroupCamAugment::augment_with_scores`, the
//! scores rounded to f16 as the cache stores them).

use std::path::PathBuf;

use anyhow::{Result, bail};
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use super::{Report, Table};
use crate::augment::{GroupCamAugment, Threshold, binarize, cache};
use crate::data::Transform;
use crate::data::transforms::{self, CropParams, Placed, Scratch};
use crate::models::{Arch, CamModel};

/// `groupcam bench cache`'s arguments (clap reads them into this struct directly).
#[derive(clap::Args)]
pub struct CacheBench {
    /// Architecture of the model whose maps are compared.
    #[arg(long, default_value = "efficientnet-lite0", value_parser = crate::choice::parser::<Arch>())]
    pub arch: Arch,
    /// Its trained weights (random weights give maps that say nothing).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Real photos (their maps are what is compared).
    #[arg(long, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// RandomResizedCrops per photo.
    #[arg(long, default_value_t = 50)]
    pub crops: usize,
    /// Cache sides to compare.
    #[arg(long, value_delimiter = ',', default_value = "56,224")]
    pub sides: Vec<u32>,
    /// The crops' and the whole image's side (data.input_size).
    #[arg(long, default_value_t = 224)]
    pub input_size: u32,
    /// G of the augmentation's maps.
    #[arg(long, default_value_t = 16)]
    pub groups: i64,
    /// Seed of the crop boxes and their 2 px moves.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

const BANDS: [(&str, f64, f64); 3] = [("< 0.25", 0.0, 0.25), ("0.25-0.5", 0.25, 0.5), ("> 0.5", 0.5, 1.01)];

/// IoU of the kept (1) pixels of two masks (1 x S x S floats); 1 when both keep nothing.
fn iou(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.gt(0.5), b.gt(0.5));
    let inter = a.logical_and(&b).sum(Kind::Double).double_value(&[]);
    let union = a.logical_or(&b).sum(Kind::Double).double_value(&[]);
    if union == 0.0 { 1.0 } else { inter / union }
}

/// The crop's pixels, normalised, as a 1 x 3 x S x S tensor.
fn crop_tensor(img: &image::RgbImage, p: &CropParams, model: &dyn CamModel, scratch: &mut Scratch) -> Result<Tensor> {
    transforms::crop_resize(img, p, scratch)?;
    let s = p.size as usize;
    let mut px = vec![0u8; 3 * s * s];
    transforms::write_bytes(scratch.out(), s, p.flip, &mut px);
    let bytes = Tensor::from_slice(&px).view([1, 3, s as i64, s as i64]);
    Ok(transforms::normalize_bytes(&bytes, &model.input_norm()))
}

/// The augmentation's fresh masks of `xs` (m x 3 x S x S) for `class`, m x 1 x S x S.
fn fresh(aug: &GroupCamAugment, model: &dyn CamModel, xs: &[Tensor], class: i64, device: Device) -> Result<Tensor> {
    let x = Tensor::cat(xs, 0).to_device(device);
    let labels = Tensor::from_slice(&vec![class; xs.len()]);
    let (maps, constant) = aug.maps_for(model, &x, &labels)?;
    Ok(binarize(&maps, &Tensor::from_slice(&constant).to_device(device), Threshold::ImageMean).to_device(Device::Cpu))
}

pub fn run(b: &CacheBench, device: Device) -> Result<Report> {
    if b.images.is_empty() {
        bail!("bench cache needs --images (real photos: the fidelity of random weights says nothing)");
    }
    let model = super::methods::model(b.arch, &b.weights, device)?;
    let aug = GroupCamAugment { groups: b.groups, ..Default::default() };
    let s = b.input_size;
    let train = Transform::Train { size: s, scale: (0.08, 1.0), ratio: (0.75, 4.0 / 3.0), flip: 0.0 };
    let mut scratch = Scratch::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(b.seed);
    // Per band: the floor's IoUs and each side's.
    let mut floor = vec![Vec::new(); BANDS.len()];
    let mut cached = vec![vec![Vec::new(); BANDS.len()]; b.sides.len()];
    let mut scored = vec![Vec::new(); BANDS.len()];
    for path in &b.images {
        let img = crate::data::decode::read_rgb(path)?;
        let (w, h) = img.dimensions();
        let whole_p = transforms::params(w, h, Transform::Whole { size: s }, &mut rng)?;
        let whole = crop_tensor(&img, &whole_p, &model, &mut scratch)?.to_device(device);
        let class = crate::predict::topk(&model, &whole, 1)?[0][0].class;
        let (map, _) = aug.maps_for(&model, &whole, &Tensor::from_slice(&[class]))?;
        let scores =
            aug.scores_for(&model, &whole, &Tensor::from_slice(&[class]))?.to_kind(Kind::Half).to_kind(Kind::Float);
        let stored: Vec<Vec<u8>> = b
            .sides
            .iter()
            .map(|&side| Vec::<u8>::try_from(cache::to_cache(&map, side).flatten(0, -1)))
            .collect::<Result<_, _>>()?;
        let boxes: Vec<CropParams> =
            (0..b.crops).map(|_| transforms::params(w, h, train, &mut rng)).collect::<Result<_>>()?;
        // The same box moved by 2 px in a random direction that stays inside the image.
        let moved: Vec<CropParams> = boxes
            .iter()
            .map(|p| {
                let (dx, dy) = loop {
                    let (dx, dy) = (rng.random_range(-2i32..=2) as f64, rng.random_range(-2i32..=2) as f64);
                    let inside =
                        p.x + dx >= 0.0 && p.y + dy >= 0.0 && p.x + dx + p.w <= w as f64 && p.y + dy + p.h <= h as f64;
                    if (dx, dy) != (0.0, 0.0) && inside || (p.w == w as f64 && p.h == h as f64) {
                        break (dx, dy);
                    }
                };
                CropParams { x: p.x + dx, y: p.y + dy, ..*p }
            })
            .collect();
        for (chunk, moved) in boxes.chunks(8).zip(moved.chunks(8)) {
            let xs: Vec<Tensor> =
                chunk.iter().map(|p| crop_tensor(&img, p, &model, &mut scratch)).collect::<Result<_>>()?;
            let ms: Vec<Tensor> =
                moved.iter().map(|p| crop_tensor(&img, p, &model, &mut scratch)).collect::<Result<_>>()?;
            let (f, fm) = (fresh(&aug, &model, &xs, class, device)?, fresh(&aug, &model, &ms, class, device)?);
            let x = Tensor::cat(&xs, 0).to_device(device);
            let per = scores.expand([xs.len() as i64, scores.size()[1]], false);
            let sm = aug.augment_with_scores(&model, &x, None, &per)?.masks.to_device(Device::Cpu);
            for (j, p) in chunk.iter().enumerate() {
                let area = p.w * p.h / (w as f64 * h as f64);
                let band = BANDS.iter().position(|&(_, lo, hi)| area >= lo && area < hi).unwrap_or(BANDS.len() - 1);
                floor[band].push(iou(&f.get(j as i64), &fm.get(j as i64)));
                scored[band].push(iou(&f.get(j as i64), &sm.get(j as i64)));
                for (k, (&side, map)) in b.sides.iter().zip(&stored).enumerate() {
                    let m = cache::mask_tensor(map, side, &Placed { params: *p, width: w, height: h })?;
                    cached[k][band].push(iou(&f.get(j as i64), &m.to_kind(Kind::Float)));
                }
            }
        }
    }
    let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    let cells = |per: &[Vec<f64>]| -> Vec<String> {
        let all: Vec<f64> = per.iter().flatten().copied().collect();
        per.iter().map(|v| format!("{:.2}", mean(v))).chain([format!("{:.2}", mean(&all))]).collect()
    };
    let mut t = Table::new(&["masks", "IoU < 0.25", "0.25-0.5", "> 0.5", "all"]);
    t.push([vec!["noise floor: fresh vs fresh moved 2 px".to_string()], cells(&floor)].concat());
    for (k, &side) in b.sides.iter().enumerate() {
        t.push([vec![format!("cached {side} px vs fresh")], cells(&cached[k])].concat());
    }
    t.push([vec!["score cache (whole-image scores, the crop's maps) vs fresh".to_string()], cells(&scored)].concat());
    let notes = vec![format!(
        "{} on {} photo(s), {} RandomResizedCrops each (scale [0.08, 1], no flip), {s} px, G = {}, class = top-1 \
         of the whole photo; crops per band: {}",
        b.arch,
        b.images.len(),
        b.crops,
        b.groups,
        floor.iter().map(|v| v.len().to_string()).collect::<Vec<_>>().join(" / ")
    )];
    Ok(Report { notes, tables: vec![t] })
}
