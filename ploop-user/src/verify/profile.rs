//! `run --profile`: where the tool's own time goes while it watches, so that its cost to the
//! snapshots it watches can be measured, not guessed (issue 15). Off by default: then each
//! stage costs one relaxed load.

use std::{
    cell::Cell,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

/// The stages of probe -> event -> checker -> report, on the consumer's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading the buffers, decoding, ordering.
    Drain,
    /// Live context at a call's start: the device stack (sysfs, mountinfo), /proc for fds.
    Context,
    /// Writing the trace line.
    Trace,
    /// The checker (the reports' time included: see `Report`).
    Check,
    /// The reports, per judged call.
    Report,
}

const STAGES: [Stage; 5] =
    [Stage::Drain, Stage::Context, Stage::Trace, Stage::Check, Stage::Report];

static ON: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Nanoseconds and entries per stage. The consumer is one thread (a current-thread
    /// runtime): no sharing, no atomics on the hot path.
    static SPENT: [Cell<(u64, u64)>; 5] = const { [const { Cell::new((0, 0)) }; 5] };
    static TICKS: Cell<u64> = const { Cell::new(0) };
}

pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Runs `f`, adding its time to `stage` when profiling.
#[inline]
pub fn time<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let out = f();
    let ns = t.elapsed().as_nanos() as u64;
    SPENT.with(|s| {
        let c = &s[stage as usize];
        let (total, n) = c.get();
        c.set((total + ns, n + 1));
    });
    out
}

pub fn tick() {
    if ON.load(Ordering::Relaxed) {
        TICKS.with(|t| t.set(t.get() + 1));
    }
}

/// The tool's CPU time and context switches so far (getrusage of the whole process).
fn usage() -> (f64, f64, i64, i64) {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage(RUSAGE_SELF)");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    (
        secs(u.user_time()),
        secs(u.system_time()),
        u.voluntary_context_switches(),
        u.involuntary_context_switches(),
    )
}

/// A baseline taken when the probes start, so that start-up (BTF, loading) is left out.
pub struct Baseline {
    usage: (f64, f64, i64, i64),
    at: Instant,
}

pub fn baseline() -> Option<Baseline> {
    ON.load(Ordering::Relaxed).then(|| Baseline { usage: usage(), at: Instant::now() })
}

/// The profile as text lines, per snapshot call and per event.
pub fn report(base: &Baseline, calls: usize, events: u64) -> Vec<String> {
    let (u, s, vol, invol) = usage();
    let (u, s) = (u - base.usage.0, s - base.usage.1);
    let (vol, invol) = (vol - base.usage.2, invol - base.usage.3);
    let per_call = |x: f64| if calls == 0 { 0.0 } else { x / calls as f64 };
    let wall = base.at.elapsed().as_secs_f64();
    let mut out = vec![
        format!(
            "profile: {calls} snapshot calls, {events} events in {wall:.2} s; tool CPU user {:.3} s + \
             sys {:.3} s ({:.1} % of one CPU), {:.3} ms per call",
            u,
            s,
            (u + s) / wall.max(1e-9) * 100.0,
            per_call((u + s) * 1e3)
        ),
        format!(
            "profile: wake-ups (voluntary context switches) {vol}, {:.1} per call; preempted \
             {invol}; ticks {}",
            per_call(vol as f64),
            TICKS.with(|t| t.get())
        ),
    ];
    for stage in STAGES {
        let (ns, n) = SPENT.with(|s| s[stage as usize].get());
        out.push(format!(
            "profile: {:<8} {:>9.3} ms total, {:>8.3} ms per call, {:>7.2} us per entry ({n} entries)",
            format!("{stage:?}").to_lowercase(),
            ns as f64 / 1e6,
            per_call(ns as f64 / 1e6),
            if n == 0 { 0.0 } else { ns as f64 / n as f64 / 1e3 }
        ));
    }
    out
}
