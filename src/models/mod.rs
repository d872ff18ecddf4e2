//! Classifiers as the CAM code sees them: `features(x) -> A` (the target layer's activations)
//! and `head(A) -> logits`. Nothing outside this module knows an architecture.

pub mod efficientnet_lite;
pub mod resnet;
pub mod vgg;
pub mod weights;

use std::cell::Cell;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Result, bail};
use tch::{Device, Tensor, nn};

/// What the CAM code needs from a classifier.
pub trait CamModel {
    /// Activations of the target layer for a normalised N x 3 x H x W batch.
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor;
    /// Logits from target-layer activations.
    fn head_t(&self, a: &Tensor, train: bool) -> Tensor;
    /// The mode `features`/`head`/`forward` use (BatchNorm statistics, dropout).
    fn training(&self) -> bool;
    fn set_training(&self, on: bool);
    /// The per-channel normalisation that turns [0, 1] RGB into this model's input.
    fn input_norm(&self) -> Normalization;
    fn num_classes(&self) -> i64;
    /// K, the channel count of the target layer.
    fn target_channels(&self) -> i64;
    fn device(&self) -> Device;

    fn features(&self, x: &Tensor) -> Tensor {
        self.features_t(x, self.training())
    }
    fn head(&self, a: &Tensor) -> Tensor {
        self.head_t(a, self.training())
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        self.head(&self.features(x))
    }
    /// Inference logits, whatever the mode.
    fn logits_eval(&self, x: &Tensor) -> Tensor {
        self.head_t(&self.features_t(x, false), false)
    }
    /// The model as one whose `logits_eval` may run on several threads at once, if it is one;
    /// the CPU scoring lanes (`cam::Batching`) need it.
    fn concurrent(&self) -> Option<&dyn ConcurrentEval> {
        None
    }
}

/// A model whose `logits_eval` may run on several threads at the same time.
///
/// # Safety
/// `logits_eval` must write no state: no interior mutability on the Rust side and no in-place
/// update of a tensor (reads of the same tensors from several threads are safe in libtorch).
pub unsafe trait ConcurrentEval: CamModel {}

/// x_norm = (x - mean) / std per RGB channel, x in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Normalization {
    pub const IMAGENET: Normalization = Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    /// (x*255 - 127) / 128, the TF EfficientNet-Lite preprocessing.
    pub const TF_LITE: Normalization = Normalization { mean: [127.0 / 255.0; 3], std: [128.0 / 255.0; 3] };

    pub fn apply(&self, x: &Tensor) -> Tensor {
        let (mean, std) = self.tensors(x);
        (x - mean) / std
    }

    pub fn invert(&self, x: &Tensor) -> Tensor {
        let (mean, std) = self.tensors(x);
        x * std + mean
    }

    fn tensors(&self, x: &Tensor) -> (Tensor, Tensor) {
        let t = |v: &[f64; 3]| Tensor::from_slice(v).view([1, 3, 1, 1]).to_kind(x.kind()).to_device(x.device());
        (t(&self.mean), t(&self.std))
    }
}

/// The architectures the crate builds, with torchvision's (or efficientnet-pytorch's) names.
/// Each has one entry in [`Arch::spec`]: adding an architecture is a variant, its entry and
/// its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
    Vgg16,
    Vgg19,
    EfficientNetLite0,
}

/// What the crate knows of an architecture (timm's per-model `_cfg`).
pub struct ArchSpec {
    pub name: &'static str,
    /// Builds the network under `root` with `classes` outputs.
    pub build: fn(&nn::Path, i64) -> Box<dyn Backbone>,
    /// The preprocessing its weights expect.
    pub norm: Normalization,
    /// The classifier's weight in a state dict (its rows are the classes).
    pub classifier: &'static str,
}

impl Arch {
    pub const ALL: [Arch; 8] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::Vgg16,
        Arch::Vgg19,
        Arch::EfficientNetLite0,
    ];

    pub fn spec(self) -> ArchSpec {
        use efficientnet_lite::EfficientNetLite;
        use resnet::ResNet;
        use vgg::Vgg;
        let (name, build, norm, classifier): (_, fn(&nn::Path, i64) -> Box<dyn Backbone>, _, _) = match self {
            Arch::Resnet18 => (
                "resnet18",
                |p, c| Box::new(ResNet::new(p, resnet::Config::resnet18(), c)),
                Normalization::IMAGENET,
                "fc.weight",
            ),
            Arch::Resnet34 => (
                "resnet34",
                |p, c| Box::new(ResNet::new(p, resnet::Config::resnet34(), c)),
                Normalization::IMAGENET,
                "fc.weight",
            ),
            Arch::Resnet50 => (
                "resnet50",
                |p, c| Box::new(ResNet::new(p, resnet::Config::resnet50(), c)),
                Normalization::IMAGENET,
                "fc.weight",
            ),
            Arch::Resnet101 => (
                "resnet101",
                |p, c| Box::new(ResNet::new(p, resnet::Config::resnet101(), c)),
                Normalization::IMAGENET,
                "fc.weight",
            ),
            Arch::Resnet152 => (
                "resnet152",
                |p, c| Box::new(ResNet::new(p, resnet::Config::resnet152(), c)),
                Normalization::IMAGENET,
                "fc.weight",
            ),
            Arch::Vgg16 => (
                "vgg16",
                |p, c| Box::new(Vgg::new(p, vgg::Config::vgg16(), c)),
                Normalization::IMAGENET,
                "classifier.6.weight",
            ),
            Arch::Vgg19 => (
                "vgg19",
                |p, c| Box::new(Vgg::new(p, vgg::Config::vgg19(), c)),
                Normalization::IMAGENET,
                "classifier.6.weight",
            ),
            Arch::EfficientNetLite0 => (
                "efficientnet-lite0",
                |p, c| Box::new(EfficientNetLite::new(p, efficientnet_lite::Config::lite0(), c)),
                Normalization::TF_LITE,
                "_fc.weight",
            ),
        };
        ArchSpec { name, build, norm, classifier }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn input_norm(self) -> Normalization {
        self.spec().norm
    }
}

