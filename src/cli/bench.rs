//! `groupcam bench ...`: each benchmark's library struct is its own clap `Args` (`groupcam::bench`).

use anyhow::Result;
use clap::Subcommand;
use tch::Device;

use groupcam::bench::{augment, cache, dist, explain, insdel, loader, methods, torchscript, train};
use groupcam::outputs::Io;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Explain time against its own parts (one forward+backward, one (G+1)-image scoring forward).
    Explain(explain::ExplainBench),
    /// An augmented training step against a plain one, faithful and fast settings.
    Augment(augment::AugmentBench),
    /// The loader's images/s per worker and the trainer's step against a bare step.
    Train(train::TrainBench),
    /// The training loader's new path against the former one and torchvision's, img/s per worker.
    Loader(loader::LoaderBench),
    /// Time per image of each saliency method on the same model and threads.
    Methods(methods::MethodsBench),
    /// Batched insertion/deletion curves against one forward per step.
    Insdel(insdel::InsdelBench),
    /// The data-parallel gradient all-reduce (CPU ranks over Gloo) against the training step.
    Dist(dist::DistBench),
    /// A scripted ResNet-50 against the built-in one: forward, explain, scoring lanes, training step.
    Torchscript(torchscript::TorchScriptBench),
    /// The saliency cache's masks against fresh masks of the crops (IoU per crop-scale band).
    Cache(cache::CacheBench),
}

pub fn run(cmd: BenchCommand, device: Device) -> Result<()> {
    let report = match cmd {
        BenchCommand::Explain(b) => explain::run(&b, device)?,
        BenchCommand::Augment(b) => augment::run(&b, device)?,
        BenchCommand::Train(b) => train::run(&b, device)?,
        BenchCommand::Loader(b) => {
            let io = Io::new().input("--data", &b.data).input("--photos", &b.photos).input("--script", [&b.script]);
            io.input("--python", &b.python).dir("--dump", &b.dump).check()?;
            loader::run(&b)?
        }
        BenchCommand::Methods(b) => methods::run(&b, device)?,
        BenchCommand::Insdel(b) => insdel::run(&b, device)?,
        BenchCommand::Dist(b) => {
            if device != Device::Cpu {
                anyhow::bail!("bench dist measures CPU ranks over Gloo: run it with --device cpu");
            }
            dist::run(&b)?
        }
        BenchCommand::Torchscript(b) => torchscript::run(&b, device)?,
        BenchCommand::Cache(b) => cache::run(&b, device)?,
    };
    print!("{report}");
    Ok(())
}
