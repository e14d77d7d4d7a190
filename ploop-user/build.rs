use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds both eBPF objects with the nightly pinned in `ebpf-toolchain`.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let pin = format!("{root}/ebpf-toolchain");
    let toolchain = std::fs::read_to_string(&pin).with_context(|| format!("reading {pin}"))?;
    let toolchain = toolchain.trim();
    if toolchain.is_empty() {
        return Err(anyhow!("{pin} is empty"));
    }
    println!("cargo::rerun-if-changed={pin}");
    // aya-build watches only the eBPF crate; the event ABI lives in ploop-common.
    println!("cargo::rerun-if-changed={root}/ploop-common/src");
    let ebpf_dir = format!("{root}/ploop-ebpf");
    // aya-build relays every stderr line of the nested cargo as a `cargo:warning`, so a first
    // build showed dozens of "Downloading crates" lines as warnings. Quiet, the nested cargo
    // still reports its errors there, and rustc's diagnostics come through its JSON stdout.
    // SAFETY: the build script is single-threaded here; nothing reads the environment at once.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package { name: "ploop-ebpf", root_dir: &ebpf_dir, ..Default::default() }],
        Toolchain::Custom(toolchain),
    )
}
