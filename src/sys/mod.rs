//! The C API of shim.cpp, the crate's one C++ file (built by build.rs against libtorch's
//! headers): c10d for `dist`, ATen's autocast state for `autocast`, pinned allocation for
//! `cuda`. It sits below all three, so that the lowest modules need not import the
//! distributed one. Every function that can fail returns a malloc'd error string (null on
//! success), to be released with `gc_free_str`; [`check`] does that.

pub mod autocast;
pub mod c10d;
pub mod pinned;

use std::ffi::{CStr, c_char};

unsafe extern "C" {
    pub fn gc_free_str(s: *mut c_char);
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
