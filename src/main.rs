//! The `groupcam` command line: a thin shell over the library.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tch::{Device, Tensor};

use groupcam::cam::{GroupCam, Variant};
use groupcam::models::{Arch, CamModel, Model};
use groupcam::{imageio, predict};

mod cli_augment;
mod cli_eval;
mod cli_sanity;
mod cli_train;

#[derive(Parser)]
#[command(name = "groupcam", version, about = "Group-CAM saliency maps, metrics and augmentation on libtorch")]
struct Cli {
    /// Device: auto (CUDA when libtorch sees a GPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the libtorch version, CUDA availability, device count and CPU threads.
    Doctor,
    /// Top-k ImageNet classes of images.
    Predict(PredictArgs),
    /// Group-CAM saliency maps: an overlay PNG and the raw map (.npy) per image.
    Explain(ExplainArgs),
    /// Insertion/deletion and pointing game of saliency methods (paper Sec. 4).
    Eval(cli_eval::EvalArgs),
    /// Sanity checks (Adebayo et al.): maps of randomised models against the trained model's.
    Sanity(cli_sanity::SanityArgs),
    /// The Group-CAM augmentation of images for their labels: augmented images and masks as PNGs.
    Augment(cli_augment::AugmentArgs),
    /// Fine-tune a classifier with the Group-CAM augmentation (paper Sec. 5) from a YAML config.
    Finetune(cli_train::FinetuneArgs),
    /// Make a small labelled ImageFolder dataset of shapes with COCO boxes.
    Synth(cli_train::SynthArgs),
    /// Print a run's report, with a control run beside it.
    Report(cli_train::ReportArgs),
    /// Benchmarks (figures for BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Architecture: resnet18/34/50/101/152, vgg16, vgg19, efficientnet-lite0.
    #[arg(long)]
    arch: String,
    /// Weights: a torchvision .pth/.pt state dict, .safetensors or tch .ot.
    #[arg(long)]
    weights: PathBuf,
    /// Input size in pixels; images of exactly this size are used as they are.
    #[arg(long, default_value_t = 224)]
    input_size: u32,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files (JPEG or PNG).
    #[arg(long, num_args = 1.., required = true)]
    image: Vec<PathBuf>,
    /// How many classes to list per image.
    #[arg(long, default_value_t = 5)]
    topk: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files (JPEG or PNG).
    #[arg(long, num_args = 1.., required = true)]
    image: Vec<PathBuf>,
    /// Class to explain for every image (default: each image's top-1).
    #[arg(long)]
    class: Option<i64>,
    /// Number of channel groups G.
    #[arg(long, default_value_t = 32)]
    groups: i64,
    /// De-noise percentile theta (paper Eq. 3; the paper uses 70). Off by default, as in the official code.
    #[arg(long)]
    denoise: Option<f64>,
    /// official (the authors' code) or paper (Eq. 6-7).
    #[arg(long, default_value = "official")]
    variant: String,
    /// Images per scoring forward (default: 2 per lane on a multi-threaded CPU, 64 on CUDA).
    #[arg(long)]
    chunk: Option<i64>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Explain time against its own parts (one forward+backward, one (G+1)-image scoring forward).
    Explain(BenchExplainArgs),
    /// An augmented training step against a plain one, faithful and fast settings.
    Augment(cli_augment::BenchAugmentArgs),
    /// The loader's images/s per worker and the trainer's step against a bare step.
    Train(cli_train::BenchTrainArgs),
    /// Time per image of each saliency method on the same model and threads.
    Methods(cli_eval::BenchMethodsArgs),
    /// Batched insertion/deletion curves against one forward per step.
    Insdel(cli_eval::BenchInsdelArgs),
}

#[derive(Args)]
struct BenchExplainArgs {
    /// Architectures to measure.
    #[arg(long, value_delimiter = ',', default_value = "resnet50,efficientnet-lite0")]
    arch: Vec<String>,
    /// Weights for a single --arch (default: random weights; timing does not depend on them).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    groups: i64,
    #[arg(long, default_value_t = 224)]
    input_size: i64,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let device = groupcam::parse_device(&cli.device).context("--device")?;
    match cli.command {
        Command::Doctor => doctor(),
        Command::Augment(a) => cli_augment::augment(a, device),
        Command::Finetune(a) => cli_train::finetune(a),
        Command::Synth(a) => cli_train::synth(a),
        Command::Report(a) => cli_train::report(a),
        Command::Predict(a) => predict_cmd(a, device),
        Command::Explain(a) => explain_cmd(a, device),
        Command::Eval(a) => cli_eval::eval(a, device),
        Command::Sanity(a) => cli_sanity::sanity_cmd(a, device),
        Command::Bench(BenchCommand::Explain(a)) => bench_explain(a, device),
        Command::Bench(BenchCommand::Augment(a)) => cli_augment::bench(a, device),
        Command::Bench(BenchCommand::Train(a)) => cli_train::bench_train(a, device),
        Command::Bench(BenchCommand::Methods(a)) => cli_eval::bench_methods(a, device),
        Command::Bench(BenchCommand::Insdel(a)) => cli_eval::bench_insdel(a, device),
    }
}

fn doctor() -> Result<()> {
    let version = option_env!("GROUPCAM_LIBTORCH_VERSION").unwrap_or("unknown");
    println!("groupcam {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch {version}");
    println!("cuda available: {}", tch::Cuda::is_available());
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    println!("cuda devices: {}", tch::Cuda::device_count());
    println!("cpu threads: {}", tch::get_num_threads());
    Ok(())
}

