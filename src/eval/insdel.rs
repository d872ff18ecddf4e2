//! Insertion and deletion (Petsiuk et al., RISE, Sec. 4.1; Group-CAM paper Sec. 4.3).
//!
//! Pixels are taken in order of descending saliency (a stable sort: ties in index order), `step`
//! pixels at a time. Deletion starts from the image and replaces pixels with the substrate
//! (zeros in normalised space); insertion starts from the blurred image and puts the image's
//! pixels back. The curve is the softmax probability of the class (the argmax on the clean image
//! unless given) after 0, 1, ..., ceil(HW / step) steps, and its AUC is the trapezoid rule on
//! [0, 1]: (sum - a_0 / 2 - a_n / 2) / (n - 1), as in the Group-CAM and RISE code.
//!
//! Every perturbed input is a pure function of the step index (the pixels of rank < i * step
//! come from the finish image), so all of an image's steps, and those of several images, are
//! scored in chunked batched forwards; `curve_stepwise` is the one-forward-per-step loop of the
//! reference code, for tests and the benchmark.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::cam::{Batching, Explainer, score_batched};
use crate::models::CamModel;
use crate::ops::Blur;
use crate::{imageio, plot};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Insertion,
    Deletion,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Insertion => "insertion",
            Mode::Deletion => "deletion",
        }
    }
}

/// A protocol: pixels per step and the insertion baseline's blur.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    /// Pixels moved per step.
    pub step: i64,
    /// The blur insertion starts from.
    pub blur: Blur,
}

impl Preset {
    /// The Group-CAM code: 448 pixels per step (113 points on 224 x 224), blur kernel 51, sigma 50.
    pub const GROUP_CAM: Preset = Preset { name: "groupcam", step: 448, blur: Blur::GROUP_CAM };
    /// The RISE code: 224 pixels per step (225 points), blur kernel 11, sigma 5, zero padding.
    pub const RISE: Preset = Preset { name: "rise", step: 224, blur: Blur::RISE };

    /// Points on a curve for an image of `pixels` pixels: ceil(pixels / step) + 1.
    pub fn points(&self, pixels: i64) -> i64 {
        (pixels + self.step - 1) / self.step + 1
    }
}

impl Preset {
    pub const ALL: [Preset; 2] = [Preset::GROUP_CAM, Preset::RISE];
}

impl crate::choice::Choice for Preset {
    fn names() -> Vec<&'static str> {
        Preset::ALL.iter().map(|p| p.name).collect()
    }
}

impl FromStr for Preset {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match Preset::ALL.into_iter().find(|p| p.name == s) {
            Some(p) => Ok(p),
            None => bail!("unknown preset '{s}' (expected groupcam or rise)"),
        }
    }
}

/// (sum - a_0 / 2 - a_n / 2) / (n - 1): the trapezoid area under a curve sampled evenly on [0, 1].
pub fn auc(curve: &[f64]) -> f64 {
    let n = curve.len();
    if n < 2 {
        return curve.first().copied().unwrap_or(0.0);
    }
    (curve.iter().sum::<f64>() - curve[0] / 2.0 - curve[n - 1] / 2.0) / (n - 1) as f64
}

/// Pixel indices (row-major) by descending saliency, ties in index order.
pub fn order(map: &Tensor) -> Tensor {
    let flat = map.to_kind(Kind::Float).flatten(0, -1);
    // Ascending stable sort of the negated map: descending, equal values keep their index order.
    (-flat).sort_stable(true, 0, false).1
}

/// The rank of each pixel in `order` (H x W, int64).
fn ranks(map: &Tensor) -> Tensor {
    let ord = order(map);
    let n = ord.size()[0];
    ord.zeros_like().scatter(0, &ord, &Tensor::arange(n, (Kind::Int64, ord.device()))).view(map.size().as_slice())
}

/// The clean image's argmax for each of a normalised N x 3 x H x W batch.
pub fn argmax_classes(model: &dyn CamModel, x: &Tensor) -> Result<Vec<i64>> {
    let c = tch::no_grad(|| model.logits_eval(x).argmax(1, false));
    Ok(Vec::<i64>::try_from(c.to_device(tch::Device::Cpu))?)
}

