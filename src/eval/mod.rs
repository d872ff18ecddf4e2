//! The paper's metrics (Sec. 4): insertion and deletion (RISE's causal metrics, Sec. 4.3), the
//! pointing game (Zhang et al., Sec. 4.4) and the sanity checks (Adebayo et al., Sec. 4.5).

pub mod insdel;
pub mod pointing;
pub mod sanity;
