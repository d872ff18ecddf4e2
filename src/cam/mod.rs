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

use crate::error::ClassError;
use crate::models::CamModel;
use crate::ops;

pub use groupcam::{ChannelWeights, GroupCam, Variant};
pub use methods::{Method, MethodOptions};

/// A saliency method: maps in [0, 1] (N x H x W) for a normalised N x 3 x H x W batch, for
/// `classes` (the argmax when `None`).
pub trait Explainer {
    fn name(&self) -> &'static str;
    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation>;
}

/// A gradient CAM (pytorch-grad-cam's `BaseCAM`): the method says only how it weights the
/// target layer's channels from A and dlogit_c/dA (`get_cam_weights`); the map is
/// minmax(up(ReLU(sum_k w_k A^k))), written once in [`Explainer::explain`] below.
pub trait GradientCam {
    fn name(&self) -> &'static str;
    /// N x K x 1 x 1 channel weights from the activations A and their gradient (both N x K x h x w).
    fn weights(&self, a: &Tensor, grad: &Tensor) -> Tensor;
}

impl<T: GradientCam> Explainer for T {
    fn name(&self) -> &'static str {
        GradientCam::name(self)
    }
    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        let (_, _, h, w) = x.size4()?;
        let act = activations(model, x, classes, true)?;
        let grad = act.grad.as_ref().expect("activations were asked for a gradient");
        let a = act.a.to_kind(Kind::Float);
        let weights = self.weights(&a, grad);
        let cam = (a * weights).sum_dim_intlist(1, true, Kind::Float).relu();
        finish(&ops::upsample(&cam, h, w).squeeze_dim(1), &act.classes)
    }
}

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
        return Err(ClassError::Count { given: classes.len(), images: n }.into());
    }
    if let Some(&c) = classes.iter().find(|&&c| c < 0 || c >= num_classes) {
        return Err(ClassError::OutOfRange { class: c, classes: num_classes }.into());
    }
    Ok(Tensor::from_slice(classes).to_device(device))
}

/// How perturbed inputs are scored: `chunk` images per forward, `lanes` forwards side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    pub chunk: i64,
    pub lanes: usize,
}

impl Batching {
    /// The measured defaults (BENCHMARKS.md, "Scoring lanes"). On CPU, small forwards do not keep
    /// libtorch's intra-op threads busy: one lane per thread, each forward on one thread, with 2
    /// images per forward, scores ResNet-50 and EfficientNet-Lite0 inputs faster than forwards of
    /// 8 images on all threads. A model that does not allow concurrent forwards
    /// (`CamModel::concurrent`) gets one lane with forwards of 8; CUDA one lane with forwards of 64.
    pub fn default_for(model: &dyn CamModel) -> Batching {
        let lanes = match model.device() {
            Device::Cpu if model.concurrent().is_some() => tch::get_num_threads().max(1) as usize,
            _ => 1,
        };
        let chunk = if lanes > 1 { 2 } else { default_chunk(model.device()) };
        Batching { chunk, lanes }
    }

    /// The default, with `chunk` images per forward when given.
    pub fn with_chunk(model: &dyn CamModel, chunk: Option<i64>) -> Batching {
        let b = Batching::default_for(model);
        Batching { chunk: chunk.unwrap_or(b.chunk), ..b }
    }

    /// The default, with the chunk and lane count given; each must be at least 1.
    pub fn with_options(model: &dyn CamModel, chunk: Option<i64>, lanes: Option<usize>) -> Result<Batching> {
        if chunk.is_some_and(|c| c < 1) || lanes == Some(0) {
            bail!("the chunk and the lane count must be at least 1");
        }
        let b = Batching::with_chunk(model, chunk);
        Ok(Batching { lanes: lanes.unwrap_or(b.lanes), ..b })
    }
}

/// Softmax probability of each input's class, scoring `count` inputs made by `make(start, len)`
/// in forwards of at most `batching.chunk` images. The inputs are made on the calling thread;
/// with several lanes (a CPU model that allows it) the forwards run on worker threads that split
/// the intra-op threads between them.
pub fn score_batched(
    model: &dyn CamModel,
    count: i64,
    batching: Batching,
    classes_of: &Tensor,
    make: &dyn Fn(i64, i64) -> Tensor,
) -> Tensor {
    let chunk = batching.chunk.max(1);
    let concurrent = model.concurrent().filter(|_| batching.lanes > 1 && count > chunk);
    let Some(shared) = concurrent else {
        return tch::no_grad(|| {
            let mut parts = Vec::new();
            let mut start = 0;
            while start < count {
                let len = chunk.min(count - start);
                parts.push(class_probs(model, &make(start, len), &classes_of.narrow(0, start, len)));
                start += len;
            }
            Tensor::cat(&parts, 0)
        });
    };
    let threads = tch::get_num_threads().max(1);
    let per_lane = (threads / batching.lanes as i32).max(1);
    let shared = Shared(shared);
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<(usize, Tensor, Tensor)>(batching.lanes);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, Tensor)>();
    // The inputs are made here on one thread: cheap next to the forwards, and it leaves the
    // cores to the lanes. The count is process-wide: the guard gives the caller its own back,
    // on a lane's panic too.
    let _threads = ThreadCount::set(1, threads);
    let mut parts = std::thread::scope(|s| {
        for _ in 0..batching.lanes {
            let (jobs, done, shared) = (jobs_rx.clone(), done_tx.clone(), &shared);
            s.spawn(move || {
                tch::set_num_threads(per_lane);
                let _guard = tch::no_grad_guard();
                for (k, inputs, cls) in jobs {
                    let _ = done.send((k, class_probs(shared.0, &inputs, &cls)));
                }
            });
        }
        drop((jobs_rx, done_tx));
        let mut start = 0;
        let mut k = 0;
        while start < count {
            let len = chunk.min(count - start);
            let inputs = tch::no_grad(|| make(start, len));
            if jobs_tx.send((k, inputs, classes_of.narrow(0, start, len))).is_err() {
                break; // a lane panicked; the scope re-raises it
            }
            start += len;
            k += 1;
        }
        drop(jobs_tx);
        done_rx.iter().collect::<Vec<_>>()
    });
    drop(_threads);
    parts.sort_by_key(|(k, _)| *k);
    Tensor::cat(&parts.into_iter().map(|(_, p)| p).collect::<Vec<_>>(), 0)
}

