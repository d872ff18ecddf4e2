//! Any classifier through TorchScript: an archive whose module exposes `features(x) -> A`
//! (B x K x h x w, the target layer) and `head(A) -> logits` is a `Backbone` like the built-in
//! networks, so every command takes it. forward = head(features(x)).
//!
//! - Parameters go into the model's VarStore under the module's own names (`layer1.0.conv1.weight`),
//!   sharing storage with the module: the SGD step, checkpoints and `final.safetensors` see them as
//!   they see a built-in model's. Buffers (BatchNorm statistics) join them, not trainable, when the
//!   module exports `state_buffers() -> Dict[str, Tensor]` (tch cannot list a module's buffers).
//! - Preprocessing travels with the module: `mean`, `std` (3 floats each) and `input_size` (an int)
//!   are read from the archive's attributes when present (`data.pkl`), ImageNet's otherwise.
//! - The layers the sanity checks randomise are the module's `sanity_layers` attribute (state-dict
//!   prefixes) when present, else the top-level prefixes of its parameters, in registration order.
//! - Train/eval mode is module state: it is switched only when a call asks for the other mode.
//! - Scoring lanes (several threads in `logits_eval` at once) only for a module whose
//!   `concurrent_eval` attribute is true: groupcam cannot see whether a module's methods write
//!   its attributes. Calls in the current mode take a read lock, a mode switch the write lock;
//!   libtorch runs one method from several threads (its graph executor locks its plan cache).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use candle_core::pickle::{Object, Stack};
use tch::{CModule, Device, IValue, Kind, Tensor, nn};

use super::{Backbone, Layer, Normalization};

/// The preprocessing a model wants, and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessing {
    pub norm: Normalization,
    /// The input size the module asks for (a ViT needs exactly its own).
    pub input_size: Option<i64>,
    /// True when mean and std were read from the module's attributes.
    pub from_module: bool,
}

impl Preprocessing {
    /// For the output: the mean and std and which source they came from (the input size is
    /// the caller's to say: a flag or a config key may override the module's).
    pub fn describe(&self) -> String {
        let n = &self.norm;
        let src = if self.from_module { "from the module's attributes" } else { "ImageNet's (the module has none)" };
        format!("preprocessing: mean {:?} std {:?} {src}", n.mean, n.std)
    }
}

/// The attributes of the archive's top-level module that groupcam reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes {
    pub mean: Option<Vec<f64>>,
    pub std: Option<Vec<f64>>,
    pub input_size: Option<i64>,
    pub sanity_layers: Option<Vec<String>>,
    /// The module's word that its eval-mode `features` and `head` write no attribute, so that
    /// several threads may run them at once (the scoring lanes).
    pub concurrent_eval: bool,
    /// The state-dict prefix of the output layer (`classifier.3`), for `reset_head`.
    pub classifier: Option<String>,
    /// The dotted names of every tensor the module tree holds (parameters, buffers, tensor
    /// attributes): what a checkpoint must cover for the module's state to survive a resume.
    pub tensors: Vec<String>,
}

/// Whether `path` is a TorchScript archive (a zip with `<name>/constants.pkl` or `<name>/code/`),
/// as opposed to a `torch.save` state dict.
pub fn is_archive(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    let Ok(zip) = zip::ZipArchive::new(std::io::BufReader::new(file)) else { return false };
    zip.file_names().any(|n| n.ends_with("/constants.pkl") || n.contains("/code/"))
}

/// Reads the top-level module's attributes from the archive's `data.pkl`.
pub fn read_attributes(path: &Path) -> Result<Attributes> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a zip archive", path.display()))?;
    let name = zip
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .next()
        .with_context(|| format!("{} has no data.pkl: not a TorchScript archive", path.display()))?;
    let mut bytes = Vec::new();
    zip.by_name(&name)?.read_to_end(&mut bytes)?;
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut std::io::Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("{}: cannot parse {name}: {}", path.display(), first_line(&e.to_string())))?;
    let top = stack.finalize().map_err(|e| anyhow::anyhow!("{}: {name}: {e}", path.display()))?;
    let dict = match top {
        Object::Build { args, .. } => match *args {
            Object::Dict(d) => d,
            _ => vec![],
        },
        Object::Dict(d) => d,
        _ => vec![],
    };
    let mut a = Attributes::default();
    tensor_names(&dict, "", &mut a.tensors);
    for (k, v) in dict {
        let Object::Unicode(k) = k else { continue };
        match k.as_str() {
            "mean" => a.mean = floats(&v),
            "std" => a.std = floats(&v),
            "input_size" => a.input_size = int(&v),
            "sanity_layers" => a.sanity_layers = strings(&v),
            "concurrent_eval" => a.concurrent_eval = matches!(v, Object::Bool(true)),
            "classifier" => a.classifier = string(&v),
            _ => {}
        }
    }
    Ok(a)
}

