//! Data-parallel training over libtorch's c10d: the collectives and the DDP pieces between
//! ranks run as threads of this process (Gloo works in-process); launches, equivalence with one
//! process and faults as real processes (`--nproc`, torchrun) on tiny synthetic data.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use groupcam::dist::{Ddp, Group, Rendezvous, launch, sampler};
use tch::{Device, Kind, Tensor, nn};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rendezvous(port: u16, rank: usize, world: usize) -> Rendezvous {
    Rendezvous { addr: "127.0.0.1".into(), port, rank, world, agent_store: false }
}

/// Runs `f(group)` on `world` ranks (threads) and returns their results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    f: impl Fn(Group) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || f(Group::new(&rendezvous(port, rank, world), Device::Cpu, timeout).unwrap()))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

#[test]
fn all_reduce_broadcast_and_barrier_over_gloo() {
    let out = on_ranks(2, Duration::from_secs(30), |g| {
        let r = g.rank as f64;
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (r + 1.0);
        let b = Tensor::full([2, 2], r + 10.0, (Kind::Double, Device::Cpu));
        g.all_reduce_sum(&[&a, &b]).unwrap();
        let c = Tensor::full([4], r, (Kind::Float, Device::Cpu));
        g.broadcast(&[&c], 0).unwrap();
        g.barrier().unwrap();
        let v = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let res = (v(&a), v(&b), v(&c));
        g.finish().unwrap();
        res
    });
    for (a, b, c) in out {
        assert_eq!(a, vec![3.0, 6.0, 9.0]);
        assert_eq!(b, vec![21.0; 4]);
        assert_eq!(c, vec![0.0; 4]);
    }
}

/// DistributedSampler: padded shards are equally long and cover the epoch (the padding repeats
/// its start); unpadded ones (validation) are disjoint and cover it exactly once.
#[test]
fn shards_are_disjoint_and_cover_the_epoch() {
    for n in 0..14usize {
        // A shuffled order, as the loader's (its values are sample indices, not positions).
        let order: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % n.max(1)).collect();
        for world in 1..5usize {
            let padded: Vec<Vec<usize>> = (0..world).map(|r| sampler::shard(&order, r, world, true)).collect();
            let len = n.div_ceil(world);
            assert!(padded.iter().all(|s| s.len() == len), "n {n} world {world}: {padded:?}");
            let mut all: Vec<usize> = padded.concat();
            all.sort();
            let mut want = order.clone();
            // torch's padding: the order again from its start, as often as needed.
            want.extend(order.iter().cycle().take(len * world - n));
            want.sort();
            assert_eq!(all, want, "n {n} world {world}");

            let exact: Vec<Vec<usize>> = (0..world).map(|r| sampler::shard(&order, r, world, false)).collect();
            let mut all: Vec<usize> = exact.concat();
            all.sort();
            let mut want = order.clone();
            want.sort();
            assert_eq!(all, want, "n {n} world {world}: each image exactly once");
            // Rank r's share, position by position: every world-th from r.
            for (r, s) in exact.iter().enumerate() {
                assert_eq!(s, &order.iter().skip(r).step_by(world).copied().collect::<Vec<_>>());
            }
        }
    }
    assert_eq!(sampler::batches(&[1, 2, 3, 4, 5], 2, true), vec![vec![1, 2], vec![3, 4]]);
    assert_eq!(sampler::batches(&[1, 2, 3, 4, 5], 2, false).len(), 3);
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: std::collections::HashMap<String, String> =
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| m.get(k).cloned()
}

fn launch_error(pairs: &[(&str, &str)]) -> String {
    format!("{:#}", launch::detect(vars(pairs)).unwrap_err())
}

