//! The C API of shim.cpp. Every function that can fail returns a malloc'd error string (null on
//! success), to be released with `gc_free_str`.

use std::ffi::{CStr, c_char, c_int, c_void};

#[repr(C)]
pub struct GcPg {
    _private: [u8; 0],
}

unsafe extern "C" {
    pub fn gc_free_str(s: *mut c_char);
    pub fn gc_has_nccl() -> c_int;
    pub fn gc_pg_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        cuda: c_int,
        agent_store: c_int,
        out: *mut *mut GcPg,
    ) -> *mut c_char;
    pub fn gc_pg_free(pg: *mut GcPg);
    pub fn gc_pg_allreduce_sum(pg: *mut GcPg, ts: *const *mut c_void, n: usize) -> *mut c_char;
    pub fn gc_pg_broadcast(pg: *mut GcPg, ts: *const *mut c_void, n: usize, root: c_int) -> *mut c_char;
    pub fn gc_pg_barrier(pg: *mut GcPg) -> *mut c_char;
    pub fn gc_store_add(pg: *mut GcPg, key: *const c_char, delta: i64, value: *mut i64) -> *mut c_char;
    pub fn gc_autocast_enter(dtype: c_int, prev_enabled: *mut c_int, prev_dtype: *mut c_int);
    pub fn gc_autocast_exit(prev_enabled: c_int, prev_dtype: c_int);
    pub fn gc_autocast_state() -> c_int;
    pub fn gc_autocast_set_enabled(enabled: c_int);
    pub fn gc_empty_pinned_u8(sizes: *const i64, n: usize, out: *mut *mut c_void) -> *mut c_char;
}

/// Ok, or the shim's error message (the string is freed here).
pub fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { gc_free_str(err) };
    Err(msg)
}
