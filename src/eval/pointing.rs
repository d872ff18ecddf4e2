//! The pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV
//! 2016; Group-CAM paper Sec. 4.4): a hit when the map's maximum lies within `tolerance` pixels
//! (15 in the paper) of a box of the class; accuracy = hits / (hits + misses) per category,
//! reported as the mean over categories. Boxes come from a COCO-format JSON.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::cam::Explainer;
use crate::imageio;
use crate::models::CamModel;

/// The tolerance of Zhang et al., in pixels of the original image.
pub const TOLERANCE: f64 = 15.0;

/// The parts of a COCO annotation file the game needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Coco {
    pub images: Vec<CocoImage>,
    pub annotations: Vec<CocoAnnotation>,
    pub categories: Vec<CocoCategory>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CocoImage {
    pub id: i64,
    pub file_name: String,
    pub width: f64,
    pub height: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CocoAnnotation {
    pub image_id: i64,
    pub category_id: i64,
    /// [x, y, width, height] in pixels of the original image.
    pub bbox: [f64; 4],
}

#[derive(Debug, Clone, Deserialize)]
pub struct CocoCategory {
    pub id: i64,
    pub name: String,
}

impl Coco {
    /// Reads and checks a COCO-format JSON: every annotation names a known image and category.
    pub fn load(path: &Path) -> Result<Coco> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read boxes file {}", path.display()))?;
        let coco: Coco = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a COCO-format JSON (images, annotations, categories)", path.display())
        })?;
        for (i, a) in coco.annotations.iter().enumerate() {
            if !coco.images.iter().any(|im| im.id == a.image_id) {
                bail!("{}: annotations[{i}] names image_id {} that is not in images", path.display(), a.image_id);
            }
            if coco.category_index(a.category_id).is_none() {
                bail!(
                    "{}: annotations[{i}] names category_id {} that is not in categories",
                    path.display(),
                    a.category_id
                );
            }
            if a.bbox[2] < 0.0 || a.bbox[3] < 0.0 || a.bbox.iter().any(|v| !v.is_finite()) {
                bail!("{}: annotations[{i}].bbox {:?} is not [x, y, width >= 0, height >= 0]", path.display(), a.bbox);
            }
        }
        Ok(coco)
    }

    /// A category's position in `categories`: the model's class for it.
    pub fn category_index(&self, id: i64) -> Option<usize> {
        self.categories.iter().position(|c| c.id == id)
    }

    /// The (category id, boxes) pairs of an image, categories in file order.
    pub fn boxes_of(&self, image_id: i64) -> Vec<(i64, Vec<[f64; 4]>)> {
        let mut by: BTreeMap<usize, (i64, Vec<[f64; 4]>)> = BTreeMap::new();
        for a in self.annotations.iter().filter(|a| a.image_id == image_id) {
            let k = self.category_index(a.category_id).expect("checked on load");
            by.entry(k).or_insert_with(|| (a.category_id, Vec::new())).1.push(a.bbox);
        }
        by.into_values().collect()
    }
}

/// The map's maximum (the first in row-major order on ties) as the centre of its pixel,
/// (x, y) in map pixels.
pub fn peak(map: &Tensor) -> Result<(f64, f64)> {
    let (_, w) = map.size2()?;
    let i = map.flatten(0, -1).argmax(0, false).int64_value(&[]);
    Ok(((i % w) as f64 + 0.5, (i / w) as f64 + 0.5))
}

/// Whether point (x, y) lies within `tolerance` of one of the [x, y, w, h] boxes.
pub fn hit(point: (f64, f64), boxes: &[[f64; 4]], tolerance: f64) -> bool {
    boxes.iter().any(|b| {
        let dx = (b[0] - point.0).max(point.0 - (b[0] + b[2])).max(0.0);
        let dy = (b[1] - point.1).max(point.1 - (b[1] + b[3])).max(0.0);
        (dx * dx + dy * dy).sqrt() <= tolerance
    })
}

/// Hits and trials per category.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub per_category: BTreeMap<i64, (u64, u64)>,
}

