//! `groupcam ab`: a controlled A/B of fine-tuning arms over seeds. Every (arm, seed) is a plain
//! `groupcam finetune` of the base config with the arm's overrides and `train.seed` = the seed,
//! all from the config's one `weights:` file, in `<work>/runs/ARM-sSEED` (a normal run
//! directory). A run directory whose `ab-run.json` holds the same resolved config and the same
//! starting weights (sha256), with a finished history, is reused; any other is trained again,
//! so an interrupted A/B goes on with the runs it lacks. Then `<work>/ab.json`, `ab.md`, one
//! curves PNG per validation set and `reports/ARM-sSEED.md` ([`render`]).
//!
//! Bad input fails before any run: seeds (none, duplicates), an arm's unknown key or bad
//! value (named with the arm), an arm that sets what the A/B owns (seed, output, weights) or
//! whose schedule differs from the control's.

pub mod render;
pub mod stats;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::train::{Config, EpochRecord, Phase, ValScore, report};

/// What `groupcam ab` was asked for.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The base fine-tuning config; its `weights:` is every run's starting point.
    pub config: PathBuf,
    /// `key=value` overrides of the base config, for every run.
    pub sets: Vec<String>,
    /// Arms: a built-in name ([`BUILT_IN`]) or `NAME:key=value,...`; empty: every built-in.
    /// The control is added first when not listed.
    pub arms: Vec<String>,
    pub seeds: Vec<u64>,
    pub work: PathBuf,
    /// Data-parallel ranks per run (`finetune --nproc`).
    pub nproc: Option<usize>,
}

/// The built-in arms.
pub const BUILT_IN: [&str; 6] = ["control", "faithful", "fast", "cached", "scores", "cutmix"];

/// Keys that the A/B sets itself for every run.
const OWNED: [&str; 3] = ["train.seed", "out", "weights"];

/// `--seeds 0,1,2`: at least one, each once.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let seeds = s
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| v.parse::<u64>().with_context(|| format!("--seeds: '{v}' is not a seed (a whole number >= 0)")))
        .collect::<Result<Vec<_>>>()?;
    check_seeds(&seeds)?;
    Ok(seeds)
}

fn check_seeds(seeds: &[u64]) -> Result<()> {
    if seeds.is_empty() {
        bail!("--seeds: no seeds given (e.g. --seeds 0,1,2)");
    }
    for (i, s) in seeds.iter().enumerate() {
        if seeds[..i].contains(s) {
            bail!("--seeds: seed {s} is given twice (a paired difference needs each seed once)");
        }
    }
    Ok(())
}

/// One arm: its name, its overrides of the base config, and what they mean.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Arm {
    pub name: String,
    /// What the arm does, in words (for the table).
    pub setting: String,
    /// Its overrides of the base config, one per key (a later one replaces an earlier one).
    pub sets: Vec<String>,
}

/// What a built-in arm does, in words.
fn describe(name: &str, input_size: u32) -> Option<String> {
    Some(match name {
        "control" => "augmentation off".into(),
        "faithful" => "Group-CAM, G = 16, every image, scored at full resolution (the paper)".into(),
        "fast" => format!("Group-CAM, G = 16, probability 0.5, scored at {} px", input_size / 2),
        "cached" => "Group-CAM, G = 16, every image, maps of whole images cached, refreshed every epoch".into(),
        "scores" => "Group-CAM, G = 16, every image, group scores of whole images cached, refreshed every epoch".into(),
        "cutmix" => "CutMix (timm's: alpha 1, every batch, labels mixed by area)".into(),
        _ => return None,
    })
}

/// `sets` with each key once, at its first place, holding its last value.
fn last_wins(sets: Vec<String>) -> Vec<String> {
    let key = |s: &String| s.split_once('=').map_or(s.clone(), |(k, _)| k.trim().to_string());
    let mut out: Vec<String> = Vec::new();
    for s in sets {
        match out.iter_mut().find(|o| key(o) == key(&s)) {
            Some(o) => *o = s,
            None => out.push(s),
        }
    }
    out
}

