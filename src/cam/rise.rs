//! RISE (Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling for Explanation of
//! Black-box Models", BMVC 2018), as the authors' code (eclique/RISE, `explanations.py`) does it:
//!
//! N binary grids of s x s cells, each cell kept with probability p; each grid upsampled
//! bilinearly to (s + 1) * ceil(H / s) pixels per side and cropped to H x W at a random shift in
//! [0, cell); the masked input is x * M (zero in normalised space where masked);
//! map = sum_i softmax(f(x * M_i))_c * M_i / (N p), then min-max.
//!
//! The upsampling is the crate's one bilinear upsampling (align_corners=false, edge clamped);
//! the authors' skimage `resize(mode="reflect")` differs only in the outer half cell of the
//! enlarged grid. Masks come from a seeded generator (splitmix64), so a seed gives the same
//! masks on every device; they are made in blocks and never all held at once.

use anyhow::{Result, bail};
use tch::{Kind, Tensor};

use super::{Batching, Explainer, Explanation, activations, finish, score_batched};
use crate::models::CamModel;
use crate::ops;

#[derive(Clone, Copy, Debug)]
pub struct Rise {
    /// N, the number of masks.
    pub masks: i64,
    /// s, cells per side of the grid.
    pub cells: i64,
    /// p, the probability that a cell is kept.
    pub keep: f64,
    pub seed: u64,
    /// Images per scoring forward; `None` picks the device's default.
    pub chunk: Option<i64>,
}

impl Default for Rise {
    /// N = 4000, s = 8, p = 0.5: the RISE code's settings for ImageNet classifiers.
    fn default() -> Self {
        Rise { masks: 4000, cells: 8, keep: 0.5, seed: 0, chunk: None }
    }
}

/// Masks made per block (bounds memory: 256 x 224 x 224 floats are 51 MB).
const BLOCK: i64 = 256;

struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Rise {
    fn check(&self) -> Result<()> {
        if self.masks < 1 {
            bail!("RISE needs at least one mask (got N = {})", self.masks);
        }
        if self.cells < 1 {
            bail!("RISE grid size s must be at least 1 (got {})", self.cells);
        }
        if !(self.keep > 0.0 && self.keep <= 1.0) {
            bail!("RISE keep probability p must be in (0, 1] (got {})", self.keep);
        }
        Ok(())
    }

    /// The N x 1 x H x W masks, all of them (for tests and small N; `explain` makes them in blocks).
    pub fn generate(&self, height: i64, width: i64, device: tch::Device) -> Result<Tensor> {
        self.check()?;
        let plan = self.plan(height, width);
        Ok(self.block(&plan, 0, self.masks, height, width, device))
    }

    /// Grid cells and shifts for all masks, drawn in the RISE code's order (all grids, then shifts).
    fn plan(&self, height: i64, width: i64) -> (Vec<f32>, Vec<(i64, i64)>) {
        let mut rng = SplitMix64(self.seed);
        let s = self.cells;
        let grid: Vec<f32> =
            (0..self.masks * s * s).map(|_| if rng.next_f64() < self.keep { 1.0 } else { 0.0 }).collect();
        let (ch, cw) = (cell(height, s), cell(width, s));
        let shifts = (0..self.masks)
            .map(|_| ((rng.next_u64() % ch as u64) as i64, (rng.next_u64() % cw as u64) as i64))
            .collect();
        (grid, shifts)
    }

    fn block(
        &self,
        plan: &(Vec<f32>, Vec<(i64, i64)>),
        start: i64,
        len: i64,
        h: i64,
        w: i64,
        device: tch::Device,
    ) -> Tensor {
        let s = self.cells;
        let cells = &plan.0[(start * s * s) as usize..((start + len) * s * s) as usize];
        let grid = Tensor::from_slice(cells).view([len, 1, s, s]).to_device(device);
        let up = ops::upsample(&grid, (s + 1) * cell(h, s), (s + 1) * cell(w, s));
        let crops: Vec<Tensor> = (0..len)
            .map(|i| {
                let (dy, dx) = plan.1[(start + i) as usize];
                up.get(i).narrow(1, dy, h).narrow(2, dx, w)
            })
            .collect();
        Tensor::stack(&crops, 0)
    }
}

fn cell(size: i64, s: i64) -> i64 {
    (size + s - 1) / s
}

impl Explainer for Rise {
    fn name(&self) -> &'static str {
        "rise"
    }

    fn explain(&self, model: &dyn CamModel, x: &Tensor, classes: Option<&[i64]>) -> Result<Explanation> {
        self.check()?;
        let (n, _, h, w) = x.size4()?;
        let act = activations(model, x, classes, false)?;
        let plan = self.plan(h, w);
        let batching = Batching::with_chunk(model, self.chunk);
        let mut sal = Tensor::zeros([n, h * w], (Kind::Float, x.device()));
        let mut start = 0;
        while start < self.masks {
            let len = BLOCK.min(self.masks - start);
            let masks = self.block(&plan, start, len, h, w, x.device());
            // Inputs ordered image-major: input j is image j / len under mask j % len.
            let owner = Tensor::arange(n * len, (Kind::Int64, x.device())).floor_divide_scalar(len);
            let which = Tensor::arange(n * len, (Kind::Int64, x.device())).remainder(len);
            let cls = act.classes.index_select(0, &owner);
            let make = |s0: i64, l: i64| {
                let m = masks.index_select(0, &which.narrow(0, s0, l)).to_kind(x.kind());
                x.index_select(0, &owner.narrow(0, s0, l)) * m
            };
            let p = score_batched(model, n * len, batching, &cls, &make).to_kind(Kind::Float).view([n, len]);
            sal += p.matmul(&masks.view([len, h * w]));
            start += len;
        }
        let sal = sal / (self.masks as f64 * self.keep);
        finish(&sal.view([n, h, w]), &act.classes)
    }
}
