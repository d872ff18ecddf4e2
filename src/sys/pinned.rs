//! Page-locked host memory from libtorch's caching host allocator (needs a CUDA device).

use std::ffi::{c_char, c_void};

unsafe extern "C" {
    pub fn gc_empty_pinned_u8(sizes: *const i64, n: usize, out: *mut *mut c_void) -> *mut c_char;
}
