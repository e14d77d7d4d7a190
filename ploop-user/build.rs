use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds both eBPF objects with the nightly pinned in `ebpf-toolchain`, and records what
/// `--version` and the KCIDB report need to know about this build.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    version_info(Path::new(root))?;
    kernel_patch_series(Path::new(root))?;
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

/// `PLOOP_GIT_COMMIT` and `PLOOP_AYA_VERSION` for `--version`.
///
/// The commit comes from `PLOOP_VERIFY_GIT_COMMIT` when the builder sets it (a build from a
/// source tarball in a CI that knows the commit), else from git when the workspace is the
/// top of a git work tree (not merely inside some other repository), else "unknown".
fn version_info(root: &Path) -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=PLOOP_VERIFY_GIT_COMMIT");
    let commit = match std::env::var("PLOOP_VERIFY_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit(root).unwrap_or_else(|| "unknown".into()),
    };
    println!("cargo::rustc-env=PLOOP_GIT_COMMIT={commit}");
    // The aya actually linked is the one Cargo.lock resolved, whatever Cargo.toml allows.
    let lock_path = root.join("Cargo.lock");
    println!("cargo::rerun-if-changed={}", lock_path.display());
    let lock = std::fs::read_to_string(&lock_path).context("reading Cargo.lock")?;
    let aya = lock
        .split("[[package]]")
        .find_map(|p| {
            let mut lines = p.lines().map(str::trim).filter(|l| !l.is_empty());
            (lines.next()? == "name = \"aya\"").then_some(())?;
            lines.next()?.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_string)
        })
        .ok_or_else(|| anyhow!("no aya package in Cargo.lock"))?;
    println!("cargo::rustc-env=PLOOP_AYA_VERSION={aya}");
    Ok(())
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_commit(root: &Path) -> Option<String> {
    let top = git(root, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != root.canonicalize().ok()? {
        return None;
    }
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it names (a commit), and
    // packed-refs (a ref packed by gc). Paths from git, so linked worktrees work too.
    for p in ["HEAD", "packed-refs"] {
        watch(root, p);
    }
    if let Some(r) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        watch(root, &r);
    }
    // HEAD's commit only: no "-dirty" mark, which would go stale (the build script does not
    // rerun on every edit of a source file, and rerunning it rebuilds the eBPF objects).
    git(root, &["rev-parse", "HEAD"])
}

fn watch(root: &Path, git_path: &str) {
    if let Some(p) = git(root, &["rev-parse", "--path-format=absolute", "--git-path", git_path]) {
        println!("cargo::rerun-if-changed={p}");
    }
}

/// The kernel-patch/ series, embedded: the KCIDB report names the patchset this binary
/// verifies (its `patchset_hash`) wherever it runs, a guest or a vz7 host without the source.
fn kernel_patch_series(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("kernel-patch").canonicalize()?;
    let series = dir.join("series");
    println!("cargo::rerun-if-changed={}", dir.display());
    println!("cargo::rerun-if-changed={}", series.display());
    let text = std::fs::read_to_string(&series).context("reading kernel-patch/series")?;
    let mut out =
        String::from("/// kernel-patch/series: each patch's file name and contents, in order.\n");
    out.push_str("pub const SERIES: &[(&str, &[u8])] = &[\n");
    for name in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let p = dir.join(name);
        anyhow::ensure!(p.is_file(), "kernel-patch/series names {name}, which is not there");
        println!("cargo::rerun-if-changed={}", p.display());
        let _ = writeln!(out, "    ({name:?}, include_bytes!({:?})),", p.display().to_string());
    }
    out.push_str("];\n");
    let dst = Path::new(&std::env::var("OUT_DIR")?).join("kernel_patch.rs");
    std::fs::write(dst, out)?;
    Ok(())
}