#[test]
fn bad_launch_variables_are_clear_errors() {
    let ok = [("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "29500")];
    let l = launch::detect(vars(&ok)).unwrap().unwrap();
    assert_eq!((l.rv.rank, l.rv.world, l.local_rank, l.source, l.rv.port), (1, 2, 1, "torchrun", 29500));
    assert!(!l.rv.agent_store);
    let mut with_agent = ok.to_vec();
    with_agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
    assert!(launch::detect(vars(&with_agent)).unwrap().unwrap().rv.agent_store);
    assert_eq!(launch::detect(vars(&[])).unwrap(), None, "no variables: one process");
    let slurm = [("SLURM_PROCID", "3"), ("SLURM_NTASKS", "4"), ("SLURM_LOCALID", "1"), ("MASTER_ADDR", "n1")];
    let e = launch_error(&slurm);
    assert!(e.contains("slurm") && e.contains("MASTER_PORT"), "{e}");
    let mut slurm = slurm.to_vec();
    slurm.push(("MASTER_PORT", "29400"));
    let l = launch::detect(vars(&slurm)).unwrap().unwrap();
    assert_eq!((l.rv.rank, l.rv.world, l.local_rank, l.source), (3, 4, 1, "slurm"));

    let e = launch_error(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
    assert!(e.contains("rank 2") && e.contains("world size 2"), "{e}");
    let e = launch_error(&[("RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
    assert!(e.contains("WORLD_SIZE"), "{e}");
    let e = launch_error(&[("RANK", "one"), ("WORLD_SIZE", "2")]);
    assert!(e.contains("RANK='one'"), "{e}");
    let e = launch_error(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")]);
    assert!(e.contains("MASTER_PORT='70000'"), "{e}");
    let e = launch_error(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "29500")]);
    assert!(e.contains("MASTER_ADDR"), "{e}");

    // A port in use: rank 0 cannot host the store there.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = format!("{:#}", Group::new(&rendezvous(port, 0, 2), Device::Cpu, Duration::from_secs(2)).err().unwrap());
    assert!(e.contains("rank 0") && e.contains(&format!("127.0.0.1:{port}")), "{e}");
    // An unreachable master: rank 1 gives up after the timeout, naming where it looked.
    let t0 = Instant::now();
    let port = free_port();
    let e = format!("{:#}", Group::new(&rendezvous(port, 1, 2), Device::Cpu, Duration::from_secs(2)).err().unwrap());
    assert!(e.contains("rank 1") && e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
}

/// Broadcast, gradient averaging and both agreement checks on a two-tensor model: rank 1 starts
/// from other values (the broadcast fixes them), then diverges on purpose (both checks say so).
#[test]
fn ddp_broadcasts_averages_and_catches_a_diverged_rank() {
    let out = on_ranks(2, Duration::from_secs(30), |g| {
        let rank = g.rank;
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[3], nn::Init::Const(1.0 + rank as f64));
        let b = vs.root().var("b", &[2], nn::Init::Const(-(rank as f64)));
        // Tiny buckets: one tensor each, as a real model has many.
        let ddp = Ddp::new(g, &vs, 8);
        ddp.broadcast_state().unwrap();
        let after_broadcast = (Vec::<f64>::try_from(&w).unwrap(), Vec::<f64>::try_from(&b).unwrap());
        let loss = (&w * (rank as f64 + 1.0)).sum(Kind::Float) + (&b * 4.0).sum(Kind::Float);
        loss.backward();
        ddp.average_gradients().unwrap();
        let grads = (Vec::<f64>::try_from(w.grad()).unwrap(), Vec::<f64>::try_from(b.grad()).unwrap());
        let agreed = (ddp.check_agreement(1).is_ok(), ddp.check_identical().is_ok());
        if rank == 1 {
            tch::no_grad(|| {
                let _ = w.narrow(0, 1, 1).g_add_scalar_(1e-6);
            });
        }
        let diverged =
            (ddp.check_agreement(2).err().map(|e| e.to_string()), ddp.check_identical().err().map(|e| e.to_string()));
        (after_broadcast, grads, agreed, diverged)
    });
    for (rank, (after_broadcast, grads, agreed, (a, i))) in out.into_iter().enumerate() {
        assert_eq!(after_broadcast, (vec![1.0; 3], vec![0.0; 2]), "rank {rank} takes rank 0's values");
        assert_eq!(grads, (vec![1.5; 3], vec![4.0; 2]), "rank {rank}: the mean of 1 and 2, of 4 and 4");
        assert_eq!(agreed, (true, true), "rank {rank}");
        let a = a.unwrap_or_else(|| panic!("rank {rank}: the checksum check missed the divergence"));
        assert!(a.contains("rank(s) 1") && a.contains("step 2"), "{a}");
        let i = i.unwrap_or_else(|| panic!("rank {rank}: the bitwise check missed the divergence"));
        assert!(i.contains("rank(s) 1") && i.contains("not bit-identical"), "{i}");
    }
}

// ---- whole runs ---------------------------------------------------------------------------

/// 6 classes of 48 px shapes, `train` per class, and an odd validation set (one file removed),
/// so that the 2 ranks' validation shards differ in size.
fn odd_tiny_data(dir: &Path, train: usize) -> PathBuf {
    let root = common::tiny_data(dir, 48, train);
    let val = root.join("val");
    let class = std::fs::read_dir(&val).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let file = std::fs::read_dir(&class).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    std::fs::remove_file(file).unwrap();
    root
}

/// A ResNet-18 on `data`, global batch 4, no augmentation (its draws are per rank) and no probe.
fn tiny_config(dir: &Path, data: &Path, out: &str, epochs: usize, freeze_bn: bool) -> PathBuf {
    let p = dir.join(format!("{out}.yaml"));
    let text = format!(
        "arch: resnet18\n\
         data: {{root: {}, input_size: 48, workers: 1, prefetch: 2}}\n\
         train: {{epochs: {epochs}, batch_size: 4, lr: 0.05, lr_step: 1, seed: 7, device: cpu, threads: 1, freeze_bn: {freeze_bn}}}\n\
         augment: {{enabled: false}}\n\
         saliency: {{probe: 0}}\n\
         dist: {{timeout_s: 10, check_every: 1}}\n\
         out: {}\n",
        data.display(),
        dir.join(out).display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed\nstdout:\n{o}\nstderr:\n{e}");
    o.into_owned()
}

/// `finetune --config CFG EXTRA`, not yet run.
fn finetune_with(cfg: &Path, extra: &[&str]) -> Command {
    finetune_cmd(&[&["--config", s(cfg)][..], extra].concat())
}

/// With BatchNorm frozen, 2 ranks of batch 2 are the single process of batch 4: the same
/// weights (to float rounding of the averaged sums), the same validation over each image once.
#[test]
fn two_ranks_equal_one_process_with_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = odd_tiny_data(dir.path(), 2);
    let one = tiny_config(dir.path(), &data, "one", 1, true);
    let two = tiny_config(dir.path(), &data, "two", 1, true);
    run_ok(finetune_with(&one, &[]), "the single-process run");
    let out = run_ok(finetune_with(&two, &["--nproc", "2"]), "the --nproc 2 run");
    assert!(out.contains("data-parallel: 2 ranks (torchrun launch), 2 per rank"), "{out}");
    assert_eq!(out.matches("final weights:").count(), 1, "only rank 0 writes: {out}");

    let (a, b) = (
        sorted_tensors(&dir.path().join("one/final.safetensors")),
        sorted_tensors(&dir.path().join("two/final.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        if ta.kind() == Kind::Float {
            worst = worst.max(max_abs_diff(ta, tb));
        }
    }
    assert!(worst <= 1e-5, "2 ranks differ from 1 process by {worst}");
    // The runs trained at all (3 steps of momentum), so the comparison means something.
    let moved = sorted_tensors(&dir.path().join("two/checkpoints/last.safetensors"))
        .into_iter()
        .filter(|(k, _)| k.starts_with("momentum/"))
        .map(|(_, t)| t.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(moved > 1e-4, "no gradient reached the weights ({moved})");

    let (h1, h2) = (history(&dir.path().join("one")), history(&dir.path().join("two")));
    assert_eq!(h1[0]["val_images"], 11, "the single process counts each of the 11 images");
    assert_eq!(h2[0]["val_images"], 11, "the shards count each image once, no padding");
    for key in ["val_top1", "val_top5", "train_top1"] {
        assert_eq!(h1[0][key], h2[0][key], "{key}");
    }
    let (l1, l2) = (h1[0]["train_loss"].as_f64().unwrap(), h2[0]["train_loss"].as_f64().unwrap());
    assert!((l1 - l2).abs() < 1e-5, "train loss {l1} vs {l2}");
}

/// Launched by torchrun with BatchNorm training (per-rank statistics, DDP's default): the run
/// checks the ranks' weights every step and, at the end, bit for bit (a divergence fails it:
/// see `ddp_broadcasts_averages_and_catches_a_diverged_rank`).
#[test]
fn torchrun_launches_the_ranks_and_their_weights_stay_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = odd_tiny_data(dir.path(), 2);
    let cfg = tiny_config(dir.path(), &data, "bn", 1, false);
    let mut c = Command::new(root().join(".venv/bin/torchrun"));
    c.args(["--nproc-per-node", "2", "--master-port", &free_port().to_string(), "--no-python"])
        .arg(env!("CARGO_BIN_EXE_groupcam"))
        .args(["finetune", "--quiet", "--config", s(&cfg)]);
    let out = run_ok(c, "torchrun");
    assert!(out.contains("data-parallel: 2 ranks (torchrun launch), 2 per rank"), "{out}");
    assert!(dir.path().join("bn/final.safetensors").exists());
    assert_eq!(history(&dir.path().join("bn"))[0]["val_images"], 11);
}

/// Cached maps on 2 ranks: each rank computes every second image's map into its own part of the
/// run directory's cache and trains with masks cut from both parts; the ranks' weights stay
/// bit-identical (checked by the run at every step and at the end).
#[test]
fn two_ranks_share_a_saliency_cache_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let data = odd_tiny_data(dir.path(), 2);
    let cfg = tiny_config(dir.path(), &data, "cached", 1, false);
    let sets = ["--set", "augment.enabled=true", "--set", "augment.refresh=1", "--set", "augment.cache_size=16"];
    let out = run_ok(finetune_with(&cfg, &[&["--nproc", "2"][..], &sets[..]].concat()), "the cached --nproc 2 run");
    assert!(out.contains("maps of 16 x 16 px before epoch 1") && out.contains("on rank 0 of 2"), "{out}");
    let n = groupcam::data::ImageFolder::open(&data.join("train")).unwrap().len() as u64;
    for (r, rows) in [(0, n.div_ceil(2)), (1, n / 2)] {
        let part = dir.path().join(format!("cached/saliency-cache/part-{r}-of-2.u8"));
        assert_eq!(std::fs::metadata(&part).unwrap().len(), rows * 16 * 16, "{}", part.display());
    }
    let h = history(&dir.path().join("cached"));
    assert!(h[0]["augmented_fraction"].as_f64().unwrap() > 0.0, "{h:?}");
    assert_eq!(h[0]["maps_from_epoch"], 1);
}

/// Rank 1 killed after the first epoch: rank 0 fails within the timeout naming it, the
/// checkpoint is intact, and the run resumes from it (here on one process: a checkpoint does
/// not depend on the world size).
#[test]
fn a_lost_rank_stops_the_other_naming_it_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = odd_tiny_data(dir.path(), 4);
    let cfg = tiny_config(dir.path(), &data, "lost", 3, true);
    let run = dir.path().join("lost");
    let t_start = Instant::now();
    let mut parent =
        finetune_with(&cfg, &["--nproc", "2"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    while !run.join("history.json").exists() {
        assert!(t_start.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s");
        assert!(parent.try_wait().unwrap().is_none(), "the run ended before a rank could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank1 = rank_pid(parent.id(), 1).expect("rank 1's process");
    unsafe { libc::kill(rank1 as i32, libc::SIGKILL) };
    let t0 = Instant::now();
    let out = parent.wait_with_output().unwrap();
    let waited = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("lost rank 1"), "rank 0 names the lost rank: {err}");
    assert!(err.contains("rank 1 of 2 failed"), "{err}");
    // timeout_s 10: rank 0 notices at its next collective, well within the timeout.
    assert!(waited < Duration::from_secs(20), "the survivor took {waited:?}");
    assert!(!run.join("final.safetensors").exists(), "killed too late to test anything");

    let ckpt = run.join("checkpoints/last.safetensors");
    let out = run_ok(finetune_with(&cfg, &["--resume", s(&ckpt)]), "the resume on one process");
    assert!(out.contains("resumed from"), "{out}");
    assert_eq!(history(&run).len(), 3);
    assert!(run.join("final.safetensors").exists());
}

/// The child of `parent` whose environment says RANK=`rank`.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|kv| kv == format!("RANK={rank}").as_bytes()))
            .unwrap_or(false)
    })
}
