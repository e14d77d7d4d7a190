use which::which;

/// Fail early with a useful message instead of a linker error deep in the eBPF build.
fn main() {
    let bpf_linker = which("bpf-linker").unwrap_or_else(|e| {
        panic!("bpf-linker not found ({e}); run `bash scripts/setup.sh` first")
    });
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
