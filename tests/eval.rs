//! Insertion/deletion and the pointing game: the AUC formula, the curves' end points, batched
//! against one-forward-per-step curves, and a map on the object beating its reverse on the
//! real EfficientNet-Lite0 and the committed photos.

mod common;

use common::*;
use groupcam::cam::Explainer;
use groupcam::cam::gradcam::GradCam;
use groupcam::cam::{Batching, GroupCam};
use groupcam::eval::insdel::{self, Mode, Preset, auc};
use groupcam::eval::pointing::{self, Coco, Tally};
use groupcam::imageio;
use groupcam::models::{Arch, CamModel, Model};
use groupcam::ops::Blur;
use tch::{Device, Kind, Tensor};

fn effnet() -> Model {
    Model::load(Arch::EfficientNetLite0, &effnet_weights(), Device::Cpu).unwrap()
}

fn photos(model: &Model) -> Tensor {
    imageio::load_batch(&[photo("coffee.png"), photo("chelsea.png")], 224, &model.input_norm()).unwrap().0
}

fn prob(model: &Model, x: &Tensor, class: i64) -> f64 {
    tch::no_grad(|| model.logits_eval(x).softmax(-1, Kind::Float).double_value(&[0, class]))
}

#[test]
fn auc_on_known_curves() {
    assert_eq!(auc(&[1.0; 5]), 1.0);
    assert_eq!(auc(&[0.0, 1.0]), 0.5);
    let ramp: Vec<f64> = (0..113).map(|i| i as f64 / 112.0).collect();
    assert!((auc(&ramp) - 0.5).abs() < 1e-12);
    // (1 + 0 + 0 - 1/2 - 0) / 2
    assert_eq!(auc(&[1.0, 0.0, 0.0]), 0.25);
    // (0.2 + 0.8 + 0.4 + 0.6 - 0.1 - 0.3) / 3
    assert!((auc(&[0.2, 0.8, 0.4, 0.6]) - 1.6 / 3.0).abs() < 1e-12);
}

#[test]
fn presets_and_points() {
    assert_eq!(Preset::GROUP_CAM.points(224 * 224), 113);
    assert_eq!(Preset::RISE.points(224 * 224), 225);
    assert_eq!(Preset::GROUP_CAM.blur, Blur::GROUP_CAM);
    assert_eq!(Preset::RISE.blur, Blur::RISE);
    assert_eq!("rise".parse::<Preset>().unwrap(), Preset::RISE);
    let e = "lime".parse::<Preset>().unwrap_err();
    assert!(format!("{e}").contains("unknown preset 'lime'"));
}

#[test]
fn order_is_descending_and_stable() {
    let m = Tensor::from_slice(&[0.5f32, 1.0, 0.5, 0.0, 1.0, 0.5]).view([2, 3]);
    let o = Vec::<i64>::try_from(insdel::order(&m)).unwrap();
    assert_eq!(o, [1, 4, 0, 2, 5, 3]);
    // Many ties: a constant map keeps index order.
    let o = Vec::<i64>::try_from(insdel::order(&Tensor::zeros([40, 40], (Kind::Float, Device::Cpu)))).unwrap();
    assert_eq!(o, (0..1600).collect::<Vec<i64>>());
}

#[test]
fn curve_end_points() {
    let model = effnet();
    let x = photos(&model);
    let maps = GradCam.explain(&model, &x, None).unwrap().maps;
    let classes = insdel::argmax_classes(&model, &x).unwrap();
    let p = Preset::GROUP_CAM;
    let ins = insdel::curves(&model, &x, &maps, None, Mode::Insertion, &p, None).unwrap();
    let del = insdel::curves(&model, &x, &maps, None, Mode::Deletion, &p, None).unwrap();
    for i in 0..2 {
        let (xi, c) = (x.narrow(0, i, 1), classes[i as usize]);
        let (ins, del) = (&ins[i as usize], &del[i as usize]);
        assert_eq!((ins.len(), del.len()), (113, 113));
        let clean = prob(&model, &xi, c);
        let blurred = prob(&model, &Blur::GROUP_CAM.apply(&xi).unwrap(), c);
        let zero = prob(&model, &xi.zeros_like(), c);
        eprintln!("image {i}: clean {clean:.4} blurred {blurred:.4} zero {zero:.4}");
        assert!(clean > blurred + 0.1 && clean > zero + 0.1, "end points would not tell the curves apart");
        assert!((ins[0] - blurred).abs() < 1e-5, "insertion starts at {} not {blurred}", ins[0]);
        assert!((ins[112] - clean).abs() < 1e-5, "insertion ends at {} not {clean}", ins[112]);
        assert!((del[0] - clean).abs() < 1e-5, "deletion starts at {} not {clean}", del[0]);
        assert!((del[112] - zero).abs() < 1e-5, "deletion ends at {} not {zero}", del[112]);
    }
}

