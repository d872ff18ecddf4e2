//! ATen's CUDA autocast state (`at::autocast`, device-typed); setting it needs no GPU.

use std::ffi::c_int;

unsafe extern "C" {
    pub fn gc_autocast_enter(dtype: c_int, prev_enabled: *mut c_int, prev_dtype: *mut c_int);
    pub fn gc_autocast_exit(prev_enabled: c_int, prev_dtype: c_int);
    pub fn gc_autocast_state() -> c_int;
    pub fn gc_autocast_set_enabled(enabled: c_int);
}
