//! The cache on disk: its part files and description, opened memory-mapped when they are what
//! the run needs, or the reason they must be rebuilt; and the disk-space check.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use tch::{Kind, Tensor};

use super::{CacheMeta, shard};
use crate::augment::CacheOf;

pub(super) fn part_name(rank: usize, world: usize, holds: CacheOf) -> String {
    match holds {
        CacheOf::Maps => format!("part-{rank}-of-{world}.u8"),
        CacheOf::Scores => format!("part-{rank}-of-{world}.f16"),
    }
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("cache.json")
}

/// Bytes a cache of `samples` maps of `side` x `side` takes on disk.
pub fn bytes_needed(samples: usize, side: u32) -> u64 {
    samples as u64 * side as u64 * side as u64
}

/// Bytes a score cache of `samples` rows of `groups` f16 scores takes on disk.
pub fn score_bytes_needed(samples: usize, groups: i64) -> u64 {
    samples as u64 * 2 * groups.max(0) as u64
}

/// Why a cache cannot serve the run and is rebuilt (said on the run's log).
#[derive(Clone, Debug, PartialEq)]
pub enum Rebuild {
    /// No `cache.json`: nothing was published yet.
    Missing,
    /// `cache.json` is not a cache description.
    Unreadable { path: PathBuf, error: String },
    /// The maps are of other files or labels.
    OtherTrainingSet { have_samples: usize, have: String, want_samples: usize, want: String },
    /// The right settings, but weights older than the due refresh epoch (0-based epochs).
    OlderWeights { have_epoch: usize, want_epoch: usize, due: usize },
    /// Maps where the run wants scores, or the other way round (`augment.cache`).
    OtherContent { have: CacheOf, want: CacheOf },
    /// Other settings (side, input size, groups, score size, world, version, precision).
    Settings { have: Box<CacheMeta>, want: Box<CacheMeta> },
    /// A part file cannot be opened.
    PartMissing { path: PathBuf, error: String },
    /// A part file of the wrong size (an interrupted copy, another world size).
    PartSize { path: PathBuf, len: u64, expected: u64 },
    /// This rank could read the cache, another rank could not (every rank rebuilds together).
    AnotherRank,
}

impl std::fmt::Display for Rebuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rebuild::Missing => write!(f, "no cache yet"),
            Rebuild::Unreadable { path, error } => write!(f, "{} is not a cache description ({error})", path.display()),
            Rebuild::OtherTrainingSet { have_samples, have, want_samples, want } => write!(
                f,
                "it is of another training set ({have_samples} samples, fingerprint {have}; now {want_samples} \
                 samples, {want})"
            ),
            Rebuild::OlderWeights { have_epoch, want_epoch, due } => write!(
                f,
                "it holds the maps computed before epoch {}; epoch {} needs maps from epoch {} on",
                have_epoch + 1,
                want_epoch + 1,
                due + 1
            ),
            Rebuild::OtherContent { have, want } => {
                write!(f, "it holds {have}, and the run caches {want} (augment.cache: {want})")
            }
            Rebuild::Settings { have, want } => write!(f, "its settings differ ({have:?} against {want:?})"),
            Rebuild::PartMissing { path, error } => write!(f, "{}: {error}", path.display()),
            Rebuild::PartSize { path, len, expected } => {
                write!(f, "{} has {len} bytes, not {expected}", path.display())
            }
            Rebuild::AnotherRank => write!(f, "another rank cannot read it"),
        }
    }
}

/// The cached maps or scores, memory-mapped, and the apply probability of the masks cut from
/// cached maps.
pub struct SaliencyCache {
    parts: Vec<memmap2::Mmap>,
    meta: CacheMeta,
    pub(super) probability: f64,
}

impl std::fmt::Debug for SaliencyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaliencyCache").field("meta", &self.meta).field("probability", &self.probability).finish()
    }
}

