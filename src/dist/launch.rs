//! How this process learns its rank: torchrun's variables, SLURM's, or `--nproc N` (which
//! spawns N local ranks of this binary with torchrun's variables set). None of them: one
//! process, exactly as without distribution.

use std::ffi::OsString;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Rendezvous;

/// A launched rank: the rendezvous and the rank on this node (its CUDA device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rv: Rendezvous,
    pub local_rank: usize,
    /// "torchrun" or "slurm": which variables it came from, for messages.
    pub source: &'static str,
}

/// The launch the environment describes (`var` reads a variable), or None for one process.
/// torchrun's RANK / WORLD_SIZE win over SLURM's SLURM_PROCID / SLURM_NTASKS; a SLURM step of
/// one task without MASTER_ADDR is a plain run.
pub fn detect(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
    let num = |name: &str| -> Result<Option<usize>> {
        match var(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .with_context(|| format!("environment variable {name}='{v}' is not a non-negative integer")),
        }
    };
    let need = |name: &str, source: &str| -> Result<String> {
        var(name)
            .filter(|v| !v.trim().is_empty())
            .with_context(|| format!("{source} launch: environment variable {name} is not set"))
    };
    let (rank, world, local, source) = if var("RANK").is_some() || var("WORLD_SIZE").is_some() {
        let rank = num("RANK")?.context("torchrun launch: WORLD_SIZE is set but RANK is not")?;
        let world = num("WORLD_SIZE")?.context("torchrun launch: RANK is set but WORLD_SIZE is not")?;
        (rank, world, num("LOCAL_RANK")?.unwrap_or(rank), "torchrun")
    } else if let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
        if world == 1 && var("MASTER_ADDR").is_none() {
            return Ok(None);
        }
        (rank, world, num("SLURM_LOCALID")?.unwrap_or(0), "slurm")
    } else {
        return Ok(None);
    };
    if world == 0 {
        bail!("{source} launch: the world size is 0");
    }
    if rank >= world {
        bail!("{source} launch: rank {rank} is not below the world size {world}");
    }
    let addr = need("MASTER_ADDR", source)?;
    let port_s = need("MASTER_PORT", source)?;
    let port: u16 = port_s
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .with_context(|| format!("environment variable MASTER_PORT='{port_s}' is not a port (1-65535)"))?;
    let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
    Ok(Some(Launch { rv: Rendezvous { addr, port, rank, world, agent_store }, local_rank: local, source }))
}

/// [`detect`] over this process's environment.
pub fn from_env() -> Result<Option<Launch>> {
    detect(|k| std::env::var(k).ok())
}

/// Runs `args` under this binary as `n` local ranks (torchrun's variables, a free port on
/// 127.0.0.1) and waits for them. When one fails, the others get `grace` to notice and exit
/// on their own (they name the lost rank), then are killed; the error names the first rank
/// that failed.
pub fn spawn_local(n: usize, args: &[OsString], grace: Duration) -> Result<()> {
    if n == 0 {
        bail!("--nproc must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find this executable to spawn its ranks")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free local port for the rendezvous")?
        .port();
    // Ctrl-C reaches the ranks too (one process group): they stop together after their step
    // and exit 130; this process waits for them instead of dying first.
    let _interrupt = crate::interrupt::Interrupt::install();
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n);
    for rank in 0..n {
        let child = Command::new(&exe)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                kill_all(&mut children);
                return Err(e).with_context(|| format!("cannot spawn rank {rank} ({})", exe.display()));
            }
        }
    }
    let mut failed: Option<(usize, String)> = None;
    let mut deadline: Option<Instant> = None;
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if let Some(status) = c.try_wait().context("cannot wait for a rank")? {
                *slot = None;
                if !status.success() && failed.is_none() {
                    failed = Some((rank, status.to_string()));
                    deadline = Some(Instant::now() + grace);
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            kill_all(&mut children);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        Some((rank, status)) => bail!("rank {rank} of {n} failed ({status}); the other ranks were stopped"),
        None => Ok(()),
    }
}

fn kill_all(children: &mut [Option<Child>]) {
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.iter_mut().for_each(|c| *c = None);
}

/// The device of this rank: `cuda:LOCAL_RANK` when the config's device is CUDA (the config's
/// own index is for single-process runs), the config's device otherwise.
pub fn device(configured: tch::Device, launch: Option<&Launch>) -> Result<tch::Device> {
    match (configured, launch) {
        (tch::Device::Cuda(_), Some(l)) => {
            let n = tch::Cuda::device_count() as usize;
            if l.local_rank >= n {
                bail!("rank {} has LOCAL_RANK {} but libtorch sees {n} CUDA device(s)", l.rv.rank, l.local_rank);
            }
            Ok(tch::Device::Cuda(l.local_rank))
        }
        (d, _) => Ok(d),
    }
}

/// `args` without `--nproc N` / `--nproc=N` (what each spawned rank runs).
pub fn without_nproc(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        match a.to_str() {
            Some("--nproc") => skip = true,
            Some(s) if s.starts_with("--nproc=") => {}
            _ => out.push(a.clone()),
        }
    }
    out
}
