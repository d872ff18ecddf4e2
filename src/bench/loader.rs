//! `bench loader`: the training loader's new path (`Loader::make_batch`: zune-jpeg, a SIMD
//! crop+resize, normalised straight into the batch) against the former one
//! (`Loader::make_batch_reference`: the image crate's decoder and resize, a tensor per image),
//! both through `Loader::epoch_with`, and torchvision's ImageFolder + DataLoader on the same
//! folder with the project's Python, interleaved rep by rep; then where one thread's time goes,
//! stage by stage, on both paths.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use image::imageops::FilterType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::Tensor;

use super::{Report, Table, TempDir, median, time_interleaved};
use crate::data::{ImageFolder, Loader, MakeBatch, Transform, decode, transforms};
use crate::imageio;
use crate::models::Normalization;

/// The torchvision side: the project's Python running `scripts/loader_torchvision.py`.
#[derive(Clone, Debug)]
pub struct Torchvision {
    pub python: PathBuf,
    pub script: PathBuf,
}

/// `groupcam bench loader`'s arguments (clap reads them into this struct directly).
#[derive(Clone, Debug, clap::Args)]
pub struct LoaderBench {
    /// An ImageFolder (class sub-folders) to read (default: ImageNet-like JPEGs made from --photos).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Photos the generated JPEGs are cut from.
    #[arg(long, value_delimiter = ',', default_value = "tests/data/coffee.png,tests/data/chelsea.png")]
    pub photos: Vec<PathBuf>,
    /// JPEGs to generate (without --data).
    #[arg(long, default_value_t = 256)]
    pub images: usize,
    /// Worker counts to measure (threads here, DataLoader processes on the torchvision side).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Timed repetitions after one warm-up, interleaved across the paths.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Python with torch and torchvision for the torchvision side (default: .venv/bin/python if
    /// it exists; without one that side is skipped).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The torchvision side's script.
    #[arg(long, default_value = "scripts/loader_torchvision.py")]
    pub script: PathBuf,
    /// Skip the torchvision side.
    #[arg(long)]
    pub no_torchvision: bool,
    /// Write the first crops of both paths and their boxes here (for the script's `compare`).
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

impl LoaderBench {
    /// The torchvision side, if it runs: `python` (else `.venv/bin/python` where it exists)
    /// running `script`, unless `no_torchvision`.
    pub fn torchvision(&self) -> Result<Option<Torchvision>> {
        let python = self.python.clone().or_else(|| Some(PathBuf::from(".venv/bin/python")).filter(|p| p.exists()));
        match python {
            Some(python) if !self.no_torchvision => {
                if !self.script.exists() {
                    bail!(
                        "torchvision script {} not found (run from the repository root, or --script)",
                        self.script.display()
                    );
                }
                Ok(Some(Torchvision { python, script: self.script.clone() }))
            }
            _ => Ok(None),
        }
    }
}

/// How [`write_jpegs`] makes a folder of ImageNet-like JPEGs.
#[derive(Clone, Debug)]
pub struct JpegConfig {
    pub images: usize,
    /// JPEG quality (ImageNet's files are about 90).
    pub quality: u8,
    pub seed: u64,
}

/// Writes `cfg.images` JPEGs to `out/<photo stem>/NNNNN.jpg`, cycling through `photos`: each a
/// random crop of its photo resized to ImageNet's typical sizes (the long side 400-500, the short
/// side 0.66-0.875 of it, one in four portrait), at `cfg.quality`. Returns the files written.
pub fn write_jpegs(out: &Path, photos: &[PathBuf], cfg: &JpegConfig) -> Result<Vec<PathBuf>> {
    if photos.is_empty() || cfg.images == 0 {
        bail!("no JPEGs to make: {} photos, {} images", photos.len(), cfg.images);
    }
    if !(1..=100).contains(&cfg.quality) {
        bail!("JPEG quality {} is out of range: 1..=100", cfg.quality);
    }
    let sources: Vec<(String, RgbImage)> = photos
        .iter()
        .map(|p| {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "photo".into());
            Ok((stem, imageio::load_rgb(p)?))
        })
        .collect::<Result<_>>()?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut written = Vec::new();
    for k in 0..cfg.images {
        let (stem, photo) = &sources[k % sources.len()];
        let long = rng.random_range(400u32..=500);
        let short = (long as f64 * rng.random_range(0.66..=0.875)).round() as u32;
        let (w, h) = if rng.random_bool(0.25) { (short, long) } else { (long, short) };
        let img = image::imageops::resize(&random_view(photo, w, h, &mut rng), w, h, FilterType::Triangle);
        let dir = out.join(stem);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{k:05}.jpg"));
        let file = std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        image::codecs::jpeg::JpegEncoder::new_with_quality(BufWriter::new(file), cfg.quality)
            .encode_image(&img)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A random box of `photo` with the aspect ratio of `w` x `h`, 70-100% of the largest one.
fn random_view(photo: &RgbImage, w: u32, h: u32, rng: &mut StdRng) -> RgbImage {
    let (pw, ph) = (photo.width() as f64, photo.height() as f64);
    let aspect = w as f64 / h as f64;
    let (bw, bh) = if pw / ph > aspect { (ph * aspect, ph) } else { (pw, pw / aspect) };
    let s = rng.random_range(0.7..=1.0);
    let (cw, ch) =
        (((bw * s).round() as u32).clamp(1, photo.width()), ((bh * s).round() as u32).clamp(1, photo.height()));
    let x = rng.random_range(0..=photo.width() - cw);
    let y = rng.random_range(0..=photo.height() - ch);
    image::imageops::crop_imm(photo, x, y, cw, ch).to_image()
}

/// The training transform measured: torchvision's RandomResizedCrop defaults and a fair flip.
pub fn train_transform(size: u32) -> Transform {
    Transform::Train { size, scale: (0.08, 1.0), ratio: (0.75, 4.0 / 3.0), flip: 0.5 }
}

fn loader(data: &ImageFolder, b: &LoaderBench, workers: usize) -> Loader {
    Loader {
        data: data.clone(),
        batch_size: b.batch,
        shuffle: true,
        drop_last: false,
        transform: train_transform(b.size),
        norm: Normalization::IMAGENET,
        workers,
        prefetch: 2 * workers.max(1),
        seed: 0,
        pin_memory: false,
        masks: None,
    }
}

/// One epoch through `make`: the images it decoded.
fn epoch_images(loader: &Loader, make: MakeBatch) -> Result<i64> {
    let mut n = 0;
    for b in loader.epoch_with(0, 0, make) {
        // Normalised as a CPU run does, so that every side ends in the model's f32 input.
        n += std::hint::black_box(b?.images(tch::Device::Cpu)).size()[0];
    }
    Ok(n)
}

/// One epoch of torchvision's pipeline as the script times it (Python's start excluded).
fn torchvision_epoch(tv: &Torchvision, data: &Path, b: &LoaderBench, workers: usize) -> Result<(i64, f64)> {
    let out = Command::new(&tv.python)
        .arg(&tv.script)
        .arg("speed")
        .args(["--data", &data.to_string_lossy()])
        .args(["--workers", &workers.to_string(), "--batch", &b.batch.to_string(), "--size", &b.size.to_string()])
        .output()
        .with_context(|| format!("cannot run {} {}", tv.python.display(), tv.script.display()))?;
    if !out.status.success() {
        bail!("{} failed:\n{}", tv.script.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("{} printed no JSON result line: {text}", tv.script.display()))?;
    match (v["images"].as_i64(), v["seconds"].as_f64()) {
        (Some(n), Some(s)) => Ok((n, s)),
        _ => bail!("{} printed no images/seconds: {line}", tv.script.display()),
    }
}

/// Runs the benchmark with libtorch on one thread: a worker is one thread on both sides
/// (DataLoader's workers set that themselves), and the old path's small per-image tensor ops
/// otherwise wake libtorch's whole pool for each image.
pub fn run(b: &LoaderBench) -> Result<Report> {
    let tv = b.torchvision()?;
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let report = run_one_thread(b, tv.as_ref());
    tch::set_num_threads(threads);
    report
}

fn run_one_thread(b: &LoaderBench, torchvision: Option<&Torchvision>) -> Result<Report> {
    let tmp = TempDir::new("loader");
    let (root, made) = match &b.data {
        Some(d) => (d.clone(), false),
        None => {
            write_jpegs(&tmp.0, &b.photos, &JpegConfig { images: b.images, quality: 90, seed: 0 })?;
            (tmp.0.clone(), true)
        }
    };
    let data = ImageFolder::open(&root)?;
    let mut notes = vec![format!(
        "{} images in {} ({}), RandomResizedCrop({}) + flip + normalise, batches of {}, medians of {} interleaved reps",
        data.len(),
        if made { "a generated folder".to_string() } else { root.display().to_string() },
        describe_sizes(&data)?,
        b.size,
        b.batch,
        b.reps.max(1)
    )];

    let mut speed = Table::new(&[
        "workers",
        "old img/s",
        "new img/s",
        "new / old",
        "torchvision img/s",
        "new / torchvision",
        "new img/s per worker",
    ]);
    for &w in &b.workers {
        let l = loader(&data, b, w);
        let (mut old, mut new, mut tv) = (Vec::new(), Vec::new(), Vec::new());
        let mut images = 0;
        for rep in 0..=b.reps.max(1) {
            let t = Instant::now();
            let n_old = epoch_images(&l, Loader::make_batch_reference)?;
            let t_old = t.elapsed().as_secs_f64();
            let t = Instant::now();
            images = epoch_images(&l, Loader::make_batch)?;
            let t_new = t.elapsed().as_secs_f64();
            if n_old != images {
                bail!("the old path decoded {n_old} images, the new one {images}");
            }
            let t_tv = match torchvision {
                Some(side) => Some(torchvision_epoch(side, &root, b, w)?),
                None => None,
            };
            if rep > 0 {
                old.push(images as f64 / t_old);
                new.push(images as f64 / t_new);
                if let Some((n, s)) = t_tv {
                    tv.push(n as f64 / s);
                }
            }
        }
        let (old, new) = (median(old), median(new));
        let tv = (!tv.is_empty()).then(|| median(tv));
        speed.push(vec![
            w.to_string(),
            format!("{old:.0}"),
            format!("{new:.0}"),
            format!("{:.2}", new / old),
            tv.map_or("-".into(), |t| format!("{t:.0}")),
            tv.map_or("-".into(), |t| format!("{:.2}", new / t)),
            format!("{:.0}", new / w.max(1) as f64),
        ]);
        if images == 0 {
            bail!("no image of {} could be decoded", root.display());
        }
    }
    if torchvision.is_none() {
        notes.push("torchvision side not run (--no-torchvision, or no --python and no .venv/bin/python)".into());
    }

    let (stages, diff) = breakdown(&data, b)?;
    notes.push(format!(
        "pixels, new path against old on the same boxes and flips: mean |diff| {:.3}, max {} (of 255), {} crops",
        diff.mean, diff.max, diff.crops
    ));
    if let Some(dir) = &b.dump {
        dump(&data, b, dir)?;
        notes.push(format!("first crops and their boxes written to {}", dir.display()));
    }
    drop(tmp);
    Ok(Report { notes, tables: vec![speed, stages] })
}

/// "W x H" of the smallest and largest image (read from the headers).
fn describe_sizes(data: &ImageFolder) -> Result<String> {
    let mut dims = Vec::new();
    for (p, _) in &data.samples {
        if let Ok(d) = image::image_dimensions(p) {
            dims.push(d);
        }
    }
    let area = |d: &(u32, u32)| d.0 as u64 * d.1 as u64;
    match (dims.iter().min_by_key(|d| area(d)), dims.iter().max_by_key(|d| area(d))) {
        (Some(a), Some(z)) => Ok(format!("{} x {} to {} x {}", a.0, a.1, z.0, z.1)),
        _ => bail!("no image of {} has a readable header", data.root.display()),
    }
}

/// How far two sets of crops are apart, in 8-bit levels.
#[derive(Clone, Copy, Debug, Default)]
pub struct PixelDiff {
    pub mean: f64,
    pub max: u8,
    pub crops: usize,
}

/// One thread's time per image in each stage of both paths (milliseconds), interleaved, and the
/// pixel difference of their crops.
fn breakdown(data: &ImageFolder, b: &LoaderBench) -> Result<(Table, PixelDiff)> {
    let l = loader(&data.clone(), b, 1);
    let t = l.transform;
    let files: Vec<(PathBuf, Vec<u8>)> = data
        .samples
        .iter()
        .filter_map(|(p, _)| std::fs::read(p).ok().map(|bytes| (p.clone(), bytes)))
        .filter(|(p, bytes)| decode::decode_rgb(bytes, p).is_ok())
        .collect();
    if files.is_empty() {
        bail!("no image of {} could be decoded", data.root.display());
    }
    let n = files.len() as f64;
    let rng = |i: usize| l.sample_rng(0, i);
    // Each stage's inputs, made once by the stage before it.
    let old_img: Vec<RgbImage> = files.iter().map(|(p, by)| imageio::decode_rgb(by, p)).collect::<Result<_>>()?;
    let new_img: Vec<RgbImage> = files.iter().map(|(p, by)| decode::decode_rgb(by, p)).collect::<Result<_>>()?;
    let old_out: Vec<RgbImage> = old_img
        .iter()
        .enumerate()
        .map(|(i, img)| transforms::reference_transform(img, t, &mut rng(i)))
        .collect::<Result<_>>()?;
    let mut scratch = transforms::Scratch::default();
    let mut new_out = Vec::new();
    for (i, img) in new_img.iter().enumerate() {
        let p = transforms::params(img.width(), img.height(), t, &mut rng(i))?;
        transforms::crop_resize(img, &p, &mut scratch)?;
        new_out.push((scratch.out().to_vec(), p.flip));
    }
    let diff = pixel_diff(&old_out, &new_out, b.size);
    let (s, norm, batch) = (b.size as usize, Normalization::IMAGENET, b.batch.max(1));

    let mut read = || -> Result<()> {
        for (p, _) in &files {
            std::hint::black_box(std::fs::read(p)?);
        }
        Ok(())
    };
    let mut check = || -> Result<()> {
        for (p, by) in &files {
            imageio::check_complete(by, p)?;
        }
        Ok(())
    };
    let mut old_decode = || -> Result<()> {
        for (p, by) in &files {
            std::hint::black_box(imageio::decode_rgb(by, p)?);
        }
        Ok(())
    };
    let mut new_decode = || -> Result<()> {
        for (p, by) in &files {
            std::hint::black_box(decode::decode_rgb(by, p)?);
        }
        Ok(())
    };
    let mut old_resize = || -> Result<()> {
        for (i, img) in old_img.iter().enumerate() {
            std::hint::black_box(transforms::reference_transform(img, t, &mut rng(i))?);
        }
        Ok(())
    };
    let mut sc = transforms::Scratch::default();
    let mut new_resize = || -> Result<()> {
        for (i, img) in new_img.iter().enumerate() {
            let p = transforms::params(img.width(), img.height(), t, &mut rng(i))?;
            transforms::crop_resize(img, &p, &mut sc)?;
            std::hint::black_box(sc.out());
        }
        Ok(())
    };
    let mut old_norm = || -> Result<()> {
        for chunk in old_out.chunks(batch) {
            let ts: Vec<Tensor> = chunk.iter().map(imageio::to_tensor).collect();
            drop(std::hint::black_box(norm.apply(&Tensor::stack(&ts, 0))));
        }
        Ok(())
    };
    let mut new_norm = || -> Result<()> {
        let plane = 3 * s * s;
        for chunk in new_out.chunks(batch) {
            let mut buf = vec![0u8; chunk.len() * plane];
            for ((px, flip), dst) in chunk.iter().zip(buf.chunks_exact_mut(plane)) {
                transforms::write_bytes(px, s, *flip, dst);
            }
            let bytes = Tensor::from_slice(&buf).view([chunk.len() as i64, 3, s as i64, s as i64]);
            drop(std::hint::black_box(transforms::normalize_bytes(&bytes, &norm)));
        }
        Ok(())
    };
    let times = time_interleaved(
        b.reps,
        &mut [
            &mut read,
            &mut check,
            &mut old_decode,
            &mut new_decode,
            &mut old_resize,
            &mut new_resize,
            &mut old_norm,
            &mut new_norm,
        ],
    )?;
    let ms = |t: f64| t / n * 1e3;
    let mut table = Table::new(&["stage (1 thread)", "old ms/img", "new ms/img", "old / new"]);
    let mut row = |name: &str, old: f64, new: f64| {
        table.push(vec![name.into(), format!("{:.3}", ms(old)), format!("{:.3}", ms(new)), format!("{:.2}", old / new)])
    };
    row("file read (page cache)", times[0], times[0]);
    row("truncation check (in decode)", times[1], times[1]);
    row("decode to RGB", times[2], times[3]);
    row("crop + resize (+ flip, old)", times[4], times[5]);
    row("old: floats, normalise, stack; new: bytes + flip, normalise", times[6], times[7]);
    let (old, new) = (times[0] + times[2] + times[4] + times[6], times[0] + times[3] + times[5] + times[7]);
    row("total", old, new);
    Ok((table, diff))
}

/// The old path's crops against the new one's (RGB bytes, then flipped where drawn).
pub fn pixel_diff(old: &[RgbImage], new: &[(Vec<u8>, bool)], size: u32) -> PixelDiff {
    let (mut sum, mut max, mut count) = (0u64, 0u8, 0u64);
    for (o, (px, flip)) in old.iter().zip(new) {
        let n = flipped(px, size, *flip);
        for (a, b) in o.as_raw().iter().zip(n.as_raw()) {
            let d = a.abs_diff(*b);
            sum += d as u64;
            max = max.max(d);
            count += 1;
        }
    }
    PixelDiff { mean: sum as f64 / count.max(1) as f64, max, crops: old.len().min(new.len()) }
}

/// `px` (size x size RGB) as an image, mirrored if `flip`.
pub fn flipped(px: &[u8], size: u32, flip: bool) -> RgbImage {
    let img = RgbImage::from_raw(size, size, px.to_vec()).expect("size x size x 3 bytes");
    if flip { image::imageops::flip_horizontal(&img) } else { img }
}

/// The first 16 samples' files (`src_N.*`), boxes (`boxes.json`) and both paths' crops
/// (`old_N.png`, `new_N.png`, flipped, not normalised) for `scripts/loader_torchvision.py compare`.
fn dump(data: &ImageFolder, b: &LoaderBench, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let l = loader(data, b, 1);
    let mut scratch = transforms::Scratch::default();
    let mut boxes = Vec::new();
    for i in 0..data.len().min(16) {
        let path = &data.samples[i].0;
        let img = decode::read_rgb(path)?;
        let p = transforms::params(img.width(), img.height(), l.transform, &mut l.sample_rng(0, i))?;
        transforms::crop_resize(&img, &p, &mut scratch)?;
        let old = transforms::reference_transform(&imageio::load_rgb(path)?, l.transform, &mut l.sample_rng(0, i))?;
        crate::atomic::save_png(&flipped(scratch.out(), p.size, p.flip), &dir.join(format!("new_{i}.png")))?;
        crate::atomic::save_png(&old, &dir.join(format!("old_{i}.png")))?;
        // The source too: a generated folder is removed when the bench ends.
        let src = format!("src_{i}.{}", path.extension().map_or("img".into(), |e| e.to_string_lossy()));
        std::fs::copy(path, dir.join(&src))
            .with_context(|| format!("cannot copy {} to {}", path.display(), dir.display()))?;
        boxes.push(serde_json::json!({
            "index": i, "file": src, "x": p.x, "y": p.y, "w": p.w, "h": p.h, "size": p.size, "flip": p.flip,
        }));
    }
    let json = serde_json::to_string_pretty(&boxes)?;
    std::fs::write(dir.join("boxes.json"), json).with_context(|| format!("cannot write {}", dir.display()))?;
    Ok(())
}
