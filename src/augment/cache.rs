//! The saliency cache (`augment.refresh: K`): the augmentation's map of every training image,
//! computed every K epochs instead of at every step.
//!
//! A refresh pass runs the augmentation's own map step (same G, class = the label, eval mode,
//! no backward) on each whole training image resized to the input size, averages the map down
//! to `side` x `side` (`augment.cache_size`) and stores it as bytes, `round(255 map)`. During
//! training the loader cuts each image's box out of its cached map with the image's own
//! RandomResizedCrop box and flip, resizes it to the crop (bilinear), and takes
//! S = [map >= its mean over the crop]; the step then blends with the blur as Eq. 5 does. A map
//! that came out constant is stored as zeros, so its S is all ones and the image passes through.
//!
//! On disk (`<run>/saliency-cache/`): `part-R-of-W.u8` per rank R of W, holding the maps of the
//! samples i with i % W == R at row i / W (each rank writes its own file, so no two processes
//! write one page; every rank memory-maps all of them), and `cache.json`, written last, which
//! says what the maps are of: the dataset's fingerprint, the settings, and the epoch and step
//! of the weights they were computed with. A cache whose `cache.json` does not match what the
//! run needs now is stale or foreign and is rebuilt. Size: samples x side^2 bytes (ImageNet's
//! 1,281,167 images at 56 px: 4.0 GB), refused before any work when the disk lacks it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fast_image_resize as fir;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::GroupCamAugment;
use crate::data::transforms::Placed;
use crate::data::{ImageFolder, Loader};
use crate::models::CamModel;

/// What a cache holds and what it was computed with: equal to the run's wish, or rebuilt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub version: u32,
    pub samples: usize,
    /// The maps' side in pixels.
    pub side: u32,
    pub input_size: u32,
    pub groups: i64,
    pub score_size: Option<i64>,
    pub world: usize,
    /// The training set's files and labels, hashed (`fingerprint`).
    pub fingerprint: String,
    /// The 0-based epoch before which the maps were computed: the weights they come from.
    pub epoch: usize,
}

pub const VERSION: u32 = 1;

/// A 64-bit FNV-1a hash of the samples' paths (relative to the root) and labels.
pub fn fingerprint(data: &ImageFolder) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, label) in &data.samples {
        let rel = path.strip_prefix(&data.root).unwrap_or(path);
        for b in rel.to_string_lossy().bytes().chain(label.to_le_bytes()).chain([0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Bytes a cache of `samples` maps of `side` x `side` takes on disk.
pub fn bytes_needed(samples: usize, side: u32) -> u64 {
    samples as u64 * side as u64 * side as u64
}

fn part_name(rank: usize, world: usize) -> String {
    format!("part-{rank}-of-{world}.u8")
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("cache.json")
}

/// The samples of rank `rank` of `world`: every world-th from `rank` on.
pub fn shard(samples: usize, rank: usize, world: usize) -> Vec<usize> {
    (rank..samples).step_by(world.max(1)).collect()
}

/// The cached maps, memory-mapped, and the apply probability of the masks cut from them.
pub struct SaliencyCache {
    parts: Vec<memmap2::Mmap>,
    meta: CacheMeta,
    probability: f64,
}

impl std::fmt::Debug for SaliencyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaliencyCache").field("meta", &self.meta).field("probability", &self.probability).finish()
    }
}

impl SaliencyCache {
    /// The cache in `dir` when its `cache.json` has `want`'s settings, its maps were computed at
    /// an epoch from `due` to `want.epoch`, and every part has its size; otherwise why not
    /// (missing, stale or foreign).
    pub fn open(
        dir: &Path,
        want: &CacheMeta,
        due: usize,
        probability: f64,
    ) -> Result<std::result::Result<SaliencyCache, String>> {
        let listed = meta_path(dir);
        let Ok(text) = std::fs::read_to_string(&listed) else { return Ok(Err("no cache yet".into())) };
        let have: CacheMeta = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("{} is not a cache description ({e})", listed.display()))),
        };
        if (CacheMeta { epoch: 0, ..have.clone() }) != (CacheMeta { epoch: 0, ..want.clone() })
            || !(due..=want.epoch).contains(&have.epoch)
        {
            return Ok(Err(stale_reason(&have, want, due)));
        }
        let mut parts = Vec::new();
        for r in 0..want.world {
            let path = dir.join(part_name(r, want.world));
            let rows = shard(want.samples, r, want.world).len() as u64;
            let expected = rows * want.side as u64 * want.side as u64;
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => return Ok(Err(format!("{}: {e}", path.display()))),
            };
            let len = file.metadata()?.len();
            if len != expected {
                return Ok(Err(format!("{} has {len} bytes, not {expected}", path.display())));
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
        let w = self.meta.world;
        let n = (self.meta.side * self.meta.side) as usize;
        let row = i / w;
        &self.parts[i % w][row * n..(row + 1) * n]
    }

    /// Writes sample `i`'s mask for the crop `placed` into `dst` (S x S bytes, 1 = keep): with
    /// chance `probability` (drawn from the sample's generator after its crop and flip) its
    /// cached map cut to the crop, otherwise all ones. Returns whether the mask hides any pixel.
    pub fn write_mask(&self, i: usize, placed: &Placed, rng: &mut impl Rng, dst: &mut [u8]) -> Result<bool> {
        if self.probability < 1.0 && rng.random::<f64>() >= self.probability {
            dst.fill(1);
            return Ok(false);
        }
        cut_mask(self.map(i), self.meta.side, placed, dst)
    }
}

