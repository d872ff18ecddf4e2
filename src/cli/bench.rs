//! `groupcam bench ...`: argument parsing for the library benchmarks in `groupcam::bench`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use tch::Device;

use groupcam::bench;
use groupcam::cam::Method;
use groupcam::choice;
use groupcam::eval::insdel::Preset;
use groupcam::models::Arch;
use groupcam::outputs::Io;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Explain time against its own parts (one forward+backward, one (G+1)-image scoring forward).
    Explain(ExplainArgs),
    /// An augmented training step against a plain one, faithful and fast settings.
    Augment(AugmentArgs),
    /// The loader's images/s per worker and the trainer's step against a bare step.
    Train(TrainArgs),
    /// The training loader's new path against the former one and torchvision's, img/s per worker.
    Loader(LoaderArgs),
    /// Time per image of each saliency method on the same model and threads.
    Methods(MethodsArgs),
    /// Batched insertion/deletion curves against one forward per step.
    Insdel(InsdelArgs),
    /// The data-parallel gradient all-reduce (CPU ranks over Gloo) against the training step.
    Dist(DistArgs),
    /// A scripted ResNet-50 against the built-in one: forward, explain, scoring lanes, training step.
    Torchscript(TorchScriptArgs),
    /// The saliency cache's masks against fresh masks of the crops (IoU per crop-scale band).
    Cache(CacheArgs),
}

#[derive(Args)]
pub struct CacheArgs {
    /// Architecture of the model whose maps are compared.
    #[arg(long, default_value = "efficientnet-lite0", value_parser = choice::parser::<Arch>())]
    arch: Arch,
    /// Its trained weights (random weights give maps that say nothing).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Real photos (their maps are what is compared).
    #[arg(long, num_args = 1..)]
    images: Vec<PathBuf>,
    /// RandomResizedCrops per photo.
    #[arg(long, default_value_t = 50)]
    crops: usize,
    /// Cache sides to compare.
    #[arg(long, value_delimiter = ',', default_value = "56,224")]
    sides: Vec<u32>,
    /// The crops' and the whole image's side (data.input_size).
    #[arg(long, default_value_t = 224)]
    input_size: u32,
    /// G of the augmentation's maps.
    #[arg(long, default_value_t = 16)]
    groups: i64,
    /// Seed of the crop boxes and their 2 px moves.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct DistArgs {
    /// Architecture whose gradients are averaged (resnet50: 25.6 M floats).
    #[arg(long, default_value = "resnet50", value_parser = choice::parser::<Arch>())]
    arch: Arch,
    /// Rank 0's step batch (one rank's share of the global batch).
    #[arg(long, default_value_t = 8)]
    batch: i64,
    #[arg(long, default_value_t = 224)]
    size: i64,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Ranks (threads of this process, over Gloo on 127.0.0.1).
    #[arg(long, default_value_t = 2)]
    world: usize,
    /// Gradient bucket size in MB (DDP's default).
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
}

#[derive(Args)]
pub struct TorchScriptArgs {
    /// A TorchScript archive of a torchvision ResNet-50 (README: export_cnn(resnet50(), path)).
    #[arg(long)]
    archive: PathBuf,
    /// Images per forward and per training step.
    #[arg(long, default_value_t = 8)]
    batch: i64,
    #[arg(long, default_value_t = 32)]
    groups: i64,
    /// Timed repetitions after one warm-up, interleaved across the rows.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
}

#[derive(Args)]
pub struct ExplainArgs {
    /// Architectures to measure.
    #[arg(long, value_delimiter = ',', default_value = "resnet50,efficientnet-lite0", value_parser = choice::parser::<Arch>())]
    arch: Vec<Arch>,
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

#[derive(Args)]
pub struct AugmentArgs {
    /// Architectures to measure (random weights: the cost does not depend on them).
    #[arg(long, value_delimiter = ',', default_value = "resnet18,resnet50", value_parser = choice::parser::<Arch>())]
    arch: Vec<Arch>,
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
    /// The cached setting's map side (augment.cache_size).
    #[arg(long, default_value_t = 56)]
    cache_size: u32,
    /// Timed repetitions after one warm-up, interleaved across the settings.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Architecture of the step measurement.
    #[arg(long, default_value = "resnet50", value_parser = choice::parser::<Arch>())]
    arch: Arch,
    #[arg(long, default_value_t = 16)]
    batch: i64,
    #[arg(long, default_value_t = 224)]
    size: i64,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Loader worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Synthetic training images (320 x 320 PNG) decoded per loader measurement.
    #[arg(long, default_value_t = 96)]
    images: usize,
    /// The trainer's step with fp16 autocast and loss scaling, as `train.amp` does (CUDA).
    #[arg(long)]
    amp: bool,
}

#[derive(Args)]
pub struct LoaderArgs {
    /// An ImageFolder (class sub-folders) to read (default: ImageNet-like JPEGs made from --photos).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Photos the generated JPEGs are cut from.
    #[arg(long, value_delimiter = ',', default_value = "tests/data/coffee.png,tests/data/chelsea.png")]
    photos: Vec<PathBuf>,
    /// JPEGs to generate (without --data).
    #[arg(long, default_value_t = 256)]
    images: usize,
    /// Worker counts to measure (threads here, DataLoader processes on the torchvision side).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Timed repetitions after one warm-up, interleaved across the paths.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Python with torch and torchvision for the torchvision side (default: .venv/bin/python if
    /// it exists; without one that side is skipped).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The torchvision side's script.
    #[arg(long, default_value = "scripts/loader_torchvision.py")]
    script: PathBuf,
    /// Skip the torchvision side.
    #[arg(long)]
    no_torchvision: bool,
    /// Write the first crops of both paths and their boxes here (for the script's `compare`).
    #[arg(long)]
    dump: Option<PathBuf>,
}

#[derive(Args)]
pub struct MethodsArgs {
    #[arg(long, default_value = "efficientnet-lite0", value_parser = choice::parser::<Arch>())]
    arch: Arch,
    /// Weights (default: random; Score-CAM's time depends on them through its skipped constant channels).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "groupcam,gradcam,gradcampp,scorecam,rise",
        value_parser = choice::parser::<Method>())]
    methods: Vec<Method>,
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

