use which::which;

fn main() {
    // Fail early with a useful message instead of a linker error deep in the eBPF build.
    let bpf_linker = which("bpf-linker").unwrap_or_else(|e| {
        panic!("bpf-linker not found ({e}); run `bash scripts/setup.sh` first")
    });
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
    // With LLVM's in-order memcpy expansion on (bpf-linker's default), the BPF backend turns
    // every memset, even of 3 bytes, into a call to an exported memset: a bpf-to-bpf call,
    // which kernels before 4.16 (and the vz7 tech preview) refuse. Without it LLVM expands
    // them into stores.
    println!("cargo::rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    // Nothing calls them any more: do not export them either.
    println!("cargo::rustc-link-arg-bins=--disable-memory-builtins");
}
