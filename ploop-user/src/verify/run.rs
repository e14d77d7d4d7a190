//! `ploop-verify run`: attach, run the workload, check every snapshot call live, write the
//! trace and the reports. `ploop-verify report`: the same checks replayed from a trace.
//!
//! Both go through one [`Pipeline`]: probe -> event -> checker -> report. The live side only
//! adds what must be read at the time of the call (the device stack, and the sync fd through
//! /proc when the kernel walk failed) and records it in the trace, so a replay is identical.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::Args;
use ploop_common::Probe;

use crate::{
    console::say,
    kernel::{KDev, KernelInfo},
    verify::checker::{Checker, Options, Violation},
    verify::drive::{self, Drive, Driven, PriorityArgs, Sink},
    verify::events::{Phase, SyncState, TraceEvent, Via},
    verify::oracle::{self, Oracle},
    verify::probe::{self, ProbeArgs, Session},
    verify::profile::{self, Stage},
    verify::report::svg::axis::plural,
    verify::report::{self, Reports},
    verify::stack::{Stack, StackWatch},
    verify::tech_preview,
    verify::tracefile::{self, End, Header, TraceLine},
    workload::positive,
};

#[derive(Args, Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// T1: the longest a device may stay frozen, in milliseconds.
    #[arg(long, default_value_t = 5000.0, value_name = "MS", value_parser = positive)]
    pub max_freeze_ms: f64,
    /// Fewer snapshot calls than this means nothing was verified (exit 2). Never below 1:
    /// a run that saw no snapshot is never reported clean.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub expect_snapshots: usize,
    /// T2: a snapshot call that has held a device frozen this long without returning is
    /// reported while it hangs (with its thread's kernel stack), and the run exits 1.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", value_parser = positive)]
    pub hang_after: f64,
    /// The workload's snapshots are meant to be refused (a test of the error paths): a run
    /// in which none succeeded is then judged on them alone and may be clean. Without it,
    /// such a run verified nothing of the freeze, the switch or the sync fd (exit 2).
    #[arg(long)]
    #[serde(default)]
    pub expect_refusals: bool,
}

impl Policy {
    /// The limits as `run`'s command line takes them, through its own parsers: a trace whose
    /// header holds `"hang_after": 0` is refused as `--hang-after 0` is, with clap's message.
    pub fn validate(&self) -> Result<(), String> {
        #[derive(clap::Parser)]
        #[command(name = "ploop-verify")]
        struct Limits {
            #[command(flatten)]
            _p: Policy,
        }
        use clap::Parser as _;
        // `--flag=value`: a negative value is a value, not a flag.
        let argv = [
            "ploop-verify".to_string(),
            format!("--max-freeze-ms={}", self.max_freeze_ms),
            format!("--expect-snapshots={}", self.expect_snapshots),
            format!("--hang-after={}", self.hang_after),
        ];
        Limits::try_parse_from(argv).map(drop).map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        })
    }
}

/// `--kcidb`: the results as KernelCI's KCIDB I/O JSON as well.
#[derive(Args, Debug, Clone)]
pub struct KcidbArgs {
    /// Also write the results as KernelCI KCIDB I/O JSON (schema v5.3) to FILE: a checkout
    /// (kernel tree, the patch series' patchset_hash), a build, and one test per snapshot call
    /// and invariant. Needs --kcidb-origin.
    #[arg(long, value_name = "FILE", requires = "kcidb_origin")]
    pub kcidb: Option<PathBuf>,
    /// The KCIDB origin: the name of your CI system (lower-case letters, digits, '_').
    #[arg(long, value_name = "NAME", requires = "kcidb", value_parser = report::kcidb::origin)]
    pub kcidb_origin: Option<String>,
    /// build-kernel's manifest.json of the kernel under test: the KCIDB build, and the
    /// patches it applied as the checkout's patchset.
    #[arg(long, value_name = "FILE", requires = "kcidb")]
    pub kcidb_manifest: Option<PathBuf>,
    /// The KCIDB tree_name of the kernel (e.g. vzkernel).
    #[arg(long, value_name = "NAME", requires = "kcidb")]
    pub kcidb_tree: Option<String>,
}