/// The names of the tensors under a module's attribute dict, submodules (pickled as objects
/// built from a dict) included, as `named_parameters` and `named_buffers` spell them.
fn tensor_names(dict: &[(Object, Object)], prefix: &str, out: &mut Vec<String>) {
    for (k, v) in dict {
        let Object::Unicode(k) = k else { continue };
        match v {
            Object::Reduce { callable, .. } if is_tensor_rebuild(callable) => out.push(format!("{prefix}{k}")),
            Object::Build { args, .. } => {
                if let Object::Dict(d) = args.as_ref() {
                    tensor_names(d, &format!("{prefix}{k}."), out)
                }
            }
            _ => {}
        }
    }
}

/// `torch._utils._rebuild_tensor_v2` and its kin: how a pickle makes a tensor.
fn is_tensor_rebuild(callable: &Object) -> bool {
    matches!(callable, Object::Class { module_name, class_name }
        if module_name == "torch._utils" && class_name.starts_with("_rebuild_"))
}

/// TorchScript pickles typed lists as `torch.jit._pickle.build_*list(list)`.
fn list(o: &Object) -> Option<&[Object]> {
    match o {
        Object::List(v) | Object::Tuple(v) => Some(v),
        Object::Reduce { args, .. } => match args.as_ref() {
            // build_*list(list), or restore_type_tag(list, "List[str]").
            Object::Tuple(t) if !t.is_empty() => list(&t[0]),
            _ => None,
        },
        _ => None,
    }
}

fn floats(o: &Object) -> Option<Vec<f64>> {
    list(o)?
        .iter()
        .map(|x| match x {
            Object::Float(f) => Some(*f),
            Object::Int(i) => Some(*i as f64),
            Object::Long(i) => Some(*i as f64),
            _ => None,
        })
        .collect()
}

fn int(o: &Object) -> Option<i64> {
    match o {
        Object::Int(i) => Some(*i as i64),
        Object::Long(i) => Some(*i),
        _ => None,
    }
}

fn string(o: &Object) -> Option<String> {
    match o {
        Object::Unicode(s) => Some(s.clone()),
        _ => None,
    }
}

fn strings(o: &Object) -> Option<Vec<String>> {
    list(o)?.iter().map(string).collect()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The preprocessing of a module with these attributes.
pub fn preprocessing(attrs: &Attributes, path: &Path) -> Result<Preprocessing> {
    let three = |v: &Option<Vec<f64>>, key: &str| -> Result<Option<[f64; 3]>> {
        match v {
            None => Ok(None),
            Some(v) if v.len() == 3 => Ok(Some([v[0], v[1], v[2]])),
            Some(v) => bail!("{}: attribute '{key}' has {} values, expected 3 (RGB)", path.display(), v.len()),
        }
    };
    let (mean, std) = (three(&attrs.mean, "mean")?, three(&attrs.std, "std")?);
    if let Some(s) = std.filter(|s| s.iter().any(|&v| !(v > 0.0))) {
        bail!("{}: attribute 'std' must be positive, got {s:?}", path.display());
    }
    let im = Normalization::IMAGENET;
    Ok(Preprocessing {
        norm: Normalization { mean: mean.unwrap_or(im.mean), std: std.unwrap_or(im.std) },
        input_size: attrs.input_size,
        from_module: mean.is_some() || std.is_some(),
    })
}

/// A new class count for the head: `reset` replaces the output layer when the count differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadSpec {
    pub num_classes: Option<i64>,
    pub reset: bool,
}

/// A TorchScript module as a `Backbone`.
pub struct Scripted {
    /// A lock, not a RefCell: calls in the module's current mode only read it, so that the
    /// forwards of several threads (`bench torchscript`'s lanes) are sound on the Rust side.
    module: RwLock<CModule>,
    /// The module's current training flag, so that a call in the same mode switches nothing.
    mode: AtomicBool,
    channels: i64,
    layers: Vec<Layer>,
    prep: Preprocessing,
    path: PathBuf,
    head: HeadSpec,
    /// Tensors of the archive that are neither parameters nor returned by `state_buffers()`.
    untracked: Vec<String>,
    exports_buffers: bool,
    concurrent_eval: bool,
}

