//! `cargo xtask demo`: the main job on a fresh machine, without a vz7 kernel: a guest with
//! the ploop model driver and Debian's real `ploop` client (tests/guest/demo.sh), the
//! client's snapshots on the commit's stack checked live by `ploop-verify run --oracle` (S2
//! the cause, X1 the old snapshot it leaves, which then fails to mount read-only), then the
//! same with the patch's sync fd (the 2020 client's request) passing; reports copied out.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{kernels::Kernel, vm::guest_script};

pub fn run(kernel: &str, out: &Path) -> Result<()> {
    let kernel = Kernel::resolve(kernel)?;
    eprintln!(
        "demo: booting {} with the ploop model driver and Debian's ploop client (QEMU, TCG)",
        kernel.release
    );
    let mut vm = crate::client::with_model(kernel, guest_script("demo.sh", "")?)?;
    vm.timeout = Duration::from_secs(600);
    let o = vm.run()?;
    print!("{}", o.stdout);
    o.expect_success()?;
    for case in ["real-client", "sync-fd"] {
        let from = o.share.join(case);
        if !from.join("summary.md").is_file() {
            bail!("the guest left no report for {case}");
        }
        let to = out.join(case);
        fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        for f in fs::read_dir(&from)? {
            let f = f?;
            fs::copy(f.path(), to.join(f.file_name()))?;
        }
        let rc = fs::read_to_string(o.share.join(format!("{case}.rc"))).unwrap_or_default();
        eprintln!("demo: {case}: ploop-verify run {}; reports in {}", rc.trim(), to.display());
    }
    Ok(())
}
