//! `ploop-verify doctor`: what this kernel supports and the probe plan that would be used.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use clap::Args;
use serde_json::json;

use ploop_common::{Attach, Probe};

use crate::{
    kernel::KernelInfo,
    verify::probe::ProbeArgs,
    verify::probe::{Capabilities, Check, missing_means},
};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// A capability, whether this kernel has it in a word (no: it lacks it; refused: it would not
/// let us; unknown: not tried), and what was seen or why not.
fn line(name: &str, c: &Check) -> String {
    let word = match c {
        Check::Supported(_) => "yes",
        Check::Unsupported(_) => "no",
        Check::Refused(_) => "refused",
        Check::Unknown(_) => "unknown",
    };
    format!("  {name:<12} {word:<8}{}", c.text())
}

/// Probes on kernel functions, whose symbols doctor lists.
fn functions() -> impl Iterator<Item = Probe> {
    Probe::ALL.into_iter().filter(|p| matches!(p.attach(), Attach::Function { .. }))
}

pub fn run(args: DoctorArgs, btf: Option<&Path>) -> Result<ExitCode> {
    let kernel = KernelInfo::detect()?;
    let caps = Capabilities::probe(&kernel, btf);
    let plan = caps.plan(&kernel, btf, args.probe.method, args.probe.transport);
    if args.json {
        // One function: its symbol or null, as always; every format's operation: a list.
        let symbols: serde_json::Map<_, _> = functions()
            .map(|p| {
                let found = if crate::kernel::every(p) {
                    serde_json::to_value(kernel.symbols_of(p))
                } else {
                    serde_json::to_value(kernel.symbol(p))
                };
                (p.name().to_string(), found.unwrap())
            })
            .collect();
        let out = json!({
            "kernel": { "release": kernel.release, "generation": kernel.generation },
            "capabilities": caps,
            "symbols": symbols,
            "plan": plan.as_ref().ok(),
            "plan_error": plan.as_ref().err().map(|e| format!("{e:#}")),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("kernel {} ({})", kernel.release, kernel.generation);
        println!("capabilities:");
        for (name, c) in [
            ("BTF", &caps.btf),
            ("kprobe", &caps.kprobe),
            ("fentry", &caps.fentry),
            ("ring buffer", &caps.ringbuf),
            ("perf buffer", &caps.perf),
        ] {
            println!("{}", line(name, c));
        }
        let missing = "offsets missing from the BTF: S1 falls back to /proc/PID/fd (marked)";
        let fd_walk = match (&caps.fd_walk, &caps.btf) {
            (Some(_), _) => Check::Supported("task->files->fdt->fd[]->f_inode->i_sb offsets found: S1 resolves the sync fd in the kernel".into()),
            (None, Check::Supported(_) | Check::Unsupported(_)) => Check::Unsupported(missing.into()),
            // The BTF was not read: whether it has the offsets is not known.
            (None, _) => Check::Unknown(missing.into()),
        };
        println!("{}", line("fd walk", &fd_walk));
        println!("symbols:");
        for p in functions() {
            let found: Vec<String> = kernel
                .symbols_of(p)
                .iter()
                .map(|r| format!("{} ({})", r.name, r.module.as_deref().unwrap_or("vmlinux")))
                .collect();
            if found.is_empty() {
                println!("  {:<21} no    {}", p.name(), missing_means(p));
            } else {
                println!("  {:<21} yes   {}", p.name(), found.join(", "));
            }
        }
        match &plan {
            Ok(p) => println!("plan: {p}"),
            Err(e) => println!("plan: none: {e:#}"),
        }
    }
    Ok(if plan.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
