//! Top-k classification.

use anyhow::Result;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::imagenet::name_for;
use crate::models::CamModel;

#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub class: i64,
    pub name: String,
    pub probability: f64,
}

/// The `k` most probable classes of each image of a normalised batch.
pub fn topk(model: &dyn CamModel, x: &Tensor, k: i64) -> Result<Vec<Vec<Prediction>>> {
    if k < 1 || k > model.num_classes() {
        anyhow::bail!("top-k {k} is out of range: the model has {} classes (1..={0})", model.num_classes());
    }
    let probs = tch::no_grad(|| model.logits_eval(x).softmax(-1, Kind::Double));
    let (p, idx) = probs.topk(k, -1, true, true);
    let p = Vec::<Vec<f64>>::try_from(p.to_device(tch::Device::Cpu))?;
    let idx = Vec::<Vec<i64>>::try_from(idx.to_device(tch::Device::Cpu))?;
    Ok(p.into_iter()
        .zip(idx)
        .map(|(ps, is)| {
            ps.into_iter()
                .zip(is)
                .map(|(probability, class)| Prediction {
                    class,
                    name: name_for(class, model.num_classes()),
                    probability,
                })
                .collect()
        })
        .collect())
}