/// The mask of a crop from a whole image's map (`side` x `side` bytes): the crop's box, scaled
/// from the image's pixels to the map's, resized to the crop's size (bilinear), mirrored as the
/// image was, and S = [value >= the mean over the crop] as 0/1 bytes into `dst`. A crop whose
/// map is constant keeps every pixel. Returns whether any pixel is hidden.
pub fn cut_mask(map: &[u8], side: u32, placed: &Placed, dst: &mut [u8]) -> Result<bool> {
    let p = &placed.params;
    let s = p.size as usize;
    if dst.len() != s * s {
        bail!("mask buffer has {} bytes, not {s} x {s}", dst.len());
    }
    let (sx, sy) = (side as f64 / placed.width as f64, side as f64 / placed.height as f64);
    let src = fir::images::ImageRef::new(side, side, map, fir::PixelType::U8)?;
    let mut resized = vec![0u8; s * s];
    let mut out = fir::images::Image::from_slice_u8(p.size, p.size, &mut resized, fir::PixelType::U8)?;
    // The box in the map's pixels, kept inside it: x + w <= width in the image's pixels can
    // land an ulp past the map's side once scaled.
    let (left, top) = ((p.x * sx).clamp(0.0, side as f64), (p.y * sy).clamp(0.0, side as f64));
    let width = (p.w * sx).min(side as f64 - left).max(1e-3);
    let height = (p.h * sy).min(side as f64 - top).max(1e-3);
    let (left, top) = (left.min(side as f64 - width), top.min(side as f64 - height));
    let opts = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
        .crop(left, top, width, height);
    fir::Resizer::new().resize(&src, &mut out, &opts)?;
    let mean = resized.iter().map(|&v| v as u64).sum::<u64>() as f64 / resized.len() as f64;
    let mut hides = false;
    for (row_out, row_in) in dst.chunks_exact_mut(s).zip(resized.chunks_exact(s)) {
        let mut put = |o: &mut u8, v: u8| {
            *o = u8::from(v as f64 >= mean);
            hides |= *o == 0;
        };
        if p.flip {
            row_out.iter_mut().zip(row_in.iter().rev()).for_each(|(o, &v)| put(o, v));
        } else {
            row_out.iter_mut().zip(row_in).for_each(|(o, &v)| put(o, v));
        }
    }
    Ok(hides)
}

