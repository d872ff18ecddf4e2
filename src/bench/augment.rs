//! An augmented training step against a plain one: the faithful setting, each speed option
//! alone and the fast setting, with the compute bound 1 + q (1 + (G + 1) r) / 3 plain steps,
//! where r is the scoring pixels over the input pixels and q the fraction of images drawn
//! (one scoring forward = 1/3 of a forward+backward). The cached setting (`augment.refresh: K`)
//! is timed as the training thread's part of its step: masks cut from cached maps (the loader's
//! work in a run, here on the step's thread), blur, blend, plain step; its refresh pass per image
//! is timed beside, and the paper's 20-epoch schedule is priced in plain epochs per setting.
//! The score cache (`augment.cache: scores`) likewise: its step (the crop's group maps from one
//! eval forward weighed by cached scores, blur, blend, plain step; bound 1 + 1/3) and its
//! refresh pass (the G + 1 scoring forwards and the features forward).

use anyhow::Result;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use rand::SeedableRng;

use super::{Report, Table, sync, time_interleaved};
use crate::augment::{GroupCamAugment, cache, compose};
use crate::data::transforms::{self, Placed};
use crate::models::{Arch, CamModel, Model};
use crate::ops::Blur;

/// `groupcam bench augment`'s arguments (clap reads them into this struct directly).
#[derive(clap::Args)]
pub struct AugmentBench {
    /// Architectures to measure (random weights: the cost does not depend on them).
    #[arg(long = "arch", value_name = "ARCH", value_delimiter = ',', default_value = "resnet18,resnet50",
        value_parser = crate::choice::parser::<Arch>())]
    pub archs: Vec<Arch>,
    #[arg(long, default_value_t = 16)]
    pub batch: i64,
    #[arg(long, default_value_t = 16)]
    pub groups: i64,
    #[arg(long, default_value_t = 224)]
    pub input_size: i64,
    /// The fast setting's scoring size.
    #[arg(long, default_value_t = 112)]
    pub fast_score_size: i64,
    /// The fast setting's apply probability.
    #[arg(long, default_value_t = 0.5)]
    pub fast_probability: f64,
    /// The cached setting's map side (augment.cache_size).
    #[arg(long, default_value_t = 56)]
    pub cache_size: u32,
    /// Timed repetitions after one warm-up, interleaved across the settings.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
}

/// The schedule the cost of each setting is priced over (the paper's fine-tuning).
const SCHEDULE_EPOCHS: usize = 20;

/// The seed of the draws of p < 1 in the benchmark.
const SEED: i64 = 1;