impl Tally {
    pub fn add(&mut self, category: i64, is_hit: bool) {
        let e = self.per_category.entry(category).or_default();
        e.0 += is_hit as u64;
        e.1 += 1;
    }
    /// Accuracy per category (categories with trials).
    pub fn accuracies(&self) -> BTreeMap<i64, f64> {
        self.per_category.iter().map(|(&c, &(h, n))| (c, h as f64 / n as f64)).collect()
    }
    /// The mean over categories of hits / (hits + misses); `None` with no trials.
    pub fn mean_accuracy(&self) -> Option<f64> {
        let acc = self.accuracies();
        if acc.is_empty() { None } else { Some(acc.values().sum::<f64>() / acc.len() as f64) }
    }
}

/// The pointing game of several methods on the images of a COCO file.
#[derive(Clone, Debug, Serialize)]
pub struct PointingReport {
    pub tolerance: f64,
    /// The boxes file.
    pub boxes: String,
    #[serde(serialize_with = "by_name")]
    pub methods: Vec<MethodPointing>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MethodPointing {
    #[serde(skip)]
    pub name: &'static str,
    pub mean_accuracy: Option<f64>,
    /// By category id (as a string, JSON's key type).
    pub categories: BTreeMap<String, CategoryScore>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CategoryScore {
    pub name: String,
    pub hits: u64,
    pub trials: u64,
    pub accuracy: f64,
}

fn by_name<S: serde::Serializer>(methods: &[MethodPointing], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_map(methods.iter().map(|m| (m.name, m)))
}

/// Plays the game on every image of `coco` that has boxes, read from `dir`: the whole image
/// resized to `size` x `size` (no crop, so every box stays in view), each box's category
/// explained as class i for the i-th category, the map's peak mapped back to the image.
pub fn play(
    model: &dyn CamModel,
    methods: &[Box<dyn Explainer>],
    coco: &Coco,
    boxes: &Path,
    dir: &Path,
    size: u32,
) -> Result<PointingReport> {
    if (coco.categories.len() as i64) > model.num_classes() {
        bail!(
            "{} has {} categories but the model has {} classes: the pointing game explains the i-th category as class i",
            boxes.display(),
            coco.categories.len(),
            model.num_classes()
        );
    }
    let norm = model.input_norm();
    let mut tallies: Vec<Tally> = methods.iter().map(|_| Tally::default()).collect();
    for im in &coco.images {
        let pairs = coco.boxes_of(im.id);
        if pairs.is_empty() {
            continue;
        }
        let path = dir.join(&im.file_name);
        let img = imageio::load_rgb(&path)?;
        let resized = image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle);
        let x = norm.apply(&imageio::to_tensor(&resized).unsqueeze(0)).to_device(model.device());
        let (sx, sy) = (img.width() as f64 / size as f64, img.height() as f64 / size as f64);
        let n = pairs.len() as i64;
        let xs = x.expand([n, 3, size as i64, size as i64], false).contiguous();
        let cls: Vec<i64> = pairs.iter().map(|(c, _)| coco.category_index(*c).expect("checked") as i64).collect();
        for (m, tally) in methods.iter().zip(tallies.iter_mut()) {
            let exp = m
                .explain(model, &xs, Some(&cls))
                .with_context(|| format!("method {} on {}", m.name(), path.display()))?;
            for (i, (cat, bxs)) in pairs.iter().enumerate() {
                let (px, py) = peak(&exp.maps.get(i as i64))?;
                tally.add(*cat, hit((px * sx, py * sy), bxs, TOLERANCE));
            }
        }
    }
    let methods = methods
        .iter()
        .zip(&tallies)
        .map(|(m, t)| MethodPointing {
            name: m.name(),
            mean_accuracy: t.mean_accuracy(),
            categories: t
                .per_category
                .iter()
                .map(|(c, &(h, n))| {
                    let name = coco.categories.iter().find(|k| k.id == *c).map(|k| k.name.clone()).unwrap_or_default();
                    (c.to_string(), CategoryScore { name, hits: h, trials: n, accuracy: h as f64 / n as f64 })
                })
                .collect(),
        })
        .collect();
    Ok(PointingReport { tolerance: TOLERANCE, boxes: boxes.display().to_string(), methods })
}

impl PointingReport {
    /// The summary the CLI prints.
    pub fn table(&self) -> String {
        let mut s = format!("pointing game ({} px tolerance, mean accuracy over categories)\n", self.tolerance);
        s += "| method | accuracy (%) |\n|---|---|\n";
        for m in &self.methods {
            let acc = m.mean_accuracy.map(|v| format!("{:.2}", v * 100.0)).unwrap_or_else(|| "-".into());
            s += &format!("| {} | {acc} |\n", m.name);
        }
        s
    }
}
