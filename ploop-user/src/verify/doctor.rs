//! `ploop-verify doctor`: what this kernel supports and the probe plan that would be used.

use std::{path::Path, process::ExitCode};

use anyhow::{Result, anyhow};
use clap::Args;
use serde_json::json;

use ploop_common::{Attach, Probe};

use crate::{
    kernel::{self, KernelInfo, verifier},
    verify::probe::{self, Capabilities, Check, ProbeArgs, missing_means},
    verify::tech_preview::{self, Consent},
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

/// Probes on static tracepoints (the ioctl's entry and exit, which anchor every call).
fn tracepoints() -> impl Iterator<Item = (Probe, &'static str, &'static str)> {
    Probe::ALL.into_iter().filter_map(|p| match p.attach() {
        Attach::Tracepoint { category, name } => Some((p, category, name)),
        Attach::Function { .. } => None,
    })
}

/// Whether tracefs lists `category:name`, by its id file (what aya reads to attach), or why
/// that is not known.
fn tracepoint_id(tracefs: Option<&Path>, category: &str, name: &str) -> Result<u64, String> {
    let Some(dir) = tracefs else {
        return Err("no tracefs (mount it, or debugfs on /sys/kernel/debug)".into());
    };
    let id = dir.join("events").join(category).join(name).join("id");
    match std::fs::read_to_string(&id) {
        Ok(t) => t.trim().parse().map_err(|_| format!("{}: not a number", id.display())),
        Err(e) => Err(format!("{}: {e}", id.display())),
    }
}

/// The legacy object against this kernel's verifier, where the kernel-generation seam names
/// one: the verdict and kern_version, both read without a bpf() call.
struct ProfileResult {
    verdict: verifier::Verdict,
    kern_version: Result<String, String>,
}

impl ProfileResult {
    fn of(kernel: &KernelInfo) -> Result<Option<Self>> {
        let Some(profile) = kernel.generation.verifier_profile() else { return Ok(None) };
        let image = verifier::read_object(probe::OBJ_PERF)?;
        let running = aya::util::KernelVersion::current().ok().map(|v| v.code());
        Ok(Some(ProfileResult {
            verdict: verifier::check(profile, &image),
            kern_version: verifier::kern_version(profile, &image, running),
        }))
    }

    fn passed(&self) -> bool {
        self.verdict.passed() && self.kern_version.is_ok()
    }

    fn json(&self) -> serde_json::Value {
        let programs: Vec<_> = self
            .verdict
            .programs
            .iter()
            .map(|p| json!({"name": p.name, "insns": p.insns, "stack": p.stack}))
            .collect();
        json!({
            "profile": self.verdict.profile,
            "passed": self.passed(),
            "failures": self.verdict.failures(),
            "kern_version": match &self.kern_version { Ok(t) | Err(t) => t },
            "programs": programs,
        })
    }
}

pub fn run(args: DoctorArgs, btf: Option<&Path>) -> Result<ExitCode> {
    let kernel = KernelInfo::detect()?;
    let profile = ProfileResult::of(&kernel)?;
    let tech_preview = kernel::bpf_taints(&kernel.release);
    let tainted = tech_preview.then(tech_preview::already_tainted).flatten();
    // Every capability is found by trying it: a bpf() call.
    let caps = match tech_preview::before_first_bpf_call(&kernel) {
        Consent::Refused => None,
        Consent::Given | Consent::NotNeeded => Some(Capabilities::probe(&kernel, btf)),
    };
    let plan = match &caps {
        Some(caps) => caps.plan(&kernel, args.probe.method, args.probe.transport),
        None => Err(anyhow!(
            "not tried: bpf() would taint this kernel; pass {} to agree",
            tech_preview::FLAG
        )),
    };
    let ok = plan.is_ok() && profile.as_ref().is_none_or(ProfileResult::passed);
    // Mounting debugfs where that is what brings tracefs is no bpf() call: it may go first.
    let tracefs = crate::kernel::tracefs::ensure();
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
        let tracepoints: serde_json::Map<_, _> = tracepoints()
            .map(|(p, c, n)| {
                let v = match tracepoint_id(tracefs, c, n) {
                    Ok(id) => json!({"tracepoint": format!("{c}:{n}"), "id": id}),
                    Err(e) => json!({"tracepoint": format!("{c}:{n}"), "error": e}),
                };
                (p.name().to_string(), v)
            })
            .collect();
        let out = json!({
            "kernel": { "release": kernel.release, "generation": kernel.generation },
            "tracepoints": tracepoints,
            "tech_preview": tech_preview.then(|| json!({
                "bpf_taints": true,
                "taint_bit": kernel::TAINT_TECH_PREVIEW,
                "tainted": tainted,
                "allowed": caps.is_some(),
            })),
            "verifier_profile": profile.as_ref().map(ProfileResult::json),
            "capabilities": caps,
            "symbols": symbols,
            "plan": plan.as_ref().ok(),
            "plan_error": plan.as_ref().err().map(|e| format!("{e:#}")),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("kernel {} ({})", kernel.release, kernel.generation);
        if tech_preview {
            println!("tech preview: {}", tech_preview::notice(&kernel.release, tainted));
        }
        if let Some(p) = &profile {
            println!("verifier profile: {}", p.verdict);
            match &p.kern_version {
                Ok(t) => println!("  kern_version yes     {t}"),
                Err(t) => println!("  kern_version no      {t}"),
            }
        }
        match &caps {
            Some(caps) => print_capabilities(caps),
            None => println!(
                "capabilities: not tried (each is a bpf() call); pass {} to try them",
                tech_preview::FLAG
            ),
        }
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
        println!("tracepoints:");
        for (p, c, n) in tracepoints() {
            match tracepoint_id(tracefs, c, n) {
                Ok(id) => println!("  {:<29} yes   id {id}", format!("{c}:{n}")),
                Err(e) => println!("  {:<29} no    {e}: {}", format!("{c}:{n}"), missing_means(p)),
            }
        }
        match &plan {
            Ok(p) => println!("plan: {p}"),
            Err(e) => println!("plan: none: {e:#}"),
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn print_capabilities(caps: &Capabilities) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a 3.10 kernel doctor holds the legacy object to the vz7 profile, without bpf().
    #[test]
    fn a_vz7_kernel_gets_the_vz7_profile_and_others_none() {
        let vz7 = KernelInfo::from_parts("3.10.0-1127.18.2.vz7.163.22".into(), "");
        let p = ProfileResult::of(&vz7).unwrap().expect("a profile for 3.10");
        assert!(p.verdict.passed(), "{}", p.verdict);
        let json = p.json();
        assert_eq!(json["profile"], verifier::VZ7.name);
        assert!(
            json["programs"].as_array().unwrap().iter().any(|p| p["name"] == "sys_enter_ioctl")
        );
        let debian = KernelInfo::from_parts("6.1.0-57-amd64".into(), "");
        assert!(ProfileResult::of(&debian).unwrap().is_none());
    }

    /// Both ioctl tracepoints are listed, by the id tracefs gives them, or with the reason.
    #[test]
    fn the_ioctl_tracepoints_are_read_from_tracefs() {
        let names: Vec<_> = tracepoints().map(|(_, c, n)| format!("{c}:{n}")).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"syscalls:sys_enter_ioctl".to_string()), "{names:?}");
        assert!(names.contains(&"syscalls:sys_exit_ioctl".to_string()), "{names:?}");
        let dir = tempfile::tempdir().unwrap();
        let ev = dir.path().join("events/syscalls/sys_enter_ioctl");
        std::fs::create_dir_all(&ev).unwrap();
        std::fs::write(ev.join("id"), "898\n").unwrap();
        assert_eq!(tracepoint_id(Some(dir.path()), "syscalls", "sys_enter_ioctl"), Ok(898));
        let missing = tracepoint_id(Some(dir.path()), "syscalls", "sys_exit_ioctl").unwrap_err();
        assert!(missing.contains("sys_exit_ioctl/id"), "{missing}");
        assert!(
            tracepoint_id(None, "syscalls", "sys_enter_ioctl").unwrap_err().contains("tracefs")
        );
    }
}
