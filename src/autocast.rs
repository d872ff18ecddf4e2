//! CUDA autocast through ATen's device-typed API (`at::autocast::set_autocast_enabled(kCUDA)`,
//! `set_autocast_dtype`), which libtorch 2.11 keeps, instead of `tch::autocast`, whose calls are
//! deprecated and warn on every use. It also makes bfloat16 selectable.

use std::os::raw::c_int;

use tch::Device;

use crate::sys::autocast as ffi;

/// The reduced precision autocast runs CUDA ops in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutocastDtype {
    F16,
    Bf16,
}

impl AutocastDtype {
    fn code(self) -> c_int {
        match self {
            AutocastDtype::F16 => 0,
            AutocastDtype::Bf16 => 1,
        }
    }
}

/// CUDA autocast's current state: None when off.
pub fn state() -> Option<AutocastDtype> {
    match unsafe { ffi::gc_autocast_state() } {
        0 => Some(AutocastDtype::F16),
        1 => Some(AutocastDtype::Bf16),
        _ => None,
    }
}

/// Restores the autocast state it was made from, also when `f` panics.
struct Guard {
    enabled: c_int,
    dtype: c_int,
}

impl Drop for Guard {
    fn drop(&mut self) {
        unsafe { ffi::gc_autocast_exit(self.enabled, self.dtype) }
    }
}

/// Runs `f` under CUDA autocast in `dtype` when `device` is CUDA and `dtype` is given; on the CPU
/// or with None it just runs `f`. Nests; the outermost exit drops autocast's cast cache.
pub fn autocast<T>(dtype: Option<AutocastDtype>, device: Device, f: impl FnOnce() -> T) -> T {
    match (dtype, device) {
        (Some(d), Device::Cuda(_)) => {
            let _guard = enter(d);
            f()
        }
        _ => f(),
    }
}

/// Runs `f` with CUDA autocast off, when it is on (then back on): for the parts of an autocast
/// region that must stay in f32, e.g. a classifier head whose logits are compared at 1e-2.
pub fn without<T>(f: impl FnOnce() -> T) -> T {
    if state().is_none() {
        return f();
    }
    struct On;
    impl Drop for On {
        fn drop(&mut self) {
            unsafe { ffi::gc_autocast_set_enabled(1) }
        }
    }
    unsafe { ffi::gc_autocast_set_enabled(0) };
    let _on = On;
    f()
}

fn enter(dtype: AutocastDtype) -> Guard {
    let (mut enabled, mut prev) = (0, 0);
    unsafe { ffi::gc_autocast_enter(dtype.code(), &mut enabled, &mut prev) };
    Guard { enabled, dtype: prev }
}

/// Enters CUDA autocast whatever the device (setting the state needs no GPU): for tests of
/// the entry and exit on machines without CUDA.
#[doc(hidden)]
pub fn autocast_cuda_state_for_test<T>(dtype: AutocastDtype, f: impl FnOnce() -> T) -> T {
    let _guard = enter(dtype);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_exit_nesting_and_without_restore_the_state_on_the_cpu() {
        assert_eq!(state(), None);
        // On the CPU `autocast` leaves the state alone: CUDA autocast is only entered for CUDA.
        assert_eq!(autocast(Some(AutocastDtype::F16), Device::Cpu, state), None);
        let seen = autocast_cuda_state_for_test(AutocastDtype::F16, || {
            let inner = autocast_cuda_state_for_test(AutocastDtype::Bf16, state);
            (state(), inner, without(state), state())
        });
        assert_eq!(seen, (Some(AutocastDtype::F16), Some(AutocastDtype::Bf16), None, Some(AutocastDtype::F16)));
        assert_eq!(state(), None);
        let r = std::panic::catch_unwind(|| autocast_cuda_state_for_test(AutocastDtype::F16, || panic!("inside")));
        assert!(r.is_err());
        assert_eq!(state(), None, "a panic left autocast on");
    }
}