/// A built-in arm's overrides; every augmentation key that matters is set, so that the base
/// config's own `augment:` cannot change what the arm means. `fast` scores at half the input size.
fn built_in(name: &str, input_size: u32) -> Option<Vec<String>> {
    let groupcam = |extra: &[String]| -> Vec<String> {
        ["augment.enabled=true", "augment.method=groupcam", "augment.groups=16", "augment.probability=1.0"]
            .iter()
            .map(|s| s.to_string())
            .chain(["augment.score_size=null".into(), "augment.refresh=batch".into(), "augment.cache=maps".into()])
            .chain(extra.iter().cloned())
            .collect()
    };
    Some(match name {
        "control" => vec!["augment.enabled=false".into()],
        "faithful" => groupcam(&[]),
        "fast" => groupcam(&["augment.probability=0.5".into(), format!("augment.score_size={}", input_size / 2)]),
        "cached" => groupcam(&["augment.refresh=1".into()]),
        "scores" => groupcam(&["augment.refresh=1".into(), "augment.cache=scores".into()]),
        "cutmix" => vec![
            "augment.enabled=true".into(),
            "augment.method=cutmix".into(),
            "augment.probability=1.0".into(),
            "augment.refresh=batch".into(),
        ],
        _ => return None,
    })
}

/// `key=value,key=value`: a comma starts a new override only where the next part has a '='
/// (so that `data.scale=[0.5,1.0]` stays one).
fn split_sets(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in s.split(',') {
        match out.last_mut() {
            Some(last) if !part.contains('=') => {
                last.push(',');
                last.push_str(part);
            }
            _ => out.push(part.to_string()),
        }
    }
    out.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The arms of `specs` (built-in names, or NAME:key=value,... after a built-in's overrides when
/// NAME is one), the control first.
pub fn parse_arms(specs: &[String], input_size: u32) -> Result<Vec<Arm>> {
    let specs: Vec<String> =
        if specs.is_empty() { BUILT_IN.iter().map(|s| s.to_string()).collect() } else { specs.to_vec() };
    let mut arms: Vec<Arm> = Vec::new();
    for spec in &specs {
        let (name, sets) = spec.split_once(':').unwrap_or((spec, ""));
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("--arm '{spec}': an arm's name must be letters, digits, '-' or '_' (NAME or NAME:key=value,...)");
        }
        let own = split_sets(sets);
        let base = match built_in(name, input_size) {
            Some(b) => b,
            None if own.is_empty() => bail!(
                "--arm '{name}': not a built-in arm ({}); give its settings as {name}:key=value,...",
                BUILT_IN.join(", ")
            ),
            None => vec![],
        };
        for s in &own {
            let key = s
                .split_once('=')
                .map(|(k, _)| k.trim())
                .with_context(|| format!("arm '{name}': '{s}' is not key=value"))?;
            if OWNED.contains(&key) {
                bail!(
                    "arm '{name}': key '{key}' is set by the A/B itself (--seeds, --work, the base config's weights)"
                );
            }
        }
        if arms.iter().any(|a| a.name == name) {
            bail!("--arm '{name}' is given twice");
        }
        let setting = match describe(name, input_size) {
            Some(d) if own.is_empty() => d,
            Some(d) => format!("{d}; {}", own.join(", ")),
            None => own.join(", "),
        };
        arms.push(Arm { name: name.to_string(), setting, sets: last_wins(base.into_iter().chain(own).collect()) });
    }
    if let Some(i) = arms.iter().position(|a| a.name == "control") {
        let c = arms.remove(i);
        arms.insert(0, c);
    } else {
        let (setting, sets) = (describe("control", input_size), built_in("control", input_size));
        arms.insert(
            0,
            Arm { name: "control".into(), setting: setting.expect("built in"), sets: sets.expect("built in") },
        );
    }
    Ok(arms)
}

/// One (arm, seed) run, resolved.
pub struct Planned {
    pub arm: String,
    pub seed: u64,
    pub cfg: Config,
}

impl Planned {
    pub fn name(&self) -> String {
        format!("{}-s{}", self.arm, self.seed)
    }
}

/// Every run's config, resolved and checked, before anything is written.
pub fn plan(spec: &Spec) -> Result<(Config, Vec<Arm>, Vec<Planned>)> {
    check_seeds(&spec.seeds)?;
    let base = Config::load(&spec.config, &spec.sets)?;
    if base.weights.is_none() {
        bail!(
            "config {}: key 'weights' is missing: every arm of an A/B starts from the same weights file",
            spec.config.display()
        );
    }
    let arms = parse_arms(&spec.arms, base.data.input_size)?;
    let mut runs = Vec::new();
    for arm in &arms {
        for &seed in &spec.seeds {
            let out = spec.work.join("runs").join(format!("{}-s{seed}", arm.name));
            let sets: Vec<String> = spec
                .sets
                .iter()
                .chain(&arm.sets)
                .cloned()
                .chain([format!("train.seed={seed}"), format!("out={}", out.display())])
                .collect();
            let cfg = Config::load(&spec.config, &sets).with_context(|| format!("arm '{}'", arm.name))?;
            runs.push(Planned { arm: arm.name.clone(), seed, cfg });
        }
    }
    let schedule = |c: &Config| {
        let p = c.pretrain.as_ref().map(|p| (p.epochs, p.lr.to_bits(), p.lr_step));
        (c.train.epochs, c.train.lr_step, c.train.lr_gamma.to_bits(), p)
    };
    let control = schedule(&runs[0].cfg);
    for r in &runs {
        if schedule(&r.cfg) != control {
            let (c, t) = (&runs[0].cfg.train, &r.cfg.train);
            bail!(
                "arm '{}': its schedule differs from the control's (train.epochs {} against {}, train.lr_step {} \
                 against {}, train.lr_gamma {} against {}, or pretrain): the arms must train for the same epochs \
                 with the same lr steps",
                r.arm,
                t.epochs,
                c.epochs,
                t.lr_step,
                c.lr_step,
                t.lr_gamma,
                c.lr_gamma
            );
        }
    }
    Ok((base, arms, runs))
}

/// What the A/B keeps in a run directory beside the run: the config and starting point it was
/// trained from, and its wall time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub config: serde_json::Value,
    pub start_sha256: String,
    pub wall_s: f64,
}

