//! `groupcam eval` (insertion, deletion, pointing game over the methods), `groupcam bench
//! methods` (time per image of each method) and `groupcam bench insdel` (batched against
//! one-forward-per-step curves).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use groupcam::cam::Batching;
use groupcam::cam::methods::{self, Explainer};
use groupcam::cam::rise::Rise;
use groupcam::eval::insdel::{self, Mode, Preset, auc, mean_curve};
use groupcam::eval::pointing::{self, Coco, Tally};
use groupcam::models::{Arch, CamModel, Model};
use groupcam::{imageio, plot};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: super::ModelArgs,
    /// Image files, or a directory of .png/.jpg/.jpeg (for the pointing game: the directory the
    /// boxes file's file_name entries are relative to).
    #[arg(long, num_args = 1.., required = true)]
    images: Vec<PathBuf>,
    /// Methods to compare: groupcam, gradcam, gradcampp, scorecam, rise.
    #[arg(long, value_delimiter = ',', default_value = "groupcam,gradcam,gradcampp,scorecam,rise")]
    methods: Vec<String>,
    /// Metrics: insertion, deletion, pointing.
    #[arg(long, value_delimiter = ',', default_value = "insertion,deletion")]
    metrics: Vec<String>,
    /// Insertion/deletion protocol: groupcam (448 px/step, blur 51/50) or rise (224 px/step, blur 11/5).
    #[arg(long, default_value = "groupcam")]
    preset: String,
    /// COCO-format boxes for the pointing game.
    #[arg(long)]
    boxes: Option<PathBuf>,
    /// Where to write the per-image curves and AUCs.
    #[arg(long)]
    json: PathBuf,
    /// Write each method's maps (.npy and an overlay .png) under DIR/METHOD/.
    #[arg(long)]
    save_maps: Option<PathBuf>,
    /// Plot of the mean insertion and deletion curves per method (PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Images per scoring forward (default: 2 per lane on a multi-threaded CPU, 64 on CUDA).
    #[arg(long)]
    chunk: Option<i64>,
    /// Insertion/deletion forwards run side by side on CPU (default: one per CPU thread).
    #[arg(long)]
    lanes: Option<usize>,
    /// Images explained and scored together.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// RISE's number of masks N.
    #[arg(long, default_value_t = 4000)]
    rise_masks: i64,
}

pub(crate) fn explainers(names: &[String], chunk: Option<i64>, rise_masks: i64) -> Result<Vec<Box<dyn Explainer>>> {
    let mut out: Vec<Box<dyn Explainer>> = Vec::new();
    for n in names {
        let m = methods::by_name(n, chunk)?;
        if m.name() == "rise" {
            out.push(Box::new(Rise { masks: rise_masks, chunk, ..Default::default() }));
        } else {
            out.push(m);
        }
        if out[..out.len() - 1].iter().any(|o| o.name() == out[out.len() - 1].name()) {
            bail!("--methods names {} twice", n);
        }
    }
    if out.is_empty() {
        bail!("--methods is empty");
    }
    Ok(out)
}

/// The model's default scoring, with what the command line sets.
fn batching_of(model: &dyn CamModel, chunk: Option<i64>, lanes: Option<usize>) -> Result<Batching> {
    if chunk.is_some_and(|c| c < 1) || lanes == Some(0) {
        bail!("--chunk and --lanes must be at least 1");
    }
    let b = Batching::with_chunk(model, chunk);
    Ok(Batching { lanes: lanes.unwrap_or(b.lanes), ..b })
}

/// Image files of the arguments: files as given, directories expanded to their images, sorted.
pub(crate) fn image_files(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in args {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
                })
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("directory {} holds no .png/.jpg/.jpeg images", p.display());
            }
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("image {} does not exist", p.display());
        }
    }
    Ok(out)
}

