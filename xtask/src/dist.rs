//! `cargo xtask dist`: the release a vz7 host (RHEL 7, no Rust) or a CI installs.
//!
//! The static musl `ploop-verify` (both eBPF objects inside, as every build has them), stripped,
//! packed three ways into `target/ploop/dist/` (or `--out`):
//! - `ploop-verify-VERSION-x86_64-linux.tar.gz`: the binary, README.md, kernel-patch/ and a
//!   SHA256SUMS of those files;
//! - `ploop-verify-VERSION-1.x86_64.rpm` (cargo-generate-rpm): gzip payload and no
//!   dependencies, which RHEL 7's rpm 4.11 installs (it cannot read a zstd payload);
//! - `ploop-verify_VERSION-1_amd64.deb` (cargo-deb);
//! - `SHA256SUMS` of the three.
//!
//! The packagers' settings are in ploop-user/Cargo.toml (`[package.metadata.deb]`,
//! `[package.metadata.generate-rpm]`); both tools are installed by scripts/setup.sh.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};

use crate::build::{self, MUSL};

/// The workspace version (xtask shares it with ploop-user).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `dist` made.
#[derive(Debug)]
pub struct Dist {
    pub tarball: PathBuf,
    pub rpm: PathBuf,
    pub deb: PathBuf,
    pub sums: PathBuf,
}

/// The tarball's top directory (and file stem).
pub fn tar_stem() -> String {
    format!("ploop-verify-{VERSION}-x86_64-linux")
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(st.success(), "{cmd:?} failed ({st})");
    Ok(())
}

/// sha256sum's lines for `files` (names relative to `dir`), as `sha256sum -c` reads them.
fn sha256sums(dir: &Path, files: &[&str]) -> Result<String> {
    let mut out = String::new();
    for f in files {
        let data = fs::read(dir.join(f)).with_context(|| format!("reading {f}"))?;
        out.push_str(&format!("{}  {f}\n", crate::build_kernel::sha256_hex(&data)));
    }
    Ok(out)
}

/// The commit's time for the packed files' mtimes (reproducible archives), else 0.
fn source_date(root: &Path) -> String {
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        return s;
    }
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "0".into())
}

pub fn dist(out: &Path) -> Result<Dist> {
    let started = Instant::now();
    let root = crate::root();
    for tool in ["cargo-deb", "cargo-generate-rpm"] {
        ensure!(
            which::which(tool).is_ok(),
            "{tool} is not installed: run scripts/setup.sh (it installs the pinned version)"
        );
    }
    let binary = build::ploop_verify_static()?;
    fs::create_dir_all(out)?;
    let out = out.canonicalize()?;
    // The packagers find the binary where cargo would put it: a target dir of our own holds
    // the stripped copy (the cached build stays as it is for the guests).
    let stage_target = out.join(".target");
    let staged = stage_target.join(MUSL).join("release/ploop-verify");
    let _ = fs::remove_dir_all(&stage_target);
    fs::create_dir_all(staged.parent().unwrap())?;
    fs::copy(&binary, &staged)?;
    run(Command::new("strip").arg(&staged))?;

    // The tarball.
    let stem = tar_stem();
    let tree = out.join(".tar").join(&stem);
    let _ = fs::remove_dir_all(out.join(".tar"));
    fs::create_dir_all(tree.join("kernel-patch"))?;
    fs::copy(&staged, tree.join("ploop-verify"))?;
    fs::copy(root.join("README.md"), tree.join("README.md"))?;
    let mut files = vec!["ploop-verify".to_string(), "README.md".to_string()];
    let mut patches: Vec<String> = fs::read_dir(root.join("kernel-patch"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    patches.sort();
    for p in &patches {
        fs::copy(root.join("kernel-patch").join(p), tree.join("kernel-patch").join(p))?;
        files.push(format!("kernel-patch/{p}"));
    }
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    fs::write(tree.join("SHA256SUMS"), sha256sums(&tree, &names)?)?;
    let tarball = out.join(format!("{stem}.tar.gz"));
    let date = source_date(&root);
    run(Command::new("sh").arg("-ec").arg(format!(
        "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@{date} -C '{}' -cf - '{stem}' \
         | gzip -9n > '{}'",
        out.join(".tar").display(),
        tarball.display()
    )))?;
    fs::remove_dir_all(out.join(".tar"))?;

    // The RPM: gzip payload (rpm 4.11 reads gzip and xz, not zstd), no automatic requires.
    let rpm = out.join(format!("ploop-verify-{VERSION}-1.x86_64.rpm"));
    let _ = fs::remove_file(&rpm);
    run(Command::new("cargo-generate-rpm")
        .current_dir(&root)
        .args(["generate-rpm", "-p", "ploop-user", "--target", MUSL, "--target-dir"])
        .arg(&stage_target)
        // Its default payload is zstd, which rpm 4.11 cannot read.
        .args(["--payload-compress", "gzip", "--auto-req", "disabled", "--source-date", &date])
        .arg("-o")
        .arg(&rpm))?;
    ensure!(rpm.is_file(), "cargo-generate-rpm wrote no {}", rpm.display());

    // The .deb.
    let deb = out.join(format!("ploop-verify_{VERSION}-1_amd64.deb"));
    let _ = fs::remove_file(&deb);
    run(Command::new("cargo-deb")
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &stage_target)
        .args(["deb", "-p", "ploop-user", "--no-build", "--no-strip", "--target", MUSL])
        .args(["--deb-revision", "1", "-o"])
        .arg(&deb))?;
    ensure!(deb.is_file(), "cargo-deb wrote no {}", deb.display());
    fs::remove_dir_all(&stage_target)?;

    let names: Vec<String> = [&tarball, &rpm, &deb]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let sums = out.join("SHA256SUMS");
    fs::write(&sums, sha256sums(&out, &names)?)?;
    for p in [&tarball, &rpm, &deb] {
        let len = fs::metadata(p)?.len();
        eprintln!("dist: {} ({:.1} MiB)", p.display(), len as f64 / (1 << 20) as f64);
    }
    eprintln!("dist: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(Dist { tarball, rpm, deb, sums })
}
