//! Helpers for the live tests: boot a guest with ploop-verify, read the traces it leaves.

use std::path::Path;

use anyhow::{Result, anyhow};
use ploop_common::Probe;
pub use ploop_user::kernel::KDev;
use ploop_user::verify::{
    events::{Phase, TraceEvent},
    stack::Stack,
    tracefile::{End, Header, Reader, TraceLine},
};
use xtask::{
    kernels::Kernel,
    vm::{Output, Vm, guest_script},
};

pub use xtask::vm::{CRYPT_MODULES, STORAGE_MODULES};

/// Boots Debian kernel `series` (`6.1`, `6.12`) and runs the guest script `tests/guest/NAME`
/// (after `tests/guest/lib.sh` and `env`). The script's own files are in `out.share`.
pub fn run_guest_script(series: &str, name: &str, env: &str) -> Result<Output> {
    let vm =
        Vm::with_ploop_verify(Kernel::resolve(series)?, STORAGE_MODULES, guest_script(name, env)?)?;
    run_logged(series, vm)
}

/// Like [`run_guest_script`], with the ploop model driver built for this kernel and loaded,
/// and dm-crypt available.
pub fn run_model_script(series: &str, name: &str, env: &str) -> Result<Output> {
    let mut vm = Vm::with_model(Kernel::resolve(series)?, guest_script(name, env)?)?;
    vm.timeout = std::time::Duration::from_secs(900);
    run_logged(series, vm)
}

fn run_logged(series: &str, vm: Vm) -> Result<Output> {
    let out = vm.run()?;
    eprintln!(
        "guest {series}: {:.1}s, initramfs {} KiB, output:\n{}",
        out.elapsed.as_secs_f64(),
        out.initramfs_bytes / 1024,
        out.stdout
    );
    Ok(out)
}

/// A trace file written by `ploop-verify trace --out`, read whole by ploop-user's reader.
#[derive(Debug)]
pub struct Trace {
    pub header: Header,
    pub stacks: Vec<Stack>,
    pub events: Vec<TraceEvent>,
    pub end: End,
}

impl Trace {
    pub fn read(path: &Path) -> Result<Self> {
        let mut r = Reader::open(path)?;
        let (mut stacks, mut events) = (Vec::new(), Vec::new());
        while let Some(rec) = r.next_record()? {
            match rec {
                TraceLine::Event(e) => events.push(e.clone()),
                TraceLine::Stack(s) => stacks.push(s.clone()),
                // The reader keeps these: one header, one end record.
                TraceLine::Header(_) | TraceLine::End(_) => {}
            }
        }
        let end = r.end().cloned().ok_or_else(|| anyhow!("{}: no end record", path.display()))?;
        Ok(Trace { header: r.header, stacks, events, end })
    }

    /// Events of `probe` at `phase` on device `dev`.
    pub fn on(&self, probe: Probe, phase: Phase, dev: KDev) -> Vec<&TraceEvent> {
        self.events
            .iter()
            .filter(|e| e.func == probe && e.phase == phase && e.dev == Some(dev))
            .collect()
    }
}

/// The device the guest script wrote with `stat -c %t:%T` (hex `major:minor`).
pub fn dev_from_hex(text: &str) -> Result<KDev> {
    let (ma, mi) = text.trim().split_once(':').ok_or_else(|| anyhow!("bad dev {text:?}"))?;
    let dev = format!("{}:{}", u32::from_str_radix(ma, 16)?, u32::from_str_radix(mi, 16)?);
    dev.parse().map_err(anyhow::Error::msg)
}
