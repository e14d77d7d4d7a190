//! `cargo xtask`: setup, the static build, the VM runner and the test entry point.

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use xtask::{build, kernels::Kernel, vm::Vm};

#[derive(Parser)]
#[command(about = "Build, boot and test tooling for ploop-verify", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything (Debian packages, toolchains, bpf-linker, guest kernels):
    /// runs scripts/setup.sh. Idempotent; a second run takes seconds.
    Setup,
    /// The main job without a vz7 kernel: boot a 6.1 guest with the ploop model driver,
    /// build ext4 on dm-linear on dm-crypt on ploop, and check snapshots live with
    /// `ploop-verify run --oracle` (with the sync fd: clean; with the old autodetection: S2
    /// fires, and X1 with it: the old snapshots need a journal replay).
    /// Reports (Markdown, SVG timeline, JUnit, KTAP, JSON, trace) go to --out.
    Demo {
        #[arg(long, default_value = "6.1")]
        kernel: String,
        #[arg(long, default_value = "ploop-verify-report")]
        out: PathBuf,
    },
    /// Benchmarks (they print numbers; nothing passes or fails): checker throughput on
    /// replay of a synthetic trace, on one core; and the PLOOP_IOC_SNAPSHOT latency on the
    /// model driver without and with `ploop-verify run` attached, in one guest (ratio).
    Bench(xtask::bench::BenchArgs),
    /// Build the static (musl) ploop-verify that guests run; prints its path.
    BuildStatic,
    /// Write tests/ploop-model/ploop_if.h from the one ploop ABI (ploop-common's ploop_if.rs);
    /// a test fails when the committed header is not what this writes.
    GenPloopIf,
    /// Release packages in --out: a versioned tarball (static ploop-verify, README,
    /// kernel-patch/, SHA256SUMS), an RPM for RHEL 7 / vz7, a .deb, and their SHA256SUMS.
    Dist {
        #[arg(long, default_value = "target/ploop/dist")]
        out: PathBuf,
    },
    /// Build an out-of-tree module (default: the ploop model driver) against a guest
    /// kernel's headers; prints the .ko paths.
    BuildModule {
        /// `6.1`, `6.12`, or a directory in the setup layout (vmlinuz, modules/, headers/).
        #[arg(long, default_value = "6.1")]
        kernel: String,
        /// Module source directory.
        #[arg(default_value = "tests/ploop-model")]
        src: PathBuf,
        /// Build with `make VARIANT=y`, in a build directory of its own; for the model,
        /// PLOOP_MODEL_INLINED builds it as a kernel that inlines the snapshot's helpers.
        #[arg(long, value_name = "VARIANT")]
        variant: Option<String>,
    },
    /// Boot a kernel under QEMU with ploop-verify inside and run COMMAND (a shell command).
    ///
    /// The command runs in /share, a 9p mount of the printed host directory (or of --share
    /// DIR); its output and exit status become this command's. Examples:
    ///   cargo xtask vm-run --kernel 6.12 -- ploop-verify doctor
    ///   cargo xtask vm-run --share out --copy ./client -- \
    ///     /copy/lib/ld-linux-x86-64.so.2 --library-path /copy/lib /copy/client \> log.txt
    #[command(verbatim_doc_comment)]
    VmRun {
        /// `6.1`, `6.12` (Debian kernels from setup), or a directory with vmlinuz, modules/.
        #[arg(long, default_value = "6.1", conflicts_with = "image")]
        kernel: String,
        /// A kernel image of your own (with --modules), e.g. a vz7 bzImage.
        #[arg(long, requires = "modules")]
        image: Option<PathBuf>,
        /// The lib/modules/<release> directory that goes with --image.
        #[arg(long)]
        modules: Option<PathBuf>,
        /// Kernel modules to load (dependencies are added).
        #[arg(long = "module", value_name = "NAME", default_values = ["loop", "dm-mod", "ext4", "crc32c_generic"])]
        load: Vec<String>,
        /// Out-of-tree .ko files to load after the kernel's own.
        #[arg(long = "insmod", value_name = "KO")]
        insmod: Vec<PathBuf>,
        /// Build the ploop model driver for this kernel and load it (module `ploop`, with
        /// dm-crypt and the rest of what the live tests load).
        #[arg(long, conflicts_with_all = ["image", "load"])]
        model: bool,
        /// Put Debian's ploop client into the guest (scripts/setup.sh installs it on the
        /// host): `ploop` runs there as on a vz7 host, behind the wrapper that
        /// xtask/src/client.rs explains. Example, what the client asks of the model:
        ///   cargo xtask vm-run --model --client --copy /usr/bin/strace -- \
        ///     /copy/lib/ld-linux-x86-64.so.2 --library-path /copy/lib /copy/strace -f \
        ///     ploop init -s 64M -t ext4 /tmp/c/root.hdd
        #[arg(long, verbatim_doc_comment)]
        client: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Print the kernel console after the command output.
        #[arg(long)]
        console: bool,
        #[command(flatten)]
        files: xtask::vm::GuestFiles,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Apply kernel-patch/ to a vz7 kernel tree, build the ploop modules (or the whole
    /// kernel), write the artifacts, BTF and a manifest; --boot runs the result under QEMU.
    /// Exit status: 0 ok, 1 build failed, 2 bad input (not a kernel tree, conflict, no gcc).
    BuildKernel(xtask::build_kernel::Args),
    /// Run every test: unit, golden-trace and live guest tiers (the README's test command).
    /// Plain `cargo test` runs the first two only.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Setup => {
            let st = Command::new("bash").arg(xtask::root().join("scripts/setup.sh")).status()?;
            Ok(if st.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Demo { kernel, out } => {
            xtask::demo::run(&kernel, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(a) => {
            xtask::bench::run(&a)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GenPloopIf => {
            let changed = xtask::ploop_if::write()?;
            let path = xtask::ploop_if::header_path();
            println!("{} {}", path.display(), if changed { "written" } else { "unchanged" });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BuildStatic => {
            println!("{}", build::ploop_verify_static()?.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dist { out } => {
            let out = if out.is_absolute() { out } else { xtask::root().join(out) };
            let d = xtask::dist::dist(&out)?;
            for p in [d.tarball, d.rpm, d.deb, d.sums] {
                println!("{}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BuildModule { kernel, src, variant } => {
            let src = if src.is_absolute() { src } else { xtask::root().join(src) };
            let kernel = Kernel::resolve(&kernel)?;
            for ko in xtask::module::build_variant(&kernel, &src, variant.as_deref())? {
                println!("{}", ko.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::VmRun {
            kernel,
            image,
            modules,
            load,
            insmod,
            model,
            client,
            timeout,
            console,
            files,
            command,
        } => {
            let kernel = match (image, modules) {
                (Some(i), Some(m)) => Kernel::custom(&i, &m)?,
                _ => Kernel::resolve(&kernel)?,
            };
            let load: Vec<&str> = load.iter().map(String::as_str).collect();
            let mut vm = if model {
                Vm::with_model(kernel, command.join(" "))?
            } else {
                Vm::with_ploop_verify(kernel, &load, command.join(" "))?
            };
            if client {
                xtask::client::add(&mut vm)?;
            }
            vm.timeout = Duration::from_secs(timeout);
            vm.contents.extra_modules.extend(insmod);
            files.apply(&mut vm);
            eprintln!("xtask: booting {} under QEMU (TCG)", vm.kernel.release);
            let out = vm.run()?;
            print!("{}", out.stdout);
            if console {
                eprintln!("--- kernel console ---\n{}", out.console);
            }
            eprintln!(
                "xtask: guest ran {:.1}s; initramfs {} KiB; share {}",
                out.elapsed.as_secs_f64(),
                out.initramfs_bytes / 1024,
                out.share.display()
            );
            let Some(status) = out.status else {
                bail!(
                    "the guest stopped without reporting an exit status; console tail:\n{}",
                    xtask::vm::tail(&out.console, 30)
                );
            };
            Ok(ExitCode::from(status.clamp(0, 255) as u8))
        }
        Cmd::BuildKernel(args) => Ok(xtask::build_kernel::main(&args)),
        Cmd::Test { args } => {
            // A filtered run builds and boots a fraction of the whole; only the whole is measured.
            if args.is_empty() {
                room_for_full_test_run()?;
            }
            let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(xtask::root())
                .arg("test")
                // The live tier is not a default member; the eBPF crate builds for BPF only.
                .args(["--workspace", "--exclude", "ploop-ebpf"])
                // Every test binary runs even after one fails: CI shows all failures at once.
                .arg("--no-fail-fast")
                .args(&args)
                .status()
                .context("running cargo test")?;
            Ok(if st.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// What a whole `cargo xtask test` left under `target/` on a fresh clone (9.3 GiB measured,
/// the kernel build trees of the build_kernel tests being 3.6 GiB of it), with room to spare.
const FULL_TEST_RUN_BYTES: u64 = 10 << 30;

/// Refuses a whole test run that cannot fit, before anything is built: a full disk otherwise
/// shows up minutes later as a linker crash ("LLVM ERROR: IO failure on output stream").
fn room_for_full_test_run() -> Result<()> {
    let target = xtask::root().join("target");
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let used = du_bytes(&target)?;
    let free = df_avail_bytes(&target)?;
    let need = FULL_TEST_RUN_BYTES.saturating_sub(used);
    if free < need {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        bail!(
            "not enough disk for a whole test run: {:.1} GiB free on the filesystem of {}, \
             which holds {:.1} GiB now and grows to about {:.0} GiB from empty; free {:.1} GiB more \
             (old clones and worktrees' target/ directories are the usual cause)",
            gib(free),
            target.display(),
            gib(used),
            gib(FULL_TEST_RUN_BYTES),
            gib(need - free)
        );
    }
    Ok(())
}

fn du_bytes(dir: &std::path::Path) -> Result<u64> {
    let out = Command::new("du").arg("-sbx").arg(dir).output().context("running du")?;
    // du exits 1 over a file that vanished under it (a test's scratch); the total still stands.
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -sbx {} printed {text:?}", dir.display()))
}

fn df_avail_bytes(dir: &std::path::Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .context("running df")?;
    if !out.status.success() {
        bail!("df {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {} printed {text:?}", dir.display()))
}
