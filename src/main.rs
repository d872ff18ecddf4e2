//! The `groupcam` command line: a thin shell over the library (src/cli/, one file per command).

mod cli;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        let interrupted = e.downcast_ref::<groupcam::interrupt::Interrupted>().is_some();
        std::process::exit(if interrupted { groupcam::interrupt::EXIT_CODE } else { 1 });
    }
}
