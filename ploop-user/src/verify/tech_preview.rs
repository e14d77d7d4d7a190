//! RHEL 7's BPF is a tech preview: the first `bpf()` call taints the kernel for good (taint
//! bit 29; [`kernel::bpf_taints`] tells which kernels). A vz7 operator hears that before the
//! tool makes the call, and `run`/`trace` make it only with the operator's consent
//! ([`FLAG`]; CI passes it, and it is harmless on every other kernel). `doctor`, which one
//! runs first to look, does not make the call without it either.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::kernel::{self, KernelInfo, TAINT_TECH_PREVIEW};

/// The flag that gives consent.
pub const FLAG: &str = "--allow-tech-preview-taint";

static ALLOWED: AtomicBool = AtomicBool::new(false);

/// The user passed [`FLAG`].
pub fn allow() {
    ALLOWED.store(true, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consent {
    /// Not a RHEL 7-family kernel: bpf() taints nothing.
    NotNeeded,
    Given,
    Refused,
}

/// The kernel's taint mask as it stands: already tainted by an earlier bpf() call?
pub fn already_tainted() -> Option<bool> {
    kernel::tech_preview_tainted(&std::fs::read_to_string("/proc/sys/kernel/tainted").ok()?)
}

/// The notice, for a kernel whose first bpf() call taints it.
pub fn notice(release: &str, tainted: Option<bool>) -> String {
    let now = match tainted {
        Some(true) => "it is already set (an earlier bpf() call): nothing changes".to_string(),
        Some(false) => "it is not set yet".to_string(),
        None => "/proc/sys/kernel/tainted could not be read".to_string(),
    };
    format!(
        "{release} is a RHEL 7-family kernel: its first bpf() call taints it (\"TECH PREVIEW: \
         eBPF syscall may not be fully supported\", taint bit {TAINT_TECH_PREVIEW}, until \
         reboot); {now}"
    )
}

/// Says, before the first bpf() call, what it will do to this kernel (on stderr), and
/// whether the user agreed.
pub fn before_first_bpf_call(kernel: &KernelInfo) -> Consent {
    consent(kernel, ALLOWED.load(Ordering::Relaxed), already_tainted())
}

fn consent(kernel: &KernelInfo, allowed: bool, tainted: Option<bool>) -> Consent {
    if !kernel::bpf_taints(&kernel.release) {
        return Consent::NotNeeded;
    }
    eprintln!("ploop-verify: {}", notice(&kernel.release, tainted));
    if allowed {
        eprintln!("ploop-verify: {FLAG} given: going on");
        Consent::Given
    } else {
        Consent::Refused
    }
}

/// For `run` and `trace`: the exit status to stop with when the user did not agree.
pub fn gate(kernel: &KernelInfo, command: &str) -> Option<ExitCode> {
    refusal(before_first_bpf_call(kernel), command)
}

fn refusal(consent: Consent, command: &str) -> Option<ExitCode> {
    (consent == Consent::Refused).then(|| {
        eprintln!(
            "ploop-verify: {command}: refusing to taint the kernel without consent: pass {FLAG} \
             to agree (nothing was loaded)"
        );
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(release: &str) -> KernelInfo {
        KernelInfo::from_parts(release.into(), "1 T freeze_bdev\n2 T thaw_bdev\n")
    }

    #[test]
    fn only_rhel7_family_kernels_ask_and_only_the_flag_agrees() {
        let vz7 = kernel("3.10.0-1127.18.2.vz7.163.22");
        assert_eq!(consent(&vz7, false, Some(false)), Consent::Refused);
        // Already tainted or not, the answer is the user's: a run behaves the same after a
        // reboot as before it.
        assert_eq!(consent(&vz7, false, Some(true)), Consent::Refused);
        assert_eq!(consent(&vz7, true, Some(false)), Consent::Given);
        let debian = kernel("6.1.0-57-amd64");
        assert_eq!(consent(&debian, false, None), Consent::NotNeeded);
        assert_eq!(consent(&debian, true, None), Consent::NotNeeded, "harmless elsewhere");
        assert!(refusal(Consent::Refused, "run").is_some());
        assert!(refusal(Consent::Given, "run").is_none());
        assert!(refusal(Consent::NotNeeded, "trace").is_none());
    }

    #[test]
    fn the_notice_names_the_taint_and_its_state() {
        let n = notice("3.10.0-1127.el7.x86_64", Some(false));
        assert!(n.contains("TECH PREVIEW") && n.contains("taint bit 29"), "{n}");
        assert!(n.contains("not set yet"), "{n}");
        assert!(notice("r", Some(true)).contains("already set"));
    }
}
