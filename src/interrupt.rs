//! Ctrl-C during long work. While an [`Interrupt`] is installed, the first SIGINT only raises a
//! flag that the work polls between steps (it then stops cleanly, says where its last checkpoint
//! is and how to resume, and the CLI exits 130); a second SIGINT exits at once with 130.
//!
//! A signal handler can only reach process-wide state, hence the one static flag.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The exit status of a process ended by SIGINT (128 + 2), as shells report it.
pub const EXIT_CODE: i32 = 130;

extern "C" fn on_sigint(_: libc::c_int) {
    if REQUESTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(EXIT_CODE) };
    }
    let msg = b"\ninterrupted: stopping after the current step (Ctrl-C again to quit at once)\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is static.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Has Ctrl-C been pressed since the last [`Interrupt::install`]?
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The SIGINT handler, installed for the value's lifetime (the default action comes back on drop).
pub struct Interrupt {
    previous: libc::sighandler_t,
}

impl Interrupt {
    pub fn install() -> Interrupt {
        REQUESTED.store(false, Ordering::SeqCst);
        let handler = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only touches an atomic and async-signal-safe calls.
        let previous = unsafe { libc::signal(libc::SIGINT, handler) };
        Interrupt { previous }
    }

    /// Has Ctrl-C been pressed since `install`?
    pub fn requested(&self) -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        let previous = if self.previous == libc::SIG_ERR { libc::SIG_DFL } else { self.previous };
        // SAFETY: restores what was there before.
        unsafe { libc::signal(libc::SIGINT, previous) };
    }
}

/// Work stopped by Ctrl-C; the CLI exits with [`EXIT_CODE`] on it.
#[derive(Debug)]
pub struct Interrupted {
    /// Where the work was (e.g. "epoch 3, step 120").
    pub at: String,
    /// The last checkpoint written, if any, and the epochs it holds.
    pub checkpoint: Option<(PathBuf, usize)>,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted (Ctrl-C) at {}; ", self.at)?;
        match &self.checkpoint {
            Some((p, e)) => write!(
                f,
                "the last checkpoint is {} (after epoch {e}): resume with `--resume {}`",
                p.display(),
                p.display()
            ),
            None => write!(f, "no checkpoint was written yet: start the run again (with --overwrite)"),
        }
    }
}

impl std::error::Error for Interrupted {}
