//! Live: the user's own files in a guest, as `vm-run --share DIR --copy PATH...` and
//! `build-kernel --boot` take them (the same `GuestFiles` arguments, parsed by clap here):
//! a dynamically linked program built on the host runs in a 6.1 guest through the bundled
//! loader, and a guest writes into a host directory mounted at /share.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use clap::Parser;
use xtask::{
    kernels::Kernel,
    vm::{GuestFiles, Vm},
};

/// One guest at a time: the machines running these tests have 2 cores for everything.
static GUEST: Mutex<()> = Mutex::new(());

/// `GuestFiles` as the command line gives it.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    files: GuestFiles,
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ploop-guest-files-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Boots 6.1 with `args` (`--share`, `--copy`) applied and runs `command`.
fn boot(args: &[&str], command: &str) -> (Kernel, xtask::vm::Output) {
    let _one = GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let cli = Cli::try_parse_from(std::iter::once("vm-run").chain(args.iter().copied()))
        .expect("--share/--copy arguments");
    let kernel = Kernel::resolve("6.1").expect("6.1 guest kernel (scripts/setup.sh)");
    let mut vm = Vm::with_ploop_verify(kernel.clone(), &[], command).expect("guest");
    cli.files.apply(&mut vm);
    let out = vm.run().expect("guest run");
    eprintln!("guest: {:.1}s, output:\n{}", out.elapsed.as_secs_f64(), out.stdout);
    (kernel, out)
}

/// The libraries `ldd` lists for `prog`.
fn ldd(prog: &Path) -> String {
    let out = Command::new("ldd").arg(prog).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A C program of the user's, dynamically linked against libc and libm, built on the host
/// and run in the guest: it reports the guest's kernel and command line, so its output
/// cannot come from a run on the host.
#[test]
fn a_dynamically_linked_program_runs_through_the_bundled_loader() {
    let dir = scratch("prog");
    let src = dir.join("byo.c");
    fs::write(
        &src,
        r#"#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
int main(int argc, char **argv) {
    struct utsname u;
    char cmdline[1024] = "";
    FILE *f = fopen("/proc/cmdline", "r");
    if (f) { if (!fgets(cmdline, sizeof cmdline, f)) cmdline[0] = 0; fclose(f); }
    uname(&u);
    /* cbrt from libm: a second shared library besides libc. */
    printf("byo: release=%s rdinit=%s cbrt=%.3f\n", u.release,
           strstr(cmdline, "rdinit=/init") ? "yes" : "no", cbrt(atof(argc > 1 ? argv[1] : "0")));
    return 0;
}
"#,
    )
    .unwrap();
    let prog = dir.join("byo");
    let cc = Command::new("cc").arg("-O1").arg("-o").arg(&prog).arg(&src).arg("-lm").output();
    let cc = cc.expect("cc (gcc from scripts/setup.sh)");
    assert!(cc.status.success(), "cc: {}", String::from_utf8_lossy(&cc.stderr));
    let libs = ldd(&prog);
    assert!(libs.contains("libm.so.6") && libs.contains("libc.so.6"), "dynamic? {libs}");

    let (kernel, out) = boot(
        &["--copy", prog.to_str().unwrap()],
        "/copy/lib/ld-linux-x86-64.so.2 --library-path /copy/lib /copy/byo 64",
    );
    out.expect_success().expect("the program ran");
    let want = format!("byo: release={} rdinit=yes cbrt=4.000", kernel.release);
    assert!(out.stdout.contains(&want), "want {want:?} in:\n{}", out.stdout);
    fs::remove_dir_all(&dir).unwrap();
}

/// --share: the guest reads a host file and writes its answers next to it; Debian's own
/// sha256sum (dynamically linked, copied in with its libraries) computes one of them.
#[test]
fn a_shared_directory_is_the_hosts_in_both_directions() {
    let dir = scratch("share");
    let share = dir.join("share");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("input.txt"), "from the host\n").unwrap();
    let (_, out) = boot(
        &["--share", share.to_str().unwrap(), "--copy", "/usr/bin/sha256sum"],
        "set -e; pwd > where.txt; \
         /copy/lib/ld-linux-x86-64.so.2 --library-path /copy/lib /copy/sha256sum input.txt > sum.txt; \
         /copy/lib/ld-linux-x86-64.so.2 --library-path /copy/lib /copy/sha256sum --version | head -n1",
    );
    out.expect_success().expect("guest command");
    assert_eq!(out.share, share.canonicalize().unwrap(), "the user's directory, not a fresh one");
    assert!(
        out.stdout.contains("GNU coreutils"),
        "Debian's sha256sum, not busybox's: {}",
        out.stdout
    );
    let read = |f: &str| fs::read_to_string(share.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    assert_eq!(read("where.txt"), "/share\n", "the command starts in /share");
    let host = Command::new("sha256sum").arg("input.txt").current_dir(&share).output().unwrap();
    assert_eq!(read("sum.txt"), String::from_utf8_lossy(&host.stdout), "written by the guest");
    fs::remove_dir_all(&dir).unwrap();
}
