//! A command's outputs against its inputs, checked once before any work: no output is an
//! input, lies inside an input directory (it would be read back as one), or is a directory
//! holding an input (a file written there could replace it, `--overwrite` would clear it).
//! Paths are compared canonically, so links and `..` do not hide a clash; an output that does
//! not exist yet is its nearest existing ancestor, canonicalised, joined with the rest.
//!
//! One exception, by design: a fine-tuning run continues its own checkpoint, so the `--resume`
//! file may lie in `<out>/checkpoints/` of the run directory it resumes ([`Io::resumed`]).

use std::path::{Component, Path, PathBuf};

use anyhow::{Result, bail};

struct Entry {
    flag: String,
    given: PathBuf,
    canon: PathBuf,
}

impl Entry {
    fn new(flag: &str, p: &Path) -> Self {
        Entry { flag: flag.to_string(), given: p.to_path_buf(), canon: resolved(p) }
    }

    /// `--flag path`, with the canonical path when it differs (a link, `..`, a relative path).
    fn show(&self) -> String {
        let plain = self.given.display().to_string();
        if self.canon == self.given {
            format!("{} {plain}", self.flag)
        } else {
            format!("{} {plain} ({})", self.flag, self.canon.display())
        }
    }
}

/// The paths a command reads and writes, each under the flag (or config key) that named it.
#[derive(Default)]
pub struct Io {
    inputs: Vec<Entry>,
    /// The `--resume` checkpoint: an input allowed at `<out>/checkpoints/` of an output directory.
    resume: Option<Entry>,
    files: Vec<Entry>,
    dirs: Vec<Entry>,
}

impl Io {
    pub fn new() -> Self {
        Self::default()
    }

    /// Files or directories the command reads (images, weights, a config, a data root).
    pub fn input<P: AsRef<Path>>(mut self, flag: &str, paths: impl IntoIterator<Item = P>) -> Self {
        self.inputs.extend(paths.into_iter().map(|p| Entry::new(flag, p.as_ref())));
        self
    }

    /// The checkpoint a run resumes: an input, except that the run directory it belongs to
    /// (`<out>/checkpoints/<file>`) may be the output directory.
    pub fn resumed<P: AsRef<Path>>(mut self, flag: &str, path: Option<P>) -> Self {
        self.resume = path.map(|p| Entry::new(flag, p.as_ref()));
        self
    }

    /// Files the command writes (`--json`, `--plot`).
    pub fn file<P: AsRef<Path>>(mut self, flag: &str, paths: impl IntoIterator<Item = P>) -> Self {
        self.files.extend(paths.into_iter().map(|p| Entry::new(flag, p.as_ref())));
        self
    }

    /// Directories the command writes into (`--out`, `--save-maps`, `--dump`).
    pub fn dir<P: AsRef<Path>>(mut self, flag: &str, paths: impl IntoIterator<Item = P>) -> Self {
        self.dirs.extend(paths.into_iter().map(|p| Entry::new(flag, p.as_ref())));
        self
    }

    /// The first clash, naming both paths and their flags.
    pub fn check(&self) -> Result<()> {
        let outputs = self.files.iter().map(|o| (o, false)).chain(self.dirs.iter().map(|o| (o, true)));
        for (out, is_dir) in outputs {
            let what = if is_dir { "directory" } else { "path" };
            for input in self.inputs.iter().chain(&self.resume) {
                let (o, i) = (&out.canon, &input.canon);
                if o == i {
                    bail!(
                        "{} would overwrite the input {}: it is the same {}; choose another output {what}",
                        out.show(),
                        input.show(),
                        if is_dir { "directory" } else { "file" }
                    );
                }
                if o.starts_with(i) {
                    bail!(
                        "{} lies inside the input directory {}: the output would be read back as input or \
                         overwrite one; choose another output {what} (outputs never go inside an input)",
                        out.show(),
                        input.show()
                    );
                }
                let own_checkpoint = self.resume.as_ref().is_some_and(|r| std::ptr::eq(r, input))
                    && i.parent().and_then(Path::parent) == Some(o.as_path())
                    && i.parent().and_then(Path::file_name).is_some_and(|n| n == "checkpoints");
                if is_dir && i.starts_with(o) && !own_checkpoint {
                    bail!(
                        "{} holds the input {}: writing there could overwrite the input (or clear it, or read \
                         the outputs back as inputs); choose another output directory",
                        out.show(),
                        input.show()
                    );
                }
            }
        }
        Ok(())
    }
}

/// The canonical path of `p`; for a path that does not exist (yet), its nearest existing
/// ancestor's canonical path joined with the rest, `..` and `.` resolved as written.
pub fn resolved(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    };
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = base.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => return abs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(io: Io) -> String {
        format!("{:#}", io.check().unwrap_err())
    }

    #[test]
    fn clashes_are_refused_by_canonical_path_and_named_with_their_flags() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let img = root.join("c.png");
        std::fs::write(&img, b"x").unwrap();
        let data = root.join("data");
        std::fs::create_dir(&data).unwrap();

        // The same file through another spelling.
        let other = root.join("data/../c.png");
        let e = err(Io::new().input("--images", [&img]).file("--json", [&other]));
        assert!(e.contains("--json") && e.contains("--images") && e.contains("would overwrite the input"), "{e}");
        assert!(e.contains(&img.canonicalize().unwrap().display().to_string()), "{e}");
        // Through a link.
        let link = root.join("link.png");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let e = err(Io::new().input("--image", [&link]).file("--plot", [&img]));
        assert!(e.contains("--plot") && e.contains("link.png"), "{e}");
        // Inside an input directory, existing or not yet.
        let e = err(Io::new().input("data.root", [&data]).dir("out", [data.join("runs/a")]));
        assert!(e.contains("inside the input directory data.root"), "{e}");
        // A directory holding an input.
        let e = err(Io::new().input("--image", [&img]).dir("--out", [root]));
        assert!(e.contains("holds the input --image") && e.contains("overwrite the input"), "{e}");

        // Apart: fine; a resumed run's own checkpoint inside its directory: fine, elsewhere not.
        Io::new().input("--images", [&img]).file("--json", [root.join("r.json")]).check().unwrap();
        let run = root.join("run");
        let ckpt = run.join("checkpoints/last.safetensors");
        std::fs::create_dir_all(ckpt.parent().unwrap()).unwrap();
        std::fs::write(&ckpt, b"x").unwrap();
        Io::new().resumed("--resume", Some(&ckpt)).dir("out", [&run]).check().unwrap();
        let e = err(Io::new().resumed("--resume", Some(&ckpt)).dir("out", [root]));
        assert!(e.contains("holds the input --resume"), "{e}");
        let e = err(Io::new().input("weights", [&ckpt]).dir("out", [&run]));
        assert!(e.contains("holds the input weights"), "{e}");
    }
}