fn load_model(a: &ModelArgs, device: Device) -> Result<Model> {
    let arch: Arch = a.arch.parse()?;
    Model::load(arch, &a.weights, device)
}

fn predict_cmd(a: PredictArgs, device: Device) -> Result<()> {
    let model = load_model(&a.model, device)?;
    let (x, _) = imageio::load_batch(&a.image, a.model.input_size, &model.input_norm())?;
    let preds = predict::topk(&model, &x.to_device(device), a.topk)?;
    if a.json {
        let out: Vec<_> = a
            .image
            .iter()
            .zip(&preds)
            .map(|(p, v)| serde_json::json!({ "image": p.display().to_string(), "top": v }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (p, v) in a.image.iter().zip(&preds) {
            println!("{}", p.display());
            for pr in v {
                println!("  {:>4}  {:>7.3}%  {}", pr.class, pr.probability * 100.0, pr.name);
            }
        }
    }
    Ok(())
}

fn explain_cmd(a: ExplainArgs, device: Device) -> Result<()> {
    let model = load_model(&a.model, device)?;
    let variant: Variant = a.variant.parse()?;
    let cam = GroupCam { groups: a.groups, denoise: a.denoise, variant, chunk: a.chunk, ..Default::default() };
    // Everything is decoded and computed before the first file is written: a bad input leaves no partial output.
    let (x, photos) = imageio::load_batch(&a.image, a.model.input_size, &model.input_norm())?;
    let classes = a.class.map(|c| vec![c; a.image.len()]);
    let exp = cam.explain(&model, &x.to_device(device), classes.as_deref())?;
    let maps = exp.maps.to_device(Device::Cpu);
    let mut outputs = Vec::new();
    for (i, path) in a.image.iter().enumerate() {
        let stem = unique_stem(path, i, &a.image);
        let overlay = imageio::overlay(&photos.get(i as i64), &maps.get(i as i64))?;
        outputs.push((stem, overlay, maps.get(i as i64)));
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    for (i, (stem, overlay, map)) in outputs.into_iter().enumerate() {
        let png = a.out.join(format!("{stem}.png"));
        overlay.save(&png).with_context(|| format!("cannot write {}", png.display()))?;
        imageio::write_npy(&map, &a.out.join(format!("{stem}.npy")))?;
        let note = if exp.constant[i] { " (constant map)" } else { "" };
        println!(
            "{} -> {} class {} ({}){note}",
            a.image[i].display(),
            png.display(),
            exp.classes[i],
            groupcam::imagenet::class_name(exp.classes[i])
        );
    }
    Ok(())
}

/// The file stem, made unique when two inputs share it.
fn unique_stem(path: &Path, i: usize, all: &[PathBuf]) -> String {
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let s = stem(path);
    if all.iter().filter(|p| stem(p) == s).count() > 1 { format!("{s}-{i}") } else { s }
}

/// Medians of `reps` interleaved timings of each closure, after one warm-up of each:
/// interleaving spreads the machine's noise evenly over what is compared.
fn time_interleaved(reps: usize, fs: &mut [&mut dyn FnMut() -> Result<()>]) -> Result<Vec<f64>> {
    let mut times = vec![Vec::new(); fs.len()];
    for rep in 0..=reps.max(1) {
        for (f, t) in fs.iter_mut().zip(times.iter_mut()) {
            let s = Instant::now();
            f()?;
            if rep > 0 {
                t.push(s.elapsed().as_secs_f64());
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

fn bench_explain(a: BenchExplainArgs, device: Device) -> Result<()> {
    println!("| arch | G | explain (s) | fwd+bwd (s) | (G+1)-image fwd (s) | parts (s) | explain / parts |");
    println!("|---|---|---|---|---|---|---|");
    for name in &a.arch {
        let arch: Arch = name.parse()?;
        let model = match &a.weights {
            Some(w) => Model::load(arch, w, device)?,
            None => Model::new(arch, 1000, device),
        };
        let s = a.input_size;
        let x = Tensor::rand([1, 3, s, s], (tch::Kind::Float, device));
        let cam = GroupCam { groups: a.groups, ..Default::default() };
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        // The bare scoring forwards, batched as the explainer batches them.
        let groups = x.repeat([a.groups + 1, 1, 1, 1]);
        let batching = groupcam::cam::Batching::default_for(&model);
        let cls = Tensor::zeros([a.groups + 1], (tch::Kind::Int64, device));
        let t = time_interleaved(
            a.reps,
            &mut [
                &mut || {
                    cam.explain(&model, &x, None)?;
                    sync();
                    Ok(())
                },
                &mut || {
                    groupcam::cam::activations(&model, &x, None, true)?;
                    sync();
                    Ok(())
                },
                &mut || {
                    let _ = groupcam::cam::score_batched(&model, a.groups + 1, batching, &cls, &|s, l| {
                        groups.narrow(0, s, l)
                    });
                    sync();
                    Ok(())
                },
            ],
        )?;
        let (explain, fwd_bwd, score) = (t[0], t[1], t[2]);
        let parts = fwd_bwd + score;
        println!(
            "| {arch} | {} | {explain:.3} | {fwd_bwd:.3} | {score:.3} | {parts:.3} | {:.3} |",
            a.groups,
            explain / parts
        );
    }
    Ok(())
}
