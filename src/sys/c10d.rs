//! c10d: a process group (TCPStore rendezvous, Gloo or NCCL) and its collectives.

use std::ffi::{c_char, c_int, c_void};

#[repr(C)]
pub struct GcPg {
    _private: [u8; 0],
}

unsafe extern "C" {
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
}