impl Scripted {
    /// An error when the module holds state that a checkpoint would not cover (BatchNorm
    /// statistics of a module without a recursive `state_buffers()`): fine-tuning it would
    /// resume with the archive's statistics and write a `final.safetensors` without them.
    fn untracked_error(&self) -> Result<()> {
        if self.untracked.is_empty() {
            return Ok(());
        }
        let n = self.untracked.len();
        let mut shown: Vec<String> = self.untracked.iter().take(5).map(|s| format!("'{s}'")).collect();
        if n > 5 {
            shown.push(format!("and {} more", n - 5));
        }
        let why = if self.exports_buffers {
            "its state_buffers() does not return them (TorchScript's named_buffers() is not recursive: \
             loop over named_modules() as the README's recipe does)"
        } else {
            "it exports no state_buffers() (see the README's TorchScript recipe)"
        };
        bail!(
            "{}: the module holds {n} tensor(s) that are not parameters and that checkpoints would miss: {}; {why}",
            self.path.display(),
            shown.join(", ")
        )
    }

    fn ensure_mode(&self, train: bool) {
        if self.mode.load(Ordering::Acquire) != train {
            let mut m = self.module.write().unwrap_or_else(|e| e.into_inner());
            if self.mode.load(Ordering::Acquire) != train {
                if train {
                    m.set_train()
                } else {
                    m.set_eval()
                }
                self.mode.store(train, Ordering::Release);
            }
        }
    }

    fn call(&self, method: &str, x: &Tensor, train: bool) -> Tensor {
        self.ensure_mode(train);
        self.module
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .method_ts(method, &[x])
            .unwrap_or_else(|e| panic!("{}: {method}(x) failed: {}", self.path.display(), first_line(&e.to_string())))
    }
}

impl Backbone for Scripted {
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.call("features", x, train)
    }
    fn head_t(&self, a: &Tensor, train: bool) -> Tensor {
        self.call("head", a, train)
    }
    fn target_channels(&self) -> i64 {
        self.channels
    }
    fn layers(&self) -> Vec<Layer> {
        self.layers.clone()
    }
    fn preprocessing(&self) -> Option<Preprocessing> {
        Some(self.prep.clone())
    }
    fn archive(&self) -> Option<(&Path, HeadSpec)> {
        Some((&self.path, self.head))
    }
    fn check_checkpointable(&self) -> Result<()> {
        self.untracked_error()
    }
    fn concurrent_eval(&self) -> bool {
        self.concurrent_eval
    }
}

/// Runs a method on a probe input, naming the archive and the method when it fails.
fn probe(m: &CModule, method: &str, x: &Tensor, path: &Path) -> Result<Tensor> {
    m.method_ts(method, &[x]).map_err(|e| {
        let msg = e.to_string();
        if msg.contains(&format!("'{method}'")) && msg.contains("not defined") || msg.contains("not found") {
            anyhow::anyhow!(
                "{}: the TorchScript module has no method '{method}' (it must export features(x) -> B x K x h x w \
                 and head(A) -> B x classes; see the README's TorchScript recipe)",
                path.display()
            )
        } else {
            anyhow::anyhow!("{}: {method}() failed on a {:?} probe: {}", path.display(), x.size(), first_line(&msg))
        }
    })
}

/// `features` then `head` on a probe batch of 2; their shapes checked. Returns (K, classes).
fn check_shapes(m: &CModule, size: i64, device: Device, path: &Path) -> Result<(i64, i64)> {
    tch::no_grad(|| {
        let x = Tensor::zeros([2, 3, size, size], (Kind::Float, device));
        let a = probe(m, "features", &x, path)?;
        if a.dim() != 4 || a.size()[0] != 2 {
            bail!(
                "{}: features(x) of a 2 x 3 x {size} x {size} input returned shape {:?}, expected 4-D B x K x h x w \
                 (a transformer's tokens must be reshaped to a grid)",
                path.display(),
                a.size()
            );
        }
        let logits = probe(m, "head", &a, path)?;
        if logits.dim() != 2 || logits.size()[0] != 2 {
            bail!(
                "{}: head(features(x)) returned shape {:?} for a batch of 2, expected B x classes",
                path.display(),
                logits.size()
            );
        }
        Ok((a.size()[1], logits.size()[1]))
    })
}

/// The module's buffers, when it exports `state_buffers() -> Dict[str, Tensor]`.
fn buffers(m: &CModule, path: &Path) -> Result<Option<Vec<(String, Tensor)>>> {
    let v = match m.method_is::<IValue>("state_buffers", &[]) {
        Ok(v) => v,
        Err(e) if e.to_string().contains("state_buffers") => return Ok(None),
        Err(e) => bail!("{}: state_buffers() failed: {}", path.display(), first_line(&e.to_string())),
    };
    let IValue::GenericDict(items) = v else {
        bail!("{}: state_buffers() must return Dict[str, Tensor]", path.display())
    };
    let mut out = Vec::new();
    for (k, t) in items {
        match (k, t) {
            (IValue::String(k), IValue::Tensor(t)) => out.push((k, t)),
            _ => bail!("{}: state_buffers() must return Dict[str, Tensor]", path.display()),
        }
    }
    Ok(Some(out))
}

