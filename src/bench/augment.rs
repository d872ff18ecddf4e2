//! An augmented training step against a plain one: the faithful setting, each speed option
//! alone and the fast setting, with the compute bound 1 + q (1 + (G + 1) r) / 3 plain steps,
//! where r is the scoring pixels over the input pixels and q the fraction of images drawn
//! (one scoring forward = 1/3 of a forward+backward).

use anyhow::Result;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::{Report, Table, sync, time_interleaved};
use crate::augment::GroupCamAugment;
use crate::models::{Arch, CamModel, Model};

pub struct AugmentBench {
    pub archs: Vec<Arch>,
    pub batch: i64,
    pub groups: i64,
    pub input_size: i64,
    /// The fast setting's scoring size and apply probability.
    pub fast_score_size: i64,
    pub fast_probability: f64,
    pub reps: usize,
}

/// The seed of the draws of p < 1 in the benchmark.
const SEED: i64 = 1;

pub fn run(b: &AugmentBench, device: Device) -> Result<Report> {
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
    for &arch in &b.archs {
        tch::manual_seed(0);
        let model = Model::new(arch, 1000, device);
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
        let mut runs: Vec<Box<dyn FnMut() -> Result<()> + '_>> = settings
            .iter()
            .enumerate()
            .map(|(k, (_, g))| Box::new(move || step(Some((k, g)))) as Box<dyn FnMut() -> Result<()>>)
            .collect();
        let mut fs: Vec<&mut dyn FnMut() -> Result<()>> = vec![&mut plain];
        fs.extend(runs.iter_mut().map(|f| f.as_mut() as &mut dyn FnMut() -> Result<()>));
        let times = time_interleaved(b.reps, &mut fs)?;
        drop(runs);
        let row = |v: [&str; 8]| v.iter().map(|s| s.to_string()).collect();
        t.push(row([arch.name(), "plain step", "-", "-", &format!("{:.3}", times[0]), "1.00", "1.00", "-"]));
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
        }
    }
    Ok(Report { notes, tables: vec![t] })
}
