//! The static `ploop-verify` that goes into guests.

use std::{path::PathBuf, process::Command, sync::OnceLock};

use anyhow::{Context as _, Result, bail};

pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Builds `ploop-verify` for musl (static, runs in any initramfs) once per process.
pub fn ploop_verify_static() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| build().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn build() -> Result<PathBuf> {
    let root = crate::root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        // A target dir of its own: a `cargo test` that calls this holds the lock on `target/`.
        .args(["build", "--release", "--package", "ploop-user", "--target", MUSL, "--target-dir"])
        .arg(crate::build_dir().join("cargo"))
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the static ploop-verify failed ({status})");
    }
    Ok(crate::build_dir().join("cargo").join(MUSL).join("release/ploop-verify"))
}