impl KcidbArgs {
    fn options(&self, policy: &Policy) -> Option<report::kcidb::Options> {
        Some(report::kcidb::Options {
            path: self.kcidb.clone()?,
            origin: self.kcidb_origin.clone()?,
            manifest: self.kcidb_manifest.clone(),
            tree: self.kcidb_tree.clone(),
            expected: policy.expect_snapshots,
        })
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub policy: Policy,
    #[command(flatten)]
    pub kcidb: KcidbArgs,
    /// Directory for trace.jsonl and the reports (created if needed).
    #[arg(long, short, default_value = "ploop-verify-report", value_name = "DIR")]
    pub out: PathBuf,
    /// Without a COMMAND: stop after this many seconds (default: at Ctrl-C).
    #[arg(long, value_name = "SECONDS", value_parser = positive)]
    pub duration: Option<f64>,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub priority: PriorityArgs,
    /// At the end, print where the tool's own time went while it watched: CPU time and
    /// wake-ups per snapshot call, time per stage (drain, context, trace, check).
    #[arg(long)]
    pub profile: bool,
    /// X1: after each successful snapshot with PLOOP_FLAG_FS_SYNC, read the lower deltas
    /// (read-only, from /sys/block/ploopN/pdelta) through the call's device stack and check
    /// that ext4 there needs no journal replay. The finding goes into the trace.
    #[arg(long)]
    pub oracle: bool,
    /// The dm-crypt table with its key, as `dmsetup table --showkeys NAME` prints it, for a
    /// stack with dm-crypt (without it X1 is n/a there).
    #[arg(long, value_name = "FILE", requires = "oracle")]
    pub oracle_key: Option<PathBuf>,
    /// Workload to run while checking; the run ends when it exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A trace written by `ploop-verify run` (trace.jsonl) or `trace --out`.
    pub trace: PathBuf,
    #[command(flatten)]
    pub policy: ReplayPolicy,
    #[command(flatten)]
    pub kcidb: KcidbArgs,
    /// Directory for the reports (default: the trace's directory).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Read a trace that fails its integrity checks (a record missing, repeated, moved or
    /// changed, time going back, an oracle finding for no call) anyway: the reports say so
    /// and the run is "nothing verified" (exit 2). Without it such a trace is refused with
    /// its line (exit 65), as one that does not parse always is.
    #[arg(long)]
    pub accept_damaged: bool,
}

/// The limits of a replay: each one given here, else the one the live run recorded in the
/// trace, else `run`'s default. A replay of a run then gives the run's own verdicts.
#[derive(Args, Debug, Clone)]
pub struct ReplayPolicy {
    /// T1: the longest a device may stay frozen, in milliseconds [default: the run's, else
    /// 5000].
    #[arg(long, value_name = "MS", value_parser = positive)]
    pub max_freeze_ms: Option<f64>,
    /// Fewer snapshot calls than this means nothing was verified (exit 2) [default: the
    /// run's, else 1].
    #[arg(long, value_name = "N")]
    pub expect_snapshots: Option<usize>,
    /// T2: the longest a call may hold a device frozen without returning, in seconds
    /// [default: the run's, else 10].
    #[arg(long, value_name = "SECONDS", value_parser = positive)]
    pub hang_after: Option<f64>,
    /// The snapshots were meant to be refused (see `run --expect-refusals`) [default: the
    /// run's].
    #[arg(long)]
    pub expect_refusals: bool,
}

impl ReplayPolicy {
    pub fn resolve(&self, recorded: Option<&Policy>) -> Policy {
        let base = recorded.cloned().unwrap_or(Policy {
            max_freeze_ms: 5000.0,
            expect_snapshots: 1,
            hang_after: 10.0,
            expect_refusals: false,
        });
        Policy {
            max_freeze_ms: self.max_freeze_ms.unwrap_or(base.max_freeze_ms),
            expect_snapshots: self.expect_snapshots.unwrap_or(base.expect_snapshots),
            hang_after: self.hang_after.unwrap_or(base.hang_after),
            expect_refusals: self.expect_refusals || base.expect_refusals,
        }
    }
}

/// probe -> event -> checker -> reports (and the trace file, live): shared by the live run
/// and the replay.
struct Pipeline {
    checker: Checker,
    reports: Reports,
    writer: Option<tracefile::Writer>,
    /// The first [`report::VIOLATIONS_LISTED`] violations, for summary.json.
    violations: Vec<Violation>,
    last_ts: u64,
    /// Live: print how long after its completing event each violation was found.
    live: bool,
    /// Live only: a replay reads its stacks from the trace.
    stacks: Option<StackWatch>,
    /// Live with `--oracle`: X1's judge, on its own thread.
    oracle: Option<oracle::Worker>,
    /// What each finding cost, in microseconds, for the run's closing lines.
    oracle_costs: Vec<u64>,
    /// The last finding that named no call the checker knows (set by [`Pipeline::push`]).
    orphan: Option<oracle::Finding>,
}

impl Pipeline {
    fn new(
        header: &Header,
        policy: &Policy,
        kcidb: &KcidbArgs,
        writer: Option<tracefile::Writer>,
    ) -> Result<Self> {
        let mut reports = Reports::new()?;
        if let Some(k) = kcidb.options(policy) {
            reports = reports.with_kcidb(report::kcidb::Kcidb::new(k, header)?)?;
        }
        let mut p = Pipeline {
            checker: Checker::new(
                header.generation,
                header.probed.clone(),
                Options {
                    max_freeze_ns: (policy.max_freeze_ms * 1e6) as u64,
                    max_hang_ns: (policy.hang_after * 1e9) as u64,
                },
            ),
            reports,
            writer: None,
            violations: Vec::new(),
            last_ts: 0,
            live: writer.is_some(),
            stacks: writer.is_some().then(StackWatch::new),
            oracle: None,
            oracle_costs: Vec::new(),
            orphan: None,
        };
        if header.oracle {
            p.checker.expect_oracle();
        }
        p.writer = writer;
        if let Some(w) = &mut p.writer {
            w.line(&TraceLine::Header(Box::new(header.clone())))?;
        }
        Ok(p)
    }

