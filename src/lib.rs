//! Group-CAM on libtorch: the explainer of the paper, its baselines and metrics, and a
//! backprop-free training-time augmentation built on the same core.

pub mod augment;
pub mod cam;
pub mod data;
pub mod eval;
pub mod imageio;
pub mod imagenet;
pub mod models;
pub mod ops;
pub mod predict;
pub mod synth;
pub mod train;

pub use cam::{Explanation, GroupCam};
pub use models::{Arch, CamModel, Model};

/// The device to run on: the first CUDA device when libtorch sees one, else the CPU.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}
