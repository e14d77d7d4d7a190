//! Helpers for the live tests: boot a guest with ploop-verify, read the traces it leaves.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, anyhow};
use serde_json::Value;
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

/// A trace file written by `ploop-verify trace --out`.
#[derive(Debug)]
pub struct Trace {
    pub header: Value,
    pub events: Vec<Value>,
    pub end: Value,
}

impl Trace {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut header = None;
        let mut end = None;
        let mut events = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
            match v["record"].as_str() {
                Some("header") => header = Some(v),
                Some("event") => events.push(v),
                Some("end") => end = Some(v),
                other => {
                    return Err(anyhow!("{}:{}: unknown record {other:?}", path.display(), i + 1));
                }
            }
        }
        Ok(Trace {
            header: header.ok_or_else(|| anyhow!("{}: no header", path.display()))?,
            events,
            end: end.ok_or_else(|| anyhow!("{}: no end record (truncated?)", path.display()))?,
        })
    }

    /// Events of `func` at `phase` on device `dev` (`major:minor`).
    pub fn on(&self, func: &str, phase: &str, dev: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["func"] == func && e["phase"] == phase && e["dev"] == dev)
            .collect()
    }
}

/// `major:minor` as the guest script wrote it with `stat -c %t:%T` (hex).
pub fn dev_from_hex(text: &str) -> Result<String> {
    let (ma, mi) = text.trim().split_once(':').ok_or_else(|| anyhow!("bad dev {text:?}"))?;
    Ok(format!("{}:{}", u32::from_str_radix(ma, 16)?, u32::from_str_radix(mi, 16)?))
}
