//! Step 7: the built kernel (or the `--boot-kernel` the modules are for) under QEMU with
//! ploop-verify.

use std::{fs, time::Duration};

use anyhow::anyhow;

use super::{Args, Built, Error, bad, failed, say};
use crate::{kernels::Kernel, vm::Vm};

pub(super) fn boot(args: &Args, built: &mut Built) -> Result<(), Error> {
    let (kernel, extra) = match (&built.image, &built.modules_dir) {
        (Some(image), Some(mods)) => (Kernel::custom(image, mods).map_err(failed)?, Vec::new()),
        _ => {
            let spec = args.boot_kernel.as_deref().ok_or_else(|| {
                bad(anyhow!(
                    "--boot with --modules-only needs --boot-kernel: the kernel the modules \
                     were built for (e.g. `6.1`, or a directory with vmlinuz and modules/)"
                ))
            })?;
            let k = Kernel::resolve(spec).map_err(bad)?;
            if Some(&k.release) != built.release.as_ref() {
                say(format!(
                    "WARNING: booting {} with modules built for {}",
                    k.release,
                    built.release.as_deref().unwrap_or("?")
                ));
            }
            (k, built.modules.clone())
        }
    };
    let btf = built.btf.clone();
    let manifest = built.manifest.clone();
    let command = args.boot_command.clone().unwrap_or_else(|| {
        if btf.is_some() {
            "ploop-verify --btf vmlinux.btf doctor".into()
        } else {
            "ploop-verify doctor".into()
        }
    });
    let mut load: Vec<&str> = args.boot_modules.iter().map(String::as_str).collect();
    if extra.is_empty() {
        // A full build: its ploop modules are in its modules tree; load them by name.
        load.extend(built.modules.iter().filter_map(|m| m.file_stem().and_then(|s| s.to_str())));
    }
    let mut vm = Vm::with_ploop_verify(kernel, &load, command).map_err(failed)?;
    vm.timeout = Duration::from_secs(args.boot_timeout);
    vm.contents.extra_modules = extra;
    args.guest.apply(&mut vm);
    say(format!(
        "booting {} under QEMU with {} built module(s)",
        vm.kernel.release,
        vm.contents.extra_modules.len()
    ));
    let out = vm
        .run_with(|share| {
            if let Some(b) = &btf {
                fs::copy(b, share.join("vmlinux.btf"))?;
            }
            // For `run --kcidb-manifest manifest.json`: the KCIDB report's build.
            if let Some(m) = &manifest {
                fs::copy(m, share.join("manifest.json"))?;
            }
            Ok(())
        })
        .map_err(failed)?;
    print!("{}", out.stdout);
    say(format!(
        "guest ran {:.1}s, exit status {:?}; share {}",
        out.elapsed.as_secs_f64(),
        out.status,
        out.share.display()
    ));
    let problems: Vec<String> = out
        .kernel_problems()
        .iter()
        .map(|s| s.to_string())
        .chain(out.console.lines().filter(|l| l.contains("ploop-vm: insmod")).map(str::to_string))
        .collect();
    let status = out.status;
    built.boot = Some(out);
    if status != Some(0) || !problems.is_empty() {
        return Err(failed(anyhow!(
            "the booted guest failed: exit status {status:?}; kernel log: {problems:?}"
        )));
    }
    Ok(())
}
