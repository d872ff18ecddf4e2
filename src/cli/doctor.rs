//! `groupcam doctor`.

use anyhow::Result;

pub fn run() -> Result<()> {
    print!("{}", groupcam::doctor());
    Ok(())
}