fn stale_reason(have: &CacheMeta, want: &CacheMeta, due: usize) -> String {
    if have.fingerprint != want.fingerprint || have.samples != want.samples {
        return format!(
            "it is of another training set ({} samples, fingerprint {}; now {} samples, {})",
            have.samples, have.fingerprint, want.samples, want.fingerprint
        );
    }
    if (CacheMeta { epoch: 0, ..have.clone() }) == (CacheMeta { epoch: 0, ..want.clone() }) {
        return format!(
            "it holds the maps computed before epoch {}; epoch {} needs maps from epoch {} on",
            have.epoch + 1,
            want.epoch + 1,
            due + 1
        );
    }
    format!("its settings differ ({have:?} against {want:?})")
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

/// What a refresh pass did on this rank.
#[derive(Clone, Debug, Default)]
pub struct RefreshStats {
    pub images: usize,
    pub constant: usize,
    pub unreadable: usize,
    pub seconds: f64,
}

/// A refresh pass that `stop` ended early (Ctrl-C): nothing of its part was kept.
#[derive(Debug, thiserror::Error)]
#[error("the saliency cache's refresh pass was stopped after {done} of {of} images")]
pub struct Stopped {
    pub done: usize,
    pub of: usize,
}

/// Computes this rank's part of the cache into `dir`: the maps of its shard of `loader`'s
/// samples (whose transform is [`crate::data::Transform::Whole`]) with `aug`'s map step, in
/// batches of `loader.batch_size`, written atomically. An unreadable image gets a zero map (its
/// training reads will skip it anyway). `stop` is asked before each batch; when it says yes the
/// pass ends with [`Stopped`] and leaves no part file.
#[allow(clippy::too_many_arguments)]
pub fn write_part(
    model: &dyn CamModel,
    aug: &GroupCamAugment,
    loader: &Loader,
    meta: &CacheMeta,
    rank: usize,
    dir: &Path,
    device: Device,
    stop: &dyn Fn() -> bool,
) -> Result<RefreshStats> {
    let start = std::time::Instant::now();
    let mine = shard(loader.data.len(), rank, meta.world);
    let batches: Vec<Vec<usize>> = mine.chunks(loader.batch_size.max(1)).map(|c| c.to_vec()).collect();
    let row = (meta.side * meta.side) as usize;
    let mut stats = RefreshStats::default();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(part_name(rank, meta.world));
    crate::atomic::write_with(&path, |tmp| {
        let mut out = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(tmp)?);
        for (idx, batch) in batches.iter().zip(loader.epoch_of(0, batches.clone(), 0)) {
            if stop() {
                return Err(Stopped { done: stats.images + stats.unreadable, of: mine.len() }.into());
            }
            let batch = batch?;
            let rows = if batch.is_empty() {
                Vec::new()
            } else {
                let x = batch.images(device);
                let (maps, constant) = aug.maps_for(model, &x, &batch.labels)?;
                let bytes = to_cache(&maps, meta.side);
                let mut rows = vec![0u8; constant.len() * row];
                let len = rows.len();
                bytes.copy_data_u8(&mut rows, len);
                for (j, &c) in constant.iter().enumerate() {
                    if c {
                        rows[j * row..(j + 1) * row].fill(0);
                    }
                }
                stats.constant += constant.iter().filter(|&&c| c).count();
                rows
            };
            // Rows in sample order; an unreadable file's row is zeros.
            let mut readable = rows.chunks_exact(row);
            for &i in idx {
                let path = &loader.data.samples[i].0;
                if batch.skipped.iter().any(|(p, _)| p == path) {
                    out.write_all(&vec![0u8; row])?;
                    stats.unreadable += 1;
                } else {
                    out.write_all(readable.next().context("a refresh batch has fewer maps than images")?)?;
                    stats.images += 1;
                }
            }
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(())
    })?;
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// Maps (m x 1 x H x W in [0, 1]) as the cache stores them: area-averaged to `side` x `side`
/// and `round(255 map)` bytes, on the CPU.
pub fn to_cache(maps: &Tensor, side: u32) -> Tensor {
    let small = maps.adaptive_avg_pool2d([side as i64, side as i64]);
    (small * 255.0).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).to_device(Device::Cpu)
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
            if name.starts_with("part-") && name.ends_with(".u8") {
                std::fs::remove_file(e.path()).with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}

/// The 0-based epoch whose weights the cache must hold during `epoch`: the last refresh
/// epoch at or before it, refreshing every `every` epochs from the fine-tuning's first.
pub fn due_epoch(epoch: usize, finetune_start: usize, every: usize) -> usize {
    let every = every.max(1);
    finetune_start + (epoch - finetune_start) / every * every
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::transforms::CropParams;

    /// Every RandomResizedCrop box of images whose sides do not divide the map's cuts a mask:
    /// scaled boxes that end an ulp past the map are kept inside it.
    #[test]
    fn boxes_at_the_image_edge_cut_masks_at_any_scale() {
        let map: Vec<u8> = (0..56 * 56).map(|i| (i * 7 % 251) as u8).collect();
        let mut dst = vec![0u8; 32 * 32];
        for (w, h) in [(500u32, 375u32), (333, 497), (57, 1000)] {
            for x in 0..w.min(40) {
                let params = CropParams {
                    x: (w - 1 - x) as f64,
                    y: 0.0,
                    w: (x + 1) as f64,
                    h: h as f64,
                    size: 32,
                    flip: false,
                    crop_first: true,
                };
                cut_mask(&map, 56, &Placed { params, width: w, height: h }, &mut dst).unwrap();
            }
        }
    }
}

/// A cached mask as a tensor (tests and the benchmark): [`cut_mask`] into a 1 x S x S tensor.
pub fn mask_tensor(map: &[u8], side: u32, placed: &Placed) -> Result<Tensor> {
    let s = placed.params.size as i64;
    let mut dst = vec![0u8; (s * s) as usize];
    cut_mask(map, side, placed, &mut dst)?;
    Ok(Tensor::from_slice(&dst).view([1, s, s]))
}
