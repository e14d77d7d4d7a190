//! Steps 1-2: the tree is a kernel tree with the ploop driver, and the build tools are there.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::anyhow;

use super::{Error, bad};

/// Checks that `src` is a kernel tree with the ploop driver; returns its version
/// (`VERSION.PATCHLEVEL.SUBLEVEL` + `EXTRAVERSION`).
pub fn check_tree(src: &Path) -> Result<String, Error> {
    if !src.is_dir() {
        return Err(bad(anyhow!(
            "{} is not a directory (want a kernel source tree with drivers/block/ploop/)",
            src.display()
        )));
    }
    let mut missing = Vec::new();
    let makefile = fs::read_to_string(src.join("Makefile")).unwrap_or_default();
    let var = |name: &str| {
        makefile.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let (ver, patchlevel) = (var("VERSION"), var("PATCHLEVEL"));
    if !src.join("Makefile").is_file() {
        missing.push("Makefile (the top-level kernel Makefile)".to_string());
    } else if ver.is_none() || patchlevel.is_none() {
        missing.push("VERSION and PATCHLEVEL in Makefile (not a kernel's top Makefile)".into());
    }
    if !src.join("drivers/block/ploop").is_dir() {
        missing.push(
            "drivers/block/ploop/ (the ploop driver: vz7 vzkernel trees have it, \
             mainline kernels do not)"
                .into(),
        );
    }
    if !missing.is_empty() {
        return Err(bad(anyhow!(
            "{} is not a kernel tree with the ploop driver; missing: {}",
            src.display(),
            missing.join("; ")
        )));
    }
    let mut v = format!("{}.{}", ver.unwrap_or_default(), patchlevel.unwrap_or_default());
    if let Some(s) = var("SUBLEVEL").filter(|s| !s.is_empty()) {
        v.push('.');
        v.push_str(&s);
    }
    v.push_str(&var("EXTRAVERSION").unwrap_or_default());
    Ok(v)
}

/// `name` on PATH (or as a path when it has a slash).
pub fn which(name: &str) -> Option<PathBuf> {
    which::which(name).ok()
}

pub(super) fn check_tools(cc: &str) -> Result<(), Error> {
    let cc_pkg = if cc.starts_with("gcc") { "gcc" } else { cc };
    let tools = [
        ("make", "make"),
        (cc, cc_pkg),
        ("ld", "binutils"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("perl", "perl"),
    ];
    let missing: Vec<(&str, &str)> =
        tools.iter().copied().filter(|(t, _)| which(t).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|m| m.0).collect();
    let mut pkgs: Vec<&str> = missing.iter().map(|m| m.1).collect();
    pkgs.dedup();
    let what = if names.contains(&cc) || names.contains(&"make") { "no compiler: " } else { "" };
    Err(bad(anyhow!(
        "{what}{} not found on PATH; install with `apt-get install {}` (or `bash scripts/setup.sh`){}",
        names.join(", "),
        pkgs.join(" "),
        if names.contains(&cc) && cc != "gcc" { " or pass the compiler with --cc" } else { "" }
    )))
}
