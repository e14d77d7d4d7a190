//! `ploop-verify run`: attach, run the workload, check every snapshot call live, write the
//! trace and the reports. `ploop-verify report`: the same checks replayed from a trace.
//!
//! Both go through one [`Pipeline`]: probe -> event -> checker -> report. The live side only
//! adds what must be read at the time of the call (the device stack, and the sync fd through
//! /proc when the kernel walk failed) and records it in the trace, so a replay is identical.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use ploop_common::Probe;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    console::{self, say},
    kernel::{KDev, KernelInfo},
    verify::checker::{Checker, Options, Violation},
    verify::events::{Phase, SyncState, TraceEvent, Via},
    verify::probe::{Record, Session, Transport},
    verify::report::{self, Reports},
    verify::stack::Stack,
    verify::trace::{self, ProbeArgs},
    verify::tracefile::{self, End, Header, TraceLine},
    workload::{Stopped, Workload, positive},
};

#[derive(Args, Debug, Clone)]
pub struct Policy {
    /// T1: the longest a device may stay frozen, in milliseconds.
    #[arg(long, default_value_t = 5000.0, value_name = "MS", value_parser = positive)]
    pub max_freeze_ms: f64,
    /// Fewer snapshot calls than this means nothing was verified (exit 2). Never below 1:
    /// a run that saw no snapshot is never reported clean.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub expect_snapshots: usize,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub policy: Policy,
    /// Directory for trace.jsonl and the reports (created if needed).
    #[arg(long, short, default_value = "ploop-verify-report", value_name = "DIR")]
    pub out: PathBuf,
    /// Without a COMMAND: stop after this many seconds (default: at Ctrl-C).
    #[arg(long, value_name = "SECONDS", value_parser = positive)]
    pub duration: Option<f64>,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Workload to run while checking; the run ends when it exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A trace written by `ploop-verify run` (trace.jsonl) or `trace --out`.
    pub trace: PathBuf,
    #[command(flatten)]
    pub policy: Policy,
    /// Directory for the reports (default: the trace's directory).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
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
}

impl Pipeline {
    fn new(header: &Header, policy: &Policy, writer: Option<tracefile::Writer>) -> Result<Self> {
        let mut p = Pipeline {
            checker: Checker::new(
                header.generation,
                header.probed.clone(),
                Options { max_freeze_ns: (policy.max_freeze_ms * 1e6) as u64 },
            ),
            reports: Reports::new()?,
            writer: None,
            violations: Vec::new(),
            last_ts: 0,
            live: writer.is_some(),
        };
        p.writer = writer;
        if let Some(w) = &mut p.writer {
            w.line(&TraceLine::Header(Box::new(header.clone())))?;
        }
        Ok(p)
    }

    fn push(&mut self, line: &TraceLine) -> Result<()> {
        if let Some(w) = &mut self.writer {
            w.line(line)?;
        }
        match line {
            TraceLine::Stack(s) => self.checker.stack(s),
            TraceLine::Event(e) => {
                self.last_ts = self.last_ts.max(e.ts_ns);
                let found = self.checker.event(e);
                self.announce(found);
                self.hand_over()?;
            }
            TraceLine::Header(_) | TraceLine::End(_) => {}
        }
        Ok(())
    }

    /// Judged calls go on to the reports; nothing here keeps them.
    fn hand_over(&mut self) -> Result<()> {
        for r in self.checker.take_judged() {
            self.reports.call(r)?;
        }
        Ok(())
    }

