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
    // What each half must show, or the demo has not shown it: the violated ids and the
    // read-only mount of the last old snapshot.
    let mut wrong = Vec::new();
    for (case, ids, ro) in
        [("real-client", &["S2", "X1"][..], "recovery-required"), ("sync-fd", &[][..], "mounted")]
    {
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
        let summary: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(from.join("summary.json"))?)
                .with_context(|| format!("{case}/summary.json"))?;
        let mut got: Vec<&str> = summary["violation_list"]
            .as_array()
            .map(|l| l.iter().filter_map(|v| v["id"].as_str()).collect())
            .unwrap_or_default();
        got.sort_unstable();
        got.dedup();
        let mount = fs::read_to_string(o.share.join(format!("{case}.ro"))).unwrap_or_default();
        if got != ids || mount.trim() != ro {
            wrong.push(format!(
                "{case}: violated {got:?} and the old snapshot's read-only mount {}, \
                 where the demo shows {ids:?} and {ro}",
                mount.trim()
            ));
        }
    }
    if !wrong.is_empty() {
        bail!("the demo did not show what it is for:\n  {}", wrong.join("\n  "));
    }
    eprintln!(
        "demo: shown: the client's one-chunk snapshots leave ext4 unfrozen (S2) and old \
         snapshots that need a journal replay (X1, and the read-only mount refused); the sync \
         fd's snapshots pass both, and the old snapshot mounts"
    );
    Ok(())
}
