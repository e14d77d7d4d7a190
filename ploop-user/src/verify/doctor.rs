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
    let plan = caps.plan(&kernel, args.probe.method, args.probe.transport);
    if args.json {
        let symbols: serde_json::Map<_, _> = functions()
            .map(|p| (p.name().to_string(), serde_json::to_value(kernel.symbol(p)).unwrap()))
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
            ("offsets", &caps.offsets),
            ("kprobe", &caps.kprobe),
            ("fentry", &caps.fentry),
            ("ring buffer", &caps.ringbuf),
            ("perf buffer", &caps.perf),
        ] {
            println!("{}", line(name, c));
        }
        let missing = "offsets missing from their source: S1 falls back to /proc/PID/fd (marked)";
        let fd_walk = match (&caps.fd_walk, &caps.offsets_source) {
            (Some(_), _) => Check::Supported("task->files->fdt->fd[]->f_inode->i_sb offsets found: S1 resolves the sync fd in the kernel".into()),
            (None, Some(_)) => Check::Unsupported(missing.into()),
            // No source was read: whether it would have the offsets is not known.
            (None, None) => Check::Unknown(missing.into()),
        };
        println!("{}", line("fd walk", &fd_walk));
        println!("symbols:");
        for p in functions() {
            match kernel.symbol(p) {
                Some(r) => println!(
                    "  {:<21} yes   {} ({})",
                    p.name(),
                    r.name,
                    r.module.as_deref().unwrap_or("vmlinux")
                ),
                None => println!("  {:<21} no    {}", p.name(), missing_means(p)),
            }
        }
        match &plan {
            Ok(p) => println!("plan: {p}"),
            Err(e) => println!("plan: none: {e:#}"),
        }
    }
    Ok(if plan.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
