//! Saliency methods over one shared core: the target layer's activations, the class to explain
//! and batched scoring of perturbed inputs. Each method only says how it weights channels.

pub mod gradcam;
pub mod gradcampp;
pub mod groupcam;
pub mod methods;
pub mod rise;
pub mod scorecam;

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

use crate::models::CamModel;
use crate::ops;

pub use groupcam::{ChannelWeights, GroupCam, Variant};

/// Saliency maps for a batch: N x H x W in [0, 1].
#[derive(Debug)]
pub struct Explanation {
    pub maps: Tensor,
    /// The class each map explains.
    pub classes: Vec<i64>,
    /// Maps that came out constant (all zeros is what is stored for them).
    pub constant: Vec<bool>,
}

/// Target-layer activations A (N x K x h x w), the classes explained and, when asked, the
/// gradient of each image's raw logit for its class with respect to A.
pub struct Activations {
    pub a: Tensor,
    pub classes: Tensor,
    pub grad: Option<Tensor>,
}

/// A forward of the features without a graph, then (when `with_grad`) a backward through the
/// head only: dlogit/dA needs nothing below the target layer, and no parameter's `.grad` is
/// touched. BatchNorm and dropout run in eval mode whatever the model's mode.
pub fn activations(model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>, with_grad: bool) -> Result<Activations> {
    let n = x.size()[0];
    let a = tch::no_grad(|| model.features_t(x, false));
    let given = match classes {
        Some(c) => Some(class_tensor(c, n, model.num_classes(), x.device())?),
        None => None,
    };
    if !with_grad {
        let classes = match given {
            Some(c) => c,
            None => tch::no_grad(|| model.head_t(&a, false).argmax(1, false)),
        };
        return Ok(Activations { a, classes, grad: None });
    }
    let leaf = a.detach().set_requires_grad(true);
    let logits = tch::with_grad(|| model.head_t(&leaf, false));
    let classes = given.unwrap_or_else(|| logits.argmax(1, false).detach());
    // The sum over images gives each image's own gradient: the images do not interact in eval mode.
    let score = logits.gather(1, &classes.unsqueeze(1), false).sum(Kind::Float);
    let grad = Tensor::run_backward(&[score], &[&leaf], false, false).pop();
    Ok(Activations { a, classes, grad })
}

fn class_tensor(classes: &[i64], n: i64, num_classes: i64, device: Device) -> Result<Tensor> {
    if classes.len() as i64 != n {
        bail!("{} classes given for {n} images", classes.len());
    }
    if let Some(&c) = classes.iter().find(|&&c| c < 0 || c >= num_classes) {
        bail!("class {c} is out of range: the model has {num_classes} classes (0..{})", num_classes - 1);
    }
    Ok(Tensor::from_slice(classes).to_device(device))
}

/// Softmax probability of each input's class, scoring `count` inputs made by `make(start, len)`
/// in forwards of at most `chunk` images (the chunk bounds memory; see BENCHMARKS.md for sizes).
pub fn score_batched(
    model: &dyn CamModel,
    count: i64,
    chunk: i64,
    classes_of: &Tensor,
    make: &dyn Fn(i64, i64) -> Tensor,
) -> Tensor {
    tch::no_grad(|| {
        let mut parts = Vec::new();
        let mut start = 0;
        while start < count {
            let len = chunk.min(count - start);
            let inputs = make(start, len);
            let probs = model.logits_eval(&inputs).softmax(-1, Kind::Float);
            let cls = classes_of.narrow(0, start, len).unsqueeze(1);
            parts.push(probs.gather(1, &cls, false).squeeze_dim(1));
            start += len;
        }
        Tensor::cat(&parts, 0)
    })
}

/// The default number of images per scoring forward on a device: on this 2-core CPU, ResNet-50
/// forwards of 8 images run 2.5x faster per image than one forward of 128.
pub fn default_chunk(device: Device) -> i64 {
    match device {
        Device::Cpu => 8,
        _ => 64,
    }
}

/// Final maps: min-max per image, constant maps flagged.
pub(crate) fn finish(raw: &Tensor, classes: &Tensor) -> Result<Explanation> {
    let (maps, constant) = ops::minmax(raw);
    Ok(Explanation {
        maps: maps.to_kind(Kind::Float),
        classes: Vec::<i64>::try_from(classes.to_device(Device::Cpu))?,
        constant: Vec::<bool>::try_from(constant.to_device(Device::Cpu))?,
    })
}
