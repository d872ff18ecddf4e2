//! The run's loaders as the config describes them (train, val and `data.extra_val`), apart from
//! the set-up so that what an epoch works with (`context.rs`) needs nothing of the set-up.

use anyhow::{Result, bail};

use super::Config;
use crate::data::{ImageFolder, Loader, Transform};

/// The run's training and validation loaders, as the config describes them.
pub struct Loaders {
    pub train: Loader,
    pub val: Loader,
    /// `data.extra_val`'s sets by name, each validated like `val`.
    pub extra_val: Vec<(String, Loader)>,
}

impl Loaders {
    pub fn build(cfg: &Config) -> Result<Loaders> {
        let train_set = ImageFolder::open(&cfg.data.root.join(&cfg.data.train_dir))?;
        let val_set = ImageFolder::open(&cfg.data.root.join(&cfg.data.val_dir))?;
        if train_set.classes != val_set.classes {
            bail!("the class folders of {} and {} differ", train_set.root.display(), val_set.root.display());
        }
        if train_set.classes.len() < 2 {
            bail!(
                "{} has one class folder ({}): cross-entropy over one class is 0 whatever the model does, \
                 so there is nothing to fine-tune (a classifier needs at least 2 classes)",
                train_set.root.display(),
                train_set.classes.join(", ")
            );
        }
        let (size, d) = (cfg.data.input_size, &cfg.data);
        let train = Loader {
            shuffle: true,
            drop_last: true,
            workers: d.workers,
            prefetch: d.prefetch,
            seed: cfg.train.seed,
            ..Loader::new(
                train_set,
                cfg.train.batch_size,
                Transform::Train {
                    size,
                    scale: (d.scale[0], d.scale[1]),
                    ratio: (d.ratio[0], d.ratio[1]),
                    flip: d.flip,
                },
                cfg.arch.input_norm(),
            )
        };
        if train.num_batches(0) == 0 {
            bail!("{} images are fewer than one batch of {} (drop_last)", train.data.len(), cfg.train.batch_size);
        }
        let val = Loader {
            data: val_set,
            batch_size: cfg.train.val_batch_size.unwrap_or(cfg.train.batch_size),
            shuffle: false,
            drop_last: false,
            transform: Transform::Eval { size, resize: cfg.val_resize() },
            ..train.clone()
        };
        let mut extra_val = Vec::new();
        for (name, dir) in &cfg.data.extra_val {
            let set = ImageFolder::open(&cfg.data.root.join(dir))?;
            if set.classes != train.data.classes {
                bail!(
                    "key 'data.extra_val.{name}': the class folders of {} ({}) differ from the training set's {} ({})",
                    set.root.display(),
                    set.classes.join(", "),
                    train.data.root.display(),
                    train.data.classes.join(", ")
                );
            }
            extra_val.push((name.clone(), Loader { data: set, ..val.clone() }));
        }
        Ok(Loaders { train, val, extra_val })
    }

    pub fn num_classes(&self) -> i64 {
        self.train.data.classes.len() as i64
    }
}
