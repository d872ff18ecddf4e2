//! The run's report: final and best top-1, time per epoch, images skipped, and a control run's
//! curve beside it when one is given.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::record::EpochRecord;

pub fn write_history(out: &Path, history: &[EpochRecord]) -> Result<()> {
    crate::atomic::write_bytes(&out.join("history.json"), serde_json::to_string_pretty(history)?.as_bytes())
}

pub fn read_history(run: &Path) -> Result<Vec<EpochRecord>> {
    let p = run.join("history.json");
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("cannot read {} (is {} a run directory?)", p.display(), run.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a run history", p.display()))
}

fn best(h: &[EpochRecord]) -> Option<&EpochRecord> {
    h.iter().max_by(|a, b| a.val_top1.total_cmp(&b.val_top1))
}

/// Markdown: a summary and one row per epoch (the control's columns beside the run's).
pub fn render(
    run: &[EpochRecord],
    control: Option<&[EpochRecord]>,
    run_dir: &Path,
    control_dir: Option<&Path>,
) -> String {
    let mut s = String::new();
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    let summary = |s: &mut String, name: &str, h: &[EpochRecord]| {
        let last = h.last();
        let secs: f64 = h.iter().map(|r| r.seconds).sum();
        let _ = writeln!(s, "## {name}\n");
        let _ = writeln!(s, "- epochs: {}", h.len());
        let _ = writeln!(s, "- final val top-1: {}", last.map(|r| pct(r.val_top1)).unwrap_or("-".into()));
        let _ = writeln!(s, "- final val top-5: {}", last.map(|r| pct(r.val_top5)).unwrap_or("-".into()));
        for (name, v) in last.map(|r| &r.extra_val).into_iter().flatten() {
            let _ =
                writeln!(s, "- final {name} top-1: {} top-5: {} (of {} images)", pct(v.top1), pct(v.top5), v.images);
        }
        let _ = writeln!(
            s,
            "- best val top-1: {}",
            best(h).map(|r| format!("{} (epoch {})", pct(r.val_top1), r.epoch)).unwrap_or("-".into())
        );
        let _ = writeln!(s, "- time per epoch: {:.1} s", secs / h.len().max(1) as f64);
        let _ = writeln!(
            s,
            "- training images skipped (unreadable): {}",
            h.iter().map(|r| r.images_skipped).sum::<usize>()
        );
        let _ = writeln!(
            s,
            "- validation: {} images per epoch, {} unreadable skipped\n",
            last.map(|r| r.val_images).unwrap_or(0),
            last.map(|r| r.val_skipped).unwrap_or(0)
        );
    };
    let _ = writeln!(s, "# Run report\n");
    summary(&mut s, &format!("run {}", run_dir.display()), run);
    if let (Some(c), Some(d)) = (control, control_dir) {
        summary(&mut s, &format!("control {}", d.display()), c);
        let _ = writeln!(
            s,
            "## Curves\n\n| epoch | phase | lr | run loss | run val top-1 | control loss | control val top-1 | difference |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for i in 0..run.len().max(c.len()) {
            let (r, k) = (run.get(i), c.get(i));
            let e = r.or(k).map(|x| x.epoch).unwrap_or(i + 1);
            let _ = writeln!(
                s,
                "| {e} | {} | {} | {} | {} | {} | {} | {} |",
                r.or(k).map(|x| x.phase.name()).unwrap_or(""),
                r.or(k).map(|x| format!("{:.2e}", x.lr)).unwrap_or_default(),
                r.map(|x| format!("{:.4}", x.train_loss)).unwrap_or("-".into()),
                r.map(|x| pct(x.val_top1)).unwrap_or("-".into()),
                k.map(|x| format!("{:.4}", x.train_loss)).unwrap_or("-".into()),
                k.map(|x| pct(x.val_top1)).unwrap_or("-".into()),
                match (r, k) {
                    (Some(a), Some(b)) => format!("{:+.2} pt", 100.0 * (a.val_top1 - b.val_top1)),
                    _ => "-".into(),
                }
            );
        }
    } else {
        // The extra sets' columns only when the run has them: older reports stay as they were.
        let extra: Vec<&String> = run.last().map(|r| r.extra_val.keys().collect()).unwrap_or_default();
        let heads: String = extra.iter().map(|n| format!(" {n} top-1 |")).collect();
        let _ = writeln!(
            s,
            "## Epochs\n\n| epoch | phase | lr | loss | train top-1 | val top-1 | val top-5 | augmented | skipped | s | saliency 1-r |{heads}"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|{}", "---|".repeat(extra.len()));
        for r in run {
            let cells: String = extra
                .iter()
                .map(|n| format!(" {} |", r.extra_val.get(*n).map(|v| pct(v.top1)).unwrap_or("-".into())))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {:.2e} | {:.4} | {} | {} | {} | {:.0}% | {} | {:.1} | {} |{cells}",
                r.epoch,
                r.phase,
                r.lr,
                r.train_loss,
                pct(r.train_top1),
                pct(r.val_top1),
                pct(r.val_top5),
                100.0 * r.augmented_fraction,
                r.images_skipped,
                r.seconds,
                r.saliency_change.map(|c| format!("{c:.4}")).unwrap_or("-".into())
            );
        }
    }
    s
}

/// The class names by head index, for the report.
pub fn classes_section(classes: &[String]) -> String {
    let mut s = format!("\n## Classes\n\n{} classes, head index: name\n\n", classes.len());
    for (i, c) in classes.iter().enumerate() {
        let _ = writeln!(s, "- {i}: {c}");
    }
    s
}