/// The archive's tensors that no checkpoint would hold: not a parameter, not a returned buffer.
/// `num_batches_tracked` is left out: it is rewritten from the step count.
fn untracked(tensors: &[String], stored: &[String], returned: &[String]) -> Vec<String> {
    tensors
        .iter()
        .filter(|t| !t.ends_with("num_batches_tracked") && !stored.contains(t) && !returned.contains(t))
        .cloned()
        .collect()
}

/// The store variable at a dotted name: `a.b.c` is `a` / `b` / `c`, so the store keeps the
/// module's own names.
fn add_var(root: &nn::Path, name: &str, t: Tensor, trainable: bool) {
    let parts: Vec<&str> = name.split('.').collect();
    let mut p = root.clone();
    for part in &parts[..parts.len() - 1] {
        p = p.sub(*part);
    }
    let _ = p.add(parts[parts.len() - 1], t, trainable);
}

/// The output layer's weight (and bias) names: the `classifier` attribute's, else the last
/// parameter with at least 2 dims whose first dim is the class count.
fn classifier_names(
    params: &[(String, Tensor)],
    attrs: &Attributes,
    classes: i64,
    path: &Path,
) -> Result<(String, Option<String>)> {
    let weight = match &attrs.classifier {
        Some(prefix) => format!("{prefix}.weight"),
        None => params
            .iter()
            .rev()
            .find(|(_, t)| t.dim() >= 2 && t.size()[0] == classes)
            .map(|(n, _)| n.clone())
            .with_context(|| {
                format!("{}: no parameter has {classes} rows: cannot find the output layer", path.display())
            })?,
    };
    if !params.iter().any(|(n, _)| *n == weight) {
        bail!("{}: the classifier '{weight}' is not a parameter of the module", path.display());
    }
    let bias =
        weight.strip_suffix(".weight").map(|p| format!("{p}.bias")).filter(|b| params.iter().any(|(n, _)| n == b));
    Ok((weight, bias))
}

/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for nn.Linear and nn.Conv2d weights
/// (kaiming_uniform with a = sqrt(5)) and biases, torchvision's for ResNet's fc.
fn fan_in_bound(weight_shape: &[i64]) -> f64 {
    let fan_in: i64 = weight_shape[1..].iter().product();
    1.0 / (fan_in.max(1) as f64).sqrt()
}

/// Gives `t` (a parameter of the module) the new shape `shape`, in place, so the module sees it.
fn resize_param(t: &Tensor, shape: &[i64]) {
    tch::no_grad(|| {
        let mut t = t.shallow_clone();
        let grad = t.requires_grad();
        let _ = t.set_requires_grad(false);
        let _ = t.resize_(shape);
        let _ = t.set_requires_grad(grad);
    });
}

/// Replaces the output layer with a fresh `n`-way one (PyTorch's nn.Linear initialisation).
fn reset_classifier(params: &[(String, Tensor)], weight: &str, bias: Option<&str>, n: i64) {
    let w = &params.iter().find(|(k, _)| k == weight).expect("found by classifier_names").1;
    let mut shape = w.size();
    shape[0] = n;
    let bound = fan_in_bound(&shape);
    resize_param(w, &shape);
    tch::no_grad(|| {
        let _ = w.shallow_clone().uniform_(-bound, bound);
    });
    if let Some(b) = bias {
        let b = &params.iter().find(|(k, _)| k == b).expect("found by classifier_names").1;
        resize_param(b, &[n]);
        tch::no_grad(|| {
            let _ = b.shallow_clone().uniform_(-bound, bound);
        });
    }
}

/// The sanity-check layers: state-dict prefixes, input to output. Without the `sanity_layers`
/// attribute, the first name component after the part every variable shares (a wrapper's `m.`).
fn layers_of(names: &[String], attrs: &Attributes, path: &Path) -> Result<Vec<Layer>> {
    if let Some(list) = &attrs.sanity_layers {
        let layers: Vec<Layer> = list.iter().map(|p| Layer::at(p.trim_end_matches('.'))).collect();
        for n in names {
            if !layers.iter().any(|l| l.owns(n)) {
                bail!("{}: variable '{n}' belongs to none of the module's sanity_layers", path.display());
            }
        }
        return Ok(layers);
    }
    let split: Vec<Vec<&str>> = names.iter().map(|n| n.split('.').collect()).collect();
    let mut common = 0;
    while split.iter().all(|p| p.len() > common + 1 && p[common] == split[0][common]) {
        common += 1;
    }
    let mut layers: Vec<Layer> = Vec::new();
    for p in &split {
        let name = p[..=common].join(".");
        if !layers.iter().any(|l| l.name == name) {
            layers.push(Layer::at(name));
        }
    }
    Ok(layers)
}

