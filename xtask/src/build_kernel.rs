//! `cargo xtask build-kernel`: applies the `kernel-patch/` series to a kernel tree with the
//! ploop driver (a vz7 vzkernel tree), builds the ploop modules or the whole kernel, writes
//! the artifacts, BTF and a manifest, and can boot the result with the VM runner.
//!
//! Steps, each reported on stderr:
//! 1. the tree: a top `Makefile` with `VERSION`/`PATCHLEVEL` and `drivers/block/ploop/`;
//! 2. the tools (`make`, the compiler, binutils, flex, bison, bc, perl; `patch`);
//! 3. the series: per patch a dry run; a patch whose reverse dry run succeeds is already
//!    applied and skipped; a conflict names the patch and the failing hunks, undoes what this
//!    run applied and leaves every file as it was;
//! 4. the config (`--config` copied to `.config` when it differs, then `make olddefconfig`);
//! 5. the build (`make modules_prepare` + `make M=drivers/block/ploop modules`, or
//!    `make bzImage modules` + `modules_install`), its output kept in `build.log`;
//! 6. the artifacts, `vmlinux.btf` (pahole, when `vmlinux` exists) and `manifest.json` in the
//!    out directory (default `target/ploop/build-kernel/<release>`);
//! 7. with `--boot`, a QEMU guest running the built kernel (or, for `--modules-only`, the
//!    `--boot-kernel` the modules are for, with the built modules loaded) and ploop-verify.
//!
//! Exit status: 0 success, 1 the build (or the booted check) failed, 2 bad input: not a
//! kernel tree, a patch conflict, a missing tool or file.

use std::{
    collections::BTreeSet,
    fmt, fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow};
use serde_json::{Value, json};

use crate::{kernels::Kernel, vm::Vm};

/// `cargo xtask build-kernel`.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "build-kernel", max_term_width = 100)]
pub struct Args {
    /// Kernel source tree with the ploop driver (a vz7 vzkernel checkout or tarball).
    #[arg(long, value_name = "DIR")]
    pub src: PathBuf,
    /// Kernel config: copied to DIR/.config (when it differs), then `make olddefconfig`.
    /// Default: DIR/.config as it is.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Build only the modules of drivers/block/ploop (modules_prepare, then M=...), not
    /// bzImage and all modules.
    #[arg(long)]
    pub modules_only: bool,
    /// Parallel make jobs.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub jobs: u32,
    /// Where the artifacts and manifest.json go [default: target/ploop/build-kernel/<release>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Patch series directory: a quilt-style `series` file and the patches it names
    /// [default: kernel-patch/ of this repository].
    #[arg(long, value_name = "DIR", conflicts_with = "no_patches")]
    pub patches: Option<PathBuf>,
    /// Build the tree as it is, without applying any series.
    #[arg(long)]
    pub no_patches: bool,
    /// Apply (or check) the series and stop: no build, no compiler needed.
    #[arg(long, conflicts_with_all = ["no_patches", "boot"])]
    pub patch_only: bool,
    /// Force the kernel release string (`make KERNELRELEASE=...`), e.g. to build modules for
    /// an existing kernel whose release differs from the tree's version.
    #[arg(long, value_name = "REL")]
    pub kernelrelease: Option<String>,
    /// Module.symvers of the kernel the modules are for, copied to DIR/Module.symvers: a
    /// --modules-only build with CONFIG_MODVERSIONS needs the CRCs of the kernel's symbols.
    #[arg(long, value_name = "FILE")]
    pub symvers: Option<PathBuf>,
    /// C compiler (`make CC=...`); a vz7 3.10 tree needs an old gcc (RHEL 7 uses 4.8).
    #[arg(long, default_value = "gcc", value_name = "CC")]
    pub cc: String,
    /// Boot the result under QEMU with ploop-verify and run --boot-command in it.
    #[arg(long)]
    pub boot: bool,
    /// With --modules-only --boot: the kernel the modules are for (`6.1`, `6.12`, or a
    /// directory in the setup layout); the built modules are loaded into it.
    #[arg(long, value_name = "SPEC")]
    pub boot_kernel: Option<String>,
    /// Kernel modules the guest loads before the built ones.
    #[arg(long = "boot-module", value_name = "NAME",
          default_values = ["loop", "dm-mod", "ext4", "crc32c_generic"])]
    pub boot_modules: Vec<String>,
    /// Shell command run in the guest (in /share, where vmlinux.btf is copied)
    /// [default: `ploop-verify [--btf vmlinux.btf] doctor`].
    #[arg(long, value_name = "CMD")]
    pub boot_command: Option<String>,
    /// Give the guest this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub boot_timeout: u64,
}

