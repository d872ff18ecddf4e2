//! The optimizer side of a step: forward under autocast, cross-entropy, backward (loss-scaled
//! for fp16), the gradients averaged over the ranks, the update; and what it did.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::scaler::LossScaler;
use super::sgd::Sgd;
use crate::autocast::AutocastDtype;
use crate::dist::World;
use crate::models::CamModel;

/// Top-1 and top-5 hits of a batch, as device scalars: summed there and read once per
/// epoch (a read per batch would stall a GPU twice a step).
pub(super) fn hits(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let k = 5.min(logits.size()[1]);
    let top = logits.topk(k, 1, true, true).1;
    let eq = top.eq_tensor(&labels.unsqueeze(1));
    (eq.narrow(1, 0, 1).sum(Kind::Int64), eq.sum(Kind::Int64))
}

/// Cross-entropy against soft targets: the batch's mean of -sum(target * log_softmax(logits))
/// (timm's SoftTargetCrossEntropy).
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let per_image =
        (targets * logits.log_softmax(1, Kind::Float)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    -per_image.mean(Kind::Float)
}

/// What one training step did.
pub enum StepResult {
    Done {
        loss: f64,
        /// Top-1 hits, on the device.
        top1: Tensor,
    },
    /// fp16 gradients overflowed: the step was skipped and the loss scale halved.
    Overflow { loss: f64, top1: Tensor },
    /// The loss was NaN or infinite: nothing was changed.
    NonFinite(f64),
}

/// The optimizer side of a step: SGD, autocast, and the fp16 loss scale.
pub struct Trainer {
    pub sgd: Sgd,
    pub scaler: LossScaler,
    /// CUDA autocast: fp16 with dynamic loss scaling, or bf16 (no scaling). Autocast is a no-op
    /// on the CPU, where fp16 still runs the loss-scaling arithmetic (what the CPU tests check).
    pub amp: Option<AutocastDtype>,
    /// One process, or the ranks whose gradients are averaged after each backward.
    pub world: World,
}

impl Trainer {
    /// A trainer of one process (set `world` for a data-parallel one).
    pub fn new(sgd: Sgd, scaler: LossScaler, amp: Option<AutocastDtype>) -> Trainer {
        Trainer { sgd, scaler, amp, world: World::Single }
    }

    /// One SGD step on a batch: forward (under `amp`'s autocast), cross-entropy, backward
    /// (scaled for fp16), update.
    pub fn step(&mut self, model: &dyn CamModel, x: &Tensor, y: &Tensor, lr: f64) -> Result<StepResult> {
        self.step_with(model, x, y, None, lr)
    }

    /// [`Trainer::step`] against `soft` targets (B x classes, CutMix's) when given:
    /// [`soft_cross_entropy`]; top-1 is still counted against the labels `y`.
    pub fn step_with(
        &mut self,
        model: &dyn CamModel,
        x: &Tensor,
        y: &Tensor,
        soft: Option<&Tensor>,
        lr: f64,
    ) -> Result<StepResult> {
        let logits = crate::autocast::autocast(self.amp, x.device(), || model.forward(x));
        let loss = match soft {
            None => logits.to_kind(Kind::Float).cross_entropy_for_logits(y),
            Some(t) => soft_cross_entropy(&logits.to_kind(Kind::Float), t),
        };
        let top1 = hits(&logits.detach(), y).0;
        self.sgd.zero_grad();
        if !self.loss_scaled() {
            // The step's one read from the device: the loss, checked before it can do harm.
            let value = loss.double_value(&[]);
            // Decided together: a rank that stopped alone would leave the others in the all-reduce.
            if self.world.any(!value.is_finite())? {
                return Ok(StepResult::NonFinite(if value.is_finite() { f64::NAN } else { value }));
            }
            loss.backward();
            self.world.average_gradients()?;
            self.sgd.step(lr);
            return Ok(StepResult::Done { loss: value, top1 });
        }
        let scale = self.scaler.scale();
        (&loss * scale).backward();
        self.finish_amp(Some(&loss), scale, lr, top1)
    }

    /// This rank's part of a step when its whole batch was unreadable (data-parallel runs):
    /// zero gradients into the average, then the same update as every other rank, with the
    /// same collectives in the same order as [`Trainer::step`], so that the weights stay
    /// identical (alone, such a batch is simply skipped).
    pub fn step_empty(&mut self, lr: f64) -> Result<StepResult> {
        self.sgd.zero_grad();
        let zero = self.sgd.zero_loss();
        let top1 = Tensor::zeros([], (Kind::Int64, zero.device()));
        if !self.loss_scaled() {
            if self.world.any(false)? {
                return Ok(StepResult::NonFinite(f64::NAN));
            }
            zero.backward();
            self.world.average_gradients()?;
            self.sgd.step(lr);
            return Ok(StepResult::Done { loss: 0.0, top1 });
        }
        let scale = self.scaler.scale();
        zero.backward();
        self.finish_amp(None, scale, lr, top1)
    }

    /// The fp16 step after its scaled backward: gradients averaged over the ranks (before the
    /// overflow check, so that every rank takes the same decision), one read of the loss and
    /// the gradients' sum, then the unscaled update or, on overflow, a lower scale.
    fn finish_amp(&mut self, loss: Option<&Tensor>, scale: f64, lr: f64, top1: Tensor) -> Result<StepResult> {
        self.world.average_gradients()?;
        let grads = self.sgd.grads();
        // One read for the loss and every gradient (it was one per parameter): a gradient's sum
        // is non-finite when one of its elements is, and a sum that overflows f32 is an
        // overflow of the step in any case.
        let sums: Vec<Tensor> = grads.iter().map(|g| g.sum(Kind::Float)).collect();
        let grad_total = Tensor::stack(&sums, 0).sum(Kind::Float);
        let loss = loss.map_or_else(|| grad_total.zeros_like(), |l| l.detach());
        let checks = Tensor::stack(&[loss, grad_total], 0);
        let checks = Vec::<f64>::try_from(checks.to_kind(Kind::Double).to_device(Device::Cpu))?;
        let (value, grad_sum) = (checks[0], checks[1]);
        if self.world.any(!value.is_finite())? {
            return Ok(StepResult::NonFinite(if value.is_finite() { f64::NAN } else { value }));
        }
        let finite = grad_sum.is_finite();
        self.scaler.update(!finite);
        if !finite {
            return Ok(StepResult::Overflow { loss: value, top1 });
        }
        tch::no_grad(|| {
            for mut g in grads {
                let _ = g.g_div_scalar_(scale);
            }
        });
        self.sgd.step(lr);
        Ok(StepResult::Done { loss: value, top1 })
    }

    /// fp16 needs its loss scaled (bf16 has fp32's exponent range).
    fn loss_scaled(&self) -> bool {
        self.amp == Some(AutocastDtype::F16)
    }
}