crate::choice!(Arch);

impl FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        for a in Arch::ALL {
            if a.name() == norm || a.name().replace('-', "") == norm.replace('-', "") {
                return Ok(a);
            }
        }
        let names: Vec<_> = Arch::ALL.iter().map(|a| a.name()).collect();
        bail!("unknown architecture '{s}'; expected one of {}", names.join(", "))
    }
}

/// The split of a network at its target layer.
pub trait Backbone: Send {
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor;
    fn head_t(&self, a: &Tensor, train: bool) -> Tensor;
    fn target_channels(&self) -> i64;
    /// The network's layers with parameters, input to output: the units the sanity checks
    /// randomise (a conv with its BatchNorm, a residual or MBConv block, a linear layer).
    fn layers(&self) -> Vec<Layer>;
}

/// A unit of a network: its name and the state-dict prefixes of its variables (each ends with '.').
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    pub prefixes: Vec<String>,
}

impl Layer {
    /// A unit whose variables all live under `name.`.
    pub fn at(name: impl Into<String>) -> Layer {
        let name = name.into();
        Layer { prefixes: vec![format!("{name}.")], name }
    }

    /// A unit made of several modules (a conv and its BatchNorm), named after the first.
    pub fn of(modules: &[&str]) -> Layer {
        Layer { name: modules[0].to_string(), prefixes: modules.iter().map(|m| format!("{m}.")).collect() }
    }

    pub fn owns(&self, var: &str) -> bool {
        self.prefixes.iter().any(|p| var.starts_with(p.as_str()))
    }
}

/// A classifier with its variables, its architecture and its mode.
pub struct Model {
    pub arch: Arch,
    pub vs: nn::VarStore,
    net: Box<dyn Backbone>,
    classes: i64,
    training: Cell<bool>,
}

impl Model {
    /// A randomly initialised model (PyTorch's default initialisers as tch implements them).
    pub fn new(arch: Arch, num_classes: i64, device: Device) -> Model {
        let vs = nn::VarStore::new(device);
        let net = (arch.spec().build)(&vs.root(), num_classes);
        Model { arch, vs, net, classes: num_classes, training: Cell::new(false) }
    }

    /// Builds the architecture and loads weights from a torchvision `.pth`/`.pt` state dict,
    /// a `.safetensors` or a tch `.ot` file; the class count is read from the file.
    pub fn load(arch: Arch, path: &Path, device: Device) -> Result<Model> {
        let tensors = weights::read(path)?;
        let classes = weights::classifier_classes(arch, &tensors, path)?;
        let mut model = Model::new(arch, classes, device);
        weights::assign(&mut model.vs, tensors, path, arch)?;
        Ok(model)
    }

    /// The layers with parameters, input to output (see `Backbone::layers`).
    pub fn layers(&self) -> Vec<Layer> {
        self.net.layers()
    }
}

impl CamModel for Model {
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.net.features_t(x, train)
    }
    fn head_t(&self, a: &Tensor, train: bool) -> Tensor {
        self.net.head_t(a, train)
    }
    fn training(&self) -> bool {
        self.training.get()
    }
    fn set_training(&self, on: bool) {
        self.training.set(on)
    }
    fn input_norm(&self) -> Normalization {
        self.arch.input_norm()
    }
    fn num_classes(&self) -> i64 {
        self.classes
    }
    fn target_channels(&self) -> i64 {
        self.net.target_channels()
    }
    fn device(&self) -> Device {
        self.vs.device()
    }
    fn concurrent(&self) -> Option<&dyn ConcurrentEval> {
        Some(self)
    }
}

// SAFETY: an eval-mode forward of these networks reads their parameters and BatchNorm
// statistics and writes nothing (the mode flag is not touched by `logits_eval`).
unsafe impl ConcurrentEval for Model {}
