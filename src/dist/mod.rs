//! Data-parallel training on libtorch's own collectives (c10d, through `crate::sys`): launch
//! detection, DistributedSampler shards, DDP's bucketed gradient all-reduce, the rank-0
//! broadcast of parameters and buffers, and a cheap check that the ranks' weights agree.

pub mod ddp;
pub mod group;
pub mod launch;
pub mod sampler;
pub mod world;

use serde::{Deserialize, Serialize};

pub use ddp::Ddp;
pub use group::{Group, Rendezvous, has_nccl};
pub use launch::Launch;
pub use world::World;

/// The `dist` section of a training config (used only when launched on several ranks).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DistConfig {
    /// Seconds a collective or the rendezvous may wait before the run fails, naming the lost rank.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Steps between checks that the ranks' weights agree (also at each epoch's end); 0: only then.
    #[serde(default = "default_check_every")]
    pub check_every: u64,
    /// Gradient bucket size in MB (DDP's default is 25).
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: f64,
}

fn default_timeout() -> f64 {
    300.0
}
fn default_check_every() -> u64 {
    100
}
fn default_bucket_mb() -> f64 {
    25.0
}

impl Default for DistConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults")
    }
}

impl DistConfig {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.timeout_s.max(0.001))
    }
    pub fn bucket_bytes(&self) -> usize {
        (self.bucket_mb * 1024.0 * 1024.0) as usize
    }
}
