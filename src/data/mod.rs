//! ImageFolder datasets as torchvision reads them, its train and eval transforms, and a
//! loader that decodes on worker threads into a bounded prefetch queue.

pub mod decode;
pub mod transforms;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::{bounded, unbounded};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tch::{Device, Kind, Tensor};

use crate::models::Normalization;

/// Samples of a folder whose sub-folders are the classes, in sorted order (torchvision's
/// `ImageFolder`): class i is the i-th sub-folder name.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub samples: Vec<(PathBuf, i64)>,
}

impl ImageFolder {
    pub fn open(root: &Path) -> Result<ImageFolder> {
        let entries =
            std::fs::read_dir(root).with_context(|| format!("cannot read dataset folder {}", root.display()))?;
        let mut classes = BTreeSet::new();
        for e in entries {
            let e = e?;
            if e.file_type()?.is_dir() {
                classes.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
        let classes: Vec<String> = classes.into_iter().collect();
        let mut samples = Vec::new();
        for (i, c) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> =
                walk(&root.join(c))?.into_iter().filter(|p| crate::files::is_image(p)).collect();
            files.sort();
            samples.extend(files.into_iter().map(|f| (f, i as i64)));
        }
        if samples.is_empty() {
            bail!(
                "dataset folder {} has no images in class sub-folders (expected <class>/<image>.jpg|png)",
                root.display()
            );
        }
        Ok(ImageFolder { root: root.to_path_buf(), classes, samples })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// Which transform a loader applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// RandomResizedCrop(size, scale, ratio) + horizontal flip with probability `flip`.
    Train { size: u32, scale: (f64, f64), ratio: (f64, f64), flip: f64 },
    /// Resize(shorter side `resize`) + CenterCrop(size).
    Eval { size: u32, resize: u32 },
    /// The whole image resized to size x size (the saliency cache's refresh pass).
    Whole { size: u32 },
}

/// A batch: the images as bytes, labels, and the files that could not be decoded.
pub struct Batch {
    /// N x 3 x S x S bytes, RGB after the transform's crop and flip, not normalised: a quarter
    /// of the f32 batch's bytes to copy to a GPU. In page-locked memory when the loader pins.
    pub pixels: Tensor,
    pub labels: Tensor,
    /// The sample index of each row (the loader's `data.samples`), for what is kept per sample
    /// (the score cache).
    pub samples: Vec<usize>,
    pub skipped: Vec<(PathBuf, String)>,
    /// What [`Batch::images`] normalises with.
    pub norm: Normalization,
    /// With a [`MaskSource`]: each image's mask S (N x 1 x S x S bytes, 1 = keep) for the
    /// image's own crop and flip.
    pub masks: Option<Tensor>,
    /// Images whose mask hides some pixels (the others pass through unchanged).
    pub masked: usize,
    pinned: bool,
}

impl Batch {
    /// The images on `device`, normalised there: copied as bytes (non-blocking from page-locked
    /// memory, so the copy overlaps the GPU's work), then converted.
    pub fn images(&self, device: Device) -> Tensor {
        let x = self.pixels.to_device_(device, Kind::Uint8, self.pinned && device.is_cuda(), false);
        transforms::normalize_bytes(&x, &self.norm)
    }

    /// The masks on `device` as 0/1 floats, when the loader cut them.
    pub fn masks_on(&self, device: Device) -> Option<Tensor> {
        self.masks
            .as_ref()
            .map(|m| m.to_device_(device, Kind::Uint8, self.pinned && device.is_cuda(), false).to_kind(Kind::Float))
    }

    pub fn len(&self) -> usize {
        self.pixels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads batches of one epoch. Shuffling and every random transform are seeded by
/// (seed, epoch, sample), so an epoch is the same whichever worker decodes what.
#[derive(Clone, Debug)]
pub struct Loader {
    pub data: ImageFolder,
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub transform: Transform,
    pub norm: Normalization,
    pub workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    pub seed: u64,
    /// Build batches in page-locked memory (for a CUDA device; allocating it needs one).
    pub pin_memory: bool,
    /// Per-sample masks made with each batch (cached saliency maps cut to each crop): each batch then
    /// carries them.
    pub masks: Option<Arc<dyn MaskSource>>,
}

/// Per-sample masks that the loader makes beside each image, as timm's loader takes a
/// `collate_fn` without knowing what it does (the map cache is one).
/// Called on the loader's worker threads.
pub trait MaskSource: Send + Sync + std::fmt::Debug {
    /// Writes sample `sample`'s mask for its crop `placed` into `dst` (S x S bytes, 1 = keep),
    /// drawing from the sample's generator (after its crop and flip) if it draws at all.
    /// Returns whether the mask hides any pixel.
    fn write_mask(&self, sample: usize, placed: &transforms::Placed, rng: &mut StdRng, dst: &mut [u8]) -> Result<bool>;
}

impl Loader {
    /// A loader of `data` in its order, one worker, two batches ahead, seed 0, no pinning and no
    /// masks; set the rest with struct update syntax (`Loader { shuffle: true, ..Loader::new(..) }`).
    pub fn new(data: ImageFolder, batch_size: usize, transform: Transform, norm: Normalization) -> Loader {
        Loader {
            data,
            batch_size,
            shuffle: false,
            drop_last: false,
            transform,
            norm,
            workers: 1,
            prefetch: 2,
            seed: 0,
            pin_memory: false,
            masks: None,
        }
    }

    /// The order of the samples in `epoch`: one permutation per (seed, epoch) when shuffling.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        if self.shuffle {
            order.shuffle(&mut StdRng::seed_from_u64(mix(self.seed, epoch as u64, u64::MAX)));
        }
        order
    }

    /// The sample indices of each batch of `epoch`.
    pub fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let order = self.order(epoch);
        let mut out: Vec<Vec<usize>> = order.chunks(self.batch_size.max(1)).map(|c| c.to_vec()).collect();
        if self.drop_last && out.last().is_some_and(|b| b.len() < self.batch_size) {
            out.pop();
        }
        out
    }

    pub fn num_batches(&self, epoch: usize) -> usize {
        self.batches(epoch).len()
    }

    /// Iterates over the batches of `epoch`, from `start` on, decoded by `workers` threads.
    /// A file that cannot be decoded is skipped and reported in its batch; anything else that
    /// goes wrong in a worker (a panic included) is an `Err` item, after which the iterator
    /// ends: an epoch never ends early without saying so.
    pub fn epoch(&self, epoch: usize, start: usize) -> impl Iterator<Item = Result<Batch>> + use<> {
        self.epoch_of(epoch, self.batches(epoch), start)
    }

    /// Iterates over the given batches of `epoch` (a rank's shard), from `start` on, as
    /// [`Loader::epoch`] does; each sample's transform is seeded by (seed, epoch, sample), so a
    /// sample is cropped the same whichever rank decodes it.
    pub fn epoch_of(
        &self,
        epoch: usize,
        batches: Vec<Vec<usize>>,
        start: usize,
    ) -> impl Iterator<Item = Result<Batch>> + use<> {
        self.epoch_plan(epoch, batches, start, Loader::make_batch)
    }

    /// [`Loader::epoch`] with another batch maker (the benchmark's reference path).
    pub fn epoch_with(
        &self,
        epoch: usize,
        start: usize,
        make: MakeBatch,
    ) -> impl Iterator<Item = Result<Batch>> + use<> {
        self.epoch_plan(epoch, self.batches(epoch), start, make)
    }

    fn epoch_plan(
        &self,
        epoch: usize,
        batches: Vec<Vec<usize>>,
        start: usize,
        make: MakeBatch,
    ) -> impl Iterator<Item = Result<Batch>> + use<> {
        let plan: Vec<(usize, Vec<usize>)> = batches.into_iter().enumerate().skip(start).collect();
        let end = start + plan.len();
        let (job_tx, job_rx) = unbounded::<(usize, Vec<usize>)>();
        for job in plan {
            job_tx.send(job).expect("queue open");
        }
        drop(job_tx);
        let (out_tx, out_rx) = bounded::<(usize, Result<Batch>)>(self.prefetch.max(1));
        for _ in 0..self.workers.max(1) {
            let (jobs, out, me) = (job_rx.clone(), out_tx.clone(), self.clone());
            thread::spawn(move || {
                let mut scratch = transforms::Scratch::default();
                while let Ok((b, idx)) = jobs.recv() {
                    let made =
                        catch_unwind(AssertUnwindSafe(|| make(&me, epoch, &idx, &mut scratch))).unwrap_or_else(|p| {
                            Err(anyhow!("a loader worker panicked on batch {b}: {}", panic_message(p.as_ref())))
                        });
                    if out.send((b, made)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(out_tx);
        Reorder { rx: out_rx, next: start, end, pending: Default::default(), failed: false }
    }

    /// The generator of sample `i`'s random transform in `epoch`: the same whichever worker
    /// decodes it, so resume and a distributed sampler see the same crops.
    pub fn sample_rng(&self, epoch: usize, i: usize) -> StdRng {
        StdRng::seed_from_u64(mix(self.seed, epoch as u64, i as u64))
    }

    /// The output side of the loader's transform.
    pub fn output_size(&self) -> u32 {
        match self.transform {
            Transform::Train { size, .. } | Transform::Eval { size, .. } | Transform::Whole { size } => size,
        }
    }

    /// Decodes the samples `idx` of `epoch` straight into one batch tensor (and, with a
    /// [`MaskSource`], each image's mask); a file that cannot be decoded is named in
    /// `skipped` and leaves no row.
    pub fn make_batch(&self, epoch: usize, idx: &[usize], scratch: &mut transforms::Scratch) -> Result<Batch> {
        let s = self.output_size() as usize;
        let plane = 3 * s * s;
        let pixels = self.bytes(&[idx.len() as i64, 3, s as i64, s as i64])?;
        let masks = match &self.masks {
            Some(_) => Some(self.bytes(&[idx.len() as i64, 1, s as i64, s as i64])?),
            None => None,
        };
        // SAFETY: fresh contiguous byte tensors that this thread alone holds until the batch is made.
        let buf = unsafe { bytes_of(&pixels) };
        let mut mask_buf = masks.as_ref().map(|m| unsafe { bytes_of(m) });
        let mut labels = Vec::new();
        let mut samples = Vec::new();
        let mut skipped = Vec::new();
        let mut masked = 0;
        for &i in idx {
            let (path, label) = &self.data.samples[i];
            let n = labels.len();
            let dst = &mut buf[n * plane..(n + 1) * plane];
            let mut rng = self.sample_rng(epoch, i);
            // A decoder error is the file's fault (skipped and counted); a panic is the
            // transform's or its settings' (the run stops, naming the image it happened on).
            let panicked = |p: Box<dyn std::any::Any + Send>| {
                anyhow!(
                    "the {:?} transform panicked on {}: {}",
                    self.transform,
                    path.display(),
                    panic_message(p.as_ref())
                )
            };
            let loaded =
                catch_unwind(AssertUnwindSafe(|| transforms::load_into(path, self.transform, &mut rng, scratch, dst)))
                    .map_err(panicked)?;
            match loaded {
                Ok(placed) => {
                    if let (Some(source), Some(mb)) = (&self.masks, mask_buf.as_mut()) {
                        let dst = &mut mb[n * s * s..(n + 1) * s * s];
                        let hides = catch_unwind(AssertUnwindSafe(|| source.write_mask(i, &placed, &mut rng, dst)))
                            .map_err(panicked)??;
                        masked += usize::from(hides);
                    }
                    labels.push(*label);
                    samples.push(i);
                }
                Err(e) => skipped.push((path.clone(), format!("{e:#}"))),
            }
        }
        let n = labels.len() as i64;
        Ok(Batch {
            pixels: pixels.narrow(0, 0, n),
            labels: Tensor::from_slice(&labels),
            samples,
            skipped,
            norm: self.norm,
            masks: masks.map(|m| m.narrow(0, 0, n)),
            masked,
            pinned: self.pin_memory,
        })
    }

    /// An uninitialised byte tensor, page-locked when the loader pins.
    fn bytes(&self, dims: &[i64]) -> Result<Tensor> {
        if self.pin_memory {
            crate::cuda::empty_pinned_u8(dims)
        } else {
            Ok(Tensor::empty(dims, (Kind::Uint8, Device::Cpu)))
        }
    }

    /// The former batch maker, on `transforms::load_reference` (the image crate's decoder and
    /// resize, one tensor per image, stacked): what `make_batch` is measured and tested
    /// against. The same samples give the same boxes and flips.
    pub fn make_batch_reference(
        &self,
        epoch: usize,
        idx: &[usize],
        _scratch: &mut transforms::Scratch,
    ) -> Result<Batch> {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        let mut samples = Vec::new();
        let mut skipped = Vec::new();
        for &i in idx {
            let (path, label) = &self.data.samples[i];
            match transforms::load_reference(path, self.transform, &mut self.sample_rng(epoch, i)) {
                Ok(t) => {
                    images.push(t);
                    labels.push(*label);
                    samples.push(i);
                }
                Err(e) => skipped.push((path.clone(), format!("{e:#}"))),
            }
        }
        let s = self.output_size() as i64;
        let pixels = if images.is_empty() {
            Tensor::zeros([0, 3, s, s], (Kind::Uint8, Device::Cpu))
        } else {
            // to_tensor's x / 255 times 255, rounded: the decoded bytes again.
            (Tensor::stack(&images, 0) * 255.0).round().to_kind(Kind::Uint8)
        };
        Ok(Batch {
            pixels,
            labels: Tensor::from_slice(&labels),
            samples,
            skipped,
            norm: self.norm,
            masks: None,
            masked: 0,
            pinned: false,
        })
    }
}

/// The bytes of a contiguous uint8 CPU tensor, to write into.
///
/// # Safety
/// No other reference to the tensor's storage may be used while the slice lives.
unsafe fn bytes_of(t: &Tensor) -> &mut [u8] {
    let n = t.numel();
    if n == 0 {
        return &mut [];
    }
    debug_assert!(t.kind() == Kind::Uint8 && t.is_contiguous());
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, n) }
}

/// A batch maker: the samples `idx` of an epoch into one batch, with a worker's scratch.
pub type MakeBatch = fn(&Loader, usize, &[usize], &mut transforms::Scratch) -> Result<Batch>;

/// A panic's message, when it has one.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Hands batches out in plan order whatever order the workers finish them in.
struct Reorder {
    rx: crossbeam_channel::Receiver<(usize, Result<Batch>)>,
    next: usize,
    end: usize,
    pending: std::collections::BTreeMap<usize, Result<Batch>>,
    failed: bool,
}

impl Iterator for Reorder {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.failed || self.next >= self.end {
            return None;
        }
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                self.failed = b.is_err();
                return Some(b);
            }
            match self.rx.recv() {
                Ok((i, b)) => {
                    self.pending.insert(i, b);
                }
                Err(_) => {
                    self.failed = true;
                    return Some(Err(anyhow!(
                        "the loader's workers stopped after batch {} of {}",
                        self.next,
                        self.end
                    )));
                }
            }
        }
    }
}

/// A 64-bit mix of three numbers (splitmix64 steps), for per-sample seeds.
fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut x = a ^ 0x9E37_79B9_7F4A_7C15;
    for v in [b, c] {
        x = x.wrapping_add(v).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    x
}
