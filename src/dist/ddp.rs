//! DistributedDataParallel's semantics over a [`Group`]: rank 0's parameters and buffers
//! broadcast to all, gradients averaged in flattened buckets of about 25 MB after every
//! backward, and a periodic check that the ranks' parameters agree. BatchNorm statistics stay
//! per rank (DDP's default without SyncBatchNorm).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor, nn};

use super::Group;

/// The data-parallel side of a training run.
pub struct Ddp {
    pub group: Group,
    device: Device,
    /// Trainable variables by name (the same order on every rank), grouped into buckets.
    buckets: Vec<Vec<(String, Tensor)>>,
    /// All variables (parameters and buffers) in buckets, for the broadcasts.
    state: Vec<Vec<(String, Tensor)>>,
}

/// Consecutive tensors, no bucket over `bytes` unless a single tensor is, each of one kind.
fn bucketed(vars: Vec<(String, Tensor)>, bytes: usize) -> Vec<Vec<(String, Tensor)>> {
    let mut out: Vec<Vec<(String, Tensor)>> = Vec::new();
    let mut size = 0usize;
    for (name, t) in vars {
        let b = t.numel() * t.kind().elt_size_in_bytes();
        let fits = out.last().is_some_and(|last| last[0].1.kind() == t.kind() && size + b <= bytes);
        if fits {
            size += b;
            out.last_mut().expect("a bucket").push((name, t));
        } else {
            size = b;
            out.push(vec![(name, t)]);
        }
    }
    out
}

impl Ddp {
    pub fn new(group: Group, vs: &nn::VarStore, bucket_bytes: usize) -> Ddp {
        let all: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let params: Vec<(String, Tensor)> =
            all.iter().filter(|(_, v)| v.requires_grad()).map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        let state = all.into_iter().collect();
        Ddp {
            group,
            device: vs.device(),
            buckets: bucketed(params, bucket_bytes),
            state: bucketed(state, bucket_bytes),
        }
    }

    pub fn rank(&self) -> usize {
        self.group.rank
    }

    pub fn world(&self) -> usize {
        self.group.world
    }