impl Args {
    /// Parses command-line style arguments (`argv[0]` first): for callers without clap.
    pub fn parse_from_argv<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <Self as clap::Parser>::try_parse_from(argv)
    }
}

/// Why build-kernel stopped. `exit_code` gives the documented exit status.
#[derive(Debug)]
pub enum Error {
    /// Status 2: not a kernel tree, a conflicting patch, a missing tool or file.
    BadInput(anyhow::Error),
    /// Status 1: make failed, or the booted guest failed its check.
    Failed(anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadInput(_) => 2,
            Error::Failed(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, e) = match self {
            Error::BadInput(e) => ("bad input", e),
            Error::Failed(e) => ("failed", e),
        };
        write!(f, "{kind}: {e:#}")
    }
}

impl std::error::Error for Error {}

fn bad(e: impl Into<anyhow::Error>) -> Error {
    Error::BadInput(e.into())
}

fn failed(e: impl Into<anyhow::Error>) -> Error {
    Error::Failed(e.into())
}

/// What happened to one patch of the series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchStatus {
    Applied,
    AlreadyApplied,
}

#[derive(Clone, Debug)]
pub struct PatchResult {
    pub name: String,
    pub path: PathBuf,
    /// The commit id of the patch's `From <sha> Mon Sep 17 ...` line, if it has one.
    pub from: Option<String>,
    pub subject: Option<String>,
    /// sha256 of the patch file.
    pub sha256: String,
    pub status: PatchStatus,
}

/// The result of a successful run.
#[derive(Debug)]
pub struct Built {
    /// None with --patch-only.
    pub out: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub release: Option<String>,
    pub patches: Vec<PatchResult>,
    /// The `.ko` files of drivers/block/ploop (copied to `<out>/modules/`).
    pub modules: Vec<PathBuf>,
    /// Full build: `<out>/bzImage` and `<out>/root/lib/modules/<release>`.
    pub image: Option<PathBuf>,
    pub modules_dir: Option<PathBuf>,
    pub btf: Option<PathBuf>,
    pub boot: Option<crate::vm::Output>,
}

fn say(msg: impl AsRef<str>) {
    eprintln!("build-kernel: {}", msg.as_ref());
}