    fn push(&mut self, line: &TraceLine) -> Result<()> {
        if let TraceLine::Oracle(f) = line {
            // Judged before it is recorded: a finding for no call stays out of the trace,
            // whose replay would refuse it.
            let Some(found) = profile::time(Stage::Check, || self.checker.oracle(f)) else {
                self.orphan = Some(f.clone());
                return Ok(());
            };
            if let Some(w) = &mut self.writer {
                profile::time(Stage::Trace, || w.line(line))?;
            }
            self.announce(found);
            return profile::time(Stage::Check, || self.hand_over());
        }
        if let Some(w) = &mut self.writer {
            profile::time(Stage::Trace, || w.line(line))?;
        }
        profile::time(Stage::Check, || {
            match line {
                TraceLine::Stack(s) => self.checker.stack(s),
                TraceLine::Event(e) => {
                    self.last_ts = self.last_ts.max(e.ts_ns);
                    let hung = self.checker.hung(e.ts_ns);
                    self.announce(hung);
                    let found = self.checker.event(e);
                    self.announce(found);
                    // Live, the oracle judges them; a replay has their findings in the trace.
                    for call in self.checker.take_for_oracle() {
                        if let Some(o) = &mut self.oracle {
                            o.judge(call);
                        }
                    }
                    self.hand_over()?;
                }
                // Findings are judged above.
                TraceLine::Oracle(_) | TraceLine::Header(_) | TraceLine::End(_) => {}
            }
            Ok(())
        })
    }

    /// The oracle's findings that have arrived, recorded and handed to the checker. At the
    /// end (`wait`), the ones still coming too, for a while.
    fn findings(&mut self, wait: Option<std::time::Duration>) -> Result<()> {
        let found = match wait {
            None => self.oracle.as_mut().map(oracle::Worker::ready),
            Some(wait) => self.oracle.take().map(|o| o.finish(wait)),
        };
        for f in found.unwrap_or_default() {
            self.oracle_costs.push(f.cost_us);
            self.push(&TraceLine::Oracle(f))?;
            if let Some(f) = self.orphan.take() {
                say!(
                    "ploop-verify: the oracle's finding on snapshot #{} (tid {}) came for no call \
                     waiting for one: not recorded",
                    f.seq,
                    f.tid
                );
            }
        }
        Ok(())
    }

    /// Judged calls go on to the reports; nothing here keeps them.
    fn hand_over(&mut self) -> Result<()> {
        for r in self.checker.take_judged() {
            profile::time(Stage::Report, || self.reports.call(r))?;
        }
        Ok(())
    }

    fn announce(&mut self, found: Vec<Violation>) {
        for v in found {
            if self.live {
                let after = drive::mono_ns().saturating_sub(v.ts_ns) as f64 / 1e6;
                say!("ploop-verify: {v} [found {after:.0} ms after the event]");
            } else {
                say!("ploop-verify: {v}");
            }
            if self.violations.len() < report::VIOLATIONS_LISTED {
                self.violations.push(v);
            }
        }
    }

