//! The saliency methods by name, so that the CLI and the metrics treat them alike.

use anyhow::{Result, bail};

pub use super::Explainer;
use super::GroupCam;
use super::gradcam::GradCam;
use super::gradcampp::GradCamPlusPlus;
use super::rise::Rise;
use super::scorecam::ScoreCam;

/// The methods, in the paper's order of comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    GroupCam,
    GradCam,
    GradCamPlusPlus,
    ScoreCam,
    Rise,
}

impl Method {
    pub const ALL: [Method; 5] =
        [Method::GroupCam, Method::GradCam, Method::GradCamPlusPlus, Method::ScoreCam, Method::Rise];

    pub fn name(self) -> &'static str {
        match self {
            Method::GroupCam => "groupcam",
            Method::GradCam => "gradcam",
            Method::GradCamPlusPlus => "gradcampp",
            Method::ScoreCam => "scorecam",
            Method::Rise => "rise",
        }
    }

    /// The method with its default settings and what `opts` sets.
    pub fn build(self, opts: &MethodOptions) -> Box<dyn Explainer> {
        let chunk = opts.chunk;
        match self {
            Method::GroupCam => Box::new(GroupCam { chunk, ..Default::default() }),
            Method::GradCam => Box::new(GradCam),
            Method::GradCamPlusPlus => Box::new(GradCamPlusPlus),
            Method::ScoreCam => Box::new(ScoreCam { chunk }),
            Method::Rise => {
                Box::new(Rise { chunk, masks: opts.rise_masks.unwrap_or(Rise::default().masks), ..Default::default() })
            }
        }
    }
}

impl std::str::FromStr for Method {
    type Err = anyhow::Error;
    /// Case, '-', '_', ' ' and "++"/"plusplus" spellings are accepted ("Grad-CAM++").
    fn from_str(name: &str) -> Result<Self> {
        let key = name.trim().to_ascii_lowercase().replace("++", "pp").replace(['-', '_', ' '], "");
        let key = if key == "gradcamplusplus" { "gradcampp".to_string() } else { key };
        match Method::ALL.into_iter().find(|m| m.name() == key) {
            Some(m) => Ok(m),
            None => bail!("unknown method '{name}'; expected one of {}", METHODS.join(", ")),
        }
    }
}
crate::choice!(Method);

/// Settings of the methods that score perturbed inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MethodOptions {
    /// Images per scoring forward; `None` picks the device's default.
    pub chunk: Option<i64>,
    /// RISE's number of masks N (`None`: RISE's default).
    pub rise_masks: Option<i64>,
}

impl From<Option<i64>> for MethodOptions {
    /// Only the chunk.
    fn from(chunk: Option<i64>) -> Self {
        MethodOptions { chunk, rise_masks: None }
    }
}

/// The names `by_name` accepts, in the paper's order of comparison.
pub const METHODS: [&str; 5] = ["groupcam", "gradcam", "gradcampp", "scorecam", "rise"];

/// A method by name with its default settings and what `opts` sets.
pub fn by_name(name: &str, opts: impl Into<MethodOptions>) -> Result<Box<dyn Explainer>> {
    Ok(name.parse::<Method>()?.build(&opts.into()))
}

/// The methods of a list, each at most once, at least one.
pub fn build_all(methods: &[Method], opts: &MethodOptions) -> Result<Vec<Box<dyn Explainer>>> {
    for (i, m) in methods.iter().enumerate() {
        if methods[..i].contains(m) {
            bail!("method {m} is named twice");
        }
    }
    if methods.is_empty() {
        bail!("no method given");
    }
    Ok(methods.iter().map(|m| m.build(opts)).collect())
}
