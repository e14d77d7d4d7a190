//! The one loop both `run` and `trace` use: start the workload (or wait), take records from
//! the probes, put events back in time order, hand them on, show progress, and stop when
//! the workload ends or the user interrupts.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    console::{self, say},
    kernel::Generation,
    verify::{
        events::TraceEvent,
        probe::{EventSource, Record, Transport},
        profile::{self, Stage},
    },
    workload::{Stopped, Workload},
};

/// Where events go, in time order.
pub trait Sink {
    fn event(&mut self, e: TraceEvent) -> Result<()>;
    /// The progress line (after "ploop-verify: "), given the events lost so far.
    fn progress(&self, lost: u64) -> String;
    /// Time passes (monotonic ns, up to which every event has been handed over): for what
    /// must be noticed while nothing happens, such as a hung call.
    fn tick(&mut self, _now: u64) -> Result<()> {
        Ok(())
    }
}

/// What to run and how the events arrive.
pub struct Drive<'a> {
    pub command: &'a [String],
    /// Without a command: stop after this long (default: at Ctrl-C).
    pub duration: Option<f64>,
    pub transport: Transport,
    pub generation: Generation,
    /// No progress line (also when events go to stdout).
    pub quiet: bool,
    /// The drain loop's nice value, set after the workload started (so it keeps its own).
    pub nice: i32,
}

/// The workload's exit status and the events lost on the way (transport losses and
/// events this build cannot decode).
pub struct Driven {
    pub status: Option<i32>,
    pub lost: u64,
}

/// Monotonic clock, the base of `bpf_ktime_get_ns`.
pub fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Perf buffers are per CPU and a task may migrate between its freeze and its thaw: events
/// wait here until no earlier one can still arrive, then leave in time order.
struct Reorder {
    pending: BTreeMap<(u64, u64), TraceEvent>,
    seq: u64,
}

/// The perf buffer's reorder window (ns): the most a trace's event time may go back.
pub const PERF_REORDER_NS: u64 = 30_000_000;

/// How long events wait for earlier ones: perf buffers are per CPU; the ring buffer is one
/// stream in which each task's events are already in order (the checker's state is per task).
fn reorder_window(t: Transport) -> u64 {
    match t {
        Transport::Perf => PERF_REORDER_NS,
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

/// How the tool shares the CPUs with its workload (`run` and `trace`).
#[derive(clap::Args, Clone, Debug)]
pub struct PriorityArgs {
    /// The tool's nice value (all its threads, the oracle's too) once the workload has
    /// started (the workload keeps its own). At 19 the snapshots have the CPUs first and the
    /// tool drains what they leave: in a 2-vCPU guest, `run`'s p50 snapshot latency was
    /// 1.58x that without probes at nice 0, 0.96x at 19 (`cargo xtask bench`). Events wait
    /// in the buffers meanwhile; any loss is counted and reported. 0 when the tool must keep
    /// up with a CPU-bound workload.
    #[arg(long, value_name = "N", default_value_t = 19, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,
}

/// Every thread of the tool (the drain loop's, the oracle's) at `nice`; the workload, a
/// process of its own already started, keeps its priority. On Linux the nice value is a
/// thread's, and PRIO_PROCESS with a thread id sets that thread's.
fn renice_own_threads(nice: i32) {
    let tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for tid in tids {
        // SAFETY: setpriority takes plain integers and touches no memory of ours.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            let e = std::io::Error::last_os_error();
            say!("ploop-verify: --nice {nice}: {e}; going on at the current priority");
            return;
        }
    }
}

/// How often the buffers are drained, hung calls looked for and events released: the bound
/// on how late a violation is printed (plus the perf reorder window), and the tool's only
/// wake-up while snapshots run.
const TICK: Duration = Duration::from_millis(10);

pub async fn drive(d: Drive<'_>, source: &mut EventSource, sink: &mut impl Sink) -> Result<Driven> {
    let window = reorder_window(d.transport);
    let mut workload = Workload::start(d.command, d.duration)?;
    if d.nice != 0 {
        renice_own_threads(d.nice);
    }
    let every = console::status_every();
    let mut reorder = Reorder { pending: BTreeMap::new(), seq: 0 };
    let mut tick = tokio::time::interval(TICK);
    // A late tick (the tool was descheduled) drains everything at once: no burst of ticks.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_progress = Instant::now();
    let mut lost = 0;
    let take = |r: Record, reorder: &mut Reorder, lost: &mut u64| match r {
        // An id this build does not know cannot be judged: counted as lost.
        Record::Event(e) => match TraceEvent::from_raw(&e, d.generation) {
            Some(e) => reorder.push(e),
            None => *lost += 1,
        },
        Record::Lost(n) => *lost += n,
    };
    let release = |events: Vec<TraceEvent>, sink: &mut _| -> Result<()> {
        events.into_iter().try_for_each(|e| Sink::event(sink, e))
    };
    let status = loop {
        tokio::select! {
            _ = tick.tick() => {
                // Read the clock first: every event stamped before it is in the buffers now.
                let now = mono_ns();
                profile::tick();
                profile::time(Stage::Drain, || source.drain(|r| take(r, &mut reorder, &mut lost)));
                let settled = now.saturating_sub(window);
                release(reorder.ready(settled), sink)?;
                sink.tick(settled)?;
                if !d.quiet && last_progress.elapsed() >= every {
                    console::status(&sink.progress(lost));
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
    // Events emitted before the workload ended are in the buffers by now: the workload's
    // processes have exited, and a probe writes its event before its function returns.
    source.drain(|r| take(r, &mut reorder, &mut lost));
    release(reorder.ready(u64::MAX), sink)?;
    Ok(Driven { status, lost })
}

#[cfg(test)]
mod tests {
    use ploop_common::Probe;

    use super::*;
    use crate::verify::events::Phase;

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
