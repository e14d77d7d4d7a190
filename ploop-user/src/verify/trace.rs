//! `ploop-verify trace`: attach, run a workload, and write every probe event as JSON lines.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::Args;
use ploop_common::Probe;

use crate::{
    console::say,
    kernel::{Generation, KernelInfo},
    verify::drive::{self, Drive, Driven, PriorityArgs, Sink},
    verify::events::{Phase, TraceEvent},
    verify::probe::{self, ProbeArgs, Session},
    verify::tech_preview,
    verify::tracefile::{self, TraceLine},
    workload::positive,
};

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
    #[command(flatten)]
    pub priority: PriorityArgs,
    /// Workload to run while attached; tracing stops when it exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Events on their way to the trace file (written as they come, renamed into place at the
/// end), to stdout with `--print`, and counted for the closing lines.
struct Traced {
    writer: Option<tracefile::Writer>,
    print: bool,
    generation: Generation,
    events: u64,
    freezes: u64,
    failed_freezes: u64,
    thaws: u64,
}

impl Sink for Traced {
    fn event(&mut self, e: TraceEvent) -> Result<()> {
        self.events += 1;
        if e.phase == Phase::Return {
            match e.func {
                Probe::FreezeBdev => {
                    self.freezes += 1;
                    if e.ret.is_some_and(|r| self.generation.freeze_failed(r)) {
                        self.failed_freezes += 1;
                    }
                }
                Probe::ThawBdev => self.thaws += 1,
                _ => {}
            }
        }
        if self.print {
            println!("{}", serde_json::to_string(&e)?);
        }
        match &mut self.writer {
            Some(w) => w.line(&TraceLine::Event(e)),
            None => Ok(()),
        }
    }

    fn progress(&self, lost: u64) -> String {
        format!("{} events, {lost} lost", self.events)
    }
}

pub async fn run(args: TraceArgs, btf: Option<&Path>) -> Result<ExitCode> {
    let kernel = KernelInfo::detect()?;
    if let Some(refused) = tech_preview::gate(&kernel, "trace") {
        return Ok(refused);
    }
    let plan = probe::plan(&kernel, btf, &args.probe)?;
    let mut session = Session::attach(&plan).context("attaching the probes")?;
    let mut source = session.stream()?;
    say!("ploop-verify: tracing {plan}");
    let writer = match &args.out {
        Some(out) => {
            let mut w = tracefile::Writer::create(out)?;
            w.line(&TraceLine::Header(Box::new(tracefile::header(&kernel, &session)?)))?;
            Some(w)
        }
        None => None,
    };
    let mut traced = Traced {
        writer,
        print: args.print,
        generation: kernel.generation,
        events: 0,
        freezes: 0,
        failed_freezes: 0,
        thaws: 0,
    };
    let drive = Drive {
        command: &args.command,
        duration: args.duration,
        transport: plan.transport,
        generation: kernel.generation,
        // --print writes events to stdout, often the same terminal as the status line.
        quiet: args.print,
        nice: args.priority.nice,
    };
    let Driven { status, lost } = drive::drive(drive, &mut source, &mut traced).await?;
    let lost = lost + session.dropped_in_kernel()?;
    drop(session);
    if let Some(mut w) = traced.writer.take() {
        let end = tracefile::End {
            events: traced.events,
            lost,
            command_status: status,
            end_ns: Some(drive::mono_ns()),
        };
        w.line(&TraceLine::End(end))?;
        w.finish()?;
    }
    say!(
        "ploop-verify: {} events, {lost} lost{}",
        traced.events,
        args.out.as_ref().map(|o| format!(", trace in {}", o.display())).unwrap_or_default()
    );
    say!(
        "ploop-verify: freeze_bdev returned {} times ({} failed), thaw_bdev {} times",
        traced.freezes,
        traced.failed_freezes,
        traced.thaws
    );
    if lost > 0 {
        say!("ploop-verify: warning: {lost} events were lost; the trace is incomplete");
    }
    Ok(match status {
        Some(code) if code != 0 => {
            say!("ploop-verify: the workload exited with status {code}");
            ExitCode::from(1)
        }
        _ if traced.events == 0 => {
            say!("ploop-verify: no event was observed");
            ExitCode::from(2)
        }
        _ => ExitCode::SUCCESS,
    })
}
