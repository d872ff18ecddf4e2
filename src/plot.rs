//! Small PNG figures without a plotting dependency: line charts in panels, labelled image strips,
//! and a 3 x 5 bitmap font for their text.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

pub const COLORS: [[u8; 3]; 8] = [
    [214, 39, 40],
    [31, 119, 180],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];
const BLACK: [u8; 3] = [0, 0, 0];
const GREY: [u8; 3] = [220, 220, 220];

/// One chart: lines (the j-th in `COLORS[j]`) over x = 0..len-1 stretched to the width.
pub struct Panel {
    pub title: String,
    pub lines: Vec<Vec<f64>>,
    /// The y values at the bottom and top of the chart.
    pub y_range: (f64, f64),
    /// Optional (low, high) bands, the j-th shaded half-way to `COLORS[j]` under line j.
    pub bands: Vec<(Vec<f64>, Vec<f64>)>,
}

/// Panels side by side with one legend below them (entry j names line j of every panel).
pub fn chart(panels: &[Panel], legend: &[String]) -> RgbImage {
    let (pw, ph, margin) = (400i64, 300i64, 40i64);
    let width = (pw + 2 * margin) * panels.len().max(1) as i64;
    let height = ph + 2 * margin + 24 * legend.len() as i64 + 10;
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb([255, 255, 255]));
    for (p, panel) in panels.iter().enumerate() {
        let (ox, oy) = (p as i64 * (pw + 2 * margin) + margin, margin);
        let (lo, hi) = panel.y_range;
        let fy = |v: f64| ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
        let to = |fx: f64, fy: f64| (ox as f64 + fx * pw as f64, (oy + ph) as f64 - fy * ph as f64);
        for k in 1..5 {
            let f = k as f64 / 5.0;
            line(&mut img, to(0.0, f), to(1.0, f), GREY);
            line(&mut img, to(f, 0.0), to(f, 1.0), GREY);
        }
        line(&mut img, to(0.0, 0.0), to(1.0, 0.0), BLACK);
        line(&mut img, to(0.0, 0.0), to(0.0, 1.0), BLACK);
        if lo < 0.0 && hi > 0.0 {
            line(&mut img, to(0.0, fy(0.0)), to(1.0, fy(0.0)), [150, 150, 150]);
        }
        text(&mut img, ox + pw / 2 - 6 * panel.title.len() as i64, 12, &panel.title, BLACK, 3);
        text(&mut img, ox - 36, oy + ph - 6, &short(lo), BLACK, 2);
        text(&mut img, ox - 36, oy - 4, &short(hi), BLACK, 2);
        for (j, (low, high)) in panel.bands.iter().enumerate() {
            let c = COLORS[j % COLORS.len()];
            let n = low.len().min(high.len());
            for px in 0..=pw {
                // The band's interval at this column, interpolated between its epochs.
                let f = px as f64 / pw as f64 * (n.max(2) - 1) as f64;
                let (i, t) = ((f.floor() as usize).min(n.saturating_sub(1)), f.fract());
                let at = |v: &[f64]| if i + 1 < n { v[i] * (1.0 - t) + v[i + 1] * t } else { v[i] };
                if n < 2 || !(at(low).is_finite() && at(high).is_finite()) {
                    continue;
                }
                let (top, bottom) = (to(0.0, fy(at(high))).1.round() as i64, to(0.0, fy(at(low))).1.round() as i64);
                // Half-way to the band's colour, so that overlapping bands show through each other.
                for y in top..=bottom {
                    if let Some(p) = img.get_pixel_mut_checked((ox + px) as u32, y as u32) {
                        p.0 = [0, 1, 2].map(|k| ((p.0[k] as u16 + c[k] as u16) / 2) as u8);
                    }
                }
            }
        }
        for (j, values) in panel.lines.iter().enumerate() {
            let n = values.len().max(2) - 1;
            // A NaN (an undefined value) leaves a gap.
            for i in (1..values.len()).filter(|&i| values[i - 1].is_finite() && values[i].is_finite()) {
                let a = to((i - 1) as f64 / n as f64, fy(values[i - 1]));
                let b = to(i as f64 / n as f64, fy(values[i]));
                line(&mut img, a, b, COLORS[j % COLORS.len()]);
            }
        }
    }
    for (j, entry) in legend.iter().enumerate() {
        let y = ph + 2 * margin + 24 * j as i64;
        let c = COLORS[j % COLORS.len()];
        line(&mut img, (margin as f64, y as f64 + 6.0), (margin as f64 + 30.0, y as f64 + 6.0), c);
        text(&mut img, margin + 40, y, entry, BLACK, 3);
    }
    img
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// A title, then tiles in one row, each with a caption above it (cut to the tile's width).
pub fn strip(title: &str, tiles: &[(String, RgbImage)]) -> RgbImage {
    let (tw, th) = tiles.first().map(|(_, t)| (t.width() as i64, t.height() as i64)).unwrap_or((1, 1));
    let (gap, head, caption) = (4i64, 22i64, 14i64);
    let width = (tiles.len().max(1) as i64 * (tw + gap)).max(8 * title.len() as i64);
    let mut img = RgbImage::from_pixel(width as u32, (head + caption + th) as u32, Rgb([255, 255, 255]));
    text(&mut img, 0, 6, title, BLACK, 2);
    for (i, (label, tile)) in tiles.iter().enumerate() {
        let ox = i as i64 * (tw + gap);
        let fits: String = label.chars().take((tw / 8).max(1) as usize).collect();
        text(&mut img, ox, head + 2, &fits, BLACK, 2);
        image::imageops::overlay(&mut img, tile, ox, head + caption);
    }
    img
}

