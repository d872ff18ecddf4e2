//! A small labelled ImageFolder dataset made in seconds: one shape per image on a cluttered,
//! textured background, with the shapes' boxes in a COCO-format JSON so that saliency can be
//! checked against known object positions.

use std::path::Path;

use anyhow::{Context, Result, bail};
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Shapes need a few pixels to be told apart; the upper bound keeps a typo from filling a disk.
pub const MIN_SIZE: u32 = 16;
pub const MAX_SIZE: u32 = 1024;

pub const SHAPES: [&str; 6] = ["circle", "cross", "diamond", "ring", "square", "triangle"];

#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub size: u32,
    pub train_per_class: usize,
    pub val_per_class: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { size: 64, train_per_class: 100, val_per_class: 20, seed: 0 }
    }
}

/// Is (u, v), in the shape's own frame [-1, 1]^2, inside the shape?
fn inside(shape: &str, u: f64, v: f64) -> bool {
    match shape {
        "circle" => u * u + v * v <= 1.0,
        "ring" => (0.45..=1.0).contains(&(u * u + v * v)),
        "square" => u.abs() <= 0.85 && v.abs() <= 0.85,
        "diamond" => u.abs() + v.abs() <= 1.0,
        "cross" => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
        "triangle" => v <= 0.9 && v >= -1.0 + 0.0 && u.abs() <= (v + 1.0) / 1.9 * 0.95,
        _ => false,
    }
}

fn background(rng: &mut StdRng, s: u32) -> RgbImage {
    // A greyish, striped background: the classes' hues live on the objects.
    let g = rng.random_range(60.0..180.0);
    let base: [f64; 3] =
        [g + rng.random_range(-20.0..20.0), g + rng.random_range(-20.0..20.0), g + rng.random_range(-20.0..20.0)];
    let (fx, fy, phase) = (rng.random_range(0.05..0.5), rng.random_range(0.05..0.5), rng.random_range(0.0..6.3));
    let mut img = RgbImage::from_fn(s, s, |x, y| {
        let stripe = ((x as f64 * fx + y as f64 * fy + phase).sin()) * 35.0;
        let px = |c: usize| (base[c] + stripe * if c == 1 { -1.0 } else { 1.0 }).clamp(0.0, 255.0) as u8;
        Rgb([px(0), px(1), px(2)])
    });
    // Clutter: thin strokes of random colours, which are no class.
    for _ in 0..rng.random_range(2..6) {
        let (x0, y0) = (rng.random_range(0.0..s as f64), rng.random_range(0.0..s as f64));
        let (angle, len) =
            (rng.random_range(0.0..std::f64::consts::PI), rng.random_range(s as f64 * 0.15..s as f64 * 0.5));
        let col = Rgb([rng.random(), rng.random(), rng.random()]);
        for t in 0..(len * 2.0) as u32 {
            let (x, y) = (x0 + angle.cos() * t as f64 / 2.0, y0 + angle.sin() * t as f64 / 2.0);
            if x >= 0.0 && y >= 0.0 && (x as u32) < s && (y as u32) < s {
                img.put_pixel(x as u32, y as u32, col);
            }
        }
    }
    for p in img.pixels_mut() {
        for c in 0..3 {
            p[c] = (p[c] as i32 + rng.random_range(-20..=20)).clamp(0, 255) as u8;
        }
    }
    img
}

/// An RGB colour from hue, saturation and value in [0, 1].
fn hsv(h: f64, s: f64, v: f64) -> Rgb<u8> {
    let f = |n: f64| {
        let k = (n + h.rem_euclid(1.0) * 6.0) % 6.0;
        let c = v - v * s * k.min(4.0 - k).clamp(0.0, 1.0);
        (c * 255.0).round() as u8
    };
    Rgb([f(5.0), f(3.0), f(1.0)])
}

/// One image of `shape` and its box [x, y, w, h]. Each class has its own hue (jittered), so a
/// small network learns the task in a few epochs, and only the object carries it.
pub fn sample(rng: &mut StdRng, shape: &str, s: u32) -> (RgbImage, [u32; 4]) {
    let mut img = background(rng, s);
    let half = rng.random_range(s as f64 * 0.18..s as f64 * 0.3);
    let cx = rng.random_range(half..s as f64 - half);
    let cy = rng.random_range(half..s as f64 - half);
    let class = SHAPES.iter().position(|&c| c == shape).unwrap_or(0) as f64;
    let col = hsv(
        class / SHAPES.len() as f64 + rng.random_range(-0.03..0.03),
        rng.random_range(0.7..1.0),
        rng.random_range(0.7..1.0),
    );
    let (mut x0, mut y0, mut x1, mut y1) = (s, s, 0, 0);
    for y in 0..s {
        for x in 0..s {
            let (u, v) = ((x as f64 + 0.5 - cx) / half, (y as f64 + 0.5 - cy) / half);
            if inside(shape, u, v) {
                img.put_pixel(x, y, col);
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    (img, [x0, y0, x1 - x0 + 1, y1 - y0 + 1])
}

/// Writes `train/<shape>/NNNN.png`, `val/<shape>/NNNN.png` and `boxes.json` (COCO format:
/// file names relative to `out`, category ids 1..=6 in class order, names = folder names).
pub fn write(out: &Path, cfg: &SynthConfig) -> Result<usize> {
    // Checked before the first folder is made: a bad size leaves nothing behind.
    if !(MIN_SIZE..=MAX_SIZE).contains(&cfg.size) {
        bail!("synth image size {} is out of range: {MIN_SIZE}..={MAX_SIZE} pixels", cfg.size);
    }
    if cfg.train_per_class == 0 && cfg.val_per_class == 0 {
        bail!("synth: no images asked for (0 training and 0 validation images per class)");
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let (mut images, mut annotations) = (Vec::new(), Vec::new());
    for (split, n) in [("train", cfg.train_per_class), ("val", cfg.val_per_class)] {
        for (ci, shape) in SHAPES.iter().enumerate() {
            let dir = out.join(split).join(shape);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            for i in 0..n {
                let (img, bbox) = sample(&mut rng, shape, cfg.size);
                let rel = format!("{split}/{shape}/{i:04}.png");
                crate::atomic::save_png(&img, &out.join(&rel))?;
                let id = images.len() + 1;
                images.push(json!({"id": id, "file_name": rel, "width": cfg.size, "height": cfg.size}));
                annotations.push(json!({
                    "id": id, "image_id": id, "category_id": ci + 1, "bbox": bbox,
                    "area": bbox[2] * bbox[3], "iscrowd": 0
                }));
            }
        }
    }
    let categories: Vec<_> = SHAPES.iter().enumerate().map(|(i, s)| json!({"id": i + 1, "name": s})).collect();
    let coco = json!({"images": images, "annotations": annotations, "categories": categories});
    crate::atomic::write_bytes(&out.join("boxes.json"), serde_json::to_string(&coco)?.as_bytes())?;
    Ok(images.len())
}
