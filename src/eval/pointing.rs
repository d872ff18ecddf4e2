//! The pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV
//! 2016; Group-CAM paper Sec. 4.4): a hit when the map's maximum lies within `tolerance` pixels
//! (15 in the paper) of a box of the class; accuracy = hits / (hits + misses) per category,
//! reported as the mean over categories. Boxes come from a COCO-format JSON.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tch::Tensor;

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