#[derive(Args)]
pub struct InsdelArgs {
    #[arg(long, default_value = "efficientnet-lite0", value_parser = choice::parser::<Arch>())]
    arch: Arch,
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long, default_value = "groupcam", value_parser = choice::parser::<Preset>())]
    preset: Preset,
    /// Images per forward of the lanes variant (default: the model's).
    #[arg(long)]
    chunk: Option<i64>,
    /// Lanes of the lanes variant (default: the model's).
    #[arg(long)]
    lanes: Option<usize>,
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

pub fn run(cmd: BenchCommand, device: Device) -> Result<()> {
    let report = match cmd {
        BenchCommand::Explain(a) => bench::explain::run(
            &bench::explain::ExplainBench {
                archs: a.arch,
                weights: a.weights,
                groups: a.groups,
                input_size: a.input_size,
                reps: a.reps,
            },
            device,
        )?,
        BenchCommand::Augment(a) => {
            if let Some(t) = a.threads {
                tch::set_num_threads(t);
            }
            bench::augment::run(
                &bench::augment::AugmentBench {
                    archs: a.arch,
                    batch: a.batch,
                    groups: a.groups,
                    input_size: a.input_size,
                    fast_score_size: a.fast_score_size,
                    fast_probability: a.fast_probability,
                    cache_size: a.cache_size,
                    reps: a.reps,
                },
                device,
            )?
        }
        BenchCommand::Train(a) => bench::train::run(
            &bench::train::TrainBench {
                arch: a.arch,
                batch: a.batch,
                size: a.size,
                reps: a.reps,
                workers: a.workers,
                images: a.images,
                amp: a.amp,
            },
            device,
        )?,
        BenchCommand::Loader(a) => {
            let io = Io::new().input("--data", &a.data).input("--photos", &a.photos).input("--script", [&a.script]);
            io.input("--python", &a.python).dir("--dump", &a.dump).check()?;
            let python = a.python.or_else(|| Some(PathBuf::from(".venv/bin/python")).filter(|p| p.exists()));
            let torchvision = match python {
                Some(python) if !a.no_torchvision => {
                    if !a.script.exists() {
                        anyhow::bail!(
                            "torchvision script {} not found (run from the repository root, or --script)",
                            a.script.display()
                        );
                    }
                    Some(bench::loader::Torchvision { python, script: a.script })
                }
                _ => None,
            };
            bench::loader::run(&bench::loader::LoaderBench {
                data: a.data,
                photos: a.photos,
                images: a.images,
                workers: a.workers,
                batch: a.batch,
                size: a.size,
                reps: a.reps,
                torchvision,
                dump: a.dump,
            })?
        }
        BenchCommand::Methods(a) => bench::methods::run(
            &bench::methods::MethodsBench {
                arch: a.arch,
                weights: a.weights,
                methods: a.methods,
                image: a.image,
                input_size: a.input_size,
                rise_masks: a.rise_masks,
                reps: a.reps,
            },
            device,
        )?,
        BenchCommand::Insdel(a) => bench::insdel::run(
            &bench::insdel::InsdelBench {
                arch: a.arch,
                weights: a.weights,
                image: a.image,
                preset: a.preset,
                chunk: a.chunk,
                lanes: a.lanes,
                reps: a.reps,
            },
            device,
        )?,
        BenchCommand::Dist(a) => {
            if device != Device::Cpu {
                anyhow::bail!("bench dist measures CPU ranks over Gloo: run it with --device cpu");
            }
            bench::dist::run(&bench::dist::DistBench {
                arch: a.arch,
                batch: a.batch,
                size: a.size,
                reps: a.reps,
                world: a.world,
                bucket_mb: a.bucket_mb,
            })?
        }
        BenchCommand::Torchscript(a) => {
            if let Some(t) = a.threads {
                tch::set_num_threads(t);
            }
            bench::torchscript::run(
                &bench::torchscript::TorchScriptBench {
                    archive: a.archive,
                    batch: a.batch,
                    groups: a.groups,
                    reps: a.reps,
                },
                device,
            )?
        }
        BenchCommand::Cache(a) => bench::cache::run(
            &bench::cache::CacheBench {
                arch: a.arch,
                weights: a.weights,
                images: a.images,
                crops: a.crops,
                sides: a.sides,
                input_size: a.input_size,
                groups: a.groups,
                seed: a.seed,
            },
            device,
        )?,
    };
    print!("{report}");
    Ok(())
}