/// Images one above the other, left-aligned, on white.
pub fn stack(parts: &[RgbImage]) -> RgbImage {
    let width = parts.iter().map(|p| p.width()).max().unwrap_or(1);
    let height = parts.iter().map(|p| p.height()).sum::<u32>().max(1);
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut y = 0;
    for p in parts {
        image::imageops::overlay(&mut img, p, 0, y as i64);
        y += p.height();
    }
    img
}

/// Saves a PNG, creating its directory.
pub fn save(img: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::atomic::save_png(img, path).context("figure")
}

/// 3 x 5 glyphs, rows top to bottom, 3 bits per row (MSB left); letters are drawn lower-case.
fn glyph(c: char) -> [u8; 5] {
    match c {
        'a' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'b' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'c' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'd' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'e' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'f' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'g' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'h' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'i' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'j' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'k' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'l' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'm' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'n' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'o' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'p' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'r' => [0b110, 0b101, 0b110, 0b101, 0b101],
        's' => [0b011, 0b100, 0b010, 0b001, 0b110],
        't' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'u' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'v' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'w' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'x' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b110, 0b001, 0b010, 0b100, 0b111],
        '3' => [0b110, 0b001, 0b010, 0b001, 0b110],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b110, 0b001, 0b110],
        '6' => [0b011, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b110],
        '.' => [0, 0, 0, 0, 0b010],
        '-' => [0, 0, 0b111, 0, 0],
        '_' => [0, 0, 0, 0, 0b111],
        '+' => [0, 0b010, 0b111, 0b010, 0],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        ',' => [0, 0, 0, 0b010, 0b100],
        _ => [0; 5],
    }
}

pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, color: [u8; 3], scale: i64) {
    for (k, c) in s.chars().enumerate() {
        let g = glyph(c.to_ascii_lowercase());
        for (r, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(img, x + (k as i64 * 4 + col) * scale + dx, y + r as i64 * scale + dy, color);
                        }
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

/// A line two pixels thick.
fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = ((x0 + t * (x1 - x0)).round() as i64, (y0 + t * (y1 - y0)).round() as i64);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            put(img, x + dx, y + dy, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_draws_each_line_in_its_color() {
        let panels = [Panel {
            title: "t".into(),
            lines: vec![vec![0.0, 1.0], vec![1.0, 0.0]],
            y_range: (0.0, 1.0),
            bands: vec![],
        }];
        let img = chart(&panels, &["a".into(), "b".into()]);
        for c in &COLORS[..2] {
            assert!(img.pixels().filter(|p| p.0 == *c).count() > 400, "color {c:?} missing");
        }
        assert_eq!(img.pixels().filter(|p| p.0 == COLORS[2]).count(), 0);
    }

    #[test]
    fn a_band_is_shaded_between_its_bounds_in_its_lines_light_color() {
        let band = (vec![0.2, 0.4], vec![0.6, 0.8]);
        let panels = [Panel { title: "t".into(), lines: vec![vec![0.4, 0.6]], y_range: (0.0, 1.0), bands: vec![band] }];
        let img = chart(&panels, &["a".into()]);
        let light = COLORS[0].map(|v| ((v as u16 + 255) / 2) as u8);
        // 401 columns of 0.4 of the 300-pixel height: about 48,000 pixels less the line's and the grid's.
        let n = img.pixels().filter(|p| p.0 == light).count();
        assert!((40_000..50_000).contains(&n), "{n} shaded pixels");
    }
}
