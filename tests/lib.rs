//! Helpers for the live tests: boot a guest with ploop-verify, read the traces it leaves.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, anyhow};
use serde_json::Value;
use xtask::{
    kernels::Kernel,
    vm::{Output, Vm},
};

/// Modules for ext4 on loop and on device-mapper. `crc32c_generic` is not a modinfo
/// dependency of ext4 (it is requested through the crypto API at mount time).
pub const STORAGE_MODULES: &[&str] = &["loop", "dm-mod", "ext4", "crc32c_generic"];

/// Boots Debian kernel `series` (`6.1`, `6.12`) and runs the guest script `tests/guest/NAME`
/// with `env` prepended. Returns the output; the script's own files are in `out.share`.
pub fn run_guest_script(series: &str, name: &str, env: &str) -> Result<Output> {
    let kernel = Kernel::resolve(series)?;
    let script = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("guest").join(name))
        .with_context(|| format!("reading guest script {name}"))?;
    let vm = Vm::with_ploop_verify(kernel, STORAGE_MODULES, format!("{env}\n{script}"))?;
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