/// Start and finish images of a normalised N x 3 x H x W batch.
pub fn endpoints(x: &Tensor, mode: Mode, preset: &Preset) -> Result<(Tensor, Tensor)> {
    Ok(match mode {
        Mode::Deletion => (x.shallow_clone(), x.zeros_like()),
        Mode::Insertion => (preset.blur.apply(x)?, x.shallow_clone()),
    })
}

fn check(x: &Tensor, maps: &Tensor, classes: &[i64]) -> Result<(i64, i64, i64)> {
    let (n, c, h, w) = x.size4()?;
    if c != 3 {
        bail!("images must be N x 3 x H x W (got {:?})", x.size());
    }
    if maps.size() != [n, h, w] {
        bail!("saliency maps of shape {:?} for images of shape {:?} (expected [{n}, {h}, {w}])", maps.size(), x.size());
    }
    if classes.len() as i64 != n {
        bail!("{} classes given for {n} images", classes.len());
    }
    if maps.isfinite().logical_not().any().int64_value(&[]) != 0 {
        bail!("a saliency map contains NaN or infinite values");
    }
    Ok((n, h, w))
}

/// Insertion or deletion curves of a normalised N x 3 x H x W batch and its N x H x W maps, for
/// `classes` (the clean argmax when `None`): all N x points inputs scored in batched forwards
/// (`Batching::default_for` the model when `None`).
pub fn curves(
    model: &dyn CamModel,
    x: &Tensor,
    maps: &Tensor,
    classes: Option<&[i64]>,
    mode: Mode,
    preset: &Preset,
    batching: Option<Batching>,
) -> Result<Vec<Vec<f64>>> {
    let classes = match classes {
        Some(c) => c.to_vec(),
        None => argmax_classes(model, x)?,
    };
    let (n, h, w) = check(x, maps, &classes)?;
    let points = preset.points(h * w);
    let (start, finish) = endpoints(x, mode, preset)?;
    let maps = maps.to_device(x.device());
    let ranks: Vec<Tensor> = (0..n).map(|i| ranks(&maps.get(i))).collect();
    let ranks = Tensor::stack(&ranks, 0).unsqueeze(1);
    let dev = x.device();
    let owner = Tensor::arange(n * points, (Kind::Int64, dev)).floor_divide_scalar(points);
    let step_of = Tensor::arange(n * points, (Kind::Int64, dev)).remainder(points);
    let cls = Tensor::from_slice(&classes).to_device(dev).index_select(0, &owner);
    let make = |s: i64, len: i64| {
        let idx = owner.narrow(0, s, len);
        let thr = (step_of.narrow(0, s, len) * preset.step).view([len, 1, 1, 1]);
        let moved = ranks.index_select(0, &idx).lt_tensor(&thr);
        finish.index_select(0, &idx).where_self(&moved, &start.index_select(0, &idx))
    };
    let batching = batching.unwrap_or_else(|| Batching::default_for(model));
    let p = score_batched(model, n * points, batching, &cls, &make).to_kind(Kind::Double).view([n, points]);
    let p = Vec::<f64>::try_from(p.to_device(tch::Device::Cpu).flatten(0, -1))?;
    Ok(p.chunks(points as usize).map(|c| c.to_vec()).collect())
}