#[test]
fn batched_curves_equal_one_step_at_a_time() {
    let model = effnet();
    let x = photos(&model);
    let maps = GradCam.explain(&model, &x, None).unwrap().maps;
    let classes = insdel::argmax_classes(&model, &x).unwrap();
    // A chunk of 7 does not divide the 226 or 450 inputs: chunk edges are crossed; two lanes
    // score interleaved chunks on two threads and must put them back in order.
    let ways = [Batching { chunk: 7, lanes: 1 }, Batching { chunk: 3, lanes: 2 }];
    // The stepwise reference is computed once per preset, mode and image (the slow part) and
    // compared with both ways of batching.
    for preset in [Preset::GROUP_CAM, Preset::RISE] {
        for mode in [Mode::Insertion, Mode::Deletion] {
            let reference: Vec<Vec<f64>> = (0..2usize)
                .map(|i| {
                    let xi = x.narrow(0, i as i64, 1);
                    insdel::curve_stepwise(&model, &xi, &maps.get(i as i64), classes[i], mode, &preset).unwrap()
                })
                .collect();
            for batching in ways {
                let batched = insdel::curves(&model, &x, &maps, Some(&classes), mode, &preset, Some(batching)).unwrap();
                for (i, one) in reference.iter().enumerate() {
                    assert_eq!(one.len(), batched[i].len());
                    let d = one.iter().zip(&batched[i]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                    eprintln!(
                        "{} {} {batching:?} image {i}: max|d| {d:.2e}, AUC {:.4}",
                        preset.name,
                        mode.name(),
                        auc(one)
                    );
                    assert!(d < 1e-5, "{} {}: batched and stepwise curves differ by {d}", preset.name, mode.name());
                    // Not trivially equal: the curve moves.
                    let span =
                        one.iter().cloned().fold(f64::MIN, f64::max) - one.iter().cloned().fold(f64::MAX, f64::min);
                    assert!(span > 0.1);
                }
            }
        }
    }
}

/// A model with state on the Rust side: it must not be run on several threads.
struct Logged {
    inner: Model,
    batches: std::sync::Mutex<Vec<(std::thread::ThreadId, i64)>>,
}

impl CamModel for Logged {
    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.batches.lock().unwrap().push((std::thread::current().id(), x.size()[0]));
        self.inner.features_t(x, train)
    }
    fn head_t(&self, a: &Tensor, train: bool) -> Tensor {
        self.inner.head_t(a, train)
    }
    fn training(&self) -> bool {
        false
    }
    fn set_training(&self, _: bool) {}
    fn input_norm(&self) -> groupcam::models::Normalization {
        self.inner.input_norm()
    }
    fn num_classes(&self) -> i64 {
        self.inner.num_classes()
    }
    fn target_channels(&self) -> i64 {
        self.inner.target_channels()
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

#[test]
fn lanes_need_a_model_that_allows_them() {
    let logged = Logged { inner: Model::new(Arch::Resnet18, 10, Device::Cpu), batches: Default::default() };
    let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let map = Tensor::rand([1, 32, 32], (Kind::Float, Device::Cpu));
    let p = Preset { name: "t", step: 100, blur: Blur::RISE };
    let two = Batching { chunk: 4, lanes: 2 };
    insdel::curves(&logged, &x, &map, Some(&[1]), Mode::Deletion, &p, Some(two)).unwrap();
    let b = logged.batches.lock().unwrap().clone();
    let here = std::thread::current().id();
    assert!(b.iter().all(|(t, _)| *t == here), "a model without `concurrent` ran on another thread");
    assert_eq!(b.iter().map(|(_, n)| n).sum::<i64>(), p.points(32 * 32));
    assert_eq!(Batching::default_for(&logged).lanes, 1);
    // The crate's own models do allow them, on CPU with several threads.
    let threads = tch::get_num_threads() as usize;
    assert_eq!(Batching::default_for(&logged.inner).lanes, threads);
}

#[test]
fn a_map_on_the_object_beats_its_reverse() {
    let model = effnet();
    let x = photos(&model);
    let maps = GroupCam::default().explain(&model, &x, None).unwrap().maps;
    let reversed = 1.0 - &maps;
    let p = Preset::GROUP_CAM;
    let run = |m: &Tensor, mode| insdel::curves(&model, &x, m, None, mode, &p, None).unwrap();
    let (ins, ins_r) = (run(&maps, Mode::Insertion), run(&reversed, Mode::Insertion));
    let (del, del_r) = (run(&maps, Mode::Deletion), run(&reversed, Mode::Deletion));
    let mut overall = (0.0, 0.0);
    for i in 0..2 {
        let (a, ar, d, dr) = (auc(&ins[i]), auc(&ins_r[i]), auc(&del[i]), auc(&del_r[i]));
        eprintln!("image {i}: insertion {a:.4} vs reversed {ar:.4}; deletion {d:.4} vs reversed {dr:.4}");
        assert!(a > ar, "image {i}: insertion {a} does not beat the reversed map's {ar}");
        assert!(d < dr, "image {i}: deletion {d} does not beat the reversed map's {dr}");
        overall.0 += a - d;
        overall.1 += ar - dr;
    }
    // And by a clear margin on the mean over-all score (insertion - deletion).
    assert!(overall.0 / 2.0 > overall.1 / 2.0 + 0.2, "over-all {} vs reversed {}", overall.0 / 2.0, overall.1 / 2.0);
}

#[test]
fn bad_maps_are_named() {
    let model = effnet();
    let x = Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let bad = Tensor::zeros([1, 32, 32], (Kind::Float, Device::Cpu));
    let e = insdel::curves(&model, &x, &bad, Some(&[1]), Mode::Deletion, &Preset::RISE, None).unwrap_err();
    assert!(format!("{e}").contains("saliency maps of shape [1, 32, 32]"), "{e}");
    let nan = Tensor::full([1, 64, 64], f64::NAN, (Kind::Float, Device::Cpu));
    let e = insdel::curves(&model, &x, &nan, Some(&[1]), Mode::Deletion, &Preset::RISE, None).unwrap_err();
    assert!(format!("{e}").contains("NaN"), "{e}");
}

fn synthetic_coco() -> Coco {
    serde_json::from_value(serde_json::json!({
        "images": [
            {"id": 1, "file_name": "a.png", "width": 200, "height": 100},
            {"id": 2, "file_name": "b.png", "width": 200, "height": 100}
        ],
        "annotations": [
            {"image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40]},
            {"image_id": 1, "category_id": 7, "bbox": [120, 5, 50, 50]},
            {"image_id": 2, "category_id": 3, "bbox": [150, 60, 20, 30]},
            {"image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10]}
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    }))
    .unwrap()
}

fn box_map(h: i64, w: i64, boxes: &[[f64; 4]]) -> Tensor {
    let m = Tensor::zeros([h, w], (Kind::Float, Device::Cpu));
    for b in boxes {
        let _ = m.narrow(0, b[1] as i64, b[3] as i64).narrow(1, b[0] as i64, b[2] as i64).fill_(1.0);
    }
    m
}

#[test]
fn pointing_game_scores_box_maps_at_100_percent() {
    let coco = synthetic_coco();
    let (mut good, mut bad) = (Tally::default(), Tally::default());
    for im in &coco.images {
        for (cat, boxes) in coco.boxes_of(im.id) {
            let m = box_map(im.height as i64, im.width as i64, &boxes);
            good.add(cat, pointing::hit(pointing::peak(&m).unwrap(), &boxes, pointing::TOLERANCE));
            // The reversed map peaks outside every box of the class (far from them here).
            let r = 1.0 - &m;
            bad.add(cat, pointing::hit(pointing::peak(&r).unwrap(), &boxes, pointing::TOLERANCE));
        }
    }
    assert_eq!(good.per_category.values().map(|v| v.1).sum::<u64>(), 3);
    assert_eq!(good.mean_accuracy(), Some(1.0));
    assert!(bad.mean_accuracy().unwrap() < 1.0);
}

#[test]
fn pointing_tolerance_is_15_pixels() {
    let b = [[100.0, 100.0, 10.0, 10.0]];
    assert!(pointing::hit((105.0, 105.0), &b, 15.0));
    assert!(pointing::hit((125.0, 105.0), &b, 15.0));
    assert!(!pointing::hit((125.5, 105.0), &b, 15.0));
    assert!(pointing::hit((120.0, 120.0), &b, 15.0)); // 10*sqrt(2) < 15
    assert!(!pointing::hit((122.0, 122.0), &b, 15.0)); // 12*sqrt(2) > 15
    let mut t = Tally::default();
    t.add(1, true);
    t.add(1, false);
    t.add(2, true);
    assert_eq!(t.mean_accuracy(), Some(0.75)); // mean over categories, not over trials (2/3)
}

#[test]
fn bad_boxes_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("boxes.json");
    std::fs::write(&p, r#"{"images": [], "annotations": []}"#).unwrap();
    let e = format!("{:#}", Coco::load(&p).unwrap_err());
    assert!(e.contains("boxes.json") && e.contains("categories"), "{e}");
    std::fs::write(
        &p,
        r#"{"images": [{"id": 1, "file_name": "a.png", "width": 9, "height": 9}],
            "annotations": [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}],
            "categories": [{"id": 3, "name": "cat"}]}"#,
    )
    .unwrap();
    let e = format!("{:#}", Coco::load(&p).unwrap_err());
    assert!(e.contains("annotations[0]") && e.contains("category_id 5"), "{e}");
}

fn eval_cmd(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let w = effnet_weights();
    bin()
        .args(["--device", "cpu", "eval", "--arch", "efficientnet-lite0", "--weights", s(&w)])
        .args(["--json", s(&dir.join("out.json"))])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn cli_eval_writes_curves_table_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (plot, maps) = (d.join("plot.png"), d.join("maps"));
    let out = eval_cmd(
        d,
        &["--images", s(&photo("coffee.png")), s(&photo("chelsea.png")), "--methods", "gradcam,gradcampp"]
            .into_iter()
            .chain(["--plot", s(&plot), "--save-maps", s(&maps), "--preset", "rise", "--input-size", "112"])
            .collect::<Vec<_>>(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| method | insertion (%) | deletion (%) | over-all (%) |"), "{stdout}");
    assert!(stdout.contains("| gradcampp |"), "{stdout}");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("out.json")).unwrap()).unwrap();
    let ins = &j["insdel"];
    assert_eq!(ins["preset"], "rise");
    // 112 x 112 at 224 pixels per step: 56 steps, 57 points (a small input keeps the test short).
    assert_eq!(ins["points"], 57);
    for m in ["gradcam", "gradcampp"] {
        let r = &ins["methods"][m];
        let imgs = r["images"].as_array().unwrap();
        assert_eq!(imgs.len(), 2);
        let mut sums = (0.0, 0.0);
        for im in imgs {
            let c: Vec<f64> = serde_json::from_value(im["insertion_curve"].clone()).unwrap();
            assert_eq!(c.len(), 57);
            assert!((auc(&c) - im["insertion_auc"].as_f64().unwrap()).abs() < 1e-12);
            sums.0 += im["insertion_auc"].as_f64().unwrap();
            sums.1 += im["deletion_auc"].as_f64().unwrap();
        }
        let mean = &r["mean_auc"];
        assert!((mean["insertion"].as_f64().unwrap() - sums.0 / 2.0).abs() < 1e-12);
        assert!((mean["deletion"].as_f64().unwrap() - sums.1 / 2.0).abs() < 1e-12);
        assert!((mean["overall"].as_f64().unwrap() - (sums.0 - sums.1) / 2.0).abs() < 1e-12);
        assert_eq!(r["mean_curves"]["deletion"].as_array().unwrap().len(), 57);
        assert!(maps.join(m).join("coffee.npy").exists() && maps.join(m).join("chelsea.png").exists());
    }
    let png = image::open(&plot).unwrap().to_rgb8();
    // Not blank: the method colours are drawn.
    assert!(png.pixels().any(|p| p.0 == [214, 39, 40]) && png.pixels().any(|p| p.0 == [31, 119, 180]));
}

#[test]
fn cli_eval_pointing_on_synthetic_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = d.join("images");
    std::fs::create_dir_all(&imgs).unwrap();
    for name in ["a.png", "b.png"] {
        let img = image::RgbImage::from_fn(120, 80, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, 90]));
        img.save(imgs.join(name)).unwrap();
    }
    let boxes = d.join("boxes.json");
    std::fs::write(
        &boxes,
        serde_json::json!({
            "images": [{"id": 1, "file_name": "a.png", "width": 120, "height": 80},
                       {"id": 2, "file_name": "b.png", "width": 120, "height": 80}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 120, 80]},
                            {"image_id": 2, "category_id": 2, "bbox": [0, 0, 120, 80]}],
            "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
        })
        .to_string(),
    )
    .unwrap();
    let out = eval_cmd(
        d,
        &[
            "--images",
            s(&imgs),
            "--methods",
            "gradcam",
            "--metrics",
            "pointing",
            "--boxes",
            s(&boxes),
            "--input-size",
            "64",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("out.json")).unwrap()).unwrap();
    // Boxes covering the whole image: every peak is a hit.
    assert_eq!(j["pointing"]["methods"]["gradcam"]["mean_accuracy"], 1.0);
    assert_eq!(j["pointing"]["methods"]["gradcam"]["categories"]["2"]["trials"], 1);
}

#[test]
fn cli_eval_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let coffee = photo("coffee.png");
    let cases: [(&[&str], &str); 5] = [
        (&["--images", s(&coffee), "--methods", "lime"], "unknown method 'lime'"),
        (&["--images", s(&coffee), "--metrics", "iou"], "unknown metric 'iou'"),
        (&["--images", s(&coffee), "--metrics", "pointing"], "--boxes"),
        (&["--images", "/nonexistent/x.png"], "/nonexistent/x.png"),
        (&["--images", s(&coffee), "--preset", "fast"], "unknown preset 'fast'"),
    ];
    for (args, want) in cases {
        let out = eval_cmd(d, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    }
    assert!(!d.join("out.json").exists());
}
