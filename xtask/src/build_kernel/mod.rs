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
//!
//! One file per step: `tree` (steps 1-2), `series` (3), `make` (4-6), `manifest` (the
//! format of `manifest.json`), `boot` (7).

mod boot;
mod make;
pub mod manifest;
mod series;
mod tree;

use std::{fmt, path::PathBuf, process::ExitCode, time::Instant};

use sha2::{Digest as _, Sha256};

pub use self::{
    make::emit_btf,
    series::{Patch, PatchResult, PatchStatus, apply_series, read_series},
    tree::{check_tree, which},
};

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
    /// Shell command run in the guest (in /share, where vmlinux.btf is copied, also into a
    /// --share DIR)
    /// [default: `ploop-verify [--btf vmlinux.btf] doctor`].
    #[arg(long, value_name = "CMD")]
    pub boot_command: Option<String>,
    /// Give the guest this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub boot_timeout: u64,
    /// With --boot: the user's own files in the guest (--share DIR, --copy PATH...).
    #[command(flatten)]
    pub guest: crate::vm::GuestFiles,
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

/// SHA-256 of `data` as lowercase hex: how the manifest names patches and configs.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
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
        tree::check_tools(&args.cc)?;
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

    let mut built = make::Builder::new(args, &src)?
        .build(args, &src, &version, patches, patch_secs, started)?;
    if args.boot {
        boot::boot(args, &mut built)?;
    }
    say(format!("done in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(built)
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
}