const MANIFEST: &str = "ab-run.json";

pub fn sha256(path: &Path) -> Result<String> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The run's manifest when it is finished with this very config and starting point.
fn finished(cfg: &Config, start: &str) -> Option<Manifest> {
    let out = &cfg.out;
    let m: Manifest = serde_json::from_str(&std::fs::read_to_string(out.join(MANIFEST)).ok()?).ok()?;
    let history = report::read_history(out).ok()?;
    let same = m.config == serde_json::to_value(cfg).ok()? && m.start_sha256 == start;
    (same && history.len() == cfg.train.epochs && out.join("final.safetensors").is_file()).then_some(m)
}

/// One run's results, as ab.json holds them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub seed: u64,
    pub run: PathBuf,
    pub wall_s: f64,
    /// Whether this call found the run finished (and trained nothing for it).
    pub reused: bool,
    /// The mean fraction of images augmented over the fine-tuning epochs.
    pub augmented: f64,
    /// The last epoch's accuracies by validation set (`val`, then `data.extra_val`'s).
    pub last: BTreeMap<String, ValScore>,
    /// Top-1 per epoch by validation set.
    pub curves: BTreeMap<String, Vec<f64>>,
}

/// An arm's figures on one validation set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetResult {
    pub set: String,
    pub top1_mean: f64,
    pub top1_std: Option<f64>,
    /// Minus the control's, paired by seed (None for the control).
    pub diff: Option<stats::Paired>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmResult {
    pub name: String,
    pub setting: String,
    pub sets: Vec<String>,
    pub runs: Vec<RunResult>,
    pub augmented_mean: f64,
    pub wall_s_mean: f64,
    /// The mean wall time over the control's.
    pub wall_ratio: f64,
    /// One per validation set, `val` first.
    pub by_set: Vec<SetResult>,
}

/// ab.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AbResult {
    pub config: PathBuf,
    pub weights: PathBuf,
    pub start_sha256: String,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    /// The validation sets: `val`, then `data.extra_val`'s names.
    pub val_sets: Vec<String>,
    pub arms: Vec<ArmResult>,
}

