// Embeds libtorch's directory as an rpath so the binary, tests and examples run without
// LD_LIBRARY_PATH, and (when libtorch has CUDA) forces libtorch_cuda into the link so that
// `tch::Cuda::is_available()` sees the GPU: torch-sys itself links only libtorch_cpu. Also
// compiles src/sys/shim.cpp (c10d collectives, autocast, pinned memory) against libtorch's headers.
use std::path::{Path, PathBuf};

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
        build_shim(Path::new(&lib), has_cuda);
    }
}

/// The C++ shim over c10d, with its NCCL part where libtorch has CUDA and the headers that
/// ProcessGroupNCCL.hpp includes are installed (nccl.h, CUDA's runtime and libcu++ headers).
fn build_shim(lib: &Path, has_cuda: bool) {
    println!("cargo:rerun-if-changed=src/sys/shim.cpp");
    println!("cargo:rerun-if-changed=third_party/gloo");
    let root = lib.parent().unwrap_or(lib);
    let mut b = cc::Build::new();
    b.cpp(true)
        .file("src/sys/shim.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include("third_party/gloo")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .define("USE_C10D_GLOO", None)
        .flag_if_supported("-Wno-interference-size")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false);
    if let Some(dirs) = has_cuda.then(|| nccl_includes(root)).flatten() {
        b.define("USE_C10D_NCCL", None).define("GROUPCAM_NCCL", None);
        for d in dirs {
            b.include(d);
        }
    }
    b.compile("groupcam_shim");
}

/// The include directories for ProcessGroupNCCL.hpp in a pip installation (`root` is
/// site-packages/torch), or None when one of its headers is missing.
fn nccl_includes(root: &Path) -> Option<Vec<PathBuf>> {
    let site = root.parent()?;
    let nvidia = site.join("nvidia");
    let nccl = nvidia.join("nccl/include");
    // CUDA 13 wheels share nvidia/cu13/include; CUDA 12 ones have a folder per package.
    let mut cuda: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("include")))
        .filter(|d| d.join("cuda_runtime.h").exists() || d.join("nv/target").exists())
        .collect();
    cuda.sort();
    // crt/host_config.h comes with nvcc; triton (a dependency of torch's CUDA wheels) ships it.
    let crt = [nvidia.join("cuda_nvcc/include"), site.join("triton/backends/nvidia/include")]
        .into_iter()
        .chain(cuda.iter().cloned())
        .find(|d| d.join("crt/host_config.h").exists())?;
    let has = |h: &str| cuda.iter().any(|d| d.join(h).exists());
    if !nccl.join("nccl.h").exists() || !has("cuda_runtime.h") || !has("nv/target") {
        return None;
    }
    let mut dirs = vec![nccl];
    dirs.extend(cuda);
    dirs.push(crt);
    Some(dirs)
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
