//! `groupcam augment` (what the model will be trained on, as PNGs) and `groupcam bench augment`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use groupcam::augment::{GroupCamAugment, Outcome};
use groupcam::models::{Arch, CamModel, Model};
use groupcam::{imageio, imagenet};

use super::{ModelArgs, load_model, time_interleaved, unique_stem};

#[derive(Args)]
pub struct AugmentArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files (JPEG or PNG).
    #[arg(long, num_args = 1.., required = true)]
    image: Vec<PathBuf>,
    /// The ground-truth class of each image, or one class for all of them.
    #[arg(long, num_args = 1.., required = true)]
    label: Vec<i64>,
    /// Number of channel groups G.
    #[arg(long, default_value_t = 16)]
    groups: i64,
    /// Score the masked inputs with their shorter side this many pixels (e.g. 112).
    #[arg(long)]
    score_size: Option<i64>,
    /// image (each map's mean, the paper) or batch (one mean over the batch, the official code).
    #[arg(long, default_value = "image")]
    threshold: String,
    /// Images per scoring forward (default: the device's).
    #[arg(long)]
    max_batch: Option<i64>,
    /// f32, or f16 (CUDA autocast) for the map's forwards.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Output directory: <stem>-augmented.png and <stem>-mask.png (white: the input is kept).
    #[arg(long)]
    out: PathBuf,
}

