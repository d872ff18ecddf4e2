//! Classifiers as the CAM code sees them: `features(x) -> A` (the target layer's activations)
//! and `head(A) -> logits`. Nothing outside this module knows an architecture.

pub mod efficientnet_lite;
pub mod head;
pub mod resnet;
pub mod torchscript;
pub mod vgg;
pub mod weights;

pub use torchscript::{HeadSpec, Preprocessing};

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

/// The architectures the crate builds, with torchvision's (or efficientnet-pytorch's) names,
/// and `TorchScript`. Each built one has one entry in [`Arch::spec`]: adding an architecture is
/// a variant, its entry and its file.
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
    /// Any classifier exported as a TorchScript archive (`torchscript.rs`); not in `ALL` and
    /// without an [`ArchSpec`], as it is loaded from its archive rather than built.
    TorchScript,
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

    /// The built architecture's entry; `None` for `TorchScript`, whose network, preprocessing
    /// and classifier come from its archive.
    pub fn spec(self) -> Option<ArchSpec> {
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
            Arch::TorchScript => return None,
        };
        Some(ArchSpec { name, build, norm, classifier })
    }

    pub fn name(self) -> &'static str {
        self.spec().map_or("torchscript", |s| s.name)
    }

    /// Its classifier's weight in a state dict; none for `TorchScript` (the archive names its
    /// own, `torchscript.rs`), so that no key matches.
    pub fn classifier_key(self) -> &'static str {
        self.spec().map_or("", |s| s.classifier)
    }

    /// The preprocessing its weights expect; for `TorchScript`, ImageNet's until the archive's
    /// own attributes say otherwise (`Model::input_norm`).
    pub fn input_norm(self) -> Normalization {
        self.spec().map_or(Normalization::IMAGENET, |s| s.norm)
    }
}

crate::choice!(Arch);

/// The input size when neither the user nor the model names one: torchvision's evaluation crop.
pub const DEFAULT_INPUT_SIZE: u32 = 224;

impl Arch {
    /// The architecture a weights file's content names: a TorchScript archive is one; a state
    /// dict does not say.
    pub fn detect(path: &Path) -> Option<Arch> {
        torchscript::is_archive(path).then_some(Arch::TorchScript)
    }
}

impl FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        if norm == "torchscript" || norm == "jit" {
            return Ok(Arch::TorchScript);
        }
        for a in Arch::ALL {
            if a.name() == norm || a.name().replace('-', "") == norm.replace('-', "") {
                return Ok(a);
            }
        }
        let names: Vec<_> = Arch::ALL.iter().map(|a| a.name()).collect();
        bail!("unknown architecture '{s}'; expected one of {}, torchscript", names.join(", "))
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
    /// Preprocessing that travels with the network (a TorchScript module's attributes).
    fn preprocessing(&self) -> Option<Preprocessing> {
        None
    }
    /// The archive a scripted network was loaded from, and the head change applied to it.
    fn archive(&self) -> Option<(&Path, HeadSpec)> {
        None
    }
    /// Ok when the store holds the whole state a training run changes, so that checkpoints
    /// resume it exactly (a built-in network's store is its state).
    fn check_checkpointable(&self) -> Result<()> {
        Ok(())
    }
    /// Whether `features_t` and `head_t` in eval mode may run on several threads at once (a
    /// built-in network's write nothing; a scripted one says so in an attribute).
    fn concurrent_eval(&self) -> bool {
        true
    }
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
        // A prefix also owns the variable of its own name (a ViT's `class_token`).
        self.prefixes.iter().any(|p| var.starts_with(p.as_str()) || p.strip_suffix('.') == Some(var))
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
    ///
    /// # Panics
    /// For `Arch::TorchScript`, which is loaded, not built: where the architecture comes from
    /// the user, [`Model::build`] says so as an error.
    pub fn new(arch: Arch, num_classes: i64, device: Device) -> Model {
        Model::build(arch, num_classes, device).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Model::new`], or an error for an architecture that is loaded rather than built.
    pub fn build(arch: Arch, num_classes: i64, device: Device) -> Result<Model> {
        let Some(spec) = arch.spec() else {
            bail!("a {arch} model is loaded from its archive (--weights), not built with random weights");
        };
        let vs = nn::VarStore::new(device);
        let net = (spec.build)(&vs.root(), num_classes);
        Ok(Model { arch, vs, net, classes: num_classes, training: Cell::new(false) })
    }

    /// Builds the architecture and loads weights from a torchvision `.pth`/`.pt` state dict,
    /// a `.safetensors` or a tch `.ot` file; the class count is read from the file.
    pub fn load(arch: Arch, path: &Path, device: Device) -> Result<Model> {
        Model::load_with(arch, path, device, HeadSpec::default())
    }

    /// `load`, with the head replaced by a fresh `head.num_classes`-way layer when `head.reset`
    /// (`head.rs`); a TorchScript archive when `arch` is `TorchScript`.
    pub fn load_with(arch: Arch, path: &Path, device: Device, head: HeadSpec) -> Result<Model> {
        if arch == Arch::TorchScript {
            let vs = nn::VarStore::new(device);
            let (net, classes) = torchscript::load(path, device, &vs, head)?;
            return Ok(Model { arch, vs, net: Box::new(net), classes, training: Cell::new(false) });
        }
        if torchscript::is_archive(path) {
            bail!("{} is a TorchScript archive, not a {arch} state dict: use --arch torchscript", path.display());
        }
        let mut tensors = weights::read(path)?;
        let classes = head::classes(arch, &tensors, path, head)?;
        let mut model = Model::build(arch, classes, device)?;
        head::keep_fresh_head(arch, &model.vs, &mut tensors, classes)?;
        weights::assign(&mut model.vs, tensors, path, arch)?;
        Ok(model)
    }

    /// The same network before training: a built-in one freshly built, a TorchScript one
    /// reloaded from its archive with every variable re-initialised (`torchscript::reinitialise`).
    pub fn untrained(&self) -> Result<Model> {
        match self.net.archive() {
            Some((path, head)) => {
                let model = Model::load_with(Arch::TorchScript, path, self.device(), head)?;
                torchscript::reinitialise(&model.vs);
                Ok(model)
            }
            None => Model::build(self.arch, self.classes, self.device()),
        }
    }

    /// The input size to use: the one asked for, else the module's `input_size` attribute (a
    /// scripted model), else [`DEFAULT_INPUT_SIZE`].
    pub fn input_size(&self, requested: Option<u32>) -> u32 {
        requested.or(self.preprocessing().input_size.map(|s| s as u32)).unwrap_or(DEFAULT_INPUT_SIZE)
    }

    /// What preprocessing the model uses and where it comes from, for the output.
    pub fn preprocessing(&self) -> Preprocessing {
        self.net.preprocessing().unwrap_or(Preprocessing {
            norm: self.arch.input_norm(),
            input_size: None,
            from_module: false,
        })
    }

    /// See `Backbone::check_checkpointable`: called before a fine-tuning run writes anything.
    pub fn check_checkpointable(&self) -> Result<()> {
        self.net.check_checkpointable()
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
        self.preprocessing().norm
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
        // A scripted module's only if it says so (torchscript.rs).
        self.net.concurrent_eval().then_some(self as &dyn ConcurrentEval)
    }
}

// SAFETY: an eval-mode forward of these networks reads their parameters and BatchNorm
// statistics and writes nothing (the mode flag is not touched by `logits_eval`).
unsafe impl ConcurrentEval for Model {}
