//! `ploop-verify trace`: attach, run a workload, and write every probe event as JSON lines.

use std::{
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
    kernel::{Generation, KernelInfo},
    verify::events::{Phase, TraceEvent},
    verify::probe::{Capabilities, Method, Plan, Record, Session, Transport},
    verify::tracefile::{self, TraceLine},
    workload::{Stopped, Workload, positive},
};

/// Probe selection shared by every command that attaches.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Attach method; default: fentry where the kernel accepts it, else kprobe.
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// Event transport; default: ring buffer where the kernel has it (5.8+), else perf buffer.
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Write the trace here as JSON lines (header, events in time order, end record).
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Without a COMMAND: stop after this many seconds (default: at Ctrl-C).
    #[arg(long, value_name = "SECONDS", value_parser = positive)]
    pub duration: Option<f64>,
    /// Print each event to stdout as it arrives.
    #[arg(long)]
    pub print: bool,
    /// Workload to run while attached; tracing stops when it exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Picks the plan: exactly what the user named, or what the kernel is found to accept.
pub fn plan(kernel: &KernelInfo, btf: Option<&Path>, args: &ProbeArgs) -> Result<Plan> {
    if let (Some(m), Some(t)) = (args.method, args.transport) {
        return Plan::explicit(kernel, btf, m, t);
    }
    Capabilities::probe(kernel, btf).plan(kernel, btf, args.method, args.transport)
}

/// Collected records and the count of losses.
struct Collected {
    generation: Generation,
    events: Vec<TraceEvent>,
    lost: u64,
}

impl Collected {
    fn take(&mut self, r: Record, print: bool) {
        match r {
            Record::Event(e) => {
                // An id this build does not know: counted as lost.
                let Some(ev) = TraceEvent::from_raw(&e, self.generation) else {
                    self.lost += 1;
                    return;
                };
                if print {
                    println!("{}", serde_json::to_string(&ev).expect("serialisable"));
                }
                self.events.push(ev);
            }
            Record::Lost(n) => self.lost += n,
        }
    }
}

pub async fn run(args: TraceArgs, btf: Option<&Path>) -> Result<ExitCode> {
    let kernel = KernelInfo::detect()?;
    let plan = plan(&kernel, btf, &args.probe)?;
    let mut session = Session::attach(&plan).context("attaching the probes")?;
    let mut rx = session.stream()?;
    say!("ploop-verify: tracing {plan}");

    let mut got = Collected { generation: kernel.generation, events: Vec::new(), lost: 0 };
    let status = drive(&args, &mut rx, &mut got).await?;
    // Let the readers hand over what was emitted before the workload ended.
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        got.take(r, args.print);
    }
    got.lost += session.dropped_in_kernel()?;
    // Perf buffers are per CPU: restore one time order.
    got.events.sort_by_key(|e| e.ts_ns);
    if let Some(out) = &args.out {
        write_trace(out, &kernel, &session, &got, status)?;
    }
    drop(session);
    say!(
        "ploop-verify: {} events, {} lost{}",
        got.events.len(),
        got.lost,
        args.out.as_ref().map(|o| format!(", trace in {}", o.display())).unwrap_or_default()
    );
    let returns =
        |f: Probe| got.events.iter().filter(move |e| e.func == f && e.phase == Phase::Return);
    let failed = returns(Probe::FreezeBdev)
        .filter(|e| e.ret.is_some_and(|r| kernel.generation.freeze_failed(r)))
        .count();
    say!(
        "ploop-verify: freeze_bdev returned {} times ({failed} failed), thaw_bdev {} times",
        returns(Probe::FreezeBdev).count(),
        returns(Probe::ThawBdev).count()
    );
    if got.lost > 0 {
        say!("ploop-verify: warning: {} events were lost; the trace is incomplete", got.lost);
    }
    Ok(match status {
        Some(code) if code != 0 => {
            say!("ploop-verify: the workload exited with status {code}");
            ExitCode::from(1)
        }
        _ if got.events.is_empty() => {
            say!("ploop-verify: no event was observed");
            ExitCode::from(2)
        }
        _ => ExitCode::SUCCESS,
    })
}

/// Runs the workload (or waits), collecting records meanwhile. Returns the workload's status.
async fn drive(
    args: &TraceArgs,
    rx: &mut UnboundedReceiver<Record>,
    got: &mut Collected,
) -> Result<Option<i32>> {
    let mut workload = Workload::start(&args.command, args.duration)?;
    let every = console::status_every();
    let mut last = Instant::now();
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => got.take(r, args.print),
                None => bail!("the event readers stopped"),
            },
            stopped = workload.stopped() => {
                let stopped = stopped?;
                if let Stopped::Interrupted = stopped {
                    say!("ploop-verify: interrupted");
                    workload.wind_down().await;
                }
                return Ok(stopped.status());
            }
        }
        // --print writes events to stdout, often the same terminal as the status line.
        if !args.print && last.elapsed() >= every {
            console::status(&format!("{} events, {} lost", got.events.len(), got.lost));
            last = Instant::now();
        }
    }
}

/// Writes the whole trace at once (events sorted by time); never half-written.
fn write_trace(
    out: &Path,
    kernel: &KernelInfo,
    session: &Session,
    got: &Collected,
    status: Option<i32>,
) -> Result<()> {
    let mut w = tracefile::Writer::create(out)?;
    w.line(&TraceLine::Header(Box::new(tracefile::header(kernel, session)?)))?;
    for e in &got.events {
        w.line(&TraceLine::Event(e.clone()))?;
    }
    w.line(&TraceLine::End(tracefile::End {
        events: got.events.len() as u64,
        lost: got.lost,
        command_status: status,
    }))?;
    w.finish()
}