impl SaliencyCache {
    /// The cache in `dir` when its `cache.json` has `want`'s settings, its maps were computed at
    /// an epoch from `due` to `want.epoch`, and every part has its size; otherwise why not.
    pub fn open(
        dir: &Path,
        want: &CacheMeta,
        due: usize,
        probability: f64,
    ) -> Result<std::result::Result<SaliencyCache, Rebuild>> {
        let listed = meta_path(dir);
        let Ok(text) = std::fs::read_to_string(&listed) else { return Ok(Err(Rebuild::Missing)) };
        let have: CacheMeta = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => return Ok(Err(Rebuild::Unreadable { path: listed, error: e.to_string() })),
        };
        if (CacheMeta { epoch: 0, ..have.clone() }) != (CacheMeta { epoch: 0, ..want.clone() })
            || !(due..=want.epoch).contains(&have.epoch)
        {
            return Ok(Err(stale_reason(&have, want, due)));
        }
        let mut parts = Vec::new();
        for r in 0..want.world {
            let path = dir.join(part_name(r, want.world, want.holds));
            let rows = shard(want.samples, r, want.world).len() as u64;
            let expected = rows * want.row_bytes();
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => return Ok(Err(Rebuild::PartMissing { path, error: e.to_string() })),
            };
            let len = file.metadata()?.len();
            if len != expected {
                return Ok(Err(Rebuild::PartSize { path, len, expected }));
            }
            // SAFETY: the file is only ever replaced by a rename, never written in place, so
            // the mapped pages do not change under the reader.
            let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
            parts.push(map);
        }
        Ok(Ok(SaliencyCache { parts, meta: have, probability }))
    }

    pub fn meta(&self) -> &CacheMeta {
        &self.meta
    }

    /// Sample `i`'s map: side x side bytes, row-major.
    pub fn map(&self, i: usize) -> &[u8] {
        self.row(i)
    }

    /// Sample `i`'s row as stored.
    fn row(&self, i: usize) -> &[u8] {
        let w = self.meta.world;
        let n = self.meta.row_bytes() as usize;
        let row = i / w;
        &self.parts[i % w][row * n..(row + 1) * n]
    }

    /// The cached scores of `samples` (a score cache): n x G floats on the CPU.
    pub fn scores(&self, samples: &[usize]) -> Result<Tensor> {
        if self.meta.holds != CacheOf::Scores {
            bail!("the saliency cache holds {}, not group scores", self.meta.holds);
        }
        let mut bytes = Vec::with_capacity(samples.len() * self.meta.row_bytes() as usize);
        for &i in samples {
            if i >= self.meta.samples {
                bail!("sample {i} is not in the score cache of {} samples", self.meta.samples);
            }
            bytes.extend_from_slice(self.row(i));
        }
        let t = Tensor::from_data_size(&bytes, &[samples.len() as i64, self.meta.groups], Kind::Half);
        Ok(t.to_kind(Kind::Float))
    }
}

fn stale_reason(have: &CacheMeta, want: &CacheMeta, due: usize) -> Rebuild {
    if have.fingerprint != want.fingerprint || have.samples != want.samples {
        return Rebuild::OtherTrainingSet {
            have_samples: have.samples,
            have: have.fingerprint.clone(),
            want_samples: want.samples,
            want: want.fingerprint.clone(),
        };
    }
    if (CacheMeta { epoch: 0, ..have.clone() }) == (CacheMeta { epoch: 0, ..want.clone() }) {
        return Rebuild::OlderWeights { have_epoch: have.epoch, want_epoch: want.epoch, due };
    }
    if have.holds != want.holds {
        return Rebuild::OtherContent { have: have.holds, want: want.holds };
    }
    Rebuild::Settings { have: Box::new(have.clone()), want: Box::new(want.clone()) }
}

/// Free bytes on the filesystem of `dir` (or of its nearest existing ancestor).
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let mut at = dir;
    while !at.exists() {
        at = at.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    }
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed out-struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!("cannot read the free space of {}: {}", at.display(), std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuses a cache that cannot fit: `needed` bytes against the free space of `dir`'s
/// filesystem plus what the files it replaces there take now.
pub fn check_space(dir: &Path, needed: u64) -> Result<()> {
    let reclaimed: u64 = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    let free = free_bytes(dir)?;
    if free + reclaimed < needed {
        bail!(
            "the saliency cache needs {:.2} GB in {} but its disk has {:.2} GB free: lower augment.cache_size, \
             move the run (out:), or set augment.refresh: batch",
            needed as f64 / 1e9,
            dir.display(),
            (free + reclaimed) as f64 / 1e9
        );
    }
    Ok(())
}

/// Publishes a cache whose parts are all written: its description, last and atomically.
pub fn publish(dir: &Path, meta: &CacheMeta) -> Result<()> {
    crate::atomic::write_bytes(&meta_path(dir), &serde_json::to_vec_pretty(meta)?)
}

/// Removes a stale cache's files (its description first, so that a crash in between leaves no
/// cache that looks whole).
pub fn clear(dir: &Path) -> Result<()> {
    let listed = meta_path(dir);
    if listed.exists() {
        std::fs::remove_file(&listed).with_context(|| format!("cannot remove {}", listed.display()))?;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("part-") && (name.ends_with(".u8") || name.ends_with(".f16")) {
                std::fs::remove_file(e.path()).with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}