/// The head's logits in f32 whatever the features' precision. Under fp16 autocast (half
/// activations) a half head rounds the logits to about 0.01, which is the size of the
/// small group gains Group-CAM weighs; the head is a small part of the cost, so it runs
/// in f32 with autocast off.
pub fn head_f32(model: &dyn CamModel, a: &Tensor) -> Tensor {
    if a.kind() == Kind::Half || a.kind() == Kind::BFloat16 {
        let a = a.to_kind(Kind::Float);
        return crate::autocast::without(|| model.head_t(&a, false));
    }
    model.head_t(a, false)
}

/// Sets libtorch's process-wide intra-op thread count, and restores `restore` when dropped.
pub struct ThreadCount {
    restore: i32,
}

impl ThreadCount {
    pub fn set(n: i32, restore: i32) -> ThreadCount {
        tch::set_num_threads(n);
        ThreadCount { restore }
    }
}

impl Drop for ThreadCount {
    fn drop(&mut self) {
        tch::set_num_threads(self.restore);
    }
}

fn class_probs(model: &dyn CamModel, inputs: &Tensor, classes: &Tensor) -> Tensor {
    let probs = head_f32(model, &model.features_t(inputs, false)).softmax(-1, Kind::Float);
    probs.gather(1, &classes.unsqueeze(1), false).squeeze_dim(1)
}

/// A model the scoring lanes share.
struct Shared<'a>(&'a dyn crate::models::ConcurrentEval);
// SAFETY: `ConcurrentEval` promises that `logits_eval` writes no state, and libtorch supports
// reading the same tensors from several threads; the lanes call nothing else on the model.
unsafe impl Send for Shared<'_> {}
unsafe impl Sync for Shared<'_> {}

/// Images per forward on a device with one lane: on this 2-core CPU, ResNet-50 forwards of 8
/// images run faster per image than one large forward (BENCHMARKS.md, "Scoring lanes"); on a
/// GPU as many 224 px images as half its free memory holds ([`crate::cuda::chunk_for`]; 64
/// when the runtime cannot be asked).
pub fn default_chunk(device: Device) -> i64 {
    match device {
        Device::Cpu => 8,
        Device::Cuda(i) => crate::cuda::memory(i).map_or(64, |(free, _)| crate::cuda::chunk_for(free, 224 * 224)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{CamModel, ConcurrentEval, Normalization};
    use tch::Device;

    /// A model whose scoring forward panics: what a lane does when a user's model fails.
    struct Panics;

    impl CamModel for Panics {
        fn features_t(&self, x: &Tensor, _: bool) -> Tensor {
            x.shallow_clone()
        }
        fn head_t(&self, _: &Tensor, _: bool) -> Tensor {
            panic!("injected lane failure")
        }
        fn training(&self) -> bool {
            false
        }
        fn set_training(&self, _: bool) {}
        fn input_norm(&self) -> Normalization {
            Normalization::IMAGENET
        }
        fn num_classes(&self) -> i64 {
            2
        }
        fn target_channels(&self) -> i64 {
            3
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
        fn concurrent(&self) -> Option<&dyn ConcurrentEval> {
            Some(self)
        }
    }
    // SAFETY: `logits_eval` writes nothing (it panics).
    unsafe impl ConcurrentEval for Panics {}

    #[test]
    fn a_panicking_lane_gives_the_thread_count_back() {
        tch::set_num_threads(2);
        let classes = Tensor::zeros([6], (tch::Kind::Int64, Device::Cpu));
        let make = |_: i64, len: i64| Tensor::zeros([len, 3, 4, 4], (tch::Kind::Float, Device::Cpu));
        let batching = Batching { chunk: 1, lanes: 2 };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            score_batched(&Panics, 6, batching, &classes, &make)
        }));
        assert!(r.is_err(), "the lane's panic reaches the caller");
        assert_eq!(tch::get_num_threads(), 2, "a panicking lane left libtorch at one thread");
    }
}
