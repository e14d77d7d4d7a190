//! Debian's `linux-source-6.1` of the 6.1 guest kernel's very version, downloaded and unpacked
//! once under target/ploop (`cache/linux-source/*.deb`, `linux-source/<version>/`): the
//! build-kernel tests build from it, and the reports' tests take the kernel's own KTAP parser
//! (`tools/testing/kunit/kunit.py`) from it.

use std::{fs, path::PathBuf, process::Command, sync::Mutex, time::Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::kernels::Kernel;

/// One download or unpack at a time within a process (tests run in threads).
static LOCK: Mutex<()> = Mutex::new(());

/// The Debian package version of `kernel` as setup unpacked it (e.g. `6.1.192-2`): the
/// source must be the very same version for vermagic and modversions to match.
pub fn image_version(kernel: &Kernel) -> Result<String> {
    let debs = crate::build_dir().join("cache/debs");
    let prefix = format!("linux-image-{}_", kernel.release);
    let deb = fs::read_dir(&debs)
        .with_context(|| format!("{} (run scripts/setup.sh)", debs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .with_context(|| format!("no {prefix}*.deb in {}", debs.display()))?;
    let out = Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version").output()?;
    ensure!(out.status.success(), "dpkg-deb -f {} Version failed", deb.display());
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The .deb of `version`, downloaded once.
fn deb(version: &str) -> Result<PathBuf> {
    let cache = crate::build_dir().join("cache/linux-source");
    fs::create_dir_all(&cache)?;
    let deb = cache.join(format!("linux-source-6.1_{version}_all.deb"));
    if !deb.exists() {
        let t = Instant::now();
        let st = Command::new("apt-get")
            .current_dir(&cache)
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .arg(format!("linux-source-6.1={version}"))
            .status()
            .context("apt-get")?;
        ensure!(
            st.success(),
            "apt-get download linux-source-6.1={version} failed (apt-get update?)"
        );
        eprintln!("downloaded {} in {:.1}s", deb.display(), t.elapsed().as_secs_f64());
    }
    Ok(deb)
}

/// Unpacks `members` of the source tarball (all of it for none) into `dir`, marked complete.
fn unpack(version: &str, dir: &PathBuf, members: &str) -> Result<()> {
    let t = Instant::now();
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    let deb = deb(version)?;
    let script = format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/src/linux-source-6.1.tar.xz | tar -xJ -C '{}' {members}",
        deb.display(),
        dir.display()
    );
    let st = Command::new("sh").args(["-euc", &script]).status()?;
    if !st.success() {
        bail!("unpacking {}: {script} failed", deb.display());
    }
    fs::write(dir.join(".complete"), version)?;
    eprintln!("unpacked {} in {:.1}s", dir.display(), t.elapsed().as_secs_f64());
    Ok(())
}

/// The whole tree (`linux-source/<version>/linux-source-6.1`).
pub fn tree(version: &str) -> Result<PathBuf> {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = crate::build_dir().join("linux-source").join(version);
    let tree = dir.join("linux-source-6.1");
    if !dir.join(".complete").exists() {
        unpack(version, &dir, "")?;
        ensure!(tree.join("Makefile").is_file(), "no Makefile in {}", tree.display());
    }
    Ok(tree)
}

/// `tools/testing/kunit` (kunit.py and its parser): from the whole tree when the build tests
/// unpacked it, else only that directory (seconds, no kernel build, no 1.3 GB tree).
pub fn kunit(version: &str) -> Result<PathBuf> {
    const KUNIT: &str = "linux-source-6.1/tools/testing/kunit";
    let full = crate::build_dir().join("linux-source").join(version);
    if full.join(".complete").exists() {
        return Ok(full.join(KUNIT));
    }
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = crate::build_dir().join("linux-source").join(format!("{version}-kunit"));
    if !dir.join(".complete").exists() {
        unpack(version, &dir, KUNIT)?;
    }
    let kunit = dir.join(KUNIT);
    ensure!(kunit.join("kunit.py").is_file(), "no kunit.py in {}", kunit.display());
    Ok(kunit)
}
