//! An ordinary tch training loop, not the crate's trainer, with the Group-CAM augmentation
//! (paper Sec. 5) added in two lines: configure it once, call it on each batch with the labels.
//! ResNet-18 with random weights learns where a bright square is on 64-pixel synthetic images;
//! on a CPU it runs in seconds. Epochs 3 and 4 show the score-cached form (`augment.cache:
//! scores` in the crate's trainer): each image's G group scores, computed once for the whole
//! image, weigh the group maps of whatever crop of it the step trains on, at the cost of one
//! forward instead of G + 2.
//!
//!     cargo run --release --example custom_loop

use anyhow::Result;
use groupcam::augment::GroupCamAugment;
use groupcam::models::{Arch, CamModel, Model};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, IndexOp, Kind, Tensor};

const SIZE: i64 = 64;
const CLASSES: i64 = 4;

fn main() -> Result<()> {
    tch::manual_seed(0);
    let device = Device::cuda_if_available();
    let model = Model::new(Arch::Resnet18, CLASSES, device);
    let mut opt = nn::Sgd { momentum: 0.9, wd: 1e-4, ..Default::default() }.build(&model.vs, 0.01)?;
    let (images, labels) = squares(32, device);

    // The augmentation, configured once (the paper's setting: G = 16, every image).
    let aug = GroupCamAugment::default();

    model.set_training(true);
    for epoch in 0..2 {
        let (mut loss_sum, mut steps, mut augmented, mut unchanged) = (0.0, 0, 0, 0);
        for (x, y) in images.split(8, 0).iter().zip(labels.split(8, 0).iter()) {
            // Each batch, before the training forward. The call builds no graph and leaves the
            // model's mode and parameters alone, so the rest of the loop does not change.
            let batch = aug.augment(&model, x, y)?;
            augmented += batch.stats.augmented();
            unchanged += batch.stats.constant() + batch.stats.skipped();

            let loss = model.forward(&batch.images).cross_entropy_for_logits(y);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]);
            steps += 1;
        }
        // A random network's map is often flat: those images pass through unchanged.
        println!(
            "epoch {epoch}: loss {:.3}, {augmented} images augmented, {unchanged} unchanged",
            loss_sum / steps as f64
        );
    }

    // The score-cached form: the whole images' scores once (here for two epochs; they hold
    // the class, so a step needs no labels for them), then per step a random crop of each
    // batch weighed with its images' rows.
    let scores = aug.scores_for(&model, &images, &labels)?;
    for epoch in 2..4 {
        let (mut loss_sum, mut steps, mut augmented) = (0.0, 0, 0);
        let batches = images.split(8, 0).into_iter().zip(labels.split(8, 0)).zip(scores.split(8, 0));
        for ((x, y), s) in batches {
            let at = Tensor::randint(SIZE / 4, [2], (Kind::Int64, Device::Cpu));
            let (top, left) = (at.int64_value(&[0]), at.int64_value(&[1]));
            let crop = x.narrow(2, top, 3 * SIZE / 4).narrow(3, left, 3 * SIZE / 4);
            let crop = crop.upsample_bilinear2d([SIZE, SIZE], false, None, None);
            let batch = aug.augment_with_scores(&model, &crop, Some(&y), &s)?;
            augmented += batch.stats.augmented();

            let loss = model.forward(&batch.images).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]);
            steps += 1;
        }
        println!("epoch {epoch} (cached scores): loss {:.3}, {augmented} images augmented", loss_sum / steps as f64);
    }
    Ok(())
}

/// Noise with a bright 16-pixel square in one of four quadrants; the quadrant is the label.
fn squares(n: i64, device: Device) -> (Tensor, Tensor) {
    let labels = Tensor::randint(CLASSES, [n], (Kind::Int64, Device::Cpu));
    let images = Tensor::randn([n, 3, SIZE, SIZE], (Kind::Float, Device::Cpu)) * 0.3;
    for (i, c) in Vec::<i64>::try_from(&labels).expect("int64 labels").into_iter().enumerate() {
        let (top, left) = (8 + (c / 2) * 32, 8 + (c % 2) * 32);
        let _ = images.i((i as i64, .., top..top + 16, left..left + 16)).fill_(2.0);
    }
    (images.to_device(device), labels.to_device(device))
}