/// One image's curve the reference code's way: one forward per step, replacing the next `step`
/// pixels of a working copy after each. x is 1 x 3 x H x W, `map` H x W.
pub fn curve_stepwise(
    model: &dyn CamModel,
    x: &Tensor,
    map: &Tensor,
    class: i64,
    mode: Mode,
    preset: &Preset,
) -> Result<Vec<f64>> {
    let (_, h, w) = check(x, &map.unsqueeze(0), &[class])?;
    let points = preset.points(h * w);
    let (start, finish) = endpoints(x, mode, preset)?;
    let ord = order(&map.to_device(x.device()));
    let mut cur = start.view([3, h * w]).copy();
    let fin = finish.view([3, h * w]);
    let mut out = Vec::with_capacity(points as usize);
    tch::no_grad(|| -> Result<()> {
        for i in 0..points {
            let probs = model.logits_eval(&cur.view([1, 3, h, w])).softmax(-1, Kind::Float);
            out.push(probs.double_value(&[0, class]));
            if i < points - 1 {
                let lo = i * preset.step;
                let idx = ord.narrow(0, lo, preset.step.min(h * w - lo));
                let _ = cur.index_copy_(1, &idx, &fin.index_select(1, &idx));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Mean of equally long curves, point by point.
pub fn mean_curve(curves: &[Vec<f64>]) -> Vec<f64> {
    let Some(first) = curves.first() else { return Vec::new() };
    (0..first.len()).map(|i| curves.iter().map(|c| c[i]).sum::<f64>() / curves.len() as f64).collect()
}

/// How `evaluate` runs.
#[derive(Clone, Debug)]
pub struct InsdelOptions {
    pub modes: Vec<Mode>,
    pub preset: Preset,
    /// Input size in pixels (images are resized and cropped as for evaluation).
    pub input_size: u32,
    /// How the perturbed inputs are scored.
    pub batching: Batching,
    /// Images explained and scored together.
    pub batch: usize,
    /// Write each method's maps (.npy and an overlay .png) under DIR/METHOD/.
    pub save_maps: Option<PathBuf>,
}

/// Insertion/deletion of several methods over the same images: per image the class (the
/// clean argmax), each curve and its AUC; per method the mean curve, the mean AUCs and the
/// over-all score (insertion - deletion).
#[derive(Clone, Debug, Serialize)]
pub struct InsdelReport {
    pub preset: &'static str,
    pub pixels_per_step: i64,
    pub points: i64,
    pub images: usize,
    #[serde(serialize_with = "by_name")]
    pub methods: Vec<MethodInsdel>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MethodInsdel {
    #[serde(skip)]
    pub name: &'static str,
    pub mean_auc: MeanAuc,
    pub mean_curves: BTreeMap<&'static str, Vec<f64>>,
    pub seconds: f64,
    pub images: Vec<ImageInsdel>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct MeanAuc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insertion: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion: Option<f64>,
    /// Insertion - deletion, when both were measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overall: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageInsdel {
    pub image: String,
    pub class: i64,
    pub class_name: String,
    pub constant_map: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insertion_auc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insertion_curve: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_auc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_curve: Option<Vec<f64>>,
}

fn by_name<S: serde::Serializer>(methods: &[MethodInsdel], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_map(methods.iter().map(|m| (m.name, m)))
}

/// Explains `files` with each method (for the clean argmax class) and measures its curves.
/// Every image is decoded before any work, so a bad one fails the run first.
pub fn evaluate(
    model: &dyn CamModel,
    methods: &[Box<dyn Explainer>],
    files: &[PathBuf],
    opts: &InsdelOptions,
) -> Result<InsdelReport> {
    let size = opts.input_size;
    let (x_all, photos) = imageio::load_batch(files, size, &model.input_norm())?;
    let x_all = x_all.to_device(model.device());
    let classes = argmax_classes(model, &x_all)?;
    let batch = opts.batch.max(1);
    let mut out = Vec::new();
    for m in methods {
        let mut rows = Vec::new();
        let mut curves: BTreeMap<&'static str, Vec<Vec<f64>>> = BTreeMap::new();
        let started = std::time::Instant::now();
        for start in (0..files.len()).step_by(batch) {
            let len = batch.min(files.len() - start);
            let x = x_all.narrow(0, start as i64, len as i64);
            let cls = &classes[start..start + len];
            let exp = m.explain(model, &x, Some(cls)).with_context(|| format!("method {}", m.name()))?;
            let mut got: BTreeMap<&'static str, Vec<Vec<f64>>> = BTreeMap::new();
            for &mode in &opts.modes {
                got.insert(mode.name(), curves_of(model, &x, &exp.maps, cls, mode, opts)?);
            }
            for i in 0..len {
                let path = &files[start + i];
                let mut row = ImageInsdel {
                    image: path.display().to_string(),
                    class: cls[i],
                    class_name: crate::imagenet::name_for(cls[i], model.num_classes()),
                    constant_map: exp.constant[i],
                    insertion_auc: None,
                    insertion_curve: None,
                    deletion_auc: None,
                    deletion_curve: None,
                };
                for (&mode, c) in &got {
                    let (auc_slot, curve_slot) = match mode {
                        "insertion" => (&mut row.insertion_auc, &mut row.insertion_curve),
                        _ => (&mut row.deletion_auc, &mut row.deletion_curve),
                    };
                    (*auc_slot, *curve_slot) = (Some(auc(&c[i])), Some(c[i].clone()));
                    curves.entry(mode).or_default().push(c[i].clone());
                }
                rows.push(row);
                if let Some(dir) = &opts.save_maps {
                    let d = dir.join(m.name());
                    crate::files::create_dir(&d)?;
                    let stem = crate::files::unique_stem(path, start + i, files);
                    let map = exp.maps.get(i as i64).to_device(tch::Device::Cpu);
                    imageio::write_npy(&map, &d.join(format!("{stem}.npy")))?;
                    let png = d.join(format!("{stem}.png"));
                    crate::atomic::save_png(&imageio::overlay(&photos.get((start + i) as i64), &map)?, &png)?;
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let mean_of = |mode: &str| curves.get(mode).map(|v| v.iter().map(|c| auc(c)).sum::<f64>() / v.len() as f64);
        let (insertion, deletion) = (mean_of("insertion"), mean_of("deletion"));
        let overall = insertion.zip(deletion).map(|(i, d)| i - d);
        out.push(MethodInsdel {
            name: m.name(),
            mean_auc: MeanAuc { insertion, deletion, overall },
            mean_curves: curves.iter().map(|(&k, v)| (k, mean_curve(v))).collect(),
            seconds,
            images: rows,
        });
    }
    let pixels = (size * size) as i64;
    Ok(InsdelReport {
        preset: opts.preset.name,
        pixels_per_step: opts.preset.step,
        points: opts.preset.points(pixels),
        images: files.len(),
        methods: out,
    })
}

fn curves_of(
    model: &dyn CamModel,
    x: &Tensor,
    maps: &Tensor,
    cls: &[i64],
    mode: Mode,
    opts: &InsdelOptions,
) -> Result<Vec<Vec<f64>>> {
    curves(model, x, maps, Some(cls), mode, &opts.preset, Some(opts.batching))
}

impl InsdelReport {
    /// The summary the CLI prints: a line on the protocol and a table of mean AUCs (%).
    pub fn table(&self) -> String {
        let fmt = |v: Option<f64>| v.map(|v| format!("{:.2}", v * 100.0)).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "{} images, preset {} ({} px/step, {} points)\n",
            self.images, self.preset, self.pixels_per_step, self.points
        );
        s += "| method | insertion (%) | deletion (%) | over-all (%) |\n|---|---|---|---|\n";
        for m in &self.methods {
            let a = m.mean_auc;
            s += &format!("| {} | {} | {} | {} |\n", m.name, fmt(a.insertion), fmt(a.deletion), fmt(a.overall));
        }
        s
    }

    /// One panel per mode, a line per method (its mean curve); the legend gives each method's
    /// AUCs of the mean curves.
    pub fn plot(&self, modes: &[Mode], path: &Path) -> Result<()> {
        let panels: Vec<plot::Panel> = modes
            .iter()
            .map(|m| plot::Panel {
                title: m.name().into(),
                lines: self.methods.iter().map(|s| s.mean_curves.get(m.name()).cloned().unwrap_or_default()).collect(),
                y_range: (0.0, 1.0),
                bands: vec![],
            })
            .collect();
        let legend: Vec<String> = self
            .methods
            .iter()
            .map(|s| {
                let aucs: Vec<String> = modes
                    .iter()
                    .filter_map(|m| s.mean_curves.get(m.name()).map(|v| format!("{:.3}", auc(v))))
                    .collect();
                format!("{} {}", s.name, aucs.join(" "))
            })
            .collect();
        plot::save(&plot::chart(&panels, &legend), path)
    }
}
