//! The augmentation does what issue 3 specifies: Eq. 5 with S = [map >= mean(map)] for the
//! label's backprop-free Group-CAM map, batched, without side effects on the model.

mod common;

use std::cell::RefCell;

use common::*;
use groupcam::augment::{Augmented, GroupCamAugment, Outcome, Precision, Threshold};
use groupcam::cam::Explainer;
use groupcam::cam::{ChannelWeights, GroupCam};
use groupcam::imageio;
use groupcam::models::{Arch, CamModel, Model, Normalization};
use groupcam::ops::Blur;
use tch::{Device, Kind, Tensor, nn::OptimizerConfig};

const ESPRESSO: i64 = 967;
const EGYPTIAN_CAT: i64 = 285;

fn effnet() -> Model {
    Model::load(Arch::EfficientNetLite0, &effnet_weights(), Device::Cpu).unwrap()
}

fn photos(model: &Model, names: &[&str]) -> Tensor {
    let paths: Vec<_> = names.iter().map(|n| photo(n)).collect();
    imageio::load_batch(&paths, 224, &model.input_norm()).unwrap().0
}

fn labels(l: &[i64]) -> Tensor {
    Tensor::from_slice(l)
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.eq_tensor(b).all().int64_value(&[]) == 1
}

fn fraction_differing(a: &Tensor, b: &Tensor) -> f64 {
    a.ne_tensor(b).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// Kept pixels are the input bit for bit, the others the blur bit for bit.
fn assert_eq5(x: &Tensor, out: &Augmented) {
    let blurred = Blur::GROUP_CAM.apply(x).unwrap();
    let s = &out.masks;
    assert_eq!(s.size(), [x.size()[0], 1, x.size()[2], x.size()[3]]);
    let binary = s.eq(0.0).logical_or(&s.eq(1.0)).all().int64_value(&[]);
    assert_eq!(binary, 1, "the mask is not binary");
    let keep = s.gt(0.5).expand_as(x);
    assert!(same(&out.images.masked_select(&keep), &x.masked_select(&keep)), "a kept pixel differs from the input");
    let drop = keep.logical_not();
    assert!(
        same(&out.images.masked_select(&drop), &blurred.masked_select(&drop)),
        "a dropped pixel differs from the blur"
    );
}

#[test]
fn salient_pixels_are_the_input_and_the_rest_the_blur() {
    let model = effnet();
    let x = photos(&model, &["coffee.png", "chelsea.png"]);
    let y = [ESPRESSO, EGYPTIAN_CAT];
    let out = GroupCamAugment::default().augment(&model, &x, &labels(&y)).unwrap();
    assert_eq5(&x, &out);
    // S is the explainer's map for the label (official, w = 1, G = 16, no de-noise) at its mean.
    let cam = GroupCam { groups: 16, weights: ChannelWeights::Ones, ..Default::default() };
    let maps = cam.explain(&model, &x, Some(&y)).unwrap().maps;
    let want = maps.ge_tensor(&maps.mean_dim([1i64, 2].as_slice(), true, Kind::Float)).to_kind(Kind::Float);
    assert!(same(&out.masks.squeeze_dim(1), &want), "the mask is not [map >= mean(map)]");
    for (i, o) in out.stats.outcomes.iter().enumerate() {
        match o {
            Outcome::Augmented { kept } => assert!((0.05..0.95).contains(kept), "image {i} keeps {kept} of its pixels"),
            _ => panic!("image {i} was not augmented: {o:?}"),
        }
    }
    assert_eq!(out.stats.augmented(), 2);
    assert_eq!(out.images.kind(), x.kind());
}

#[test]
fn a_batch_equals_its_images_one_by_one() {
    let model = effnet();
    let x = photos(&model, &["coffee.png", "chelsea.png"]);
    let y = [ESPRESSO, EGYPTIAN_CAT];
    // 5 images per scoring forward: the 2 x 17 scoring inputs straddle the image boundary.
    let aug = GroupCamAugment { max_batch: Some(5), ..Default::default() };
    let both = aug.augment(&model, &x, &labels(&y)).unwrap();
    for i in 0..2 {
        let one = aug.augment(&model, &x.narrow(0, i, 1), &labels(&y[i as usize..=i as usize])).unwrap();
        // Forwards of 5 and of 1 image may round differently; a pixel at the threshold may flip.
        let d = fraction_differing(&both.masks.get(i), &one.masks.get(0));
        assert!(d <= 1e-3, "image {i}: {d} of the mask differs from the single image's");
        let agree = both.masks.get(i).eq_tensor(&one.masks.get(0)).expand([3, 224, 224], false);
        assert!(same(&both.images.get(i).masked_select(&agree), &one.images.get(0).masked_select(&agree)));
        assert_eq!(both.stats.outcomes[i as usize], one.stats.outcomes[0]);
    }
}

#[test]
fn two_labels_give_different_masks_on_the_cat() {
    let model = effnet();
    let cat = photos(&model, &["chelsea.png"]);
    let x = Tensor::cat(&[&cat, &cat], 0);
    let out = GroupCamAugment::default().augment(&model, &x, &labels(&[EGYPTIAN_CAT, ESPRESSO])).unwrap();
    let d = fraction_differing(&out.masks.get(0), &out.masks.get(1));
    eprintln!("cat vs espresso: {d:.3} of the mask differs");
    assert!(d > 0.03, "the masks of two labels differ in only {d} of the pixels");
}

#[test]
fn lower_score_resolution_keeps_the_mask() {
    let model = effnet();
    let x = photos(&model, &["coffee.png", "chelsea.png"]);
    let y = labels(&[ESPRESSO, EGYPTIAN_CAT]);
    let full = GroupCamAugment::default().augment(&model, &x, &y).unwrap();
    let low = GroupCamAugment { score_size: Some(112), ..Default::default() }.augment(&model, &x, &y).unwrap();
    assert_eq5(&x, &low);
    let d = fraction_differing(&full.masks, &low.masks);
    eprintln!("112 vs 224: {d:.3} of the mask differs");
    assert!(d < 0.2, "scoring at 112 changes {d} of the mask");
    assert_eq!(GroupCamAugment { score_size: Some(112), ..Default::default() }.score_dims(224, 300), (112, 150));
}

/// The score-cached form (issue 23): with fresh scores of the same images its masks are the
/// faithful path's (the same alphas, the same group maps), and with the whole images' scores on
/// quarter-area crops they are a PyTorch reference of the rule (tests/py/fixtures.py
/// `score-cached`: the crop's own group maps weighed by the whole image's scores).
#[test]
fn score_cached_masks_are_the_faithful_ones_and_the_reference_on_crops() {
    let model = effnet();
    let x = photos(&model, &["coffee.png", "chelsea.png"]);
    let y = labels(&[ESPRESSO, EGYPTIAN_CAT]);
    let aug = GroupCamAugment::default();
    let scores = aug.scores_for(&model, &x, &y).unwrap();
    assert_eq!(scores.size(), [2, 16]);
    let fresh = aug.augment(&model, &x, &y).unwrap();
    let cached = aug.augment_with_scores(&model, &x, Some(&y), &scores).unwrap();
    assert_eq5(&x, &cached);
    let d = fraction_differing(&fresh.masks, &cached.masks);
    eprintln!("fresh scores, whole image: {d:.2e} of the mask differs from the faithful one");
    assert!(d < 1e-3, "{d} of the score-cached mask differs from the faithful one");

    // Quarter-area crops (half the side) at two places, resized back to 224.
    let crop = |i: i64, top: i64, left: i64| {
        x.narrow(0, i, 1).narrow(2, top, 112).narrow(3, left, 112).upsample_bilinear2d([224, 224], false, None, None)
    };
    let crops = Tensor::cat(&[crop(0, 20, 90), crop(1, 100, 30)], 0);
    let ours = aug.augment_with_scores(&model, &crops, None, &scores).unwrap();
    assert_eq5(&crops, &ours);
    let dir = tempfile::tempdir().unwrap();
    let (whole_p, crops_p) = (dir.path().join("whole.npy"), dir.path().join("crops.npy"));
    x.write_npy(&whole_p).unwrap();
    crops.write_npy(&crops_p).unwrap();
    let (scores_p, masks_p) = (dir.path().join("scores.npy"), dir.path().join("masks.npy"));
    let (c0, c1) = (ESPRESSO.to_string(), EGYPTIAN_CAT.to_string());
    py(&["score-cached", "--weights", s(&effnet_weights()), "--whole", s(&whole_p), "--crops", s(&crops_p)]
        .into_iter()
        .chain(["--cls", &c0, &c1, "--groups", "16", "--scores-out", s(&scores_p), "--out", s(&masks_p)])
        .collect::<Vec<_>>());
    let ds = max_abs_diff(&scores, &npy(&scores_p));
    let d = fraction_differing(&ours.masks.squeeze_dim(1), &npy(&masks_p));
    eprintln!("quarter-area crops: scores max|d| = {ds:.2e}, {d:.2e} of the mask differs from the reference");
    assert!(ds < 1e-4, "the group scores differ from the reference by {ds}");
    assert!(d < 1e-3, "{d} of the crops' masks differs from the reference");
    // The crop's own maps, not its box of the whole image's mask.
    let boxed = |i: i64, top: i64, left: i64| {
        cached.masks.narrow(0, i, 1).narrow(2, top, 112).narrow(3, left, 112).upsample_nearest2d([224, 224], None, None)
    };
    let cut = Tensor::cat(&[boxed(0, 20, 90), boxed(1, 100, 30)], 0);
    assert!(fraction_differing(&ours.masks, &cut) > 0.01, "the crops' masks are the whole images' masks cut");

    let bad = aug.augment_with_scores(&model, &x, None, &scores.narrow(1, 0, 8)).unwrap_err().to_string();
    assert!(bad.contains("group scores must be 2 x 16 floats"), "{bad}");
}

/// EfficientNet-Lite0 in training mode with gradients set by one SGD step's backward.
fn trained_effnet() -> (Model, Tensor, Tensor) {
    let model = effnet();
    let x = photos(&model, &["coffee.png", "chelsea.png"]);
    let y = labels(&[ESPRESSO, EGYPTIAN_CAT]);
    model.set_training(true);
    let mut opt = tch::nn::Sgd { momentum: 0.9, ..Default::default() }.build(&model.vs, 0.1).unwrap();
    let loss = model.forward(&x).cross_entropy_for_logits(&y);
    opt.zero_grad();
    loss.backward();
    (model, x, y)
}

fn snapshot(model: &Model) -> Vec<(String, Tensor, Option<Tensor>)> {
    let mut v: Vec<_> = model
        .vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let g = t.grad();
            let grad = g.defined().then(|| g.copy());
            (name, t.copy(), grad)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn mode_parameters_buffers_and_gradients_are_left_as_found() {
    let (model, x, y) = trained_effnet();
    let before = snapshot(&model);
    assert!(before.iter().any(|(_, _, g)| g.is_some()), "the set-up left no gradient to compare");
    let in_train = GroupCamAugment::default().augment(&model, &x, &y).unwrap();
    assert!(model.training(), "the model left training mode");
    let after = snapshot(&model);
    assert_eq!(before.len(), after.len());
    for ((name, v0, g0), (_, v1, g1)) in before.iter().zip(&after) {
        assert!(same(v0, v1), "{name} changed (BatchNorm statistics are variables too)");
        match (g0, g1) {
            (Some(a), Some(b)) => assert!(same(a, b), "the gradient of {name} changed"),
            (None, None) => {}
            _ => panic!("the gradient of {name} appeared or vanished"),
        }
    }
    // BatchNorm runs in eval mode whatever the model's mode.
    model.set_training(false);
    let in_eval = GroupCamAugment::default().augment(&model, &x, &y).unwrap();
    assert!(!model.training());
    assert!(same(&in_train.images, &in_eval.images) && same(&in_train.masks, &in_eval.masks));
    assert_eq!(in_train.stats.augmented(), 2);
}

#[test]
fn no_graph_is_built() {
    let (model, x, y) = trained_effnet();
    let x = x.set_requires_grad(true);
    let out = tch::with_grad(|| GroupCamAugment::default().augment(&model, &x, &y)).unwrap();
    assert!(!out.images.requires_grad() && !out.masks.requires_grad(), "the output is part of a graph");
    // A backward from the outputs: the `x * 0` term makes it run whatever the augmentation did
    // and gives the input a zero gradient; a graph kept from the input to the augmented images
    // (which keep the input where the mask is 1) would add ones there.
    let loss = tch::with_grad(|| {
        (&x * 0.0).sum(tch::Kind::Float) + out.images.sum(tch::Kind::Float) + out.masks.sum(tch::Kind::Float)
    });
    loss.backward();
    let g = x.grad();
    assert!(g.defined(), "the backward did not reach the input at all");
    assert_eq!(g.abs().max().double_value(&[]), 0.0, "the augmented images carry a graph back to the input");
    assert!(out.stats.augmented() > 0, "nothing was augmented, so nothing was tested");
}

/// EfficientNet-Lite0 whose target layer is NaN for images filled with 1000 and constant for
/// images filled with -1000 (the blur and every masked input of such an image keep the
/// marker), and which records the size of every batch it sees.
struct Marked {
    inner: Model,
    batches: RefCell<Vec<i64>>,
}

impl Marked {
    fn new() -> Marked {
        Marked { inner: effnet(), batches: RefCell::new(Vec::new()) }
    }
}

impl CamModel for Marked {
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.batches.borrow_mut().push(x.size()[0]);
        let a = self.inner.features_t(x, train);
        let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
        let a = a.where_self(&mean.lt(500.0), &a.full_like(f64::NAN));
        a.where_self(&mean.gt(-500.0), &a.ones_like())
    }
    fn head_t(&self, a: &Tensor, train: bool) -> Tensor {
        self.inner.head_t(a, train)
    }
    fn training(&self) -> bool {
        self.inner.training()
    }
    fn set_training(&self, on: bool) {
        self.inner.set_training(on)
    }
    fn input_norm(&self) -> Normalization {
        self.inner.input_norm()
    }
    fn num_classes(&self) -> i64 {
        self.inner.num_classes()
    }
    fn target_channels(&self) -> i64 {
        self.inner.target_channels()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
}

#[test]
fn constant_and_nan_maps_give_the_identity_never_nan() {
    let model = Marked::new();
    let real = photos(&model.inner, &["coffee.png", "chelsea.png"]);
    let nan = real.get(0).full_like(1000.0).unsqueeze(0);
    let flat = real.get(0).full_like(-1000.0).unsqueeze(0);
    let x = Tensor::cat(&[&real.narrow(0, 0, 1), &nan, &flat, &real.narrow(0, 1, 1)], 0);
    let y = labels(&[ESPRESSO, ESPRESSO, ESPRESSO, EGYPTIAN_CAT]);
    for threshold in [Threshold::ImageMean, Threshold::BatchMean] {
        let out = GroupCamAugment { threshold, ..Default::default() }.augment(&model, &x, &y).unwrap();
        assert_eq!(out.images.isnan().any().int64_value(&[]), 0, "{threshold:?}: NaN in the output");
        assert_eq!(out.stats.constant(), 2, "{threshold:?}: {:?}", out.stats.outcomes);
        assert_eq!(out.stats.augmented(), 2);
        for i in [1, 2] {
            assert_eq!(out.stats.outcomes[i as usize], Outcome::Constant);
            assert!(same(&out.images.get(i), &x.get(i)), "{threshold:?}: image {i} did not pass through");
            assert_eq!(out.masks.get(i).min().double_value(&[]), 1.0);
        }
        // The marked images change nothing for the others, the batch mean included.
        let alone = GroupCamAugment { threshold, ..Default::default() }
            .augment(&model.inner, &real, &labels(&[ESPRESSO, EGYPTIAN_CAT]))
            .unwrap();
        let ours = Tensor::cat(&[out.masks.narrow(0, 0, 1), out.masks.narrow(0, 3, 1)], 0);
        assert!(
            fraction_differing(&ours, &alone.masks) <= 1e-3,
            "{threshold:?}: the marked images moved the others' masks"
        );
    }
}

#[test]
fn the_batch_mean_is_one_threshold_for_all_maps() {
    let model = effnet();
    let x = photos(&model, &["coffee.png", "chelsea.png"]);
    let y = [ESPRESSO, EGYPTIAN_CAT];
    let out = GroupCamAugment { threshold: Threshold::BatchMean, ..Default::default() }
        .augment(&model, &x, &labels(&y))
        .unwrap();
    assert_eq5(&x, &out);
    let cam = GroupCam { groups: 16, weights: ChannelWeights::Ones, ..Default::default() };
    let maps = cam.explain(&model, &x, Some(&y)).unwrap().maps;
    let want = maps.ge_tensor(&maps.mean(Kind::Float)).to_kind(Kind::Float);
    assert!(fraction_differing(&out.masks.squeeze_dim(1), &want) <= 1e-4);
}

#[test]
fn one_forward_for_the_activations_then_chunks_of_at_most_max_batch() {
    let model = Marked::new();
    let x = photos(&model.inner, &["coffee.png", "chelsea.png"]);
    let aug = GroupCamAugment { max_batch: Some(5), ..Default::default() };
    aug.augment(&model, &x, &labels(&[ESPRESSO, EGYPTIAN_CAT])).unwrap();
    let b = model.batches.borrow().clone();
    assert_eq!(b[0], 2, "the activations take one forward of the batch: {b:?}");
    assert!(b[1..].iter().all(|&n| n <= 5), "a scoring forward exceeds max_batch: {b:?}");
    assert_eq!(b[1..].iter().sum::<i64>(), 2 * 17, "2 baselines and 2 x 16 masked inputs: {b:?}");
    assert_eq!(b.len(), 1 + 7, "34 scoring inputs in forwards of 5: {b:?}");
}

#[test]
fn apply_probability_skips_images_without_scoring_them() {
    let model = Marked::new();
    let x = photos(&model.inner, &["coffee.png", "chelsea.png", "coffee.png", "chelsea.png"]);
    let y = labels(&[ESPRESSO, EGYPTIAN_CAT, ESPRESSO, EGYPTIAN_CAT]);
    let none = GroupCamAugment { probability: 0.0, ..Default::default() }.augment(&model, &x, &y).unwrap();
    assert!(same(&none.images, &x) && none.stats.skipped() == 4);
    assert!(model.batches.borrow().is_empty(), "skipped images were scored");
    let half = GroupCamAugment { probability: 0.5, max_batch: Some(64), ..Default::default() };
    let _generator = common::torch_generator();
    tch::manual_seed(4);
    let a = half.augment(&model, &x, &y).unwrap();
    tch::manual_seed(4);
    let b = half.augment(&model, &x, &y).unwrap();
    assert!(same(&a.images, &b.images) && a.stats == b.stats, "the same seed drew differently");
    let n = a.stats.augmented() as i64;
    assert_eq!(n, 2, "p = 0.5 draws 2 of 4 images: {:?}", a.stats.outcomes);
    // Only the drawn images were scored: one forward for them, one for their 17 inputs each.
    assert_eq!(model.batches.borrow()[..2], [n, n * 17]);
    for (i, o) in a.stats.outcomes.iter().enumerate() {
        if *o == Outcome::Skipped {
            assert!(same(&a.images.get(i as i64), &x.get(i as i64)));
        }
    }
}

#[test]
fn each_image_is_drawn_with_chance_p_in_batches_of_about_p_b() {
    let _generator = common::torch_generator();
    tch::manual_seed(0);
    let aug = GroupCamAugment { probability: 0.3, ..Default::default() };
    let mut hits = [0usize; 5];
    let trials = 4000;
    for _ in 0..trials {
        let d = aug.draw(5);
        assert!(d.len() == 1 || d.len() == 2, "0.3 x 5 images drew {}", d.len());
        assert!(d.windows(2).all(|w| w[0] < w[1]));
        d.iter().for_each(|&i| hits[i as usize] += 1);
    }
    for (i, h) in hits.iter().enumerate() {
        let f = *h as f64 / trials as f64;
        assert!((f - 0.3).abs() < 0.03, "image {i} drawn with frequency {f}");
    }
}

#[test]
fn bad_settings_and_labels_are_errors() {
    let model = effnet();
    let x = photos(&model, &["coffee.png"]);
    let err = |aug: GroupCamAugment, y: &Tensor| aug.augment(&model, &x, y).unwrap_err().to_string();
    let y = labels(&[ESPRESSO]);
    assert!(err(GroupCamAugment::default(), &labels(&[1, 2])).contains("1 integers"));
    assert!(err(GroupCamAugment::default(), &labels(&[1000])).contains("label 1000 is out of range"));
    assert!(err(GroupCamAugment::default(), &Tensor::from_slice(&[1.0f32])).contains("integers"));
    assert!(err(GroupCamAugment { probability: 1.5, ..Default::default() }, &y).contains("probability"));
    assert!(err(GroupCamAugment { max_batch: Some(0), ..Default::default() }, &y).contains("max_batch"));
    assert!(err(GroupCamAugment { groups: 2000, ..Default::default() }, &y).contains("1280 channels"));
    assert!(err(GroupCamAugment { precision: Precision::F16Autocast, ..Default::default() }, &y).contains("CUDA"));
    let small = x.narrow(2, 0, 20).narrow(3, 0, 20);
    let e = GroupCamAugment::default().augment(&model, &small, &y).unwrap_err().to_string();
    assert!(e.contains("too small for the blur"), "{e}");
}

#[test]
fn the_cli_writes_the_augmented_images_and_their_masks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let weights = effnet_weights();
    let (coffee, cat) = (photo("coffee.png"), photo("chelsea.png"));
    let run = |labels: &[&str]| {
        let mut args = vec!["--device", "cpu", "augment", "--arch", "efficientnet-lite0", "--weights", s(&weights)];
        args.extend(["--image", s(&coffee), s(&cat), "--out", s(d), "--label"]);
        args.extend(labels);
        bin().args(&args).output().unwrap()
    };
    let bad = run(&["967", "285", "1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("3 labels for 2 images"));
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "a failed run wrote files");
    let ok = run(&["967", "285"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    for (stem, path) in [("coffee", &coffee), ("chelsea", &cat)] {
        let load = |p: &std::path::Path| imageio::to_tensor(&imageio::load_rgb(p).unwrap());
        let aug = load(&d.join(format!("{stem}-augmented.png")));
        let mask = load(&d.join(format!("{stem}-mask.png")));
        let orig = imageio::load_batch(&[path], 224, &Normalization::IMAGENET).unwrap().1.get(0);
        assert_eq!(
            mask.eq(0.0).logical_or(&mask.eq(1.0)).all().int64_value(&[]),
            1,
            "{stem}: the mask PNG is not binary"
        );
        let kept = mask.mean(Kind::Double).double_value(&[]);
        assert!((0.05..0.95).contains(&kept), "{stem}: {kept} kept");
        let keep = mask.gt(0.5);
        let diff = (&aug - &orig).abs();
        // Normalising and back may move a pixel by one level; the blurred part moves far more.
        assert!(diff.masked_select(&keep).max().double_value(&[]) <= 1.5 / 255.0, "{stem}: a kept pixel changed");
        assert!(diff.masked_select(&keep.logical_not()).mean(Kind::Double).double_value(&[]) > 2.0 / 255.0);
    }
}