    fn announce(&mut self, found: Vec<Violation>) {
        for v in found {
            if self.live {
                let after = mono_ns().saturating_sub(v.ts_ns) as f64 / 1e6;
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
    fn finish(
        mut self,
        header: &Header,
        end: End,
        policy: &Policy,
        dir: &Path,
    ) -> Result<ExitCode> {
        let found = self.checker.finish(self.last_ts);
        self.announce(found);
        self.hand_over()?;
        if let Some(mut w) = self.writer.take() {
            w.line(&TraceLine::End(end.clone()))?;
            w.finish()?;
        }
        let outcome = self.checker.outcome();
        let summary = report::summarise(
            &outcome,
            header,
            &end,
            self.violations,
            policy.expect_snapshots.max(1),
        );
        self.reports.write(dir, &summary, &outcome)?;
        print_summary(&summary, dir);
        Ok(ExitCode::from(summary.exit_code))
    }
}

fn print_summary(s: &report::Summary, dir: &Path) {
    say!(
        "ploop-verify: {}: {} snapshot calls, {} violations, {} events, {} lost",
        s.verdict,
        s.snapshots,
        s.violations,
        s.events,
        s.lost
    );
    if let Some(r) = &s.reason {
        say!("ploop-verify: {r}");
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
    say!("ploop-verify: reports in {}", dir.display());
}

pub fn replay(args: ReportArgs) -> Result<ExitCode> {
    let mut trace = tracefile::Reader::open(&args.trace)?;
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => args.trace.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
    };
    let header = trace.header.clone();
    let mut p = Pipeline::new(&header, &args.policy, None)?;
    while let Some(line) = trace.next_record()? {
        p.push(line)?;
    }
    let end = trace.end().cloned().expect("next_record returns None only after the end record");
    p.finish(&header, end, &args.policy, &dir)
}

/// Monotonic clock, the base of `bpf_ktime_get_ns`.
fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Perf buffers are per CPU and a task may migrate between its freeze and its thaw: events
/// wait here until no earlier one can still arrive, then leave in time order.
struct Reorder {
    pending: BTreeMap<(u64, u64), TraceEvent>,
    seq: u64,
}

/// How long events wait for earlier ones: perf buffers are per CPU; the ring buffer is one
/// stream in which each task's events are already in order (the checker's state is per task).
fn reorder_window(t: Transport) -> u64 {
    match t {
        Transport::Perf => 30_000_000,
        Transport::Ringbuf => 0,
    }
}

impl Reorder {
    fn push(&mut self, e: TraceEvent) {
        self.seq += 1;
        self.pending.insert((e.ts_ns, self.seq), e);
    }
    fn ready(&mut self, cutoff: u64) -> Vec<TraceEvent> {
        let later = self.pending.split_off(&(cutoff, 0));
        std::mem::replace(&mut self.pending, later).into_values().collect()
    }
}

/// What only the live side can know, recorded before the event that needs it.
fn context_for(e: &mut TraceEvent) -> Option<Stack> {
    if e.func != Probe::PloopSnapshot || e.phase != Phase::Entry {
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
            }
            Err(_) => sync.state = SyncState::NoFile,
        }
    }
    e.dev.map(Stack::capture)
}

pub async fn run(args: RunArgs, btf: Option<&Path>) -> Result<ExitCode> {
    let kernel = KernelInfo::detect()?;
    if kernel.symbol(Probe::PloopSnapshot).is_none() {
        say!(
            "ploop-verify: ploop_snapshot is not in this kernel (/proc/kallsyms): no verdict on ploop \
             at all. Load the ploop module (or the model driver) first."
        );
        return Ok(ExitCode::from(2));
    }
    let plan = trace::plan(&kernel, btf, &args.probe)?;
    let mut session = Session::attach(&plan).context("attaching the probes")?;
    for (role, why) in &session.narrowed {
        say!("ploop-verify: not probed: {role}: {why}");
    }
    let mut rx = session.stream()?;
    say!("ploop-verify: checking {plan}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let header = tracefile::header(&kernel, &session)?;
    let writer = tracefile::Writer::create(&args.out.join("trace.jsonl"))?;
    let mut p = Pipeline::new(&header, &args.policy, Some(writer))?;

    let mut lost = 0;
    let window = reorder_window(plan.transport);
    let status = drive(&args, window, &mut rx, &mut p, &mut lost).await?;
    lost += session.dropped_in_kernel()?;
    drop(session);
    let end = End { events: p.checker.events, lost, command_status: status };
    if let Some(code) = status.filter(|c| *c != 0) {
        say!("ploop-verify: the workload exited with status {code}");
    }
    p.finish(&header, end, &args.policy, &args.out)
}

/// Runs the workload while feeding the pipeline; returns the workload's exit status.
async fn drive(
    args: &RunArgs,
    window: u64,
    rx: &mut UnboundedReceiver<Record>,
    p: &mut Pipeline,
    lost: &mut u64,
) -> Result<Option<i32>> {
    let generation = p.checker.generation();
    let mut workload = Workload::start(&args.command, args.duration)?;
    let every = console::status_every();
    let mut reorder = Reorder { pending: BTreeMap::new(), seq: 0 };
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last_progress = Instant::now();
    let take = |r: Record, reorder: &mut Reorder, lost: &mut u64| match r {
        // An id this build does not know cannot be judged: counted as lost.
        Record::Event(e) => match TraceEvent::from_raw(&e, generation) {
            Some(e) => reorder.push(e),
            None => *lost += 1,
        },
        Record::Lost(n) => *lost += n,
    };
    let status = loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => take(r, &mut reorder, lost),
                None => bail!("the event readers stopped"),
            },
            _ = tick.tick() => {
                release(p, reorder.ready(mono_ns().saturating_sub(window)))?;
                if !args.quiet && last_progress.elapsed() >= every {
                    console::status(&format!(
                        "snapshots {}, violations {}, events {}, lost {}",
                        p.checker.snapshots(),
                        p.violations.len(),
                        p.checker.events,
                        lost
                    ));
                    last_progress = Instant::now();
                }
            }
            stopped = workload.stopped() => {
                let stopped = stopped?;
                if let Stopped::Interrupted = stopped {
                    say!("ploop-verify: interrupted; stopping the workload");
                    workload.wind_down().await;
                }
                break stopped.status();
            }
        }
    };
    // Events emitted before the workload ended may still be in the buffers.
    let settle = tokio::time::Instant::now() + Duration::from_millis(200);
    while let Ok(Some(r)) = tokio::time::timeout_at(settle, rx.recv()).await {
        take(r, &mut reorder, lost);
    }
    release(p, reorder.ready(u64::MAX))?;
    Ok(status)
}

/// Hands events to the pipeline in order, each after the context only live can read for it.
fn release(p: &mut Pipeline, events: Vec<TraceEvent>) -> Result<()> {
    for mut e in events {
        if let Some(s) = context_for(&mut e) {
            p.push(&TraceLine::Stack(s))?;
        }
        p.push(&TraceLine::Event(e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorder_releases_in_time_order_up_to_the_cutoff() {
        let ev = |ts| TraceEvent {
            ts_ns: ts,
            pid: 1,
            tid: 1,
            comm: Default::default(),
            func: Probe::FreezeBdev,
            phase: Phase::Entry,
            dev: None,
            args: Default::default(),
            ret: None,
            cpu: 0,
            no_entry: false,
            request: None,
        };
        let mut r = Reorder { pending: BTreeMap::new(), seq: 0 };
        for ts in [30, 10, 20, 10] {
            r.push(ev(ts));
        }
        let out: Vec<u64> = r.ready(20).iter().map(|e| e.ts_ns).collect();
        assert_eq!(out, [10, 10]);
        let out: Vec<u64> = r.ready(u64::MAX).iter().map(|e| e.ts_ns).collect();
        assert_eq!(out, [20, 30]);
    }
}