    /// Judges what is left, writes the end record and every report. Returns the exit code.
    /// `trace`: a replay's word on its trace.
    fn finish(
        mut self,
        header: &Header,
        end: End,
        policy: &Policy,
        dir: &Path,
        trace: Option<report::TraceIntegrity>,
    ) -> Result<ExitCode> {
        let found = self.checker.finish(self.last_ts.max(end.end_ns.unwrap_or(0)));
        self.announce(found);
        self.hand_over()?;
        if let Some(mut w) = self.writer.take() {
            w.line(&TraceLine::End(end.clone()))?;
            w.finish()?;
        }
        let outcome = self.checker.outcome();
        let mut summary = report::summarise(&outcome, header, &end, self.violations, policy);
        if let Some(t) = trace {
            summary = summary.with_trace(t);
        }
        self.reports.write(dir, &summary, &outcome)?;
        print_summary(&summary, dir);
        Ok(ExitCode::from(summary.exit_code))
    }
}

/// The console's account of the run: the same verdict, counts and problems as every report.
fn print_summary(s: &report::Summary, dir: &Path) {
    say!(
        "ploop-verify: {}: {}, {}, {}, {} lost",
        s.verdict,
        plural(s.snapshots as u64, "snapshot call", "snapshot calls"),
        plural(s.violations as u64, "violation", "violations"),
        plural(s.events, "event", "events"),
        s.lost
    );
    // A damaged trace's sentence is its status entry (first, with what it costs the
    // verdicts): said once, with the problems it lists under it.
    let damaged = s.status.first().filter(|p| p.kind == "damaged_trace");
    if let Some(t) = &s.trace {
        let head = damaged.map_or_else(|| t.text(), |p| report::visible(&p.text));
        say!("ploop-verify: {head}");
        for l in t.listed.iter().skip(1) {
            say!("ploop-verify:   {l}");
        }
    }
    for p in s.status.iter().skip(usize::from(damaged.is_some() && s.trace.is_some())) {
        say!("ploop-verify: {}", report::visible(&p.text));
    }
    say!("ploop-verify: clients: {}", report::visible(&report::clients_text(s)));
    if let Some(f) = &s.fallbacks {
        say!(
            "ploop-verify: {} fell back to one chunk after -EINVAL (libploop's fallback: the \
             kernel lacks the sync fd)",
            plural(f.count as u64, "snapshot", "snapshots")
        );
    }
    if let Some(f) = &s.refused_retries {
        say!(
            "ploop-verify: {} retried with one chunk after -EINVAL and refused again",
            plural(f.count as u64, "snapshot", "snapshots")
        );
    }
    if let Some(u) = &s.oracle_unjudged {
        say!(
            "ploop-verify: X1 n/a on {} the oracle was to judge: {}",
            plural(u.calls as u64, "snapshot call", "snapshot calls"),
            u.why
        );
    }
    for i in &s.invariants {
        say!(
            "  {:<3} {:<4} pass {:>4}  fail {:>4}  n/a {:>4}  {}",
            i.id,
            if i.fail > 0 { "FAIL" } else { "" },
            i.pass,
            i.fail,
            i.not_applicable,
            i.title
        );
    }
    let files: Vec<&str> = s.report_set.files.iter().map(String::as_str).collect();
    say!(
        "ploop-verify: reports in {} (report set {}): {}",
        dir.display(),
        s.report_set.id,
        files.join(", ")
    );
}

/// `report`: a trace refused for what it holds exits [`tracefile::Refused::EXIT`], with no
/// report written; any other failure is an error (exit 2).
pub fn replay(args: ReportArgs) -> Result<ExitCode> {
    match replay_trace(args) {
        Err(e) if e.chain().any(|c| c.is::<tracefile::Refused>()) => {
            say!("ploop-verify: error: {e:#}");
            say!("ploop-verify: trace refused, no report written");
            Ok(ExitCode::from(tracefile::Refused::EXIT))
        }
        other => other,
    }
}

fn replay_trace(args: ReportArgs) -> Result<ExitCode> {
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => match args.trace.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    if args.trace.is_dir() {
        let inside = args.trace.join("trace.jsonl");
        anyhow::bail!(
            "{} is a directory, not a trace{}",
            args.trace.display(),
            if inside.is_file() {
                format!(" (did you mean {}?)", inside.display())
            } else {
                String::new()
            }
        );
    }
    // A trace refused (unreadable, damaged) leaves no report of its own; the reports already
    // in the directory are another trace's, and are marked so, not left to pass for its.
    let refused = |e: anyhow::Error| -> anyhow::Error {
        match report::retire(&dir, args.kcidb.kcidb.as_deref()) {
            Ok(marked) if !marked.is_empty() => {
                e.context(report::holds(&dir, args.kcidb.kcidb.as_deref()))
            }
            Ok(_) => e,
            Err(r) => e.context(format!("marking the reports in {}: {r:#}", dir.display())),
        }
    };
    let mut trace =
        tracefile::Reader::open_with(&args.trace, args.accept_damaged).map_err(refused)?;
    let header = trace.header.clone();
    let policy = args.policy.resolve(header.policy.as_ref());
    let mut p = Pipeline::new(&header, &policy, &args.kcidb, None)?;
    while let Some(line) = trace.next_record().map_err(refused)? {
        p.push(line)?;
        if let Some(f) = p.orphan.take() {
            trace.damage(format_args!(
                "an oracle finding on snapshot #{} (tid {}), which no call of the trace waits for",
                f.seq, f.tid
            ))?;
        }
    }
    let end = trace.end().cloned().expect("next_record returns None only after the end record");
    p.finish(&header, end, &policy, &dir, Some(trace.integrity()))
}

/// The live side: each event after the context only it can read for it.
impl Sink for Pipeline {
    fn event(&mut self, mut e: TraceEvent) -> Result<()> {
        let stacks = self.stacks.get_or_insert_with(StackWatch::new);
        if let Some(s) = profile::time(Stage::Context, || context_for(&mut e, stacks)) {
            self.push(&TraceLine::Stack(s))?;
        }
        self.push(&TraceLine::Event(e))?;
        self.findings(None)
    }

