//! The run directory: one writer at a time, a finished run never silently replaced, and
//! nothing changed on disk before the run is ready to start.
//!
//! The lock is an advisory `flock` on `<out>/.groupcam.lock`, which also records the holder's
//! pid for the message. The kernel drops it when its process dies, so a lock left by `kill -9`
//! is stale by construction: the next run takes it over and says whose it was.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file's name inside the run directory.
pub const LOCK: &str = ".groupcam.lock";

/// What a run writes; a directory holding any of these holds a run.
pub const RUN_ENTRIES: [&str; 7] =
    ["config.yaml", "checkpoints", "history.json", "final.safetensors", "report.md", "tb", "saliency"];

/// How a run may use a directory that already holds one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// Only an empty or new directory.
    Fresh,
    /// Clear the previous run's files first (when the run starts, not before).
    Overwrite,
    /// Continue the run that is there.
    Resume,
}

/// Why a run directory cannot be used; the CLI matches these to suggest a flag.
#[derive(Debug)]
pub enum RunLockError {
    /// Another live process holds the lock.
    Locked { dir: PathBuf, pid: Option<u32> },
    /// The directory holds a run and neither resume nor overwrite was asked for.
    HoldsRun { dir: PathBuf, found: &'static str },
}

impl fmt::Display for RunLockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunLockError::Locked { dir, pid } => write!(
                f,
                "run directory {} is in use by another groupcam process{}: wait for it to finish, or choose another --out",
                dir.display(),
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            ),
            RunLockError::HoldsRun { dir, found } => write!(
                f,
                "{} already holds a run ({found} exists): continue it with --resume {}, start a new one with a fresh --out, or clear it with --overwrite",
                dir.display(),
                dir.join("checkpoints/last.safetensors").display()
            ),
        }
    }
}

impl std::error::Error for RunLockError {}

/// A locked run directory. Until [`RunLock::start`], dropping it undoes everything it did: the
/// lock file goes, and so do the directories it created.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    lock: Option<File>,
    /// The highest directory this created (removed again when the run never starts).
    created: Option<PathBuf>,
    reuse: Reuse,
    started: bool,
    /// The pid of a dead process whose lock this took over.
    pub stale_pid: Option<u32>,
}

impl RunLock {
    /// Creates the directory if needed, locks it, and checks that `reuse` allows what is there.
    pub fn open(path: &Path, reuse: Reuse) -> Result<RunLock> {
        if path.exists() && !path.is_dir() {
            bail!("run directory {} exists and is not a directory", path.display());
        }
        let created = path.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last();
        let created = created.map(Path::to_path_buf);
        std::fs::create_dir_all(path).with_context(|| format!("cannot create run directory {}", path.display()))?;
        let mut dir = RunLock { path: path.to_path_buf(), lock: None, created, reuse, started: false, stale_pid: None };
        let (lock, stale) = lock(path)?;
        (dir.lock, dir.stale_pid) = (Some(lock), stale);
        if reuse == Reuse::Fresh {
            if let Some(found) = holds_run(path) {
                return Err(RunLockError::HoldsRun { dir: path.to_path_buf(), found }.into());
            }
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits to the run: with [`Reuse::Overwrite`] the previous run's files are removed now.
    pub fn start(&mut self) -> Result<()> {
        if self.reuse == Reuse::Overwrite {
            for e in RUN_ENTRIES {
                let p = self.path.join(e);
                let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                match gone {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("cannot remove {} (--overwrite)", p.display()));
                    }
                    _ => {}
                }
            }
        }
        self.started = true;
        Ok(())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still held: a process that opened the old file finds it unlinked and
        // retries (see `lock`).
        let _ = std::fs::remove_file(self.path.join(LOCK));
        self.lock.take();
        if let (false, Some(top)) = (self.started, &self.created) {
            // Only what is still empty: a directory made here holds nothing else unless someone
            // wrote into it meanwhile.
            for d in self.path.ancestors() {
                if std::fs::remove_dir(d).is_err() || d == top.as_path() {
                    break;
                }
            }
        }
    }
}

/// The first run entry a directory holds.
pub fn holds_run(dir: &Path) -> Option<&'static str> {
    RUN_ENTRIES.into_iter().find(|e| dir.join(e).exists())
}

/// Takes the directory's lock; returns it and the pid of a dead holder it replaced.
fn lock(dir: &Path) -> Result<(File, Option<u32>)> {
    let path = dir.join(LOCK);
    for _ in 0..100 {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        let recorded: Option<u32> = text.trim().parse().ok();
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RunLockError::Locked { dir: dir.to_path_buf(), pid: recorded }.into());
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        // The holder may have unlinked the file between our open and our lock: then this lock
        // is on a file nobody else sees, and we start over.
        let same = std::fs::metadata(&path).ok().is_some_and(|m| m.ino() == f.metadata().map(|m| m.ino()).unwrap_or(0));
        if !same {
            continue;
        }
        f.set_len(0)?;
        f.rewind()?;
        write!(f, "{}", std::process::id())?;
        f.sync_all()?;
        let stale = recorded.filter(|&p| p != std::process::id());
        return Ok((f, stale));
    }
    bail!("cannot lock {}: it keeps being replaced", path.display())
}
