//! Where a run writes and what it keeps (timm's `CheckpointSaver`): `last` every epoch, `best`
//! when val top-1 improved, the history after them, and at the end the final weights in
//! torchvision's names and the report; and the hint a failed run gives. Each file is written
//! atomically, the checkpoint before anything that could fail after it, and only by the
//! process that writes the run's files (rank 0).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::{Tensor, nn};

use super::checkpoint::{self, Meta};
use super::record::EpochRecord;
use super::report;
use super::sgd::Sgd;
use crate::models::{Model, weights};

/// The run directory's paths (nothing is created by naming them).
#[derive(Clone, Debug)]
pub struct RunPaths {
    pub out: PathBuf,
    pub checkpoints: PathBuf,
    /// The probe's saliency grids (`saliency/`).
    pub probe: PathBuf,
    /// The map cache (`augment.refresh: K`).
    pub map_cache: PathBuf,
}

impl RunPaths {
    pub fn of(out: &Path) -> RunPaths {
        RunPaths {
            checkpoints: out.join("checkpoints"),
            probe: out.join("saliency"),
            map_cache: out.join("saliency-cache"),
            out: out.to_path_buf(),
        }
    }

    pub fn last(&self) -> PathBuf {
        self.checkpoints.join("last.safetensors")
    }
}

pub const NO_CHECKPOINT: &str = "no checkpoint was written yet (the run stopped in its first epoch)";

pub struct CheckpointSaver {
    pub paths: RunPaths,
    writes: bool,
}

impl CheckpointSaver {
    /// The saver of the run in `out`; when this process `writes`, its directories (the map
    /// cache's too with `map_cache`) are created.
    pub fn create(out: &Path, map_cache: bool, writes: bool) -> Result<CheckpointSaver> {
        let paths = RunPaths::of(out);
        if writes {
            let dirs = [&paths.out, &paths.checkpoints, &paths.probe].into_iter();
            for d in dirs.chain(map_cache.then_some(&paths.map_cache)) {
                std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            }
        }
        Ok(CheckpointSaver { paths, writes })
    }

    /// Writes `name` into the run directory (the written config), when this process writes.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.writes { crate::atomic::write_bytes(&self.paths.out.join(name), bytes) } else { Ok(()) }
    }

    pub fn last(&self) -> PathBuf {
        self.paths.last()
    }

    /// The last checkpoint, named with the epochs it holds, when one was written.
    pub fn last_checkpoint(&self, epochs_done: usize) -> Option<String> {
        let last = self.last();
        last.exists().then(|| format!("{} (after epoch {epochs_done})", last.display()))
    }

    /// Where a failed run can go on from: the last checkpoint, or that none was written yet.
    pub fn resume_hint(&self, epochs_done: usize) -> String {
        match self.last_checkpoint(epochs_done) {
            Some(last) => {
                format!("the last checkpoint, {last}, is intact: continue with --resume {}", self.last().display())
            }
            None => NO_CHECKPOINT.into(),
        }
    }

    /// Records the epoch in `meta` (best, epochs done, history, the loss scale's state), then
    /// writes `last`, `best` when val top-1 improved, and the history.
    pub fn save(
        &self,
        meta: &mut Meta,
        rec: EpochRecord,
        state: (&nn::VarStore, &Sgd, Option<&Tensor>),
        loss_scale: (f64, u64),
    ) -> Result<()> {
        let improved = rec.val_top1 > meta.best_top1;
        if improved {
            (meta.best_top1, meta.best_epoch) = (rec.val_top1, rec.epoch);
        }
        meta.epoch = rec.epoch;
        meta.history.push(rec);
        (meta.loss_scale, meta.loss_scale_clean_steps) = loss_scale;
        if !self.writes {
            return Ok(());
        }
        let (vs, sgd, maps) = state;
        checkpoint::save(&self.last(), vs, sgd, maps, meta)?;
        if improved {
            checkpoint::save(&self.paths.checkpoints.join("best.safetensors"), vs, sgd, maps, meta)?;
        }
        report::write_history(&self.paths.out, &meta.history)?;
        Ok(())
    }

    /// Final weights in torchvision's names, the class names in their metadata, and the report.
    pub fn write_final(&self, model: &Model, meta: &Meta) -> Result<()> {
        if !self.writes {
            return Ok(());
        }
        let out = &self.paths.out;
        let final_path = out.join("final.safetensors");
        weights::save_torchvision(&model.vs, &final_path, meta.step as i64)?;
        // The class names by head index travel with the weights and the report.
        let classes = &meta.classes;
        crate::models::head::add_safetensors_metadata(&final_path, &[("classes", serde_json::to_string(classes)?)])?;
        let mut report_md = report::render(&meta.history, None, out, None);
        report_md.push_str(&report::classes_section(classes));
        crate::atomic::write_bytes(&out.join("report.md"), report_md.as_bytes())?;
        println!("final weights: {}", out.join("final.safetensors").display());
        println!("report: {}", out.join("report.md").display());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;

    fn record(epoch: usize, top1: f64) -> EpochRecord {
        EpochRecord { epoch, val_top1: top1, ..Default::default() }
    }

    fn meta_of(path: &Path) -> Meta {
        let named = Tensor::read_safetensors(path).unwrap();
        let (_, t) = named.into_iter().find(|(k, _)| k == "meta").unwrap();
        serde_json::from_slice(&Vec::<u8>::try_from(t).unwrap()).unwrap()
    }

    /// `best` follows val top-1 (ties keep the earlier epoch), `last` and the history every
    /// epoch, the hint names what is on disk; a process that does not write leaves nothing.
    #[test]
    fn the_saver_keeps_last_every_epoch_best_on_improvement_and_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let lin = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        let _ = lin.forward(&Tensor::ones([1, 3], (tch::Kind::Float, tch::Device::Cpu)));
        let sgd = Sgd::new(&vs, 0.9, 0.0);
        let out = dir.path().join("run");
        let saver = CheckpointSaver::create(&out, false, true).unwrap();
        assert_eq!(saver.resume_hint(0), NO_CHECKPOINT);
        let mut meta = Meta { best_top1: -1.0, ..Default::default() };
        for (epoch, top1) in [(1, 0.5), (2, 0.7), (3, 0.7), (4, 0.6)] {
            saver.save(&mut meta, record(epoch, top1), (&vs, &sgd, None), (8.0, epoch as u64)).unwrap();
            assert_eq!(meta_of(&saver.last()).epoch, epoch);
        }
        let best = meta_of(&saver.paths.checkpoints.join("best.safetensors"));
        assert_eq!((best.epoch, best.best_epoch, best.best_top1), (2, 2, 0.7));
        assert_eq!((meta.best_epoch, meta.loss_scale, meta.loss_scale_clean_steps), (2, 8.0, 4));
        let history = report::read_history(&out).unwrap();
        assert_eq!(history.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(saver.resume_hint(4).contains("(after epoch 4)") && saver.resume_hint(4).contains("--resume"));
        assert!(!saver.paths.map_cache.exists(), "no cache directory without a map cache");

        let quiet_out = dir.path().join("rank1");
        let quiet = CheckpointSaver::create(&quiet_out, true, false).unwrap();
        let mut m = Meta::default();
        quiet.save(&mut m, record(1, 0.5), (&vs, &sgd, None), (1.0, 0)).unwrap();
        quiet.write_file("config.yaml", b"x").unwrap();
        assert_eq!(m.history.len(), 1, "the state is kept on every rank");
        assert!(!quiet_out.exists(), "a rank that does not write creates nothing");
    }
}
