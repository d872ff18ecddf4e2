// Embeds libtorch's directory as an rpath so the binary, tests and examples run without
// LD_LIBRARY_PATH, and (feature `cuda`) forces libtorch_cuda into the link so that
// `tch::Cuda::is_available()` sees the GPU: torch-sys itself links only libtorch_cpu.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
            println!("cargo:rustc-link-search=native={lib}");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
