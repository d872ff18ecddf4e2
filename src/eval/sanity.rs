//! Model-parameter randomisation tests (Adebayo et al., "Sanity checks for saliency maps",
//! NeurIPS 2018, Sec. 3.1; Group-CAM paper Sec. 4.5 and Fig. 6).
//!
//! A method whose maps survive the destruction of the weights they should explain is not
//! explaining the model. Two schedules re-initialise the network's layers (`Model::layers`: a
//! conv with its BatchNorm, a residual or MBConv block, a linear layer):
//! - cascade: the top layer, then the top two, ... down to the whole network;
//! - independent: one layer at a time, the others trained.
//!
//! Each randomised model explains the class the trained model predicts on the clean image (the
//! same target throughout), and its maps are compared with the trained model's maps by Spearman
//! rank correlation, image by image. A randomised layer takes the values a freshly built network
//! of the same architecture gets from its own initialisers (PyTorch's defaults, BatchNorm
//! statistics reset), drawn once from `seed` (through torch's global generator, which this
//! reseeds), so that both schedules use the same random values for a layer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use image::imageops::{FilterType, resize};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::eval::insdel::argmax_classes;
use crate::{imageio, plot};

use crate::cam::methods::Explainer;
use crate::models::{CamModel, Layer, Model};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Randomization {
    Cascade,
    Independent,
}

crate::choice!(Randomization);

impl Randomization {
    pub const ALL: [Randomization; 2] = [Randomization::Cascade, Randomization::Independent];
    pub fn name(self) -> &'static str {
        match self {
            Randomization::Cascade => "cascade",
            Randomization::Independent => "independent",
        }
    }
}

impl FromStr for Randomization {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cascade" => Ok(Randomization::Cascade),
            "independent" => Ok(Randomization::Independent),
            _ => bail!("unknown randomisation '{s}' (expected cascade or independent)"),
        }
    }
}

/// The layers (indices into `Model::layers`, input to output) randomised at each step, top
/// layer first: cascade step k holds the top k + 1 layers, independent step k the (k + 1)-th
/// from the top alone.
pub fn schedule(layers: usize, mode: Randomization) -> Vec<Vec<usize>> {
    (0..layers)
        .map(|k| match mode {
            Randomization::Cascade => (layers - 1 - k..layers).rev().collect(),
            Randomization::Independent => vec![layers - 1 - k],
        })
        .collect()
}

/// Ranks 1..n with ties given their average rank.
fn ranks(v: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            out[k] = avg;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rank correlation: the Pearson correlation of the average ranks (ties handled as
/// scipy.stats.spearmanr does). `None` when either input is constant (the correlation is undefined).
pub fn spearman(a: &[f32], b: &[f32]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "spearman of vectors of lengths {} and {}", a.len(), b.len());
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

/// A working copy of a trained model whose layers can each be set to the trained or to random
/// values; the model it was made from is never written.
pub struct Randomizer<'a> {
    trained: &'a Model,
    work: Model,
    random: HashMap<String, Tensor>,
    layers: Vec<Layer>,
    /// Layer index of each of the working copy's variables.
    owner: Vec<(String, usize)>,
}

impl<'a> Randomizer<'a> {
    pub fn new(trained: &'a Model, seed: i64) -> Result<Randomizer<'a>> {
        let arch = trained.arch;
        let work = trained.untrained()?;
        tch::manual_seed(seed);
        let random = trained.untrained()?.vs.variables();
        let layers = work.layers();
        let mut owner = Vec::new();
        for name in work.vs.variables().into_keys() {
            let owners: Vec<usize> = (0..layers.len()).filter(|&i| layers[i].owns(&name)).collect();
            match owners.as_slice() {
                [i] => owner.push((name, *i)),
                [] => bail!("{arch}: variable '{name}' belongs to no layer of the sanity checks"),
                _ => bail!("{arch}: variable '{name}' belongs to several layers of the sanity checks"),
            }
        }
        owner.sort();
        Ok(Randomizer { trained, work, random, layers, owner })
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Sets the layers in `randomized` to their random values and all others to the trained ones.
    pub fn set(&mut self, randomized: &[usize]) -> Result<&Model> {
        let trained = self.trained.vs.variables();
        let mut work = self.work.vs.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, layer) in &self.owner {
                let src = if randomized.contains(layer) { self.random.get(name) } else { trained.get(name) };
                let src = src.with_context(|| format!("the trained model has no variable '{name}'"))?;
                let dst = work.get_mut(name).expect("the owner list comes from these variables");
                dst.copy_(src);
            }
            Ok(())
        })?;
        Ok(&self.work)
    }
}

