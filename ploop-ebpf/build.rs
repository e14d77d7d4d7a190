use which::which;

fn main() {
    // Fail early with a useful message instead of a linker error deep in the eBPF build.
    let bpf_linker = which("bpf-linker").unwrap_or_else(|e| {
        panic!("bpf-linker not found ({e}); run `bash scripts/setup.sh` first")
    });
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
    // With LLVM's in-order memcpy expansion on (bpf-linker's default), the BPF backend turns
    // every memset, even of 3 bytes, into a call to an exported memset: a bpf-to-bpf call,
    // which kernels before 4.16 refuse. Without it LLVM expands them into stores.
    //
    // The vz7 host does not need this: its RHEL 7.8 verifier accepts bpf-to-bpf calls for
    // root (CONTRACT.md, "The vz7 host"). It stays for the mainline kernels the perf object
    // otherwise loads on (4.8, bpf_get_current_task, to 4.15), and for RHEL 7 bases before
    // 7.8, whose verifiers nobody here has read. It costs nothing the verifier counts: the
    // largest program, inlined whole, is about 1,200 of its 4,096 instructions
    // (`kernel::verifier` in ploop-user holds every program to the 3.10 limits).
    println!("cargo::rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    // Nothing calls them any more: do not export them either.
    println!("cargo::rustc-link-arg-bins=--disable-memory-builtins");
}