pub fn eval(a: EvalArgs, device: Device) -> Result<()> {
    let mut modes = Vec::new();
    let mut pointing_on = false;
    for m in &a.metrics {
        match m.as_str() {
            "insertion" => modes.push(Mode::Insertion),
            "deletion" => modes.push(Mode::Deletion),
            "pointing" => pointing_on = true,
            _ => bail!("unknown metric '{m}' (expected insertion, deletion or pointing)"),
        }
    }
    if pointing_on && a.boxes.is_none() {
        bail!("--metrics pointing needs --boxes FILE (COCO-format JSON)");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let preset: Preset = a.preset.parse()?;
    let methods = explainers(&a.methods, a.chunk, a.rise_masks)?;
    let model = super::load_model(&a.model, device)?;
    let mut report = json!({
        "arch": model.arch.name(),
        "weights": a.model.weights.display().to_string(),
        "input_size": a.model.input_size,
    });
    if !modes.is_empty() {
        let files = image_files(&a.images)?;
        report["insdel"] = insdel_eval(&a, &model, &methods, &files, &modes, &preset, device)?;
    }
    if pointing_on {
        report["pointing"] = pointing_eval(&a, &model, &methods, device)?;
    }
    write_json(&report, &a.json)
}

/// Writes a command's results (pretty JSON), creating the directory, and says where.
pub(crate) fn write_json(value: &Value, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("results: {}", path.display());
    Ok(())
}

fn insdel_eval(
    a: &EvalArgs,
    model: &Model,
    methods: &[Box<dyn Explainer>],
    files: &[PathBuf],
    modes: &[Mode],
    preset: &Preset,
    device: Device,
) -> Result<Value> {
    let size = a.model.input_size;
    let norm = model.input_norm();
    // Decode everything first: a bad image fails the run before any work.
    let (x_all, photos) = imageio::load_batch(files, size, &norm)?;
    let x_all = x_all.to_device(device);
    let classes = insdel::argmax_classes(model, &x_all)?;
    let batching = batching_of(model, a.chunk, a.lanes)?;
    let mut per_method = serde_json::Map::new();
    let mut means: Vec<(String, BTreeMap<&'static str, Vec<f64>>, BTreeMap<&'static str, f64>)> = Vec::new();
    for m in methods {
        let mut rows = Vec::new();
        let mut curves: BTreeMap<&'static str, Vec<Vec<f64>>> = BTreeMap::new();
        let started = std::time::Instant::now();
        for start in (0..files.len()).step_by(a.batch) {
            let len = a.batch.min(files.len() - start);
            let x = x_all.narrow(0, start as i64, len as i64);
            let cls = &classes[start..start + len];
            let exp = m.explain(model, &x, Some(cls)).with_context(|| format!("method {}", m.name()))?;
            let mut got: BTreeMap<&'static str, Vec<Vec<f64>>> = BTreeMap::new();
            for &mode in modes {
                got.insert(mode.name(), insdel::curves(model, &x, &exp.maps, Some(cls), mode, preset, Some(batching))?);
            }
            for i in 0..len {
                let path = &files[start + i];
                let mut row = json!({
                    "image": path.display().to_string(),
                    "class": cls[i],
                    "class_name": groupcam::imagenet::class_name(cls[i]),
                    "constant_map": exp.constant[i],
                });
                for (&mode, c) in &got {
                    row[format!("{mode}_auc")] = json!(auc(&c[i]));
                    row[format!("{mode}_curve")] = json!(c[i]);
                    curves.entry(mode).or_default().push(c[i].clone());
                }
                rows.push(row);
                if let Some(dir) = &a.save_maps {
                    let d = dir.join(m.name());
                    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
                    let stem = super::unique_stem(path, start + i, files);
                    let map = exp.maps.get(i as i64).to_device(Device::Cpu);
                    imageio::write_npy(&map, &d.join(format!("{stem}.npy")))?;
                    let png = d.join(format!("{stem}.png"));
                    imageio::overlay(&photos.get((start + i) as i64), &map)?
                        .save(&png)
                        .with_context(|| format!("cannot write {}", png.display()))?;
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let mean_curves: BTreeMap<&'static str, Vec<f64>> = curves.iter().map(|(&k, v)| (k, mean_curve(v))).collect();
        let mean_aucs: BTreeMap<&'static str, f64> =
            curves.iter().map(|(&k, v)| (k, v.iter().map(|c| auc(c)).sum::<f64>() / v.len() as f64)).collect();
        let mut mean = json!(mean_aucs);
        if let (Some(i), Some(d)) = (mean_aucs.get("insertion"), mean_aucs.get("deletion")) {
            mean["overall"] = json!(i - d);
        }
        per_method.insert(
            m.name().to_string(),
            json!({ "mean_auc": mean, "mean_curves": mean_curves, "seconds": secs, "images": rows }),
        );
        means.push((m.name().to_string(), mean_curves, mean_aucs));
    }
    let fmt = |v: Option<&f64>| v.map(|v| format!("{:.2}", v * 100.0)).unwrap_or_else(|| "-".into());
    println!(
        "{} images, preset {} ({} px/step, {} points)",
        files.len(),
        preset.name,
        preset.step,
        preset.points((size * size) as i64)
    );
    println!("| method | insertion (%) | deletion (%) | over-all (%) |");
    println!("|---|---|---|---|");
    for (name, _, m) in &means {
        let overall = match (m.get("insertion"), m.get("deletion")) {
            (Some(i), Some(d)) => Some(i - d),
            _ => None,
        };
        println!("| {name} | {} | {} | {} |", fmt(m.get("insertion")), fmt(m.get("deletion")), fmt(overall.as_ref()));
    }
    if let Some(p) = &a.plot {
        let series: Vec<(String, BTreeMap<&'static str, Vec<f64>>)> =
            means.iter().map(|(n, c, _)| (n.clone(), c.clone())).collect();
        plot(&series, modes, p)?;
        println!("plot: {}", p.display());
    }
    Ok(json!({
        "preset": preset.name,
        "pixels_per_step": preset.step,
        "points": preset.points((size * size) as i64),
        "images": files.len(),
        "methods": per_method,
    }))
}

fn pointing_eval(a: &EvalArgs, model: &Model, methods: &[Box<dyn Explainer>], device: Device) -> Result<Value> {
    let boxes = a.boxes.as_ref().expect("checked");
    let coco = Coco::load(boxes)?;
    let [dir] = a.images.as_slice() else {
        bail!(
            "--metrics pointing needs --images to be the one directory the file_name entries of {} are in",
            boxes.display()
        );
    };
    if !dir.is_dir() {
        bail!(
            "--images {} is not a directory (the pointing game reads the boxes file's file_name entries from it)",
            dir.display()
        );
    }
    if (coco.categories.len() as i64) > model.num_classes() {
        bail!(
            "{} has {} categories but the model has {} classes: the pointing game explains the i-th category as class i",
            boxes.display(),
            coco.categories.len(),
            model.num_classes()
        );
    }
    let s = a.model.input_size;
    let norm = model.input_norm();
    let mut tallies: Vec<Tally> = methods.iter().map(|_| Tally::default()).collect();
    for im in &coco.images {
        let pairs = coco.boxes_of(im.id);
        if pairs.is_empty() {
            continue;
        }
        let path = dir.join(&im.file_name);
        let img = imageio::load_rgb(&path)?;
        // The whole image, resized to the input (no crop): every box stays in view.
        let resized = image::imageops::resize(&img, s, s, image::imageops::FilterType::Triangle);
        let x = norm.apply(&imageio::to_tensor(&resized).unsqueeze(0)).to_device(device);
        let (sx, sy) = (img.width() as f64 / s as f64, img.height() as f64 / s as f64);
        let n = pairs.len() as i64;
        let xs = x.expand([n, 3, s as i64, s as i64], false).contiguous();
        let cls: Vec<i64> = pairs.iter().map(|(c, _)| coco.category_index(*c).expect("checked") as i64).collect();
        for (m, tally) in methods.iter().zip(tallies.iter_mut()) {
            let exp = m
                .explain(model, &xs, Some(&cls))
                .with_context(|| format!("method {} on {}", m.name(), path.display()))?;
            for (i, (cat, bxs)) in pairs.iter().enumerate() {
                let (px, py) = pointing::peak(&exp.maps.get(i as i64))?;
                tally.add(*cat, pointing::hit((px * sx, py * sy), bxs, pointing::TOLERANCE));
            }
        }
    }
    let mut out = serde_json::Map::new();
    println!("pointing game ({} px tolerance, mean accuracy over categories)", pointing::TOLERANCE);
    println!("| method | accuracy (%) |");
    println!("|---|---|");
    for (m, t) in methods.iter().zip(&tallies) {
        let mean = t.mean_accuracy();
        let per: BTreeMap<String, Value> = t
            .per_category
            .iter()
            .map(|(c, (h, n))| {
                let name = coco.categories.iter().find(|k| k.id == *c).map(|k| k.name.clone()).unwrap_or_default();
                (c.to_string(), json!({ "name": name, "hits": h, "trials": n, "accuracy": *h as f64 / *n as f64 }))
            })
            .collect();
        println!("| {} | {} |", m.name(), mean.map(|v| format!("{:.2}", v * 100.0)).unwrap_or_else(|| "-".into()));
        out.insert(m.name().to_string(), json!({ "mean_accuracy": mean, "categories": per }));
    }
    Ok(json!({ "tolerance": pointing::TOLERANCE, "boxes": boxes.display().to_string(), "methods": out }))
}

/// One panel per metric, a line per method; the legend gives each method's AUCs.
fn plot(series: &[(String, BTreeMap<&'static str, Vec<f64>>)], modes: &[Mode], path: &Path) -> Result<()> {
    let panels: Vec<plot::Panel> = modes
        .iter()
        .map(|m| plot::Panel {
            title: m.name().into(),
            lines: series.iter().map(|(_, c)| c.get(m.name()).cloned().unwrap_or_default()).collect(),
            y_range: (0.0, 1.0),
        })
        .collect();
    let legend: Vec<String> = series
        .iter()
        .map(|(name, curves)| {
            let aucs: Vec<String> =
                modes.iter().filter_map(|m| curves.get(m.name()).map(|v| format!("{:.3}", auc(v)))).collect();
            format!("{name} {}", aucs.join(" "))
        })
        .collect();
    plot::save(&plot::chart(&panels, &legend), path)
}

// ---------------------------------------------------------------------------------------------
// Benchmarks.

#[derive(Args)]
pub struct BenchMethodsArgs {
    #[arg(long, default_value = "efficientnet-lite0")]
    arch: String,
    /// Weights (default: random; Score-CAM's time depends on them through its skipped constant channels).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "groupcam,gradcam,gradcampp,scorecam,rise")]
    methods: Vec<String>,
    /// An image to explain (default: random noise).
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long, default_value_t = 224)]
    input_size: u32,
    #[arg(long, default_value_t = 4000)]
    rise_masks: i64,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

fn bench_model(arch: &str, weights: &Option<PathBuf>, device: Device) -> Result<Model> {
    let arch: Arch = arch.parse()?;
    match weights {
        Some(w) => Model::load(arch, w, device),
        None => Ok(Model::new(arch, 1000, device)),
    }
}

fn bench_input(model: &Model, image: &Option<PathBuf>, size: u32, device: Device) -> Result<Tensor> {
    Ok(match image {
        Some(p) => imageio::load_batch(&[p], size, &model.input_norm())?.0.to_device(device),
        None => Tensor::randn([1, 3, size as i64, size as i64], (Kind::Float, device)),
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn bench_methods(a: BenchMethodsArgs, device: Device) -> Result<()> {
    let model = bench_model(&a.arch, &a.weights, device)?;
    let x = bench_input(&model, &a.image, a.input_size, device)?;
    let cls = insdel::argmax_classes(&model, &x)?;
    let ms = explainers(&a.methods, None, a.rise_masks)?;
    let mut fs: Vec<Box<dyn FnMut() -> Result<()> + '_>> = ms
        .iter()
        .map(|m| {
            let (model, x, cls) = (&model, &x, &cls);
            Box::new(move || {
                m.explain(model, x, Some(cls))?;
                sync(device);
                Ok(())
            }) as Box<dyn FnMut() -> Result<()>>
        })
        .collect();
    let mut refs: Vec<&mut dyn FnMut() -> Result<()>> = fs.iter_mut().map(|f| f.as_mut() as _).collect();
    let t = super::time_interleaved(a.reps, &mut refs)?;
    println!(
        "{} on {device:?}, {} CPU threads, {}x{} input, RISE N = {}, medians of {} after a warm-up",
        model.arch,
        tch::get_num_threads(),
        a.input_size,
        a.input_size,
        a.rise_masks,
        a.reps
    );
    println!("| method | s / image | x Grad-CAM |");
    println!("|---|---|---|");
    let grad = ms.iter().position(|m| m.name() == "gradcam").map(|i| t[i]);
    for (m, s) in ms.iter().zip(&t) {
        let rel = grad.map(|g| format!("{:.1}", s / g)).unwrap_or_else(|| "-".into());
        println!("| {} | {s:.3} | {rel} |", m.name());
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchInsdelArgs {
    #[arg(long, default_value = "efficientnet-lite0")]
    arch: String,
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long, default_value = "groupcam")]
    preset: String,
    /// Images per forward of the lanes variant (default: the model's).
    #[arg(long)]
    chunk: Option<i64>,
    /// Lanes of the lanes variant (default: the model's).
    #[arg(long)]
    lanes: Option<usize>,
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// One forward per step against batched curves, in one lane with forwards of the device's
/// single-lane chunk and with the default (or given) lanes; same image, map and process.
pub fn bench_insdel(a: BenchInsdelArgs, device: Device) -> Result<()> {
    let model = bench_model(&a.arch, &a.weights, device)?;
    let preset: Preset = a.preset.parse()?;
    let x = bench_input(&model, &a.image, 224, device)?;
    let cls = insdel::argmax_classes(&model, &x)?;
    let map = groupcam::cam::gradcam::GradCam.explain(&model, &x, Some(&cls))?.maps;
    let one = Batching { chunk: groupcam::cam::default_chunk(device), lanes: 1 };
    let lanes = batching_of(&model, a.chunk, a.lanes)?;
    println!(
        "{} on {device:?}, {} CPU threads, preset {} ({} points), one lane: chunk {}, lanes: {} x chunk {}, medians of {} after a warm-up",
        model.arch,
        tch::get_num_threads(),
        preset.name,
        preset.points(224 * 224),
        one.chunk,
        lanes.lanes,
        lanes.chunk,
        a.reps
    );
    println!(
        "| mode | one forward per step (s) | batched, one lane (s) | batched, lanes (s) | speed-up one lane | speed-up lanes | AUC stepwise | AUC lanes | max abs diff of curves |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for mode in [Mode::Insertion, Mode::Deletion] {
        let (mut stepwise, mut single, mut multi) = (Vec::new(), Vec::new(), Vec::new());
        let t = super::time_interleaved(
            a.reps,
            &mut [
                &mut || {
                    stepwise = insdel::curve_stepwise(&model, &x, &map.get(0), cls[0], mode, &preset)?;
                    sync(device);
                    Ok(())
                },
                &mut || {
                    single = insdel::curves(&model, &x, &map, Some(&cls), mode, &preset, Some(one))?.remove(0);
                    sync(device);
                    Ok(())
                },
                &mut || {
                    multi = insdel::curves(&model, &x, &map, Some(&cls), mode, &preset, Some(lanes))?.remove(0);
                    sync(device);
                    Ok(())
                },
            ],
        )?;
        let diff = |u: &[f64]| u.iter().zip(&stepwise).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.2}x | {:.2}x | {:.6} | {:.6} | {:.1e} |",
            mode.name(),
            t[0],
            t[1],
            t[2],
            t[0] / t[1],
            t[0] / t[2],
            auc(&stepwise),
            auc(&multi),
            diff(&single).max(diff(&multi))
        );
    }
    Ok(())
}
