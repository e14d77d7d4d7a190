//! Boots a kernel under QEMU (TCG: KVM does not work on these machines), runs one shell
//! command in it, and returns its output, exit status, kernel log and files.
//!
//! The guest has two serial ports: ttyS0 carries the kernel console, ttyS1 the command's
//! output and a final exit marker, so the two never interleave. `/share` in the guest is a
//! 9p mount of a host directory (a fresh one per run, or the user's: [`GuestFiles`]), for
//! files in both directions; `/copy` holds files copied into the initramfs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    initramfs::{self, Contents},
    kernels::Kernel,
};

/// Modules every guest gets: virtio + 9p for `/share`.
pub const BASE_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Modules for ext4 on loop and on device-mapper. `crc32c_generic` is not a modinfo
/// dependency of ext4 (it is requested through the crypto API at mount time).
pub const STORAGE_MODULES: &[&str] = &["loop", "dm-mod", "ext4", "crc32c_generic"];

/// Modules for dm-crypt with aes-xts-plain64 (the crypto API loads nothing by itself in the
/// guest: no modprobe, no modules.dep). aes_generic is built into both Debian kernels; ecb,
/// which xts instantiates, is a module on 6.1 and built in on 6.12 (built-ins are skipped).
pub const CRYPT_MODULES: &[&str] = &["dm-crypt", "xts", "ecb"];

/// A guest script: `tests/guest/lib.sh`, then `env` (variable assignments), then
/// `tests/guest/NAME`.
pub fn guest_script(name: &str, env: &str) -> Result<String> {
    let dir = crate::root().join("tests/guest");
    let read = |f: &str| {
        fs::read_to_string(dir.join(f)).with_context(|| format!("reading guest script {f}"))
    };
    Ok(format!("{}\n{env}\n{}", read("lib.sh")?, read(name)?))
}

#[derive(Clone, Debug)]
pub struct Vm {
    pub kernel: Kernel,
    pub contents: Contents,
    /// Shell script run by `sh` in the guest, in `/share`.
    pub command: String,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Extra kernel command line.
    pub cmdline: String,
    /// A host directory to mount at `/share` instead of a fresh empty one.
    pub share: Option<PathBuf>,
}

/// The user's own files in a guest: `--share` and `--copy` of `vm-run` and
/// `build-kernel --boot`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GuestFiles {
    /// Mount host directory DIR at /share in the guest (9p, read-write; created if missing)
    /// instead of a fresh empty one. The command starts in /share, and what the guest writes
    /// there is in DIR afterwards.
    #[arg(long, value_name = "DIR")]
    pub share: Option<PathBuf>,
    /// Copy files or directories into the guest, each at /copy/<its name>.
    ///
    /// They go into the initramfs, so into RAM: large data belongs in --share. A dynamically
    /// linked program brings the shared libraries `ldd` lists and its loader into /copy/lib;
    /// the guest has no C library of its own, so run it through that loader:
    ///   /copy/lib/ld-linux-x86-64.so.2 --library-path /copy/lib /copy/PROG ARGS
    #[arg(long, value_name = "PATH", num_args = 1.., verbatim_doc_comment)]
    pub copy: Vec<PathBuf>,
}

impl GuestFiles {
    /// Puts these files into `vm`.
    pub fn apply(&self, vm: &mut Vm) {
        vm.share.clone_from(&self.share);
        vm.contents.copy.extend(self.copy.iter().cloned());
    }
}

#[derive(Debug)]
pub struct Output {
    /// Exit status of the command; `None` if the guest stopped before reporting one.
    pub status: Option<i32>,
    /// What the command printed (stdout and stderr).
    pub stdout: String,
    /// Kernel console (dmesg at loglevel 4 and above, boot messages).
    pub console: String,
    /// The host side of `/share`.
    pub share: PathBuf,
    pub initramfs_bytes: u64,
    pub modules: Vec<String>,
    pub elapsed: Duration,
}

/// How the ploop model driver (tests/ploop-model, ploop.ko) is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelBuild {
    /// Every snapshot helper keeps a symbol and every call fires its probe.
    Probed,
    /// As a compiler may build vz7: `ploop_snapshot`, `find_and_freeze_bdev` and
    /// `get_bdev_from_fd` inlined (no symbol), `ploop_quiesce`/`ploop_relax` reached through
    /// inlined copies inside the snapshot (their probes attach and never fire there). The
    /// switch, the format's `complete_snapshot` called through its ops table, keeps its
    /// symbol in both builds.
    Inlined,
}

