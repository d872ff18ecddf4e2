//! The paper's metrics (Sec. 4): insertion and deletion (RISE's causal metrics, Sec. 4.3), the
//! pointing game (Zhang et al., Sec. 4.4) and the sanity checks (Adebayo et al., Sec. 4.5).

pub mod insdel;
pub mod pointing;
pub mod sanity;

/// The metrics `groupcam eval` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Insertion,
    Deletion,
    Pointing,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Insertion, Metric::Deletion, Metric::Pointing];
    pub fn name(self) -> &'static str {
        match self {
            Metric::Insertion => "insertion",
            Metric::Deletion => "deletion",
            Metric::Pointing => "pointing",
        }
    }
    /// The insertion/deletion mode of the metric, if it is one.
    pub fn mode(self) -> Option<insdel::Mode> {
        match self {
            Metric::Insertion => Some(insdel::Mode::Insertion),
            Metric::Deletion => Some(insdel::Mode::Deletion),
            Metric::Pointing => None,
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match Metric::ALL.into_iter().find(|m| m.name() == s) {
            Some(m) => Ok(m),
            None => anyhow::bail!("unknown metric '{s}' (expected insertion, deletion or pointing)"),
        }
    }
}
crate::choice!(Metric);

/// What `groupcam eval` writes: the model and each family of metrics measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    pub arch: String,
    pub weights: String,
    pub input_size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insdel: Option<insdel::InsdelReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointing: Option<pointing::PointingReport>,
}
