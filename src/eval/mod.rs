//! The paper's metrics (Sec. 4): insertion and deletion (RISE's causal metrics, Sec. 4.3) and
//! the pointing game (Zhang et al., Sec. 4.4).

pub mod insdel;
pub mod pointing;
