//! Commands: each file parses its arguments into library types, calls one library function and
//! prints or writes what it returns.

mod ab;
mod augment;
mod bench;
mod doctor;
mod eval;
mod explain;
mod finetune;
mod predict;
mod sanity;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tch::Device;

use groupcam::choice;
use groupcam::models::{Arch, HeadSpec, Model};

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
    Predict(predict::PredictArgs),
    /// Group-CAM saliency maps: an overlay PNG and the raw map (.npy) per image.
    Explain(explain::ExplainArgs),
    /// Insertion/deletion and pointing game of saliency methods (paper Sec. 4).
    Eval(eval::EvalArgs),
    /// Sanity checks (Adebayo et al.): maps of randomised models against the trained model's.
    Sanity(sanity::SanityArgs),
    /// The Group-CAM augmentation of images for their labels: augmented images and masks as PNGs.
    Augment(augment::AugmentArgs),
    /// Fine-tune a classifier with the Group-CAM augmentation (paper Sec. 5) from a YAML config.
    Finetune(finetune::FinetuneArgs),
    /// Make a small labelled ImageFolder dataset of shapes with COCO boxes.
    Synth(finetune::SynthArgs),
    /// Print a run's report, with a control run beside it.
    Report(finetune::ReportArgs),
    /// A controlled A/B: fine-tuning arms x seeds from one starting point, with paired differences.
    Ab(ab::AbArgs),
    /// Benchmarks (figures for BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// The model arguments shared by the commands that load one.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Architecture (default: read from --weights when it is a TorchScript archive).
    #[arg(long, value_parser = choice::parser::<Arch>())]
    pub arch: Option<Arch>,
    /// Weights: a torchvision .pth/.pt state dict, .safetensors or tch .ot; or a TorchScript
    /// archive exporting features(x) and head(a) (README, "Any model through TorchScript").
    #[arg(long)]
    pub weights: PathBuf,
    /// Input size in pixels; images of exactly this size are used as they are (default: the
    /// TorchScript module's input_size attribute, else 224).
    #[arg(long)]
    pub input_size: Option<u32>,
}

impl ModelArgs {
    /// The model and the input size to feed it.
    pub fn load(&self, device: Device) -> Result<(Model, u32)> {
        self.load_with(device, HeadSpec::default())
    }

    /// `load`, with the classifier replaced as `head` says (`Model::load_with`).
    pub fn load_with(&self, device: Device, head: HeadSpec) -> Result<(Model, u32)> {
        let arch = match self.arch.or_else(|| Arch::detect(&self.weights)) {
            Some(a) => a,
            None => bail!(
                "--arch is needed: --weights {} is not a TorchScript archive, and a state dict does not name \
                 its architecture",
                self.weights.display()
            ),
        };
        let model = Model::load_with(arch, &self.weights, device, head)?;
        let size = model.input_size(self.input_size);
        if arch == Arch::TorchScript {
            // On stderr: stdout may be JSON (predict --json).
            let prep = model.preprocessing();
            let from = match (self.input_size, prep.input_size) {
                (Some(_), _) => "--input-size",
                (None, Some(_)) => "the module's input_size attribute",
                (None, None) => "the default; the module has no input_size attribute",
            };
            eprintln!("{}; input size {size} ({from})", prep.describe());
            if let Some(m) = prep.input_size.filter(|&m| self.input_size.is_some_and(|r| r as i64 != m)) {
                eprintln!("note: the module was exported for input size {m}; a ViT accepts only its own");
            }
        }
        Ok((model, size))
    }
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let device = groupcam::parse_device(&cli.device).context("--device")?;
    match cli.command {
        Command::Doctor => doctor::run(),
        Command::Predict(a) => predict::run(a, device),
        Command::Explain(a) => explain::run(a, device),
        Command::Eval(a) => eval::run(a, device),
        Command::Sanity(a) => sanity::run(a, device),
        Command::Augment(a) => augment::run(a, device),
        Command::Finetune(a) => finetune::finetune(a),
        Command::Synth(a) => finetune::synth(a),
        Command::Report(a) => finetune::report(a),
        Command::Ab(a) => ab::run(a),
        Command::Bench(b) => bench::run(b, device),
    }
}
