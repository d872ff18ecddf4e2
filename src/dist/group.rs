//! A process group over libtorch's c10d: a TCPStore rendezvous hosted by rank 0, then Gloo on
//! the CPU or NCCL on CUDA. A heartbeat counter per rank in the store lets a failed collective
//! name the rank that was lost.

use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tch::{Device, Tensor};

use crate::sys::{self, c10d};

/// Where the ranks meet and who this one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    pub addr: String,
    pub port: u16,
    pub rank: usize,
    pub world: usize,
    /// The launcher hosts the store (torchrun's TORCHELASTIC_USE_AGENT_STORE): rank 0 connects
    /// to it like the others instead of hosting one.
    pub agent_store: bool,
}

/// Whether this build can run NCCL (libtorch with CUDA and ProcessGroupNCCL's headers at build time).
pub fn has_nccl() -> bool {
    unsafe { c10d::gc_has_nccl() != 0 }
}

struct Raw(*mut c10d::GcPg);
// SAFETY: c10d's backends and TCPStore serialise their own operations; the heartbeat thread
// touches only the store.
unsafe impl Send for Raw {}
unsafe impl Sync for Raw {}

impl Drop for Raw {
    fn drop(&mut self) {
        unsafe { c10d::gc_pg_free(self.0) }
    }
}

/// A process group of `world` ranks; every collective fails after `timeout`.
pub struct Group {
    raw: Arc<Raw>,
    pub rank: usize,
    pub world: usize,
    pub timeout: Duration,
    agent_store: bool,
    beat: Duration,
    stop: Arc<AtomicBool>,
    heart: Option<JoinHandle<()>>,
}

impl Group {
    /// Joins (rank 0: hosts) the rendezvous at addr:port and connects the backend: NCCL for a
    /// CUDA `device`, Gloo otherwise.
    pub fn new(rv: &Rendezvous, device: Device, timeout: Duration) -> Result<Group> {
        if rv.world == 0 || rv.rank >= rv.world {
            bail!("rank {} is not below the world size {}", rv.rank, rv.world);
        }
        let cuda = matches!(device, Device::Cuda(_));
        if cuda && !has_nccl() {
            bail!(
                "device {device:?}: this groupcam was built without NCCL (libtorch without CUDA, or nccl.h / \
                 nvidia-cuda-cccl missing at build time); rebuild after scripts/setup-venv.sh"
            );
        }
        let host = CString::new(rv.addr.as_str()).context("MASTER_ADDR holds a NUL byte")?;
        let mut raw = std::ptr::null_mut();
        let err = unsafe {
            c10d::gc_pg_new(
                host.as_ptr(),
                rv.port as i32,
                rv.rank as i32,
                rv.world as i32,
                timeout.as_millis() as i64,
                cuda as i32,
                rv.agent_store as i32,
                &mut raw,
            )
        };
        sys::check(err).map_err(|e| {
            anyhow::anyhow!(
                "rank {}: cannot join the rendezvous at {}:{} ({} ranks, timeout {:?}): {e}",
                rv.rank,
                rv.addr,
                rv.port,
                rv.world,
                timeout
            )
        })?;
        let raw = Arc::new(Raw(raw));
        let beat = (timeout / 8).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let stop = Arc::new(AtomicBool::new(false));
        let heart = {
            let (raw, stop, key) = (raw.clone(), stop.clone(), heartbeat_key(rv.rank));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if store_add(&raw, &key, 1).is_err() {
                        return;
                    }
                    std::thread::sleep(beat);
                }
            })
        };
        Ok(Group {
            raw,
            rank: rv.rank,
            world: rv.world,
            timeout,
            agent_store: rv.agent_store,
            beat,
            stop,
            heart: Some(heart),
        })
    }

    /// In-place sum of each tensor over the ranks.
    pub fn all_reduce_sum(&self, ts: &[&Tensor]) -> Result<()> {
        let ptrs: Vec<*mut std::ffi::c_void> = ts.iter().map(|t| t.as_ptr() as *mut _).collect();
        let err = unsafe { c10d::gc_pg_allreduce_sum(self.raw.0, ptrs.as_ptr(), ptrs.len()) };
        sys::check(err).map_err(|e| self.lost("all-reduce", e))
    }

    /// Each tensor takes `root`'s values.
    pub fn broadcast(&self, ts: &[&Tensor], root: usize) -> Result<()> {
        let ptrs: Vec<*mut std::ffi::c_void> = ts.iter().map(|t| t.as_ptr() as *mut _).collect();
        let err = unsafe { c10d::gc_pg_broadcast(self.raw.0, ptrs.as_ptr(), ptrs.len(), root as i32) };
        sys::check(err).map_err(|e| self.lost("broadcast", e))
    }

    pub fn barrier(&self) -> Result<()> {
        let err = unsafe { c10d::gc_pg_barrier(self.raw.0) };
        sys::check(err).map_err(|e| self.lost("barrier", e))
    }

    /// The error of a failed collective, naming the ranks whose heartbeat stopped.
    fn lost(&self, what: &str, err: String) -> anyhow::Error {
        let who = match self.silent_ranks() {
            Err(_) if self.rank != 0 && !self.agent_store => {
                "rank 0 (it hosts the rendezvous store) is lost".to_string()
            }
            Err(e) => format!("the rendezvous store failed: {e}"),
            Ok(r) if r.is_empty() => {
                format!("every rank's heartbeat is alive: a rank hung or is slower than the timeout {:?}", self.timeout)
            }
            Ok(r) => {
                let names: Vec<String> = r.iter().map(|r| r.to_string()).collect();
                format!("lost rank {} (its heartbeat stopped)", names.join(", rank "))
            }
        };
        anyhow::anyhow!("rank {}: {what} failed: {who}; c10d said: {err}", self.rank)
    }

    /// The other ranks whose heartbeat counter does not move over three beats.
    fn silent_ranks(&self) -> Result<Vec<usize>, String> {
        let read = || -> Result<Vec<i64>, String> {
            (0..self.world).map(|r| store_add(&self.raw, &heartbeat_key(r), 0)).collect()
        };
        let before = read()?;
        std::thread::sleep(self.beat * 3);
        let after = read()?;
        Ok((0..self.world).filter(|&r| r != self.rank && before[r] == after[r]).collect())
    }

    /// Waits for every rank, stops the heartbeat and leaves the group: rank 0 keeps the store up
    /// until all ranks are done with it.
    pub fn finish(mut self) -> Result<()> {
        self.stop_heart();
        self.barrier()
    }

    fn stop_heart(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heart.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop_heart();
    }
}

fn heartbeat_key(rank: usize) -> String {
    format!("groupcam/heartbeat/{rank}")
}

fn store_add(raw: &Raw, key: &str, delta: i64) -> Result<i64, String> {
    let key = CString::new(key).map_err(|e| e.to_string())?;
    let mut v = 0i64;
    sys::check(unsafe { c10d::gc_store_add(raw.0, key.as_ptr(), delta, &mut v) })?;
    Ok(v)
}
