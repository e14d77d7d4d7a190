//! ploop-verify: checks the ploop snapshot freeze/thaw contract live, with eBPF.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use ploop_user::{
    image,
    kit::{ploopctl, testkit},
    offsets,
    verify::{doctor, probe, run, tech_preview, trace},
};

/// `--version`: the version, the commit it was built from ("unknown" outside a git checkout)
/// and the aya it links (both recorded by build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PLOOP_GIT_COMMIT"),
    ", aya ",
    env!("PLOOP_AYA_VERSION"),
    ")"
);

/// Verify the ploop snapshot freeze/thaw contract on a live kernel, with eBPF.
///
/// `run` judges every PLOOP_IOC_SNAPSHOT call on the contract's invariants while a workload
/// runs, and writes a trace and reports for CI. Probes attach to ploop_snapshot and its
/// helpers (kprobes), to freeze_bdev/thaw_bdev (bdev_freeze/bdev_thaw on 6.8+) with kprobes or
/// fentry, and stream events through a ring buffer or a perf buffer, whichever the kernel
/// offers. Start with `ploop-verify doctor` to see what this kernel supports.
///
/// Exit status: 0 success (clean); 1 violations, or the workload or request failed; 2 nothing
/// could be verified (probes would not attach, no snapshot or event seen, events lost) or bad
/// input; 64 bad usage; 65 a trace refused by `report` (damaged, or not a trace).
#[derive(Parser, Debug)]
#[command(name = "ploop-verify", version = VERSION, max_term_width = 100)]
struct Cli {
    /// BTF of the kernel to probe, for kernels without /sys/kernel/btf/vmlinux
    /// (e.g. from `cargo xtask build-kernel`, or `pahole -J vmlinux`). Without it and without
    /// kernel BTF, the offsets come from the DWARF cache or the kernel's debuginfo (see
    /// `offsets --help`).
    #[arg(long, global = true, value_name = "FILE")]
    btf: Option<PathBuf>,
    /// Agree that on a RHEL 7-family kernel (vz7 included) the first bpf() call taints the
    /// kernel ("TECH PREVIEW", taint bit 29): `run` and `trace` refuse there without it (exit
    /// status 2), `doctor` does not try the probes. Harmless on any other kernel.
    #[arg(long, global = true)]
    allow_tech_preview_taint: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what this kernel supports (BTF, kprobes, fentry, ring buffer, symbols) and the
    /// probe plan that would be used, with the reason for everything missing.
    ///
    /// Exit status: 0 a probe plan exists (`plan: ...`); 2 none (`plan: none: WHY`), e.g.
    /// without root or on a kernel without kprobes.
    Doctor(doctor::DoctorArgs),
    /// Check the snapshot contract live while COMMAND runs (or until Ctrl-C / --duration).
    ///
    /// Anchors each snapshot call at the ioctl, attaches to ploop_snapshot and its helpers
    /// where they have a symbol, and to freeze/thaw; judges every snapshot call on every
    /// invariant (O1-O4, S1-S4, E1-E3, C1, T1, T2, X1 with --oracle) and prints each violation
    /// as it is found, a hung call (T2, --hang-after) while it hangs. It only observes: it
    /// never freezes or thaws anything itself, so an interrupted run leaves no filesystem
    /// frozen.
    ///
    /// Files written into --out: trace.jsonl (as the run goes; replayable with `report`),
    /// then the report set: junit.xml, results.ktap, summary.md, timeline.svg and, last,
    /// summary.json (and --kcidb FILE). Each carries the set's id; the set is moved into place
    /// only when complete, and an earlier run's reports there are renamed NAME.stale first.
    ///
    /// Exit status: 0 clean; 1 violations; 2 nothing could be verified (probes would not
    /// attach, no snapshot observed, events lost, every snapshot refused without
    /// --expect-refusals) or the reports could not be written; 64 bad usage.
    ///
    /// Example: ploop-verify run --out report -- ploop snapshot /var/ct/101/root.hdd/DiskDescriptor.xml
    Run(run::RunArgs),
    /// Replay a trace through the checker and write the reports again (same verdicts).
    ///
    /// Reads a trace.jsonl written by `run` (or `trace --out`) and judges it with the limits
    /// the run recorded, unless given others here.
    ///
    /// Files written into --out (default: the trace's directory): junit.xml, results.ktap,
    /// summary.md, timeline.svg and, last, summary.json (and --kcidb FILE), as one set: see
    /// `run --help`. A trace that cannot be read leaves no report, and marks the reports
    /// already there NAME.stale.
    ///
    /// A trace is checked first: every record in its turn and unchanged (`rec`, `crc`), event
    /// time never back by more than 30 ms, the end record's count, keys and comms as written.
    ///
    /// Exit status: 0 clean; 1 violations; 2 nothing could be verified (no snapshot, events
    /// lost, every snapshot refused without --expect-refusals, a damaged trace read with
    /// --accept-damaged) or the reports could not be written; 64 bad usage; 65 the trace
    /// refused, with its line: no report written.
    ///
    /// Example: ploop-verify report report/trace.jsonl --out replayed --kcidb replayed/kcidb.json \
    ///   --kcidb-origin my_ci
    Report(run::ReportArgs),
    /// Attach the freeze/thaw probes, run COMMAND (or wait), and record every event.
    ///
    /// Raw events only, judged by nothing: `run` checks the contract. The trace (--out) is a
    /// header, the events in time order and an end record with the counts, events lost
    /// included.
    ///
    /// Exit status: 0 events were recorded (lost events are warned about and counted in the
    /// end record, not an error here); 1 COMMAND exited with a non-zero status; 2 no event was
    /// observed, the probes would not attach, or the trace could not be written; 64 bad usage.
    ///
    /// Example (a dm suspend freezes the block device under the filesystem; `fsfreeze` would
    /// not: it freezes the superblock only):
    /// ploop-verify trace --out t.jsonl -- ploop-verify testkit dm-suspend-resume root
    Trace(trace::TraceArgs),
    /// Triggers that make the kernel freeze and thaw a block device (for tests).
    #[command(subcommand)]
    Testkit(testkit::Testkit),
    /// Make delta files and bring a ploop device up from them, or down (see each --help).
    #[command(subcommand)]
    Device(ploopctl::Device),
    Snapshot(ploopctl::SnapshotArgs),
    Support(ploopctl::SupportArgs),
    /// Read the struct offsets the probes need from a vmlinux's DWARF, and cache them.
    ///
    /// For kernels without BTF (vz7's 3.10): `run`, `trace` and `doctor` take the offsets from
    /// --btf FILE, else /sys/kernel/btf/vmlinux, else this cache, else the debuginfo vmlinux
    /// at its usual paths (/usr/lib/debug/lib/modules/RELEASE/vmlinux,
    /// /usr/lib/debug/boot/vmlinux-RELEASE, /boot/vmlinux-RELEASE,
    /// /lib/modules/RELEASE/build/vmlinux), which they read and cache themselves. This command
    /// does it by hand, for a vmlinux elsewhere or of another kernel (copy the cache file to
    /// that host).
    ///
    /// Writes /var/cache/ploop-verify/offsets-RELEASE-BUILDID.json (the directory is
    /// $PLOOP_VERIFY_CACHE when set), keyed by the file's kernel release (from its banner, or
    /// --release) and its GNU build id (which the running kernel's /sys/kernel/notes must
    /// match for the cache to be used there).
    ///
    /// Exit status: 0 offsets read and cached; 2 the file is not an ELF vmlinux, has no DWARF
    /// (stripped), no build id, no block_device.bd_dev, or the cache cannot be written; 64 bad
    /// usage.
    ///
    /// Example (vz7: yum install vzkernel-debuginfo-$(uname -r)):
    ///   ploop-verify offsets --vmlinux /usr/lib/debug/lib/modules/$(uname -r)/vmlinux
    Offsets(offsets::OffsetsArgs),
    /// Read ploop images offline: info, check, cat (raw and ploop1 deltas, GPT, dm-crypt).
    #[command(subcommand, long_about = image::cli::ABOUT)]
    Image(image::cli::Image),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS };
        }
    };
    let btf = cli.btf.as_deref();
    if cli.allow_tech_preview_taint {
        tech_preview::allow();
    }
    // Only these load BPF programs: a permission error elsewhere has nothing to do with it.
    let loads_bpf = matches!(cli.command, Command::Doctor(_) | Command::Trace(_) | Command::Run(_));
    let result = probe::check_btf_arg(btf).and_then(|()| match cli.command {
        Command::Doctor(a) => doctor::run(a, btf),
        Command::Trace(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(trace::run(a, btf)),
        Command::Run(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run::run(a, btf)),
        Command::Report(a) => run::replay(a),
        Command::Offsets(a) => offsets::run(a),
        Command::Testkit(t) => testkit::run_with_status(t),
        Command::Device(d) => ploopctl::device(d),
        Command::Snapshot(a) => ploopctl::snapshot(a),
        Command::Support(a) => ploopctl::support(a),
        Command::Image(i) => image::cli::run(i),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ploop-verify: error: {e:#}");
            if loads_bpf && is_permission_error(&e) {
                eprintln!(
                    "ploop-verify: hint: loading BPF programs needs root (CAP_BPF and CAP_PERFMON)"
                );
            }
            ExitCode::from(2)
        }
    }
}

fn is_permission_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}