impl ModelBuild {
    fn make_variable(self) -> Option<&'static str> {
        match self {
            ModelBuild::Probed => None,
            ModelBuild::Inlined => Some("PLOOP_MODEL_INLINED"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelBuild::Probed => "probed",
            ModelBuild::Inlined => "inlined",
        }
    }
}

const EXIT_MARKER: &str = "@@ploop-vm-exit=";
/// Printed by init on ttyS1 right before the command: the guest got that far.
const START_MARKER: &str = "@@ploop-vm-start";

impl Vm {
    pub fn new(kernel: Kernel, command: impl Into<String>) -> Self {
        Vm {
            kernel,
            contents: Contents::default(),
            command: command.into(),
            timeout: Duration::from_secs(300),
            memory_mib: 1024,
            cpus: 2,
            cmdline: String::new(),
            share: None,
        }
    }

    /// A guest with the static `ploop-verify` in `/usr/bin`, a real `mke2fs`, and `modules`.
    pub fn with_ploop_verify(
        kernel: Kernel,
        modules: &[&str],
        command: impl Into<String>,
    ) -> Result<Self> {
        let bin = crate::build::ploop_verify_static()?;
        let mut vm = Vm::new(kernel, command);
        vm.contents = Contents {
            modules: modules.iter().map(|m| m.to_string()).collect(),
            extra_modules: Vec::new(),
            // dumpe2fs: the independent judge of X1 (tests/guest/checker.sh).
            host_bins: vec![PathBuf::from("/sbin/mke2fs"), PathBuf::from("/sbin/dumpe2fs")],
            host_bins_at: Vec::new(),
            files: vec![(bin, "/usr/bin/ploop-verify".into())],
            // busybox sh runs its own applets before PATH, and its mke2fs makes only ext2:
            // the real one is reached under a name busybox does not have.
            symlinks: vec![("/usr/sbin/mkfs.ext4".into(), "/sbin/mke2fs".into())],
            copy: Vec::new(),
        };
        Ok(vm)
    }

    /// A guest with ploop-verify, storage and dm-crypt modules, and the ploop model driver
    /// (tests/ploop-model) built for this kernel and loaded.
    pub fn with_model(kernel: Kernel, command: impl Into<String>) -> Result<Self> {
        Self::with_model_build(kernel, ModelBuild::Probed, command)
    }

    /// [`Vm::with_model`] with the model built as `build` says.
    pub fn with_model_build(
        kernel: Kernel,
        build: ModelBuild,
        command: impl Into<String>,
    ) -> Result<Self> {
        let kos = crate::module::build_variant(
            &kernel,
            &crate::root().join("tests/ploop-model"),
            build.make_variable(),
        )?;
        let modules: Vec<&str> = STORAGE_MODULES.iter().chain(CRYPT_MODULES).copied().collect();
        let mut vm = Vm::with_ploop_verify(kernel, &modules, command)?;
        vm.contents.extra_modules = kos;
        Ok(vm)
    }

