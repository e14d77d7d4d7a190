//! Build, boot and test tooling for ploop-verify, as a library so that the live tests in
//! `tests/` drive guests with the same code as `cargo xtask vm-run`.

pub mod bench;
pub mod build;
pub mod build_kernel;
pub mod client;
pub mod demo;
pub mod dist;
pub mod initramfs;
pub mod kernels;
pub mod linux_source;
pub mod module;
pub mod ploop_if;
pub mod vm;

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .expect("the workspace root exists")
}

/// Where setup caches downloads and the runner keeps its work: `target/ploop`.
pub fn build_dir() -> PathBuf {
    root().join("target/ploop")
}