/// One step of a schedule: what was randomised and how the maps compare with the trained model's.
#[derive(Debug)]
pub struct RandomizationStep {
    /// The lowest layer randomised (cascade) or the one layer randomised (independent).
    pub label: String,
    pub randomized: Vec<String>,
    /// N x H x W maps of the randomised model.
    pub maps: Tensor,
    /// Per image; `None` where either map is constant.
    pub spearman: Vec<Option<f64>>,
    /// Per image: the randomised model's argmax is still the explained class.
    pub same_prediction: Vec<bool>,
}

/// Mean of the defined values (`None` when none is).
pub fn mean_defined(v: &[Option<f64>]) -> Option<f64> {
    let d: Vec<f64> = v.iter().flatten().copied().collect();
    (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
}

/// Spearman correlation of each pair of maps (N x H x W each).
pub fn compare(a: &Tensor, b: &Tensor) -> Result<Vec<Option<f64>>> {
    if a.size() != b.size() {
        bail!("maps of shapes {:?} and {:?} cannot be compared", a.size(), b.size());
    }
    let flat = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))?)
    };
    (0..a.size()[0]).map(|i| Ok(spearman(&flat(&a.get(i))?, &flat(&b.get(i))?))).collect()
}

/// The trained model's maps for `classes` and every step of `mode` for one method, on a
/// normalised N x 3 x H x W batch.
pub fn run(
    randomizer: &mut Randomizer,
    method: &dyn Explainer,
    x: &Tensor,
    classes: &[i64],
    reference: &Tensor,
    mode: Randomization,
) -> Result<Vec<RandomizationStep>> {
    let mut out = Vec::new();
    for set in schedule(randomizer.layers().len(), mode) {
        let names: Vec<String> = set.iter().map(|&i| randomizer.layers()[i].name.clone()).collect();
        let label = names.last().cloned().unwrap_or_default();
        let model = randomizer.set(&set)?;
        let exp = method
            .explain(model, x, Some(classes))
            .with_context(|| format!("{} with {} randomised ({})", method.name(), label, mode.name()))?;
        let pred = tch::no_grad(|| model.logits_eval(x).argmax(1, false));
        let pred = Vec::<i64>::try_from(pred.to_device(Device::Cpu))?;
        out.push(RandomizationStep {
            spearman: compare(reference, &exp.maps)?,
            same_prediction: pred.iter().zip(classes).map(|(p, c)| p == c).collect(),
            maps: exp.maps,
            randomized: names,
            label,
        });
    }
    Ok(out)
}

/// What `groupcam sanity` reports: the JSON (per method, mode and step: the layers randomised,
/// the correlation per image and their mean, whether the prediction survived), the tables it
/// prints, and the figure when asked.
pub struct SanityReport {
    pub json: Value,
    /// A header line, then one table per method.
    pub text: String,
    /// The mean correlation per step (one panel per method, a line per mode), then the first
    /// image's maps at every step.
    pub figure: Option<image::RgbImage>,
}

