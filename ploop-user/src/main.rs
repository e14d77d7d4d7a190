//! ploop-verify: checks the ploop snapshot freeze/thaw contract live, with eBPF.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use ploop_user::{
    image,
    kit::{ploopctl, testkit},
    verify::{doctor, probe, run, trace},
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
    /// (e.g. from `cargo xtask build-kernel`, or `pahole -J vmlinux`).
    #[arg(long, global = true, value_name = "FILE")]
    btf: Option<PathBuf>,
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
    /// invariant (O1-O4, S1-S3, E1-E3, C1, T1, T2) and prints each violation as it is found,
    /// a hung call (T2, --hang-after) while it hangs. Writes trace.jsonl, summary.json, junit.xml, results.ktap,
    /// summary.md and timeline.svg into --out. It only observes: it never freezes or thaws
    /// anything itself, so an interrupted run leaves no filesystem frozen.
    ///
    /// Exit status: 0 clean; 1 violations; 2 nothing could be verified (probes would not
    /// attach, no snapshot observed, events lost).
    ///
    /// Example: ploop-verify run --out report -- ploop-verify snapshot --device /dev/ploop0 \
    ///   --delta /var/top.delta --sync-fd-from /mnt
    Run(run::RunArgs),
    /// Replay a trace through the checker and write the reports again (same verdicts).
    ///
    /// A trace is checked first: every record in its turn and unchanged (`rec`, `crc`), event
    /// time never back by more than 30 ms, the end record's count, keys and comms as written.
    /// Exit status: 0 clean; 1 violations; 2 nothing verified (also a damaged trace read
    /// with --accept-damaged); 65 the trace refused, with its line: no report written.
    Report(run::ReportArgs),
    /// Attach the freeze/thaw probes, run COMMAND (or wait), and record every event.
    ///
    /// Example: ploop-verify trace --out t.jsonl -- fsfreeze --freeze /mnt
    Trace(trace::TraceArgs),
    /// Triggers that make the kernel freeze and thaw a block device (for tests).
    #[command(subcommand)]
    Testkit(testkit::Testkit),
    /// Make delta files and bring a ploop device up from them, or down (see each --help).
    #[command(subcommand)]
    Device(ploopctl::Device),
    Snapshot(ploopctl::SnapshotArgs),
    Support(ploopctl::SupportArgs),
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
            if is_permission_error(&e) {
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