/// Loads an archive onto `device`, its parameters (and buffers) into `vs`; returns the backbone
/// and its class count.
pub fn load(path: &Path, device: Device, vs: &nn::VarStore, head: HeadSpec) -> Result<(Scripted, i64)> {
    let attrs = read_attributes(path)?;
    let prep = preprocessing(&attrs, path)?;
    let mut module = CModule::load_on_device(path, device).map_err(|e| {
        anyhow::anyhow!("cannot load {} as a TorchScript archive: {}", path.display(), first_line(&e.to_string()))
    })?;
    module.set_eval();
    let size = prep.input_size.unwrap_or(224);
    let (channels, mut classes) = check_shapes(&module, size, device, path)?;
    let params = module.named_parameters()?;
    if let Some(n) = head.num_classes.filter(|&n| n != classes) {
        let (weight, bias) = classifier_names(&params, &attrs, classes, path)?;
        if !head.reset {
            bail!(
                "{}: its classifier '{weight}' has {classes} classes, but {n} are asked for \
                 (set model.reset_head: true to replace it with a fresh {n}-way layer)",
                path.display()
            );
        }
        if n < 1 {
            bail!("model.num_classes must be at least 1, got {n}");
        }
        reset_classifier(&params, &weight, bias.as_deref(), n);
        let (_, now) = check_shapes(&module, size, device, path)
            .with_context(|| format!("after resetting '{weight}' of {} to {n} classes", path.display()))?;
        if now != n {
            bail!(
                "{}: the head still returns {now} classes after '{weight}' was resized to {n} \
                 (name the output layer in the module's 'classifier' attribute)",
                path.display()
            );
        }
        classes = n;
    }
    let root = vs.root();
    let mut names = Vec::new();
    for (name, t) in params {
        let trainable = t.requires_grad();
        add_var(&root, &name, t, trainable);
        names.push(name);
    }
    let exported = buffers(&module, path)?;
    let exports_buffers = exported.is_some();
    let mut returned = Vec::new();
    for (name, t) in exported.unwrap_or_default() {
        returned.push(name.clone());
        // num_batches_tracked is written back from the step count (weights::save_torchvision).
        if name.ends_with("num_batches_tracked") || !t.is_floating_point() {
            continue;
        }
        add_var(&root, &name, t, false);
        names.push(name);
    }
    let untracked = untracked(&attrs.tensors, &names, &returned);
    if names.is_empty() {
        bail!("{}: the TorchScript module has no parameters", path.display());
    }
    let layers = layers_of(&names, &attrs, path)?;
    let net = Scripted {
        module: RwLock::new(module),
        mode: AtomicBool::new(false),
        channels,
        layers,
        prep,
        path: path.to_path_buf(),
        head,
        untracked,
        exports_buffers,
        concurrent_eval: attrs.concurrent_eval,
    };
    Ok((net, classes))
}

/// Fresh values for every variable of a store, from torch's generator, by name and shape:
/// PyTorch's defaults for conv and linear layers (weights and biases U(+-1/sqrt(fan_in))),
/// weight 1 and bias 0 for 1-D (normalisation) layers, zero mean and unit variance for running
/// statistics, N(0, 0.02) for anything else (a ViT's class token and position embedding).
pub fn reinitialise(vs: &nn::VarStore) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, t) in &vars {
            let mut t = t.shallow_clone();
            let (prefix, last) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
            let sibling_weight = vars.get(&format!("{prefix}.weight")).filter(|w| w.dim() >= 2);
            let _ = match last {
                "running_mean" => t.zero_(),
                "running_var" => t.fill_(1.0),
                "weight" if t.dim() >= 2 => {
                    let b = fan_in_bound(&t.size());
                    t.uniform_(-b, b)
                }
                "weight" => t.fill_(1.0),
                "bias" => match sibling_weight {
                    Some(w) => {
                        let b = fan_in_bound(&w.size());
                        t.uniform_(-b, b)
                    }
                    None => t.zero_(),
                },
                _ => t.normal_(0.0, 0.02),
            };
        }
    });
}
