//! The ploop client in a guest: Debian 12's `ploop` (OpenVZ's tools 1.15, libploop from
//! before the 2020 sync-fd change: one chunk and `PLOOP_FLAG_FS_SYNC`), installed on the host
//! by `scripts/setup.sh`, with its shared libraries and the programs libploop runs. The live
//! tests, `cargo xtask demo` and `cargo xtask bench --client` all take it from here.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::vm::Vm;

/// The client as the host has it (package `ploop`), and the name it answers to in a guest.
pub const PLOOP: &str = "/usr/sbin/ploop";

/// Where the real binary goes in a guest: [`PLOOP`] there is the wrapper ([`WRAPPER`]).
const REAL: &str = "/usr/lib/ploop-client/ploop";

/// What libploop runs (OpenVZ/ploop `lib/fsutils.c`, `lib/util.c`): `parted` for the GPT,
/// `mkfs -t ext4` (util-linux's, which runs `mkfs.ext4`), `tune2fs`, `resize2fs`, `dumpe2fs`
/// (through `popen`), `fsck.ext4`. Its `run_prg` looks in /sbin before /bin, so these are
/// found before busybox's applets (in /bin), whose mke2fs makes only ext2.
const HELPERS: &[&str] = &[
    "/sbin/parted",
    "/sbin/mkfs",
    "/sbin/mke2fs",
    "/sbin/e2fsck",
    "/sbin/tune2fs",
    "/sbin/resize2fs",
    "/sbin/dumpe2fs",
];

/// The names libploop asks for, as e2fsprogs installs them.
const HELPER_LINKS: &[(&str, &str)] =
    &[("/sbin/mkfs.ext4", "mke2fs"), ("/sbin/fsck.ext4", "e2fsck")];

/// `/usr/sbin/ploop` in a guest. Debian's 1.15 segfaults (exit 139) in every command that
/// takes a path when its environment is small, as a guest's init leaves it: `get_basedir()`
/// copies 4096 bytes from the argv string, and with little environment above argv that runs
/// off the top of the stack. 5 KB of environment keeps those 4096 bytes on the stack; the
/// variable's content does not matter. Whoever runs the client (a test, `ploop-verify run --
/// CMD`, a shell) goes through this, so no caller has to know.
///
/// It also makes libploop's lock directory's parent, which Debian's systemd-tmpfiles makes
/// at boot (`/usr/lib/tmpfiles.d/ploop.conf`) and a guest has none of.
const WRAPPER: &str = r#"#!/bin/sh
# Written by xtask/src/client.rs: see there why.
mkdir -p /var/lock
PLOOP_CLIENT_STACK_PAD=$(printf '%5120s' '')
export PLOOP_CLIENT_STACK_PAD
exec /usr/lib/ploop-client/ploop "$@"
"#;

/// Puts the client into `vm`: the wrapper at [`PLOOP`], the binary and its libraries (libploop,
/// libxml2 ...), and the helpers libploop runs.
pub fn add(vm: &mut Vm) -> Result<()> {
    for bin in std::iter::once(PLOOP).chain(HELPERS.iter().copied()) {
        if !std::path::Path::new(bin).is_file() {
            bail!(
                "{bin} is missing on the host: run scripts/setup.sh (it installs ploop and parted)"
            );
        }
    }
    let dir = crate::build_dir().join("client");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let wrapper = dir.join("ploop");
    if fs::read_to_string(&wrapper).ok().as_deref() != Some(WRAPPER) {
        fs::write(&wrapper, WRAPPER).with_context(|| format!("writing {}", wrapper.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
    }
    let c = &mut vm.contents;
    c.host_bins_at.push((PathBuf::from(PLOOP), REAL.to_string()));
    c.files.push((wrapper, PLOOP.to_string()));
    for h in HELPERS {
        let h = PathBuf::from(h);
        if !c.host_bins.contains(&h) {
            c.host_bins.push(h);
        }
    }
    for (link, target) in HELPER_LINKS {
        c.symlinks.push((link.to_string(), target.to_string()));
    }
    Ok(())
}

/// [`Vm::with_model`] with the client in it.
pub fn with_model(kernel: crate::kernels::Kernel, command: impl Into<String>) -> Result<Vm> {
    let mut vm = Vm::with_model(kernel, command)?;
    add(&mut vm)?;
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host binary crashes the way the wrapper is there for, and the wrapper's
    /// environment is what avoids it (run on the host, where setup installed the client).
    #[test]
    fn the_wrapper_environment_avoids_the_small_environment_crash() {
        if !std::path::Path::new(PLOOP).is_file() {
            panic!("{PLOOP} missing: run scripts/setup.sh");
        }
        let dir = std::env::temp_dir().join(format!("ploop-client-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let init = |pad: Option<String>| {
            let mut c = std::process::Command::new(PLOOP);
            c.env_clear().current_dir(&dir).args(["init", "-s", "16M", "-t", "none", "x.hdd"]);
            if let Some(p) = pad {
                c.env("PLOOP_CLIENT_STACK_PAD", p);
            }
            let _ = fs::remove_file(dir.join("x.hdd"));
            let _ = fs::remove_file(dir.join("DiskDescriptor.xml"));
            c.output().unwrap().status
        };
        use std::os::unix::process::ExitStatusExt as _;
        let small = init(None);
        assert_eq!(small.signal(), Some(11), "without the pad: {small}");
        let pad = WRAPPER
            .lines()
            .find_map(|l| l.strip_prefix("PLOOP_CLIENT_STACK_PAD=$(printf '%"))
            .and_then(|l| l.split_once('s'))
            .and_then(|(n, _)| n.parse::<usize>().ok())
            .expect("the wrapper sets the pad");
        let padded = init(Some(" ".repeat(pad)));
        assert!(padded.success(), "with the wrapper's {pad} bytes: {padded}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
