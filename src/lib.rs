//! Group-CAM on libtorch: the explainer of the paper, its baselines and metrics, and a
//! backprop-free training-time augmentation built on the same core.

pub mod ab;
pub mod atomic;
pub mod augment;
pub mod autocast;
pub mod bench;
pub mod cam;
pub mod choice;
pub mod cuda;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod explain;
pub mod files;
pub mod imageio;
pub mod imagenet;
pub mod interrupt;
pub mod models;
pub mod ops;
pub mod outputs;
pub mod plot;
pub mod predict;
pub mod rundir;
pub mod synth;
pub mod sys;
pub mod tb;
pub mod train;

pub use cam::{Explainer, Explanation, GroupCam};
pub use models::{Arch, CamModel, Model};

/// The device to run on: the first CUDA device when libtorch sees one, else the CPU.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}

/// A device by name: auto (CUDA when libtorch sees a GPU), cpu, cuda or cuda:N; a CUDA device
/// libtorch does not see is an error here rather than a crash later.
pub fn parse_device(s: &str) -> anyhow::Result<tch::Device> {
    use anyhow::{Context, bail};
    use tch::{Cuda, Device};
    Ok(match s {
        "auto" => default_device(),
        "cpu" => Device::Cpu,
        _ => {
            let i: usize = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(n) => {
                    n.strip_prefix(':').and_then(|n| n.parse().ok()).with_context(|| format!("bad device '{s}'"))?
                }
                None => bail!("unknown device '{s}' (expected auto, cpu, cuda or cuda:N)"),
            };
            if i >= Cuda::device_count() as usize {
                bail!("device {s}: libtorch sees {} CUDA device(s) (run `groupcam doctor`)", Cuda::device_count());
            }
            Device::Cuda(i)
        }
    })
}

/// What `groupcam doctor` prints: the build, the libtorch linked, CUDA and CPU threads.
pub fn doctor() -> String {
    let version = option_env!("GROUPCAM_LIBTORCH_VERSION").unwrap_or("unknown");
    let mut s = format!(
        "groupcam {}\nlibtorch {version}\ncuda available: {}\ncudnn available: {}\ncuda devices: {}\ncpu threads: {}\n",
        env!("CARGO_PKG_VERSION"),
        tch::Cuda::is_available(),
        tch::Cuda::cudnn_is_available(),
        tch::Cuda::device_count(),
        tch::get_num_threads()
    );
    s += &format!(
        "data-parallel: gloo (cpu){}\n",
        if dist::has_nccl() { ", nccl (cuda)" } else { "; no nccl (built without nccl.h / nvidia-cuda-cccl)" }
    );
    for i in 0..tch::Cuda::device_count() as usize {
        s += &format!("cuda:{i} kernel check: {}\n", kernel_check(tch::Device::Cuda(i)));
        if let Some((free, total)) = cuda::memory(i) {
            s += &format!(
                "cuda:{i} memory: {:.1} GiB free of {:.1} GiB\n",
                free as f64 / (1u64 << 30) as f64,
                total as f64 / (1u64 << 30) as f64
            );
        }
    }
    s
}

/// Runs one small kernel on `device` and checks its result: availability alone does not show
/// that kernels for this GPU are in the build, or that the driver runs them.
pub fn kernel_check(device: tch::Device) -> String {
    let run = || -> anyhow::Result<f64> {
        let x = tch::Tensor::arange(1024, (tch::Kind::Float, device));
        Ok((&x * &x).sum(tch::Kind::Double).f_double_value(&[])?)
    };
    // sum of k^2 for k < 1024
    let want = (1023.0 * 1024.0 * 2047.0) / 6.0;
    match std::panic::catch_unwind(run) {
        Ok(Ok(v)) if v == want => format!("ok (sum of squares of 0..1024 = {v})"),
        Ok(Ok(v)) => format!("WRONG RESULT {v} (expected {want})"),
        Ok(Err(e)) => format!("FAILED: {e}"),
        Err(_) => "FAILED (libtorch panicked)".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_check_computes_on_the_cpu() {
        assert!(super::kernel_check(tch::Device::Cpu).starts_with("ok (sum of squares of 0..1024 = 357389824"));
    }
}