    /// Live, as time passes: a hung call is reported now, with where its thread sleeps.
    fn tick(&mut self, now: u64) -> Result<()> {
        self.findings(None)?;
        let hung = self.checker.hung(now);
        // Read while the thread still hangs; printed after the violation it explains.
        let stacks: Vec<(u32, String)> = hung
            .iter()
            .map(|v| {
                let stack = std::fs::read_to_string(format!("/proc/{}/stack", v.tid))
                    .unwrap_or_else(|e| format!("(its kernel stack is not readable: {e})\n"));
                (v.tid, stack)
            })
            .collect();
        self.announce(hung);
        for (tid, stack) in stacks {
            say!("ploop-verify: kernel stack of tid {tid}:\n{}", stack.trim_end());
        }
        Ok(())
    }

    fn progress(&self, lost: u64) -> String {
        format!(
            "snapshots {}, violations {}, events {}, lost {lost}",
            self.checker.snapshots(),
            self.checker.violations(),
            self.checker.events
        )
    }
}

/// What only the live side can know, recorded before the event that needs it.
fn context_for(e: &mut TraceEvent, stacks: &mut StackWatch) -> Option<Stack> {
    // At the start of a snapshot call (the ioctl's entry, or ploop_snapshot's).
    if e.phase != Phase::Entry || e.request.is_none() {
        return None;
    }
    if let Some(sync) = e.request.as_mut().and_then(|r| r.sync.as_mut())
        && sync.state == SyncState::Unread
    {
        // The kernel walk failed: ask /proc now (the fd may have changed since: marked).
        let path = format!("/proc/{}/fd/{}", e.pid, sync.fd);
        sync.via = Via::Proc;
        match nix::sys::stat::stat(path.as_str()) {
            Ok(st) => {
                let dev = KDev::from_user(st.st_dev);
                sync.state = if dev.major() == 0 { SyncState::NoBdev } else { SyncState::Resolved };
                sync.dev = Some(dev);
                let blk = nix::sys::stat::SFlag::S_IFBLK.bits();
                let fmt = nix::sys::stat::SFlag::S_IFMT.bits();
                if st.st_mode & fmt == blk {
                    sync.node = Some(KDev::from_user(st.st_rdev));
                }
            }
            Err(_) => sync.state = SyncState::NoFile,
        }
    }
    e.dev.and_then(|d| stacks.changed(d))
}

/// How long the end of a run waits for the oracle's last findings.
const ORACLE_FINISH: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn run(args: RunArgs, btf: Option<&Path>) -> Result<ExitCode> {
    // A wrong manifest is bad input: said now, not after the workload.
    if let Some(m) = &args.kcidb.kcidb_manifest {
        report::kcidb::Manifest::read(m)?;
    }
    let kernel = KernelInfo::detect()?;
    if kernel.symbol(Probe::PloopSnapshot).is_none() && probe::ploop_major().is_none() {
        say!(
            "ploop-verify: no ploop here: ploop_snapshot is not in /proc/kallsyms and no ploop \
             block major in /proc/devices, so no verdict on ploop at all. Load the ploop module \
             (or the model driver) first."
        );
        return Ok(ExitCode::from(2));
    }
    if let Some(refused) = tech_preview::gate(&kernel, "run") {
        return Ok(refused);
    }
    let plan = probe::plan(&kernel, btf, &args.probe)?;
    let mut session = Session::attach(&plan).context("attaching the probes")?;
    for (role, why) in &session.narrowed {
        say!("ploop-verify: not probed: {role}: {why}");
    }
    if args.profile {
        profile::enable();
    }
    let mut source = session.stream()?;
    let base = profile::baseline();
    say!("ploop-verify: checking {plan}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // The earlier run's reports, beside this run's trace as it grows, are marked as not its.
    report::retire(&args.out, args.kcidb.kcidb.as_deref())?;
    let mut header = tracefile::header(&kernel, &session)?;
    header.policy = Some(args.policy.clone());
    header.oracle = args.oracle;
    let writer = tracefile::Writer::create(&args.out.join("trace.jsonl"))?;
    let mut p = Pipeline::new(&header, &args.policy, &args.kcidb, Some(writer))?;
    if args.oracle {
        p.oracle = Some(oracle::Worker::start(Oracle::new(args.oracle_key.as_deref())?)?);
    }

    let drive = Drive {
        command: &args.command,
        duration: args.duration,
        transport: plan.transport,
        generation: kernel.generation,
        quiet: args.quiet,
        nice: args.priority.nice,
    };
    let Driven { status, lost } = drive::drive(drive, &mut source, &mut p).await?;
    // The last snapshots' findings are still coming: a judgement takes milliseconds, rarely
    // a fraction of a second; one stuck in I/O leaves its X1 n/a after this.
    p.findings(Some(ORACLE_FINISH))?;
    let lost = lost + session.dropped_in_kernel()?;
    drop(session);
    let end = End {
        events: p.checker.events,
        lost,
        command_status: status,
        end_ns: Some(drive::mono_ns()),
    };
    if let Some(code) = status.filter(|c| *c != 0) {
        say!("ploop-verify: the workload exited with status {code}");
    }
    if let Some(base) = base {
        for l in profile::report(&base, p.checker.snapshots(), p.checker.events) {
            say!("ploop-verify: {l}");
        }
    }
    if let Some(l) = oracle::cost_line(&p.oracle_costs) {
        say!("ploop-verify: {l}");
    }
    p.finish(&header, end, &args.policy, &args.out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay judges with the run's own limits (a run with `--hang-after 1.5` replayed
    /// with the default 10 s would call its hung snapshot clean), unless told otherwise.
    #[test]
    fn replay_limits_come_from_the_command_line_then_the_trace_then_the_defaults() {
        let none = ReplayPolicy {
            max_freeze_ms: None,
            expect_snapshots: None,
            hang_after: None,
            expect_refusals: false,
        };
        let run = Policy {
            max_freeze_ms: 60000.0,
            expect_snapshots: 3,
            hang_after: 1.5,
            expect_refusals: false,
        };
        assert_eq!(none.resolve(Some(&run)), run);
        let d = none.resolve(None);
        assert_eq!((d.max_freeze_ms, d.expect_snapshots, d.hang_after), (5000.0, 1, 10.0));
        let told = ReplayPolicy { hang_after: Some(20.0), ..none };
        assert_eq!(told.resolve(Some(&run)).hang_after, 20.0);
        assert_eq!(told.resolve(Some(&run)).max_freeze_ms, 60000.0);
    }

    /// The defaults above are `run`'s: one place would be better, so at least one test.
    #[test]
    fn replay_defaults_are_the_run_defaults() {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            p: Policy,
        }
        use clap::Parser as _;
        let run = P::parse_from(["x"]).p;
        let none = ReplayPolicy {
            max_freeze_ms: None,
            expect_snapshots: None,
            hang_after: None,
            expect_refusals: false,
        };
        assert_eq!(none.resolve(None), run);
    }
}