/// The `cargo xtask build-kernel` entry: runs, prints the outcome, maps it to the status.
pub fn main(args: &Args) -> ExitCode {
    match run(args) {
        Ok(b) => {
            if let Some(m) = &b.manifest {
                println!("{}", m.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("build-kernel: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs every step; see the module documentation.
pub fn run(args: &Args) -> Result<Built, Error> {
    let started = Instant::now();
    let src = std::path::absolute(&args.src).map_err(bad)?;
    let version = check_tree(&src)?;
    say(format!("tree {} (kernel {version})", src.display()));

    if !args.patch_only {
        check_tools(&args.cc)?;
    }

    let t = Instant::now();
    let patches = if args.no_patches {
        say("no series applied (--no-patches)");
        Vec::new()
    } else {
        let dir = match &args.patches {
            Some(d) => std::path::absolute(d).map_err(bad)?,
            None => crate::root().join("kernel-patch"),
        };
        apply_series(&src, &dir)?
    };
    let patch_secs = t.elapsed().as_secs_f64();
    if !args.no_patches {
        say(format!("series checked in {patch_secs:.2}s"));
    }
    if args.patch_only {
        return Ok(Built {
            out: None,
            manifest: None,
            release: None,
            patches,
            modules: Vec::new(),
            image: None,
            modules_dir: None,
            btf: None,
            boot: None,
        });
    }

    let mut b = Builder::new(args, &src)?;
    let result = b.build(args, &src, patches, patch_secs, started);
    drop(b);
    let mut built = result?;
    if args.boot {
        boot(args, &mut built)?;
    }
    say(format!("done in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(built)
}

// --- the tree ----------------------------------------------------------------------------

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
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt as _;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn check_tools(cc: &str) -> Result<(), Error> {
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

// --- the series ----------------------------------------------------------------------------

/// One patch of a series file, parsed.
#[derive(Clone, Debug)]
pub struct Patch {
    pub name: String,
    pub path: PathBuf,
    pub strip: u32,
    pub from: Option<String>,
    pub subject: Option<String>,
    pub sha256: String,
    /// Files the patch touches (after stripping), with their hunk headers in order.
    pub files: Vec<(String, Vec<String>)>,
}

/// Reads `dir/series` and the patches it names.
pub fn read_series(dir: &Path) -> Result<Vec<Patch>, Error> {
    let series = dir.join("series");
    let text = fs::read_to_string(&series)
        .with_context(|| format!("reading the series file {}", series.display()))
        .map_err(bad)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let strip =
            words.find_map(|w| w.strip_prefix("-p").and_then(|n| n.parse().ok())).unwrap_or(1);
        let path = dir.join(name);
        let bytes = fs::read(&path)
            .with_context(|| format!("{}: patch named in {}", path.display(), series.display()))
            .map_err(bad)?;
        out.push(parse_patch(name, &path, strip, &bytes));
    }
    if out.is_empty() {
        return Err(bad(anyhow!("{} names no patch", series.display())));
    }
    Ok(out)
}

fn parse_patch(name: &str, path: &Path, strip: u32, bytes: &[u8]) -> Patch {
    let text = String::from_utf8_lossy(bytes);
    let mut from = None;
    let mut subject = None;
    let mut files: Vec<(String, Vec<String>)> = Vec::new();
    let mut old_name: Option<String> = None;
    for line in text.lines() {
        if from.is_none()
            && files.is_empty()
            && let Some(rest) = line.strip_prefix("From ")
        {
            let sha = rest.split_whitespace().next().unwrap_or("");
            if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                from = Some(sha.to_string());
            }
        }
        if subject.is_none()
            && files.is_empty()
            && let Some(s) = line.strip_prefix("Subject: ")
        {
            subject = Some(s.trim_start_matches("[PATCH] ").to_string());
        }
        if let Some(f) = line.strip_prefix("--- ") {
            old_name = Some(f.split('\t').next().unwrap_or(f).to_string());
        } else if let Some(f) = line.strip_prefix("+++ ") {
            let new = f.split('\t').next().unwrap_or(f).to_string();
            let pick = if new == "/dev/null" { old_name.take().unwrap_or(new) } else { new };
            files.push((strip_path(&pick, strip), Vec::new()));
        } else if line.starts_with("@@ ")
            && let Some(f) = files.last_mut()
        {
            f.1.push(line.to_string());
        }
    }
    Patch {
        name: name.to_string(),
        path: path.to_path_buf(),
        strip,
        from,
        subject,
        sha256: sha256_hex(bytes),
        files,
    }
}

fn strip_path(p: &str, n: u32) -> String {
    let mut s = p;
    for _ in 0..n {
        match s.split_once('/') {
            Some((_, rest)) => s = rest,
            None => break,
        }
    }
    s.to_string()
}

/// Runs GNU patch in `src`; returns (success, output).
fn run_patch(src: &Path, p: &Patch, reverse: bool, dry: bool) -> Result<(bool, String), Error> {
    let mut cmd = Command::new("patch");
    cmd.current_dir(src)
        .env("LC_ALL", "C")
        .arg(format!("-p{}", p.strip))
        // Never ask; take the patch as forward (the reverse check is a separate run).
        .arg("--force")
        // Offsets are fine, fuzz is not: a hunk whose context differs is a conflict.
        .arg("--fuzz=0")
        .arg("--no-backup-if-mismatch")
        .arg("--reject-file=-")
        .arg("--input")
        .arg(&p.path)
        .stdin(Stdio::null());
    if reverse {
        cmd.arg("--reverse");
    }
    if dry {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().context("running patch (apt-get install patch)").map_err(bad)?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The files of `patches`, saved so that a failed series can be undone exactly.
/// A file's bytes, permissions and mtime.
type Saved = (Vec<u8>, fs::Permissions, SystemTime);

struct Snapshot {
    files: Vec<(PathBuf, Option<Saved>)>,
    dirs: Vec<PathBuf>,
}

impl Snapshot {
    fn take(src: &Path, patches: &[Patch]) -> Result<Self, Error> {
        let mut names = BTreeSet::new();
        for p in patches {
            for (f, _) in &p.files {
                names.insert(f.clone());
            }
        }
        let mut files = Vec::new();
        let mut dirs = BTreeSet::new();
        for n in names {
            let path = src.join(&n);
            let saved = match fs::symlink_metadata(&path) {
                Ok(m) => Some((
                    fs::read(&path).map_err(bad)?,
                    m.permissions(),
                    m.modified().map_err(bad)?,
                )),
                Err(_) => {
                    let mut d = path.parent();
                    while let Some(dir) = d.filter(|d| d.starts_with(src) && !d.exists()) {
                        dirs.insert(dir.to_path_buf());
                        d = dir.parent();
                    }
                    None
                }
            };
            files.push((path, saved));
        }
        Ok(Snapshot { files, dirs: dirs.into_iter().rev().collect() })
    }

    fn restore(&self) -> anyhow::Result<()> {
        for (path, saved) in &self.files {
            match saved {
                Some((bytes, perm, mtime)) => {
                    if fs::read(path).ok().as_ref() != Some(bytes) {
                        fs::write(path, bytes)?;
                    }
                    fs::set_permissions(path, perm.clone())?;
                    fs::File::options().write(true).open(path)?.set_modified(*mtime)?;
                }
                None => {
                    if path.exists() {
                        fs::remove_file(path)?;
                    }
                }
            }
        }
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
        Ok(())
    }
}

/// The failing hunks of a dry run, described with the patch's own hunk headers.
fn describe_failure(p: &Patch, output: &str) -> String {
    let mut file: Option<&str> = None;
    let mut lines = Vec::new();
    for l in output.lines() {
        if let Some(f) =
            l.strip_prefix("checking file ").or_else(|| l.strip_prefix("patching file "))
        {
            file = Some(f.trim());
        } else if let Some(rest) = l.strip_prefix("Hunk #") {
            if !rest.contains("FAILED") {
                continue;
            }
            let n: usize = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let f = file.unwrap_or("?");
            let header = p
                .files
                .iter()
                .find(|(name, _)| name == f)
                .and_then(|(_, h)| h.get(n.wrapping_sub(1)))
                .map(|h| format!(" `{h}`"))
                .unwrap_or_default();
            lines.push(format!(
                "{f}: hunk #{n}{header} {}",
                rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim()
            ));
        } else if l.contains("No file to patch") || l.contains("can't find file") {
            lines.push(format!("{}: file missing in the tree", file.unwrap_or("?")));
        } else if l.contains("Only garbage") || l.contains("malformed") {
            lines.push(l.trim().to_string());
        }
    }
    if lines.is_empty() {
        lines.push(format!("patch said:\n{}", output.trim_end()));
    }
    lines.join("\n  ")
}

/// Applies the series in `dir` to `src`: see the module documentation.
pub fn apply_series(src: &Path, dir: &Path) -> Result<Vec<PatchResult>, Error> {
    let patches = read_series(dir)?;
    if which("patch").is_none() {
        return Err(bad(anyhow!("patch not found on PATH; install with `apt-get install patch`")));
    }
    let snapshot = Snapshot::take(src, &patches)?;
    let mut results = Vec::new();
    for p in &patches {
        let (fwd_ok, fwd_out) = run_patch(src, p, false, true)?;
        let status = if fwd_ok {
            let (ok, out) = run_patch(src, p, false, false)?;
            if !ok {
                let undo = snapshot.restore();
                return Err(bad(anyhow!(
                    "{}: the dry run passed but applying failed{}:\n  {}",
                    p.name,
                    undo_note(&undo),
                    describe_failure(p, &out)
                )));
            }
            say(format!("applied {}", p.name));
            PatchStatus::Applied
        } else {
            let (rev_ok, _) = run_patch(src, p, true, true)?;
            if rev_ok {
                say(format!("{} is already applied: skipped", p.name));
                PatchStatus::AlreadyApplied
            } else {
                let undo = snapshot.restore();
                let earlier = results
                    .iter()
                    .filter(|r: &&PatchResult| r.status == PatchStatus::Applied)
                    .count();
                return Err(bad(anyhow!(
                    "conflict: {} does not apply to {} (neither cleanly nor as already \
                     applied):\n  {}\nthe tree is unchanged{}",
                    p.name,
                    src.display(),
                    describe_failure(p, &fwd_out),
                    if earlier > 0 {
                        format!(
                            " ({earlier} earlier patch(es) of the series undone{})",
                            undo_note(&undo)
                        )
                    } else {
                        undo_note(&undo)
                    }
                )));
            }
        };
        results.push(PatchResult {
            name: p.name.clone(),
            path: p.path.clone(),
            from: p.from.clone(),
            subject: p.subject.clone(),
            sha256: p.sha256.clone(),
            status,
        });
    }
    Ok(results)
}

fn undo_note(r: &anyhow::Result<()>) -> String {
    match r {
        Ok(()) => String::new(),
        Err(e) => format!(" (WARNING: undoing failed: {e:#})"),
    }
}

// --- the build -----------------------------------------------------------------------------

struct Builder {
    log_path: PathBuf,
    log: fs::File,
    make_vars: Vec<String>,
    jobs: u32,
    timings: Vec<(String, f64)>,
}

impl Builder {
    fn new(args: &Args, src: &Path) -> Result<Self, Error> {
        let logs = crate::build_dir().join("build-kernel");
        fs::create_dir_all(&logs).map_err(bad)?;
        // Unique per build, not per process: the tests run builds in parallel threads, and
        // one build removing "its" log under the other made that one fail (seen in CI).
        static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = logs.join(format!("build-{}-{n}.log", std::process::id()));
        let mut log = fs::File::create(&log_path).map_err(bad)?;
        writeln!(log, "# cargo xtask build-kernel --src {}", src.display()).map_err(bad)?;
        say(format!("build log: {}", log_path.display()));
        let mut make_vars = vec![format!("CC={}", args.cc)];
        if let Some(r) = &args.kernelrelease {
            make_vars.push(format!("KERNELRELEASE={r}"));
        }
        Ok(Builder { log_path, log, make_vars, jobs: args.jobs.max(1), timings: Vec::new() })
    }

    /// `make -C src <vars> <targets>`, output to the log, progress on stderr.
    fn make(&mut self, src: &Path, step: &str, targets: &[&str]) -> Result<(), Error> {
        let t = Instant::now();
        say(format!("{step}: make {}", targets.join(" ")));
        writeln!(self.log, "\n# === {step}: make {} ===", targets.join(" ")).map_err(bad)?;
        let (reader, writer) = std::io::pipe().map_err(bad)?;
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(src)
            .arg(format!("-j{}", self.jobs))
            .args(&self.make_vars)
            .args(targets)
            .env("LC_ALL", "C")
            // A make that runs us (or cargo's jobserver) must not leak into the kernel build.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .stdin(Stdio::null())
            .stdout(writer.try_clone().map_err(bad)?)
            .stderr(writer);
        let mut child = cmd.spawn().context("running make").map_err(bad)?;
        drop(cmd);
        let mut last_report = Instant::now();
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(reader).lines() {
            let line = line.unwrap_or_default();
            let _ = writeln!(self.log, "{line}");
            if last_report.elapsed() > Duration::from_secs(20) {
                say(format!("  {step} {:>5.0}s  {}", t.elapsed().as_secs_f64(), line.trim()));
                last_report = Instant::now();
            }
            tail.push(line);
            if tail.len() > 400 {
                tail.drain(..200);
            }
        }
        let status = child.wait().map_err(failed)?;
        let secs = t.elapsed().as_secs_f64();
        self.timings.push((step.to_string(), secs));
        if !status.success() {
            let errors: Vec<&String> = tail
                .iter()
                .filter(|l| l.contains("error") || l.contains("Error") || l.contains("ERROR"))
                .collect();
            let shown = if errors.is_empty() {
                tail[tail.len().saturating_sub(25)..].join("\n")
            } else {
                errors
                    .iter()
                    .rev()
                    .take(25)
                    .rev()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            return Err(failed(anyhow!(
                "{step} failed ({status}) after {secs:.1}s; full log {}:\n{shown}",
                self.log_path.display()
            )));
        }
        say(format!("{step}: done in {secs:.1}s"));
        Ok(())
    }

    /// `make -s <target>` and its first output line.
    fn query(&mut self, src: &Path, target: &str) -> Result<String, Error> {
        let out = Command::new("make")
            .arg("-C")
            .arg(src)
            .arg("-s")
            .args(&self.make_vars)
            .arg(target)
            .env("LC_ALL", "C")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .stdin(Stdio::null())
            .output()
            .context("running make")
            .map_err(bad)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| !l.starts_with("make")).unwrap_or("").trim().to_string();
        if !out.status.success() || line.is_empty() {
            return Err(failed(anyhow!(
                "make {target} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(line)
    }

    fn build(
        &mut self,
        args: &Args,
        src: &Path,
        patches: Vec<PatchResult>,
        patch_secs: f64,
        started: Instant,
    ) -> Result<Built, Error> {
        // Config.
        let dot_config = src.join(".config");
        if let Some(cfg) = &args.config {
            let want = fs::read(cfg)
                .with_context(|| format!("reading --config {}", cfg.display()))
                .map_err(bad)?;
            if fs::read(&dot_config).ok().as_ref() != Some(&want) {
                fs::write(&dot_config, &want).map_err(bad)?;
            }
        } else if !dot_config.is_file() {
            return Err(bad(anyhow!(
                "{} has no .config: pass --config FILE (e.g. the config of the vz7 kernel \
                 you run, /boot/config-<release>)",
                src.display()
            )));
        }
        self.make(src, "config", &["olddefconfig"])?;
        let config_text = fs::read_to_string(&dot_config).map_err(bad)?;
        let config_sha = sha256_hex(config_text.as_bytes());
        let config_has = |opt: &str| config_text.lines().any(|l| l == format!("{opt}=y"));

        // Build.
        let mut modules_dir = None;
        let mut image = None;
        if args.modules_only {
            if let Some(sv) = &args.symvers {
                let want = fs::read(sv)
                    .with_context(|| format!("reading --symvers {}", sv.display()))
                    .map_err(bad)?;
                let dst = src.join("Module.symvers");
                if fs::read(&dst).ok().as_ref() != Some(&want) {
                    fs::write(&dst, &want).map_err(bad)?;
                }
            } else if config_has("CONFIG_MODVERSIONS") && !src.join("Module.symvers").is_file() {
                return Err(bad(anyhow!(
                    "CONFIG_MODVERSIONS is set and {} has no Module.symvers: a --modules-only \
                     build needs the symbol CRCs of the kernel the modules are for; pass \
                     --symvers (e.g. /usr/src/linux-headers-<release>/Module.symvers or \
                     /boot/symvers-<release>) or build the whole kernel",
                    src.display()
                )));
            }
            self.make(src, "modules_prepare", &["modules_prepare"])?;
            self.make(src, "ploop modules", &["M=drivers/block/ploop", "modules"])?;
        } else {
            self.make(src, "kernel", &["bzImage", "modules"])?;
        }
        let release = match &args.kernelrelease {
            Some(r) => r.clone(),
            None => self.query(src, "kernelrelease")?,
        };
        // The release the build really used (a KERNELRELEASE override is not seen by
        // `make kernelrelease` on every version).
        if let Ok(h) = fs::read_to_string(src.join("include/generated/utsrelease.h"))
            && let Some(uts) = h.split('"').nth(1)
            && uts != release
        {
            return Err(failed(anyhow!(
                "the build used release {uts:?}, not {release:?} (UTS_RELEASE in \
                 include/generated/utsrelease.h)"
            )));
        }
        say(format!("kernel release {release}"));

        // Artifacts.
        let out = match &args.out {
            Some(o) => std::path::absolute(o).map_err(bad)?,
            None => crate::build_dir().join("build-kernel").join(&release),
        };
        fs::create_dir_all(&out).map_err(bad)?;
        let mod_out = out.join("modules");
        if mod_out.exists() {
            fs::remove_dir_all(&mod_out).map_err(bad)?;
        }
        fs::create_dir_all(&mod_out).map_err(bad)?;
        let mut modules = Vec::new();
        for e in fs::read_dir(src.join("drivers/block/ploop")).map_err(bad)? {
            let p = e.map_err(bad)?.path();
            if p.extension().is_some_and(|e| e == "ko") {
                let dst = mod_out.join(p.file_name().expect("a file name"));
                fs::copy(&p, &dst).map_err(failed)?;
                modules.push(dst);
            }
        }
        modules.sort();
        if modules.is_empty() {
            let msg = "the build produced no .ko in drivers/block/ploop (CONFIG_BLK_DEV_PLOOP \
                       is not =m in the config)";
            if args.modules_only {
                return Err(failed(anyhow!("{msg}")));
            }
            say(format!("WARNING: {msg}; built in or not built"));
        }
        if !args.modules_only {
            let root = out.join("root");
            if root.exists() {
                fs::remove_dir_all(&root).map_err(bad)?;
            }
            let install_path = format!("INSTALL_MOD_PATH={}", root.display());
            self.make(
                src,
                "modules_install",
                &["modules_install", &install_path, "INSTALL_MOD_STRIP=1"],
            )?;
            let bz = src.join("arch/x86/boot/bzImage");
            let dst = out.join("bzImage");
            fs::copy(&bz, &dst)
                .with_context(|| format!("copying {}", bz.display()))
                .map_err(failed)?;
            image = Some(dst);
            modules_dir = Some(root.join("lib/modules").join(&release));
        }

        // BTF.
        let vmlinux = src.join("vmlinux");
        let mut btf = None;
        let mut btf_note = Value::Null;
        let btf_path = out.join("vmlinux.btf");
        let _ = fs::remove_file(&btf_path);
        if vmlinux.is_file() {
            let t = Instant::now();
            match emit_btf(&vmlinux, &btf_path) {
                Ok(()) => {
                    say(format!("BTF {} ({:.1}s)", btf_path.display(), t.elapsed().as_secs_f64()));
                    btf = Some(btf_path.clone());
                }
                Err(e) => {
                    say(format!("WARNING: no BTF for vmlinux: {e:#}"));
                    btf_note = json!(format!("{e:#}"));
                }
            }
        } else {
            btf_note = json!("no vmlinux in the tree (a --modules-only build does not link one)");
        }

        // Build log and manifest.
        let log_dst = out.join("build.log");
        self.log.flush().map_err(failed)?;
        fs::copy(&self.log_path, &log_dst).map_err(failed)?;
        let _ = fs::remove_file(&self.log_path);
        self.log_path = log_dst.clone();
        let mut timings = serde_json::Map::new();
        timings.insert("patches".into(), json!(round(patch_secs)));
        for (k, v) in &self.timings {
            timings.insert(k.clone(), json!(round(*v)));
        }
        timings.insert("total".into(), json!(round(started.elapsed().as_secs_f64())));
        let manifest = json!({
            "tool": "cargo xtask build-kernel",
            "src": src,
            "kernel_version": check_tree(src).ok(),
            "kernelrelease": release,
            "mode": if args.modules_only { "modules-only" } else { "full" },
            "cc": args.cc,
            "jobs": self.jobs,
            "config": {
                "path": dot_config,
                "from": args.config.as_ref().map(|c| std::path::absolute(c).unwrap_or(c.clone())),
                "sha256": config_sha,
            },
            "patches": patches.iter().map(|p| json!({
                "name": p.name,
                "from": p.from,
                "subject": p.subject,
                "sha256": p.sha256,
                "status": match p.status {
                    PatchStatus::Applied => "applied",
                    PatchStatus::AlreadyApplied => "already-applied",
                },
            })).collect::<Vec<_>>(),
            "artifacts": {
                "modules": modules,
                "bzImage": image,
                "modules_dir": modules_dir,
                "vmlinux": vmlinux.is_file().then_some(&vmlinux),
                "vmlinux_btf": btf,
                "vmlinux_btf_note": btf_note,
                "build_log": log_dst,
            },
            "timings_s": timings,
            "built_at_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        });
        let manifest_path = out.join("manifest.json");
        fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).map_err(failed)? + "\n")
            .map_err(failed)?;
        say(format!("manifest {}", manifest_path.display()));
        Ok(Built {
            out: Some(out),
            manifest: Some(manifest_path),
            release: Some(release),
            patches,
            modules,
            image,
            modules_dir,
            btf,
            boot: None,
        })
    }
}

/// `pahole --btf_encode_detached out vmlinux`: BTF from the DWARF of `vmlinux`, for
/// `ploop-verify --btf` on kernels without /sys/kernel/btf/vmlinux (vz7's 3.10).
pub fn emit_btf(vmlinux: &Path, out: &Path) -> anyhow::Result<()> {
    if which("pahole").is_none() {
        anyhow::bail!("pahole not found on PATH (apt-get install pahole)");
    }
    let _ = fs::remove_file(out);
    let o = Command::new("pahole")
        .arg("--btf_encode_detached")
        .arg(out)
        .arg(vmlinux)
        .env("LC_ALL", "C")
        .output()
        .context("running pahole")?;
    // BTF starts with the magic 0xeB9F (little endian on x86).
    let magic = fs::read(out).ok().filter(|b| b.len() > 24 && b[..2] == [0x9f, 0xeb]);
    if !o.status.success() || magic.is_none() {
        let _ = fs::remove_file(out);
        anyhow::bail!(
            "pahole made no BTF from {} (built without CONFIG_DEBUG_INFO?): {}{}",
            vmlinux.display(),
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

fn round(s: f64) -> f64 {
    (s * 100.0).round() / 100.0
}

// --- boot ----------------------------------------------------------------------------------

fn boot(args: &Args, built: &mut Built) -> Result<(), Error> {
    let (kernel, extra) = match (&built.image, &built.modules_dir) {
        (Some(image), Some(mods)) => (Kernel::custom(image, mods).map_err(failed)?, Vec::new()),
        _ => {
            let spec = args.boot_kernel.as_deref().ok_or_else(|| {
                bad(anyhow!(
                    "--boot with --modules-only needs --boot-kernel: the kernel the modules \
                     were built for (e.g. `6.1`, or a directory with vmlinuz and modules/)"
                ))
            })?;
            let k = Kernel::resolve(spec).map_err(bad)?;
            if Some(&k.release) != built.release.as_ref() {
                say(format!(
                    "WARNING: booting {} with modules built for {}",
                    k.release,
                    built.release.as_deref().unwrap_or("?")
                ));
            }
            (k, built.modules.clone())
        }
    };
    let btf = built.btf.clone();
    let command = args.boot_command.clone().unwrap_or_else(|| {
        if btf.is_some() {
            "ploop-verify --btf vmlinux.btf doctor".into()
        } else {
            "ploop-verify doctor".into()
        }
    });
    let mut load: Vec<&str> = args.boot_modules.iter().map(String::as_str).collect();
    if extra.is_empty() {
        // A full build: its ploop modules are in its modules tree; load them by name.
        load.extend(built.modules.iter().filter_map(|m| m.file_stem().and_then(|s| s.to_str())));
    }
    let mut vm = Vm::with_ploop_verify(kernel, &load, command).map_err(failed)?;
    vm.timeout = Duration::from_secs(args.boot_timeout);
    vm.contents.extra_modules = extra;
    say(format!(
        "booting {} under QEMU with {} built module(s)",
        vm.kernel.release,
        vm.contents.extra_modules.len()
    ));
    let out = vm
        .run_with(|share| {
            if let Some(b) = &btf {
                fs::copy(b, share.join("vmlinux.btf"))?;
            }
            Ok(())
        })
        .map_err(failed)?;
    print!("{}", out.stdout);
    say(format!(
        "guest ran {:.1}s, exit status {:?}; share {}",
        out.elapsed.as_secs_f64(),
        out.status,
        out.share.display()
    ));
    let problems: Vec<String> = out
        .kernel_problems()
        .iter()
        .map(|s| s.to_string())
        .chain(out.console.lines().filter(|l| l.contains("ploop-vm: insmod")).map(str::to_string))
        .collect();
    let status = out.status;
    built.boot = Some(out);
    if status != Some(0) || !problems.is_empty() {
        return Err(failed(anyhow!(
            "the booted guest failed: exit status {status:?}; kernel log: {problems:?}"
        )));
    }
    Ok(())
}

// --- sha256 --------------------------------------------------------------------------------

/// SHA-256 of `data` as lowercase hex (FIPS 180-4; no crate needed for one hash).
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.as_chunks::<64>().0 {
        let mut w = [0u32; 64];
        for (i, c) in block.as_chunks::<4>().0.iter().enumerate() {
            w[i] = u32::from_be_bytes(*c);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn series_parses_the_shipped_patch() {
        let p = read_series(&crate::root().join("kernel-patch")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].from.as_deref(), Some("56e1c4d968993c8985bb90d983cb563a43d32010"));
        assert_eq!(
            p[0].subject.as_deref(),
            Some("ploop: Provide interface to pass freezing fs during snapshot")
        );
        assert_eq!(p[0].files.len(), 1);
        assert_eq!(p[0].files[0].0, "drivers/block/ploop/dev.c");
        assert_eq!(p[0].files[0].1.len(), 4);
        assert!(p[0].files[0].1[1].starts_with("@@ -3683,12 +3715,12 @@"));
    }

    #[test]
    fn strip_path_components() {
        assert_eq!(strip_path("a/drivers/x.c", 1), "drivers/x.c");
        assert_eq!(strip_path("drivers/x.c", 0), "drivers/x.c");
    }
}