    /// A fresh work directory under `target/ploop/vm`.
    fn workdir() -> Result<PathBuf> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = crate::build_dir().join("vm").join(format!(
            "run-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(dir.join("share"))?;
        Ok(dir)
    }

    /// Builds the initramfs, boots, waits. `prepare` may put input files into the share.
    pub fn run_with(&self, prepare: impl FnOnce(&Path) -> Result<()>) -> Result<Output> {
        let dir = Self::workdir()?;
        let share = match &self.share {
            Some(d) => {
                fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                // QEMU resolves the path itself; an absolute one reads the same in its errors.
                d.canonicalize()?
            }
            None => dir.join("share"),
        };
        prepare(&share)?;
        let mut contents = self.contents.clone();
        let mut modules: Vec<String> = BASE_MODULES.iter().map(|s| s.to_string()).collect();
        modules.append(&mut contents.modules);
        contents.modules = modules;
        let initrd =
            initramfs::build(&self.kernel, &contents, &self.command, &dir.join("initramfs.cpio"))?;

        let console = dir.join("console.log");
        let stdout = dir.join("output.log");
        let start = Instant::now();
        // Under TCG a guest kernel now and then oopses while it patches its own text during
        // boot (seen once on 6.12: int3 in sched_clock_cpu at 1 s), before init runs anything.
        // Such a boot is retried once; a guest that reached the command never is.
        let mut attempt = 1;
        let (status, out_text, console_text) = loop {
            let finished = self.boot(&initrd.path, &console, &stdout, &share)?;
            let console_text = read_lossy(&console);
            let raw = read_lossy(&stdout).replace('\r', "");
            let (started, out_text, status) = parse_ttys1(&raw);
            let qemu_status = match finished {
                Some(st) => st,
                None if started || attempt > 1 => bail!(
                    "guest timed out after {:?}; console tail:\n{}",
                    self.timeout,
                    tail(&console_text, 40)
                ),
                None => {
                    eprintln!("vm: the guest hung before running the command; booting again");
                    attempt += 1;
                    continue;
                }
            };
            if !started && status.is_none() && attempt == 1 {
                eprintln!(
                    "vm: the guest kernel died before running the command ({qemu_status}); \
                     booting again. Console tail:\n{}",
                    tail(&console_text, 8)
                );
                attempt += 1;
                continue;
            }
            if !qemu_status.success() && status.is_none() {
                bail!(
                    "qemu failed ({qemu_status}): {}\nconsole tail:\n{}",
                    read_lossy(&dir.join("qemu.log")).trim(),
                    tail(&console_text, 40)
                );
            }
            break (status, out_text, console_text);
        };
        let elapsed = start.elapsed();
        Ok(Output {
            status,
            stdout: out_text,
            console: console_text,
            share,
            initramfs_bytes: initrd.bytes,
            modules: initrd.modules,
            elapsed,
        })
    }

    /// One QEMU run; `None` when it had to be killed at the timeout.
    fn boot(
        &self,
        initrd: &Path,
        console: &Path,
        stdout: &Path,
        share: &Path,
    ) -> Result<Option<std::process::ExitStatus>> {
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg", "-cpu", "max", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-no-reboot"])
            .args(["-smp", &self.cpus.to_string(), "-m", &self.memory_mib.to_string()])
            .arg("-kernel")
            .arg(&self.kernel.image)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 loglevel=4 rdinit=/init {}", self.cmdline))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-serial")
            .arg(format!("file:{}", stdout.display()))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=share,security_model=none,multidevs=remap",
                share.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(stdout.with_file_name("qemu.log"))?);
        let mut child = qemu
            .spawn()
            .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(Some(st));
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn run(&self) -> Result<Output> {
        self.run_with(|_| Ok(()))
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// ttyS1 as init writes it: whether the command started, its output, its exit status.
fn parse_ttys1(raw: &str) -> (bool, String, Option<i32>) {
    let started = raw.contains(START_MARKER);
    let (out, status) = split_marker(&raw.replacen(&format!("{START_MARKER}\n"), "", 1));
    (started, out, status)
}

/// Splits the command output from the exit marker init prints after it.
fn split_marker(raw: &str) -> (String, Option<i32>) {
    match raw.rfind(EXIT_MARKER) {
        Some(i) => {
            let status =
                raw[i + EXIT_MARKER.len()..].lines().next().and_then(|s| s.trim().parse().ok());
            (raw[..i].to_string(), status)
        }
        None => (raw.to_string(), None),
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Output {
    /// Fails with the command output and the console tail unless the command exited 0.
    pub fn expect_success(&self) -> Result<&Self> {
        match self.status {
            Some(0) => Ok(self),
            s => Err(anyhow!(
                "guest command exited with {s:?}\n--- output ---\n{}\n--- console tail ---\n{}",
                self.stdout,
                tail(&self.console, 30)
            )),
        }
    }

    /// Kernel log lines that mean the kernel itself went wrong.
    pub fn kernel_problems(&self) -> Vec<&str> {
        self.console
            .lines()
            .filter(|l| {
                [
                    "BUG:",
                    "WARNING:",
                    "Oops",
                    "Kernel panic",
                    "general protection fault",
                    "hung_task",
                ]
                .iter()
                .any(|p| l.contains(p))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_marker_is_split_off() {
        let (out, st) = split_marker("hello\nworld\n@@ploop-vm-exit=3\n");
        assert_eq!(out, "hello\nworld\n");
        assert_eq!(st, Some(3));
        assert_eq!(split_marker("no marker").1, None);
        let (started, out, st) = parse_ttys1("@@ploop-vm-start\nhello\n@@ploop-vm-exit=0\n");
        assert_eq!((started, out.as_str(), st), (true, "hello\n", Some(0)));
        assert_eq!(parse_ttys1(""), (false, String::new(), None), "died before the command");
    }
}