pub fn run(b: &AugmentBench, device: Device) -> Result<Report> {
    if let Some(t) = b.threads {
        tch::set_num_threads(t);
    }
    let faithful = GroupCamAugment { groups: b.groups, ..Default::default() };
    let settings = [
        ("faithful", faithful.clone()),
        ("score size only", GroupCamAugment { score_size: Some(b.fast_score_size), ..faithful.clone() }),
        ("probability only", GroupCamAugment { probability: b.fast_probability, ..faithful.clone() }),
        (
            "fast",
            GroupCamAugment {
                score_size: Some(b.fast_score_size),
                probability: b.fast_probability,
                ..faithful.clone()
            },
        ),
    ];
    let notes = vec![format!(
        "threads: {}, device: {device:?}, batch {}, G = {}, {} px",
        tch::get_num_threads(),
        b.batch,
        b.groups,
        b.input_size
    )];
    let mut t = Table::new(&["arch", "setting", "score px", "p", "step (s)", "/ plain step", "bound", "/ bound"]);
    let mut tables = Vec::new();
    for &arch in &b.archs {
        tch::manual_seed(0);
        let model = Model::build(arch, 1000, device)?;
        model.set_training(true);
        let mut opt = nn::Sgd { momentum: 0.9, wd: 1e-4, ..Default::default() }.build(&model.vs, 1e-4)?;
        let s = b.input_size;
        let x = Tensor::randn([b.batch, 3, s, s], (Kind::Float, device));
        let y = Tensor::randint(1000, [b.batch], (Kind::Int64, device));
        // One closure per column; the optimizer is shared, so they run one after another.
        // Every augmented step reseeds torch, so that p < 1 draws the same images each time;
        // the bound uses the fraction q actually drawn.
        let opt = std::cell::RefCell::new(&mut opt);
        let drawn = std::cell::RefCell::new(vec![0usize; settings.len()]);
        let step = |aug: Option<(usize, &GroupCamAugment)>| -> Result<()> {
            let inputs = match aug {
                Some((k, g)) => {
                    tch::manual_seed(SEED);
                    let out = g.augment(&model, &x, &y)?;
                    drawn.borrow_mut()[k] = out.stats.outcomes.len() - out.stats.skipped();
                    out.images
                }
                None => x.shallow_clone(),
            };
            let loss = model.forward(&inputs).cross_entropy_for_logits(&y);
            opt.borrow_mut().backward_step(&loss);
            sync(device);
            Ok(())
        };
        let step = &step;
        let mut plain = || step(None);
        // Cached maps of random 500 x 375 photos, cut with RandomResizedCrop boxes and flips.
        let side = b.cache_size;
        let maps: Vec<Vec<u8>> = (0..b.batch)
            .map(|_| Vec::<u8>::try_from(Tensor::randint(256, [(side * side) as i64], (Kind::Uint8, Device::Cpu))))
            .collect::<Result<_, _>>()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let crop =
            crate::data::Transform::Train { size: s as u32, scale: (0.08, 1.0), ratio: (0.75, 4.0 / 3.0), flip: 0.5 };
        let mut cached = || -> Result<()> {
            let mut masks = vec![0u8; (b.batch * s * s) as usize];
            for (map, dst) in maps.iter().zip(masks.chunks_exact_mut((s * s) as usize)) {
                let params = transforms::params(500, 375, crop, &mut rng)?;
                cache::cut_mask(map, side, &Placed { params, width: 500, height: 375 }, dst)?;
            }
            let m = Tensor::from_slice(&masks).view([b.batch, 1, s, s]).to_device(device).to_kind(Kind::Float);
            let inputs = tch::no_grad(|| -> Result<Tensor> { Ok(compose(&x, &Blur::GROUP_CAM.apply(&x)?, &m)) })?;
            let loss = model.forward(&inputs).cross_entropy_for_logits(&y);
            opt.borrow_mut().backward_step(&loss);
            sync(device);
            Ok(())
        };
        // The loader's labels are on the CPU: no copy back inside the timing.
        let y_cpu = y.to_device(Device::Cpu);
        let mut refresh = || -> Result<()> {
            let (maps, _) = faithful.maps_for(&model, &x, &y_cpu)?;
            drop(std::hint::black_box(cache::to_cache(&maps, side)));
            sync(device);
            Ok(())
        };
        let scores = faithful.scores_for(&model, &x, &y_cpu)?;
        let mut scored = || -> Result<()> {
            let out = faithful.augment_with_scores(&model, &x, Some(&y_cpu), &scores)?;
            let loss = model.forward(&out.images).cross_entropy_for_logits(&y);
            opt.borrow_mut().backward_step(&loss);
            sync(device);
            Ok(())
        };
        let mut score_refresh = || -> Result<()> {
            let s = faithful.scores_for(&model, &x, &y_cpu)?;
            drop(std::hint::black_box(cache::to_score_rows(&s, faithful.groups)));
            sync(device);
            Ok(())
        };
        let mut runs: Vec<Box<dyn FnMut() -> Result<()> + '_>> = settings
            .iter()
            .enumerate()
            .map(|(k, (_, g))| Box::new(move || step(Some((k, g)))) as Box<dyn FnMut() -> Result<()>>)
            .collect();
        let mut fs: Vec<&mut dyn FnMut() -> Result<()>> = vec![&mut plain];
        fs.extend(runs.iter_mut().map(|f| f.as_mut() as &mut dyn FnMut() -> Result<()>));
        fs.push(&mut cached);
        fs.push(&mut refresh);
        fs.push(&mut scored);
        fs.push(&mut score_refresh);
        let times = time_interleaved(b.reps, &mut fs)?;
        drop(fs);
        drop(runs);
        let (cached_s, refresh_s) = (times[settings.len() + 1], times[settings.len() + 2]);
        let (scored_s, score_refresh_s) = (times[settings.len() + 3], times[settings.len() + 4]);
        let row = |v: [&str; 8]| v.iter().map(|s| s.to_string()).collect();
        t.push(row([arch.name(), "plain step", "-", "-", &format!("{:.3}", times[0]), "1.00", "1.00", "-"]));
        let mut epochs_cost = vec![];
        for (k, ((label, g), secs)) in settings.iter().zip(&times[1..]).enumerate() {
            let (sh, sw) = g.score_dims(s, s);
            let r = (sh * sw) as f64 / (s * s) as f64;
            let q = drawn.borrow()[k] as f64 / b.batch as f64;
            let bound = 1.0 + q * (1.0 + (g.groups + 1) as f64 * r) / 3.0;
            let ratio = secs / times[0];
            t.push(vec![
                arch.to_string(),
                label.to_string(),
                sh.to_string(),
                format!("{} (q {q:.2})", g.probability),
                format!("{secs:.3}"),
                format!("{ratio:.2}"),
                format!("{bound:.2}"),
                format!("{:.2}", ratio / bound),
            ]);
            if ["faithful", "fast"].contains(label) {
                epochs_cost.push((label.to_string(), SCHEDULE_EPOCHS as f64 * ratio));
            }
        }
        let ratio = cached_s / times[0];
        t.push(vec![
            arch.to_string(),
            format!("cached ({side} px maps)"),
            "-".into(),
            format!("{}", faithful.probability),
            format!("{cached_s:.3}"),
            format!("{ratio:.2}"),
            "1.00".into(),
            format!("{ratio:.2}"),
        ]);
        // A refresh pass in plain steps per batch, against the (G + 2) / 3 of its forwards.
        let refresh_row = |label: &str, secs: f64| {
            let (steps, bound) = (secs / times[0], (faithful.groups + 2) as f64 / 3.0);
            let cells = [label.to_string(), s.to_string(), "-".into(), format!("{secs:.3}"), format!("{steps:.2}")];
            [vec![arch.to_string()], cells.to_vec(), vec![format!("{bound:.2}"), format!("{:.2}", steps / bound)]]
                .concat()
        };
        let refresh_steps = refresh_s / times[0];
        t.push(refresh_row("refresh pass (per batch)", refresh_s));
        let scored_ratio = scored_s / times[0];
        let score_bound = 4.0 / 3.0;
        t.push(vec![
            arch.to_string(),
            "score cache (cached scores, the crop's maps)".into(),
            "-".into(),
            format!("{}", faithful.probability),
            format!("{scored_s:.3}"),
            format!("{scored_ratio:.2}"),
            format!("{score_bound:.2}"),
            format!("{:.2}", scored_ratio / score_bound),
        ]);
        let score_refresh_steps = score_refresh_s / times[0];
        t.push(refresh_row("score refresh pass (per batch)", score_refresh_s));
        for k in [1, 5, 20] {
            let refreshes = SCHEDULE_EPOCHS.div_ceil(k) as f64;
            epochs_cost.push((format!("cached, K = {k}"), SCHEDULE_EPOCHS as f64 * ratio + refreshes * refresh_steps));
        }
        for k in [1, 5, 20] {
            let refreshes = SCHEDULE_EPOCHS.div_ceil(k) as f64;
            epochs_cost.push((
                format!("score cache, K = {k}"),
                SCHEDULE_EPOCHS as f64 * scored_ratio + refreshes * score_refresh_steps,
            ));
        }
        let mut sched = Table::new(&["arch", "setting", &format!("{SCHEDULE_EPOCHS} epochs in plain epochs")]);
        sched.push(vec![arch.to_string(), "plain".into(), format!("{SCHEDULE_EPOCHS}")]);
        for (label, cost) in epochs_cost {
            sched.push(vec![arch.to_string(), label, format!("{cost:.1}")]);
        }
        tables.push(sched);
    }
    let mut all = vec![t];
    all.extend(tables);
    Ok(Report { notes, tables: all })
}
