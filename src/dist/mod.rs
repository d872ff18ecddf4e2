//! Data-parallel training on libtorch's own collectives (c10d, through shim.cpp): launch
//! detection, DistributedSampler shards, DDP's bucketed gradient all-reduce, the rank-0
//! broadcast of parameters and buffers, and a cheap check that the ranks' weights agree.

pub mod ffi;
pub mod group;

pub use group::{Group, Rendezvous, has_nccl};