    /// The gradient buckets' sizes in bytes.
    pub fn bucket_bytes(&self) -> Vec<usize> {
        self.buckets.iter().map(|b| b.iter().map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).sum()).collect()
    }

    /// Every rank takes rank 0's parameters and buffers (at start and after a resume).
    pub fn broadcast_state(&self) -> Result<()> {
        tch::no_grad(|| {
            for bucket in &self.state {
                let flat = flatten(bucket.iter().map(|(_, t)| t.shallow_clone()));
                self.group.broadcast(&[&flat], 0)?;
                unflatten(&flat, bucket.iter().map(|(_, t)| (t.numel() as i64, t.shallow_clone())));
            }
            Ok(())
        })
    }

    /// Replaces each gradient by its mean over the ranks, one all-reduce per bucket. An
    /// undefined gradient counts as zeros and stays undefined.
    pub fn average_gradients(&self) -> Result<()> {
        let w = self.world() as f64;
        tch::no_grad(|| {
            for bucket in &self.buckets {
                let grads: Vec<Tensor> = bucket.iter().map(|(_, p)| p.grad()).collect();
                let parts = bucket
                    .iter()
                    .zip(&grads)
                    .map(|((_, p), g)| if g.defined() { g.shallow_clone() } else { p.zeros_like() });
                let mut flat = flatten(parts);
                self.group.all_reduce_sum(&[&flat])?;
                let _ = flat.g_div_scalar_(w);
                unflatten(&flat, bucket.iter().zip(grads).map(|((_, p), g)| (p.numel() as i64, g)));
            }
            Ok(())
        })
    }

    /// Sums of counters over the ranks (f64, exact for counts below 2^53).
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.group.all_reduce_sum(&[&t])?;
        Ok(Vec::<f64>::try_from(t.to_device(Device::Cpu))?)
    }

    /// Compares every rank's parameters with rank 0's through one f64 checksum per tensor
    /// (bit-exact: the ranks apply the same averaged update); a difference is an error on all
    /// ranks, naming the ranks and the first tensor that differ.
    pub fn check_agreement(&self, step: u64) -> Result<()> {
        let named: Vec<&(String, Tensor)> = self.buckets.iter().flatten().collect();
        let mine = tch::no_grad(|| {
            Tensor::stack(&named.iter().map(|(_, p)| p.to_kind(Kind::Double).sum(Kind::Double)).collect::<Vec<_>>(), 0)
        });
        let theirs = mine.copy();
        self.group.broadcast(&[&theirs], 0)?;
        let differs = mine.ne_tensor(&theirs);
        let first = Vec::<bool>::try_from(differs.to_device(Device::Cpu))?.iter().position(|&d| d);
        let mut flags = vec![0.0; self.world()];
        flags[self.rank()] = if first.is_some() { 1.0 } else { 0.0 };
        let flags = self.sum(&flags)?;
        let bad: Vec<String> =
            flags.iter().enumerate().filter(|(_, f)| **f > 0.0).map(|(r, _)| r.to_string()).collect();
        if !bad.is_empty() {
            let which = first.map(|i| format!(" (here: '{}' first)", named[i].0)).unwrap_or_default();
            bail!(
                "rank {}: the weights of rank(s) {} diverged from rank 0's at step {step}{which}; \
                 data-parallel training cannot go on",
                self.rank(),
                bad.join(", ")
            );
        }
        Ok(())
    }

    /// The bit-for-bit version of [`Ddp::check_agreement`], once at the end of a run: rank 0's
    /// parameters (one broadcast of the model, as at the start) against every rank's own.
    pub fn check_identical(&self) -> Result<()> {
        let mut bad = 0.0;
        let mut first = None;
        tch::no_grad(|| -> Result<()> {
            for bucket in &self.buckets {
                let mine = flatten(bucket.iter().map(|(_, t)| t.shallow_clone()));
                let theirs = mine.copy();
                self.group.broadcast(&[&theirs], 0)?;
                // Compared as integers: bit-identical, NaN included.
                if !bits(&mine).equal(&bits(&theirs)) {
                    bad = 1.0;
                    if first.is_none() {
                        first = Some(bucket[0].0.clone());
                    }
                }
            }
            Ok(())
        })?;
        let mut flags = vec![0.0; self.world()];
        flags[self.rank()] = bad;
        let flags = self.sum(&flags)?;
        let differ: Vec<String> =
            flags.iter().enumerate().filter(|(_, f)| **f > 0.0).map(|(r, _)| r.to_string()).collect();
        if !differ.is_empty() {
            let which = first.map(|n| format!(" (here: the bucket from '{n}')")).unwrap_or_default();
            bail!(
                "rank {}: the final weights of rank(s) {} are not bit-identical to rank 0's{which}",
                self.rank(),
                differ.join(", ")
            );
        }
        Ok(())
    }
}

/// The same bytes as integers of the same width (a bucket holds one kind).
fn bits(t: &Tensor) -> Tensor {
    match t.kind().elt_size_in_bytes() {
        8 => t.view_dtype(Kind::Int64),
        4 => t.view_dtype(Kind::Int),
        2 => t.view_dtype(Kind::Int16),
        _ => t.shallow_clone(),
    }
}

fn flatten(ts: impl Iterator<Item = Tensor>) -> Tensor {
    let parts: Vec<Tensor> = ts.map(|t| t.reshape([-1])).collect();
    Tensor::cat(&parts, 0)
}

/// Copies consecutive pieces of `flat` (of the given lengths) back into the tensors, skipping
/// the undefined ones but not their piece.
fn unflatten(flat: &Tensor, ts: impl Iterator<Item = (i64, Tensor)>) {
    let mut off = 0i64;
    for (n, mut t) in ts {
        if t.defined() {
            t.copy_(&flat.narrow(0, off, n).view_as(&t));
        }
        off += n;
    }
}
