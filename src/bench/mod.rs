//! Benchmarks (figures for BENCHMARKS.md): each is a library function returning the rows the
//! CLI prints, and all share one timing harness, [`time_interleaved`].

pub mod augment;
pub mod cache;
pub mod dist;
pub mod explain;
pub mod insdel;
pub mod loader;
pub mod methods;
pub mod torchscript;
pub mod train;

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use tch::Device;

/// Medians of `reps` interleaved timings of each closure, after one warm-up of each:
/// interleaving spreads the machine's noise evenly over what is compared.
pub fn time_interleaved(reps: usize, fs: &mut [&mut dyn FnMut() -> Result<()>]) -> Result<Vec<f64>> {
    let mut times = vec![Vec::new(); fs.len()];
    for rep in 0..=reps.max(1) {
        for (f, t) in fs.iter_mut().zip(times.iter_mut()) {
            let s = Instant::now();
            f()?;
            if rep > 0 {
                t.push(s.elapsed().as_secs_f64());
            }
        }
    }
    Ok(times.into_iter().map(median).collect())
}

/// The median (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Waits for the device's queued work, so that a timing covers it.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A benchmark's result: lines about the set-up, then markdown tables.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub notes: Vec<String>,
    pub tables: Vec<Table>,
}

/// A markdown table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| {} |", self.header.join(" | "))?;
        writeln!(f, "|{}", "---|".repeat(self.header.len()))?;
        for r in &self.rows {
            writeln!(f, "| {} |", r.join(" | "))?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.notes {
            writeln!(f, "{n}")?;
        }
        for (i, t) in self.tables.iter().enumerate() {
            if i > 0 || !self.notes.is_empty() {
                writeln!(f)?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

/// A directory in the temp dir that is removed when dropped, also on an error.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        TempDir(std::env::temp_dir().join(format!("groupcam-bench-{tag}-{}", std::process::id())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
