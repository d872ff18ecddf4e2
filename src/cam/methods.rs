//! The saliency methods by name, so that the CLI and the metrics treat them alike.

use anyhow::{Result, bail};
use tch::Tensor;

use super::gradcam::GradCam;
use super::gradcampp::GradCamPlusPlus;
use super::rise::Rise;
use super::scorecam::ScoreCam;
use super::{Explanation, GroupCam};
use crate::models::CamModel;

/// A saliency method: maps in [0, 1] (N x H x W) for a normalised N x 3 x H x W batch.
pub trait Explainer {
    fn name(&self) -> &'static str;
    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation>;
}

/// The names `by_name` accepts, in the paper's order of comparison.
pub const METHODS: [&str; 5] = ["groupcam", "gradcam", "gradcampp", "scorecam", "rise"];

/// A method with its default settings; `chunk` (images per scoring forward) applies to the
/// methods that score perturbed inputs.
pub fn by_name(name: &str, chunk: Option<i64>) -> Result<Box<dyn Explainer>> {
    Ok(match name.trim().to_ascii_lowercase().replace("++", "pp").replace(['-', '_', ' '], "").as_str() {
        "groupcam" => Box::new(GroupCam { chunk, ..Default::default() }),
        "gradcam" => Box::new(GradCam),
        "gradcampp" | "gradcamplusplus" => Box::new(GradCamPlusPlus),
        "scorecam" => Box::new(ScoreCam { chunk }),
        "rise" => Box::new(Rise { chunk, ..Default::default() }),
        _ => bail!("unknown method '{name}'; expected one of {}", METHODS.join(", ")),
    })
}

impl Explainer for GroupCam {
    fn name(&self) -> &'static str {
        "groupcam"
    }
    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        GroupCam::explain(self, model, x, classes)
    }
}

impl Explainer for GradCam {
    fn name(&self) -> &'static str {
        "gradcam"
    }
    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        GradCam::explain(self, model, x, classes)
    }
}

impl Explainer for GradCamPlusPlus {
    fn name(&self) -> &'static str {
        "gradcampp"
    }
    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        GradCamPlusPlus::explain(self, model, x, classes)
    }
}

impl Explainer for ScoreCam {
    fn name(&self) -> &'static str {
        "scorecam"
    }
    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        ScoreCam::explain(self, model, x, classes)
    }
}

impl Explainer for Rise {
    fn name(&self) -> &'static str {
        "rise"
    }
    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        Rise::explain(self, model, x, classes)
    }
}
