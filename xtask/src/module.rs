//! Out-of-tree kernel modules (the ploop model driver) built against a guest kernel's
//! headers with kbuild.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::kernels::Kernel;

/// Builds the module sources in `src` for `kernel` and returns the `.ko` files. The sources
/// are copied to `target/ploop/modules/<name>-<release>` first, so builds for several kernels
/// never share object files and the source tree stays clean.
pub fn build(kernel: &Kernel, src: &Path) -> Result<Vec<PathBuf>> {
    build_variant(kernel, src, None)
}

/// [`build`] with `make VARIANT=y` (e.g. `PLOOP_MODEL_INLINED`, read by the module's
/// Kbuild), in a build directory of its own so the variants never share objects.
pub fn build_variant(kernel: &Kernel, src: &Path, variant: Option<&str>) -> Result<Vec<PathBuf>> {
    let headers = kernel
        .headers
        .as_ref()
        .ok_or_else(|| anyhow!("no headers known for {} (Kbuild tree needed)", kernel.release))?;
    let base = src.file_name().and_then(|n| n.to_str()).unwrap_or("module");
    let name = match variant {
        Some(v) => format!("{base}-{}", v.to_ascii_lowercase()),
        None => base.to_string(),
    };
    let work = crate::build_dir().join("modules").join(format!("{name}-{}", kernel.release));
    fs::create_dir_all(&work)?;
    // Test binaries and benchmarks may build the same module for the same kernel at once:
    // one kbuild run per directory at a time (the lock goes with the file, at return).
    // Not with_extension: releases such as 6.12.95+deb12 have dots of their own.
    let lock = fs::File::create(work.with_file_name(format!("{name}-{}.lock", kernel.release)))?;
    lock.lock().with_context(|| format!("locking {}", work.display()))?;
    // What the sources no longer have must not be built or loaded: a source removed or
    // renamed (ploop_model.c became dev.c, ...) and its old .ko. The .ko files kbuild makes
    // again from the objects it keeps.
    for entry in fs::read_dir(&work)? {
        let p = entry?.path();
        let name = p.file_name().expect("a file name");
        let stale_src =
            p.extension().is_some_and(|e| e == "c" || e == "h") && !src.join(name).exists();
        if stale_src || p.extension().is_some_and(|e| e == "ko") {
            fs::remove_file(&p)?;
        }
    }
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let p = entry?.path();
        let keep = p.extension().is_some_and(|e| e == "c" || e == "h")
            || p.file_name().is_some_and(|n| n == "Kbuild" || n == "Makefile");
        let dst = work.join(p.file_name().expect("a file name"));
        // Only copy what changed: kbuild then rebuilds only what it must.
        if keep && fs::read(&p)? != fs::read(&dst).unwrap_or_default() {
            fs::copy(&p, &dst)?;
        }
    }
    let mut make = Command::new("make");
    make.arg("-C").arg(headers).arg(format!("M={}", work.display())).arg("modules");
    if let Some(v) = variant {
        make.arg(format!("{v}=y"));
    }
    if Path::new("/usr/bin/pahole").exists() {
        // Kernels whose headers ship a vmlinux (6.12) generate module BTF with it.
        make.arg("PAHOLE=/usr/bin/pahole");
    }
    let out = make.output().context("running make (apt-get install make gcc)")?;
    if !out.status.success() {
        bail!(
            "building {} for {} failed:\n{}{}",
            src.display(),
            kernel.release,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kos: Vec<PathBuf> = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .collect();
    if kos.is_empty() {
        bail!("make succeeded but produced no .ko in {}", work.display());
    }
    Ok(kos)
}
