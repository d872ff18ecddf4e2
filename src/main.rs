//! The `groupcam` command line: a thin shell over the library (src/cli/, one file per command).

mod cli;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