fn scores(r: &EpochRecord) -> BTreeMap<String, ValScore> {
    let mut m = r.extra_val.clone();
    m.insert("val".into(), ValScore { top1: r.val_top1, top5: r.val_top5, images: r.val_images });
    m
}

/// Trains (or reuses) every run of `spec`, then writes the A/B's files. Runs are child
/// processes of this executable's `finetune` (so the CLI must be the caller); under a
/// torchrun launch they inherit it, and only rank 0 writes the A/B's own files.
pub fn run(spec: &Spec) -> Result<AbResult> {
    let launch = crate::dist::launch::from_env()?;
    if let (Some(n), Some(l)) = (spec.nproc, &launch) {
        bail!("--nproc {n}: this process is already rank {} of a {} launch", l.rv.rank, l.source);
    }
    let main = launch.as_ref().is_none_or(|l| l.rv.rank == 0);
    let (base, arms, planned) = plan(spec)?;
    let weights = base.weights.clone().expect("checked by plan");
    let start = sha256(&weights)?;
    let exe = std::env::current_exe().context("cannot find this executable to run the fine-tuning")?;
    for dir in ["configs", "logs", "runs"] {
        std::fs::create_dir_all(spec.work.join(dir))
            .with_context(|| format!("cannot create {}", spec.work.join(dir).display()))?;
    }
    let mut results: BTreeMap<String, Vec<RunResult>> = BTreeMap::new();
    // Seed-major: a drift in the machine's speed hits every arm alike.
    let mut order: Vec<&Planned> = planned.iter().collect();
    order.sort_by_key(|p| (spec.seeds.iter().position(|s| *s == p.seed), arms.iter().position(|a| a.name == p.arm)));
    for p in order {
        let name = p.name();
        let (wall_s, reused) = match finished(&p.cfg, &start) {
            Some(m) => {
                println!("{name}: reusing {}", p.cfg.out.display());
                (m.wall_s, true)
            }
            None => (train(&exe, spec, p, &start, main)?, false),
        };
        let history = report::read_history(&p.cfg.out)?;
        let tuned: Vec<f64> =
            history.iter().filter(|r| r.phase == Phase::Finetune).map(|r| r.augmented_fraction).collect();
        let last = history.last().map(scores).unwrap_or_default();
        let mut curves: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in &history {
            for (set, v) in scores(r) {
                curves.entry(set).or_default().push(v.top1);
            }
        }
        let augmented = if tuned.is_empty() { 0.0 } else { stats::mean(&tuned) };
        let r = RunResult { seed: p.seed, run: p.cfg.out.clone(), wall_s, reused, augmented, last, curves };
        results.entry(p.arm.clone()).or_default().push(r);
    }
    let val_sets: Vec<String> = std::iter::once("val".to_string()).chain(base.data.extra_val.keys().cloned()).collect();
    let result = summarise(spec, &base, &start, arms, results, val_sets);
    if main {
        render::write_all(&spec.work, &result)?;
    }
    Ok(result)
}

/// One `finetune` child (with `--overwrite`: whatever the directory held is not this run);
/// its output goes to `<work>/logs/NAME.log`. Returns its wall time.
fn train(exe: &Path, spec: &Spec, p: &Planned, start: &str, main: bool) -> Result<f64> {
    let name = p.name();
    let cfg_path = spec.work.join("configs").join(format!("{name}.yaml"));
    crate::atomic::write_bytes(&cfg_path, serde_yaml::to_string(&p.cfg)?.as_bytes())?;
    let log_path = spec.work.join("logs").join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["finetune", "--quiet", "--overwrite", "--config"]).arg(&cfg_path);
    if let Some(n) = spec.nproc {
        cmd.args(["--nproc", &n.to_string()]);
    }
    println!("{name}: training {} (log {})", p.cfg.out.display(), log_path.display());
    let t0 = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let wall_s = t0.elapsed().as_secs_f64();
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        bail!(
            "run {name} failed ({status}; config {}, log {}):\n{}",
            cfg_path.display(),
            log_path.display(),
            tail.join("\n")
        );
    }
    if main {
        let m = Manifest { config: serde_json::to_value(&p.cfg)?, start_sha256: start.to_string(), wall_s };
        crate::atomic::write_bytes(&p.cfg.out.join(MANIFEST), serde_json::to_string_pretty(&m)?.as_bytes())?;
    }
    println!("{name}: done in {wall_s:.1} s");
    Ok(wall_s)
}