/// Sanity checks of each method on `files`, for the trained model's predicted classes.
pub fn check(
    model: &Model,
    weights: &std::path::Path,
    methods: &[Box<dyn Explainer>],
    files: &[PathBuf],
    modes: &[Randomization],
    seed: i64,
    input_size: u32,
    figure: bool,
) -> Result<SanityReport> {
    if modes.is_empty() {
        bail!("no randomisation mode given");
    }
    let device = model.device();
    let (x, photos) = imageio::load_batch(files, input_size, &model.input_norm())?;
    let x = x.to_device(device);
    let classes = argmax_classes(model, &x)?;
    let mut randomizer = Randomizer::new(model, seed)?;
    let layers: Vec<String> = randomizer.layers().iter().map(|l| l.name.clone()).collect();
    let mut text = format!(
        "{}: {} layers randomised top down ({} ... {}), {} images, seed {}\n",
        model.arch,
        layers.len(),
        layers.last().map(String::as_str).unwrap_or(""),
        layers.first().map(String::as_str).unwrap_or(""),
        files.len(),
        seed
    );

    let thumb = |map: &Tensor| -> Result<image::RgbImage> {
        Ok(resize(&imageio::overlay(&photos.get(0), &map.get(0).to_device(Device::Cpu))?, 96, 96, FilterType::Triangle))
    };
    let mut report = serde_json::Map::new();
    let (mut panels, mut strips) = (Vec::new(), Vec::new());
    for m in methods {
        let reference = m.explain(model, &x, Some(&classes)).with_context(|| format!("method {}", m.name()))?;
        let mut per_mode = serde_json::Map::new();
        let mut lines = Vec::new();
        let mut table: Vec<Vec<String>> = Vec::new();
        for &mode in modes {
            let steps = run(&mut randomizer, m.as_ref(), &x, &classes, &reference.maps, mode)?;
            let means: Vec<Option<f64>> = steps.iter().map(|s| mean_defined(&s.spearman)).collect();
            // Step 0, the trained model, correlates perfectly with itself.
            lines.push(std::iter::once(1.0).chain(means.iter().map(|v| v.unwrap_or(f64::NAN))).collect());
            if figure {
                let mut tiles = vec![("trained".to_string(), thumb(&reference.maps)?)];
                for s in &steps {
                    tiles.push((s.label.clone(), thumb(&s.maps)?));
                }
                strips.push(plot::strip(&format!("{} {}, {}", m.name(), mode.name(), files[0].display()), &tiles));
            }
            for (k, (s, mean)) in steps.iter().zip(&means).enumerate() {
                if table.len() <= k {
                    table.push(vec![(k + 1).to_string(), s.label.clone()]);
                }
                table[k].push(mean.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()));
            }
            let rows: Vec<Value> = steps
                .iter()
                .zip(&means)
                .enumerate()
                .map(|(k, (s, mean))| {
                    json!({
                        "step": k + 1,
                        "layer": s.label,
                        "randomized": s.randomized,
                        "mean_spearman": mean,
                        "spearman": s.spearman,
                        "same_prediction": s.same_prediction,
                    })
                })
                .collect();
            per_mode.insert(mode.name().into(), json!(rows));
        }
        text += &format!("{}: mean Spearman rank correlation with the trained model's maps\n", m.name());
        let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
        text += &format!("| step | layer | {} |\n", names.join(" | "));
        text += &format!("|---|---|{}\n", "---|".repeat(names.len()));
        for row in &table {
            text += &format!("| {} |\n", row.join(" | "));
        }
        per_mode.insert("trained_constant_map".into(), json!(reference.constant));
        report.insert(m.name().into(), Value::Object(per_mode));
        panels.push(plot::Panel { title: m.name().into(), lines, y_range: (-1.0, 1.0), bands: vec![] });
    }
    let images: Vec<Value> = files
        .iter()
        .zip(&classes)
        .map(|(f, &c)| json!({ "image": f.display().to_string(), "class": c, "class_name": crate::imagenet::name_for(c, model.num_classes()) }))
        .collect();
    let json = json!({
        "arch": model.arch.name(),
        "weights": weights.display().to_string(),
        "seed": seed,
        "layers_input_to_output": layers,
        "images": images,
        "methods": report,
    });
    let figure = figure.then(|| {
        let legend: Vec<String> = modes.iter().map(|m| m.name().to_string()).collect();
        let mut parts = vec![plot::chart(&panels, &legend)];
        parts.extend(strips);
        plot::stack(&parts)
    });
    Ok(SanityReport { json, text, figure })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_known_vectors() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        // Monotone but not linear: rank correlation 1.
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 8.0, 27.0]), Some(1.0));
        // Ties: ranks [1.5, 1.5, 3, 4] against [1, 2, 3, 4]; scipy.stats.spearmanr gives 0.9486833.
        let r = spearman(&[0.0, 0.0, 1.0, 2.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((r - 0.9486832980505138).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
    }

    #[test]
    fn schedules_go_from_the_top() {
        assert_eq!(schedule(3, Randomization::Cascade), vec![vec![2], vec![2, 1], vec![2, 1, 0]]);
        assert_eq!(schedule(3, Randomization::Independent), vec![vec![2], vec![1], vec![0]]);
    }
}
