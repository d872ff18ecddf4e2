// Embeds libtorch's directory as an rpath so the binary, tests and examples run without
// LD_LIBRARY_PATH, and (when libtorch has CUDA) forces libtorch_cuda into the link so that
// `tch::Cuda::is_available()` sees the GPU: torch-sys itself links only libtorch_cpu.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-env=GROUPCAM_LIBTORCH_VERSION={}", libtorch_version(&lib));
        // A libtorch with CUDA gets libtorch_cuda linked; the `cuda` feature insists on it.
        let has_cuda = std::path::Path::new(&lib).join("libtorch_cuda.so").exists();
        let want_cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
        if want_cuda && !has_cuda {
            panic!("feature `cuda`: no libtorch_cuda.so in {lib}; install a CUDA build of libtorch");
        }
        if has_cuda {
            println!("cargo:rustc-link-search=native={lib}");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}

/// The version of the libtorch linked: `build-version` of a libtorch zip, or the PyPI
/// package's `version.py`.
fn libtorch_version(lib: &str) -> String {
    let root = std::path::Path::new(lib).parent().map(|p| p.to_path_buf()).unwrap_or_default();
    if let Ok(v) = std::fs::read_to_string(root.join("build-version")) {
        return v.trim().to_string();
    }
    if let Ok(py) = std::fs::read_to_string(root.join("version.py")) {
        for line in py.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                return rest
                    .trim_start_matches([' ', '=', ':'])
                    .split('=')
                    .last()
                    .unwrap_or("")
                    .trim()
                    .trim_matches(['\'', '"'])
                    .to_string();
            }
        }
    }
    "unknown".to_string()
}