fn summarise(
    spec: &Spec,
    base: &Config,
    start: &str,
    arms: Vec<Arm>,
    mut results: BTreeMap<String, Vec<RunResult>>,
    val_sets: Vec<String>,
) -> AbResult {
    let top1 = |runs: &[RunResult], set: &str| -> Vec<f64> {
        runs.iter().map(|r| r.last.get(set).map_or(f64::NAN, |v| v.top1)).collect()
    };
    let control = results.get("control").cloned().unwrap_or_default();
    let control_wall = stats::mean(&control.iter().map(|r| r.wall_s).collect::<Vec<_>>());
    let arms = arms
        .into_iter()
        .map(|arm| {
            let runs = results.remove(&arm.name).unwrap_or_default();
            let by_set = val_sets
                .iter()
                .map(|set| {
                    let v = top1(&runs, set);
                    SetResult {
                        set: set.clone(),
                        top1_mean: stats::mean(&v),
                        top1_std: stats::std(&v),
                        diff: (arm.name != "control").then(|| stats::Paired::of(&v, &top1(&control, set))),
                    }
                })
                .collect();
            let wall_s_mean = stats::mean(&runs.iter().map(|r| r.wall_s).collect::<Vec<_>>());
            ArmResult {
                augmented_mean: stats::mean(&runs.iter().map(|r| r.augmented).collect::<Vec<_>>()),
                wall_ratio: wall_s_mean / control_wall,
                wall_s_mean,
                by_set,
                runs,
                name: arm.name,
                setting: arm.setting,
                sets: arm.sets,
            }
        })
        .collect();
    AbResult {
        config: spec.config.clone(),
        weights: base.weights.clone().unwrap_or_default(),
        start_sha256: start.to_string(),
        seeds: spec.seeds.clone(),
        epochs: base.train.epochs,
        val_sets,
        arms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_arms_parse_and_bad_ones_are_named() {
        assert_eq!(parse_seeds("0, 1,2").unwrap(), [0, 1, 2]);
        assert!(format!("{:#}", parse_seeds("").unwrap_err()).contains("no seeds"));
        assert!(format!("{:#}", parse_seeds("0,1,0").unwrap_err()).contains("seed 0 is given twice"));
        assert!(format!("{:#}", parse_seeds("0,x").unwrap_err()).contains("'x'"));
        let arms = parse_arms(&["cutmix".into(), "mine:augment.groups=8,data.scale=[0.5,1.0]".into()], 64).unwrap();
        assert_eq!(arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["control", "cutmix", "mine"]);
        assert_eq!(arms[2].sets, ["augment.groups=8", "data.scale=[0.5,1.0]"]);
        let fast = parse_arms(&["fast:augment.groups=4".into()], 64).unwrap();
        assert!(fast[1].sets.contains(&"augment.score_size=32".to_string()));
        assert!(fast[1].sets.contains(&"augment.probability=0.5".to_string()));
        assert!(fast[1].sets.contains(&"augment.groups=4".to_string()), "the arm's own overrides win");
        assert_eq!(fast[1].sets.iter().filter(|s| s.starts_with("augment.groups=")).count(), 1, "{:?}", fast[1].sets);
        assert_eq!(fast[1].setting, "Group-CAM, G = 16, probability 0.5, scored at 32 px; augment.groups=4");
        let e = format!("{:#}", parse_arms(&["nosuch".into()], 64).unwrap_err());
        assert!(e.contains("'nosuch'") && e.contains("not a built-in"), "{e}");
        let e = format!("{:#}", parse_arms(&["x:train.seed=3".into()], 64).unwrap_err());
        assert!(e.contains("train.seed"), "{e}");
        assert!(parse_arms(&["fast".into(), "fast".into()], 64).is_err());
    }
}
