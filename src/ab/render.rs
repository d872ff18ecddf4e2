//! The A/B's files: ab.json, ab.md (one column group per validation set, then one row per
//! seed), `curves-SET.png` per validation set (val top-1 per epoch, one line per arm: the mean
//! over seeds inside its min-max band) and `reports/ARM-sSEED.md` (`groupcam report` of the run
//! with its seed's control beside it).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::AbResult;
use crate::plot;
use crate::train::report;

pub fn write_all(work: &Path, r: &AbResult) -> Result<()> {
    crate::atomic::write_bytes(&work.join("ab.json"), serde_json::to_string_pretty(r)?.as_bytes())?;
    for set in &r.val_sets {
        plot::save(&curves(r, set), &work.join(format!("curves-{set}.png")))?;
    }
    std::fs::create_dir_all(work.join("reports"))?;
    let control = r.arms.iter().find(|a| a.name == "control");
    for arm in r.arms.iter().filter(|a| a.name != "control") {
        for run in &arm.runs {
            let Some(c) = control.and_then(|c| c.runs.iter().find(|c| c.seed == run.seed)) else { continue };
            let md = report::render(
                &report::read_history(&run.run)?,
                Some(&report::read_history(&c.run)?),
                &run.run,
                Some(&c.run),
            );
            crate::atomic::write_bytes(
                &work.join("reports").join(format!("{}-s{}.md", arm.name, run.seed)),
                md.as_bytes(),
            )?;
        }
    }
    let md = markdown(r);
    crate::atomic::write_bytes(&work.join("ab.md"), md.as_bytes())?;
    print!("{md}");
    println!(
        "written: {}, {}, curves-*.png and reports/ in {}",
        work.join("ab.md").display(),
        work.join("ab.json").display(),
        work.display()
    );
    Ok(())
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

/// The tables.
pub fn markdown(r: &AbResult) -> String {
    let mut s = String::new();
    let seeds: Vec<String> = r.seeds.iter().map(|s| s.to_string()).collect();
    let _ = writeln!(
        s,
        "# A/B of {}\n\n{} epochs per run from {} (sha256 {}), seeds {}; validation sets: {}.\n",
        r.config.display(),
        r.epochs,
        r.weights.display(),
        &r.start_sha256[..12.min(r.start_sha256.len())],
        seeds.join(", "),
        r.val_sets.join(", ")
    );
    let mut head = "| arm | setting | augmented | wall s per run | / control |".to_string();
    let mut rule = "|---|---|---|---|---|".to_string();
    for set in &r.val_sets {
        let _ = write!(head, " {set} top-1 % (mean +- std) | {set} minus control, pt (mean [95% t-interval]) |");
        rule.push_str("---|---|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for arm in &r.arms {
        let _ = write!(
            s,
            "| {} | {} | {:.0}% | {:.1} | {:.2} |",
            arm.name,
            arm.setting.replace('|', "\\|"),
            100.0 * arm.augmented_mean,
            arm.wall_s_mean,
            arm.wall_ratio
        );
        for set in &arm.by_set {
            let sd = set.top1_std.map(|v| format!(" +- {}", pct(v))).unwrap_or_default();
            let diff = match &set.diff {
                None => "-".to_string(),
                Some(d) => match d.ci95 {
                    Some([lo, hi]) => format!("{:+.2} [{:+.2}, {:+.2}]", 100.0 * d.mean, 100.0 * lo, 100.0 * hi),
                    None => format!("{:+.2} (one seed: no interval)", 100.0 * d.mean),
                },
            };
            let _ = write!(s, " {}{sd} | {diff} |", pct(set.top1_mean));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\nPer seed: top-1 % per validation set and arm, then each arm minus the control in points.\n");
    let others: Vec<&super::ArmResult> = r.arms.iter().filter(|a| a.name != "control").collect();
    let mut head = "| seed |".to_string();
    for set in &r.val_sets {
        for a in &r.arms {
            let _ = write!(head, " {set}: {} |", a.name);
        }
        for a in &others {
            let _ = write!(head, " {set}: {} - control |", a.name);
        }
    }
    let cols = r.val_sets.len() * (r.arms.len() + others.len());
    let _ = writeln!(s, "{head}\n|---|{}", "---|".repeat(cols));
    for (i, seed) in r.seeds.iter().enumerate() {
        let _ = write!(s, "| {seed} |");
        for (k, set) in r.val_sets.iter().enumerate() {
            for a in &r.arms {
                let v = a.runs.iter().find(|x| x.seed == *seed).and_then(|x| x.last.get(set)).map(|v| pct(v.top1));
                let _ = write!(s, " {} |", v.unwrap_or("-".into()));
            }
            for a in &others {
                let d = a.by_set[k].diff.as_ref().and_then(|d| d.per_seed.get(i)).map(|d| format!("{:+.2}", 100.0 * d));
                let _ = write!(s, " {} |", d.unwrap_or("-".into()));
            }
        }
        s.push('\n');
    }
    s
}

/// Top-1 % per epoch on `set`: each arm's mean over seeds, inside its min-max band.
fn curves(r: &AbResult, set: &str) -> image::RgbImage {
    let mut lines = Vec::new();
    let mut bands: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    for arm in &r.arms {
        let per_run: Vec<&Vec<f64>> = arm.runs.iter().filter_map(|x| x.curves.get(set)).collect();
        let epochs = per_run.iter().map(|c| c.len()).min().unwrap_or(0);
        let at = |e: usize| per_run.iter().map(|c| 100.0 * c[e]).collect::<Vec<f64>>();
        lines.push((0..epochs).map(|e| super::stats::mean(&at(e))).collect::<Vec<f64>>());
        bands.push((
            (0..epochs).map(|e| at(e).into_iter().fold(f64::INFINITY, f64::min)).collect(),
            (0..epochs).map(|e| at(e).into_iter().fold(f64::NEG_INFINITY, f64::max)).collect(),
        ));
    }
    let all = bands.iter().flat_map(|(lo, hi)| lo.iter().chain(hi));
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) =
        if lo.is_finite() { ((lo / 5.0).floor() * 5.0, ((hi / 5.0).ceil() * 5.0).max(lo + 5.0)) } else { (0.0, 100.0) };
    let panel = plot::Panel { title: format!("{set} top-1 in percent per epoch"), lines, y_range: (lo, hi), bands };
    plot::chart(&[panel], &r.arms.iter().map(|a| a.name.clone()).collect::<Vec<_>>())
}
