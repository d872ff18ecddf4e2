//! What libtorch does not tell through tch: a CUDA device's free memory, read from the CUDA
//! runtime that libtorch_cuda already loaded (looked up by name, so a CPU-only build links
//! and runs unchanged and simply gets `None`).

use std::ffi::{c_int, c_void};

type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;
type GetDevice = unsafe extern "C" fn(*mut c_int) -> c_int;
type SetDevice = unsafe extern "C" fn(c_int) -> c_int;

fn symbol(name: &std::ffi::CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT only reads the loaded objects' symbol tables.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// (free, total) bytes of CUDA device `index`, or `None` without a CUDA runtime or device.
pub fn memory(index: usize) -> Option<(u64, u64)> {
    if index >= tch::Cuda::device_count() as usize {
        return None;
    }
    let (info, get, set) = (symbol(c"cudaMemGetInfo")?, symbol(c"cudaGetDevice")?, symbol(c"cudaSetDevice")?);
    // SAFETY: the CUDA runtime's documented signatures; the thread's current device is put back.
    unsafe {
        let (info, get, set): (MemGetInfo, GetDevice, SetDevice) =
            (std::mem::transmute(info), std::mem::transmute(get), std::mem::transmute(set));
        let mut current: c_int = 0;
        if get(&mut current) != 0 {
            return None;
        }
        if current as usize != index && set(index as c_int) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let rc = info(&mut free, &mut total);
        if current as usize != index {
            set(current);
        }
        (rc == 0).then_some((free as u64, total as u64))
    }
}

/// Scoring forwards per chunk on a GPU with `free` bytes: half of it at about 16 MiB per
/// 224 x 224 image (a ResNet-50 inference forward of 64 images holds about 1 GB), within 16..=1024.
pub fn chunk_for(free: u64, pixels: i64) -> i64 {
    let per_image = (16u64 << 20) * pixels.max(1) as u64 / (224 * 224);
    ((free / 2) / per_image.max(1)).clamp(16, 1024) as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_cuda_no_memory_and_chunks_follow_free_memory() {
        if tch::Cuda::device_count() == 0 {
            assert_eq!(super::memory(0), None);
        }
        let gib = 1u64 << 30;
        assert_eq!(super::chunk_for(2 * gib, 224 * 224), 64);
        assert_eq!(super::chunk_for(100 * gib, 224 * 224), 1024);
        assert_eq!(super::chunk_for(gib / 4, 224 * 224), 16);
        assert_eq!(super::chunk_for(2 * gib, 112 * 112), 256);
    }
}

/// An uninitialised `dims` tensor of bytes in page-locked host memory, whose copy to a GPU can
/// be non-blocking (the caching host allocator keeps the block until that copy is done). Needs
/// a CUDA device; an error (libtorch's message) without one.
pub fn empty_pinned_u8(dims: &[i64]) -> anyhow::Result<tch::Tensor> {
    let mut out: *mut c_void = std::ptr::null_mut();
    crate::sys::check(unsafe { crate::sys::pinned::gc_empty_pinned_u8(dims.as_ptr(), dims.len(), &mut out) })
        .map_err(|e| anyhow::anyhow!("cannot allocate page-locked memory for a {dims:?} batch: {e}"))?;
    // SAFETY: on success the shim returns a new heap at::Tensor, which tch owns and frees.
    Ok(unsafe { tch::Tensor::from_ptr(out as *mut _) })
}
