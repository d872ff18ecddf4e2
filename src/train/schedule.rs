//! The learning-rate schedule: the optional plain pre-training, then StepLR from the
//! fine-tuning's own first epoch, and the phase each epoch belongs to.

use anyhow::{Context, Result};

use super::Config;

/// The part of the run an epoch belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// The optional plain training before the fine-tuning proper (`pretrain` in the config).
    Pretrain,
    #[default]
    Finetune,
}

impl Phase {
    pub const ALL: [Phase; 2] = [Phase::Pretrain, Phase::Finetune];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pretrain => "pretrain",
            Phase::Finetune => "finetune",
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Phase::ALL.into_iter().find(|p| p.name() == s).with_context(|| format!("unknown phase '{s}'"))
    }
}
crate::choice!(Phase);

/// The learning rate and phase of an epoch: the optional plain pre-training, then StepLR from
/// the fine-tuning's own first epoch.
pub fn lr_schedule(cfg: &Config, epoch: usize) -> (f64, Phase) {
    let t = &cfg.train;
    match &cfg.pretrain {
        Some(p) if epoch < p.epochs => {
            let k = p.lr_step.map(|s| epoch / s.max(1)).unwrap_or(0);
            (p.lr * t.lr_gamma.powi(k as i32), Phase::Pretrain)
        }
        p => {
            let start = p.as_ref().map(|p| p.epochs).unwrap_or(0);
            (t.lr * t.lr_gamma.powi(((epoch - start) / t.lr_step) as i32), Phase::Finetune)
        }
    }
}