pub fn augment(a: AugmentArgs, device: Device) -> Result<()> {
    let model = load_model(&a.model, device)?;
    let labels = match a.label.len() {
        1 => vec![a.label[0]; a.image.len()],
        n if n == a.image.len() => a.label.clone(),
        n => bail!("{n} labels for {} images: give one per image, or one for all", a.image.len()),
    };
    let aug = GroupCamAugment {
        groups: a.groups,
        score_size: a.score_size,
        threshold: a.threshold.parse()?,
        max_batch: a.max_batch,
        precision: a.precision.parse()?,
        ..Default::default()
    };
    // Everything is computed before the first file is written: a bad input leaves no partial output.
    let norm = model.input_norm();
    let (x, _) = imageio::load_batch(&a.image, a.model.input_size, &norm)?;
    let out = aug.augment(&model, &x.to_device(device), &Tensor::from_slice(&labels))?;
    let images = norm.invert(&out.images).to_device(Device::Cpu);
    let masks = out.masks.to_device(Device::Cpu);
    let mut files = Vec::new();
    for (i, path) in a.image.iter().enumerate() {
        let i64_ = i as i64;
        let stem = unique_stem(path, i, &a.image);
        files.push((
            stem,
            imageio::to_image(&images.get(i64_))?,
            imageio::to_image(&masks.get(i64_).expand([3, -1, -1], false))?,
        ));
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    for (i, (stem, image, mask)) in files.into_iter().enumerate() {
        let (img_path, mask_path) =
            (a.out.join(format!("{stem}-augmented.png")), a.out.join(format!("{stem}-mask.png")));
        image.save(&img_path).with_context(|| format!("cannot write {}", img_path.display()))?;
        mask.save(&mask_path).with_context(|| format!("cannot write {}", mask_path.display()))?;
        let what = match out.stats.outcomes[i] {
            Outcome::Augmented { kept } => format!("{:.0}% of the pixels kept", 100.0 * kept),
            Outcome::Constant => "constant map: unchanged".into(),
            Outcome::Skipped => "skipped: unchanged".into(),
        };
        println!(
            "{} -> {} (label {} {}; {what})",
            a.image[i].display(),
            img_path.display(),
            labels[i],
            imagenet::class_name(labels[i])
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchAugmentArgs {
    /// Architectures to measure (random weights: the cost does not depend on them).
    #[arg(long, value_delimiter = ',', default_value = "resnet18,resnet50")]
    arch: Vec<String>,
    #[arg(long, default_value_t = 16)]
    batch: i64,
    #[arg(long, default_value_t = 16)]
    groups: i64,
    #[arg(long, default_value_t = 224)]
    input_size: i64,
    /// The fast setting's scoring size.
    #[arg(long, default_value_t = 112)]
    fast_score_size: i64,
    /// The fast setting's apply probability.
    #[arg(long, default_value_t = 0.5)]
    fast_probability: f64,
    /// Timed repetitions after one warm-up, interleaved across the settings.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
}

/// A training step (forward, cross-entropy, backward, SGD update) of the model in training mode,
/// after the augmentation when there is one, against the plain step; each option alone and the
/// fast setting, with the compute bound 1 + p (1 + (G + 1) r) / 3 plain steps, where r is the
/// scoring pixels over the input pixels and q the fraction of images drawn (one scoring
/// forward = 1/3 of a forward+backward).
/// The seed of the draws of p < 1 in the benchmark.
const SEED: i64 = 1;

pub fn bench(a: BenchAugmentArgs, device: Device) -> Result<()> {
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let faithful = GroupCamAugment { groups: a.groups, ..Default::default() };
    let settings = [
        ("faithful", faithful.clone()),
        ("score size only", GroupCamAugment { score_size: Some(a.fast_score_size), ..faithful.clone() }),
        ("probability only", GroupCamAugment { probability: a.fast_probability, ..faithful.clone() }),
        (
            "fast",
            GroupCamAugment {
                score_size: Some(a.fast_score_size),
                probability: a.fast_probability,
                ..faithful.clone()
            },
        ),
    ];
    println!(
        "threads: {}, device: {device:?}, batch {}, G = {}, {} px",
        tch::get_num_threads(),
        a.batch,
        a.groups,
        a.input_size
    );
    println!();
    println!("| arch | setting | score px | p | step (s) | / plain step | bound | / bound |");
    println!("|---|---|---|---|---|---|---|---|");
    for name in &a.arch {
        let arch: Arch = name.parse()?;
        tch::manual_seed(0);
        let model = Model::new(arch, 1000, device);
        model.set_training(true);
        let mut opt = nn::Sgd { momentum: 0.9, wd: 1e-4, ..Default::default() }.build(&model.vs, 1e-4)?;
        let s = a.input_size;
        let x = Tensor::randn([a.batch, 3, s, s], (Kind::Float, device));
        let y = Tensor::randint(1000, [a.batch], (Kind::Int64, device));
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        // One closure per column; the optimizer is shared, so they run one after another.
        // Every augmented step reseeds torch, so that p < 1 draws the same images each time;
        // the bound uses the fraction q actually drawn.
        let opt = std::cell::RefCell::new(&mut opt);
        let drawn = std::cell::RefCell::new(vec![0usize; settings.len()]);
        let step = |aug: Option<(usize, &GroupCamAugment)>| -> Result<()> {
            let inputs = match aug {
                Some((k, g)) => {
                    tch::manual_seed(SEED);
                    let out = g.augment(&model, &x, &y)?;
                    drawn.borrow_mut()[k] = out.stats.outcomes.len() - out.stats.skipped();
                    out.images
                }
                None => x.shallow_clone(),
            };
            let loss = model.forward(&inputs).cross_entropy_for_logits(&y);
            opt.borrow_mut().backward_step(&loss);
            sync();
            Ok(())
        };
        let step = &step;
        let mut plain = || step(None);
        let mut runs: Vec<Box<dyn FnMut() -> Result<()> + '_>> = settings
            .iter()
            .enumerate()
            .map(|(k, (_, g))| Box::new(move || step(Some((k, g)))) as Box<dyn FnMut() -> Result<()>>)
            .collect();
        let mut fs: Vec<&mut dyn FnMut() -> Result<()>> = vec![&mut plain];
        fs.extend(runs.iter_mut().map(|f| f.as_mut() as &mut dyn FnMut() -> Result<()>));
        let t = time_interleaved(a.reps, &mut fs)?;
        drop(runs);
        println!("| {arch} | plain step | - | - | {:.3} | 1.00 | 1.00 | - |", t[0]);
        for (k, ((label, g), secs)) in settings.iter().zip(&t[1..]).enumerate() {
            let (sh, sw) = g.score_dims(s, s);
            let r = (sh * sw) as f64 / (s * s) as f64;
            let q = drawn.borrow()[k] as f64 / a.batch as f64;
            let bound = 1.0 + q * (1.0 + (g.groups + 1) as f64 * r) / 3.0;
            let ratio = secs / t[0];
            println!(
                "| {arch} | {label} | {sh} | {} (q {q:.2}) | {secs:.3} | {ratio:.2} | {bound:.2} | {:.2} |",
                g.probability,
                ratio / bound
            );
        }
    }
    Ok(())
}
