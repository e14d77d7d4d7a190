//! Small triggers that make the kernel freeze and thaw a block device, for live tests and for
//! checking a probe setup by hand. Each one is a single well-understood kernel path.

use std::{fs, os::fd::AsRawFd, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::{
    errno::Errno,
    kit::{
        dm, gpt,
        ploopctl::{self, Fault, GuardedBuf, PloopDev},
    },
    ploop_abi::{PLOOP_FLAG_FS_SYNC, PLOOP_FMT_PLOOP1, PLOOP_IO_AUTO, PloopCtlChunk, Request},
    ploop1,
};

#[derive(Subcommand, Debug)]
pub enum Testkit {
    /// EXT4_IOC_SHUTDOWN with the default flag on the ext4 mounted at MOUNTPOINT: the kernel
    /// freezes and thaws the filesystem's block device, then marks the fs shut down
    /// (unmount and mount it again to reuse it).
    Ext4Shutdown { mountpoint: PathBuf },
    /// Create a dm-linear device NAME over DEVICE (its whole size); prints the new node.
    DmLinear {
        name: String,
        device: PathBuf,
        /// A read-only table (over a read-only device).
        #[arg(long)]
        read_only: bool,
    },
    /// Suspend a dm device (freezes the filesystem on it), then resume it (thaws).
    DmSuspendResume { name: String },
    /// Remove a dm device.
    DmRemove { name: String },
    /// Create a dm-crypt device NAME over DEVICE; prints the new node
    ///
    /// Its whole size, plain mode (no header), aes-xts-plain64 with a fixed test key unless
    /// --key. Its dm uuid is
    /// CRYPT-PLAIN-<NAME> unless --uuid/--no-uuid: like cryptsetup's, so the ploop snapshot
    /// autodetection recognises it.
    DmCrypt {
        /// The dm name (/dev/mapper/NAME).
        name: String,
        /// The device to encrypt, e.g. /dev/ploop0.
        device: PathBuf,
        /// The dm uuid (the autodetection wants the prefix CRYPT-).
        #[arg(long, conflicts_with = "no_uuid")]
        uuid: Option<String>,
        /// Create it without a uuid (as plain dmsetup does): invisible to the autodetection.
        #[arg(long)]
        no_uuid: bool,
        /// The key, 64 or 128 hex digits.
        #[arg(long, default_value = TEST_KEY)]
        key: String,
        /// A read-only table (over a read-only device); needs --no-uuid.
        #[arg(long, requires = "no_uuid")]
        read_only: bool,
    },
    /// Print the live table of the dm device NAME as `dmsetup table --showkeys NAME` does
    /// (keys included): what `run --oracle-key` reads, for a guest without dmsetup.
    DmTable { name: String },
    /// Random PLOOP_IOC_SNAPSHOT requests from several threads, each answer checked against
    /// the contract (see --help).
    FuzzSnapshot(crate::kit::ploop_stress::FuzzArgs),
    /// Time PLOOP_IOC_SNAPSHOT over a series of snapshots; prints min/p50/p90/max/mean.
    SnapshotBench(crate::kit::ploop_stress::BenchArgs),
    /// Send exactly the request of libploop's online snapshot (create_image_snapshot)
    ///
    /// An empty ploop1 delta DELTA with the device's size, cluster size (pstate/block_size)
    /// and version (pstate/fmt_version); PLOOP_IOC_SNAPSHOT with pctl_format=PLOOP_FMT_PLOOP1,
    /// PLOOP_FLAG_FS_SYNC, pctl_cluster_log, pctl_size=0, two chunks: #0 the delta
    /// (PLOOP_IO_AUTO), #1 an fd, opened O_RDONLY, of the node libploop names with
    /// get_part_devname(): /dev/mapper/CRYPT-<disk>[p1] when the disk starts with a LUKS
    /// header (p1 when a GPT is inside it), else DEVICEp1 with a GPT, else DEVICE itself. If
    /// the kernel answers EINVAL, the same request once more with pctl_chunks=1 (an old
    /// kernel); any other errno fails the snapshot (the delta is removed). Prints what happened.
    ///
    /// Example: ploop-verify testkit libploop-snapshot --device /dev/ploop0 --delta top.hds
    ///
    /// Exit status: 0 the snapshot was taken; 1 refused; 2 bad input.
    LibploopSnapshot(LibploopArgs),
    /// Write a GPT to DEVICE with partitions of the given sizes, have the kernel read it
    /// (BLKRRPART) and print the partition nodes
    ///
    /// Partitions start on 1 MiB boundaries; "rest" takes what is left (last one only).
    /// Example: ploop-verify testkit gpt /dev/ploop0 --part 8M --part rest
    Gpt {
        device: PathBuf,
        /// A partition's size (K, M, G suffixes) or "rest"; repeat for each partition.
        #[arg(long = "part", value_name = "SIZE", required = true)]
        parts: Vec<String>,
    },
    /// Check a ploop1 delta's header and BAT; prints a summary, exit 1 on any problem
    Ploop1Check {
        file: PathBuf,
        /// Also require m_DiskInUse set (yes: the open top) or clear (no: a closed delta).
        #[arg(long, value_name = "yes|no")]
        in_use: Option<String>,
    },
    /// Write a synthetic trace of CALLS correct snapshot calls (for the replay benchmark:
    /// `ploop-verify report` on it measures the checker's throughput).
    SynthTrace {
        #[arg(long, default_value_t = 100_000)]
        calls: u64,
        /// Every Nth call freezes the wrong device (S1 and S2 fail); 0: every call is correct.
        #[arg(long, value_name = "N", default_value_t = 0)]
        wrong_freeze_every: u64,
        /// Record an oracle finding for every call, as `run --oracle` does: the calls that
        /// freeze the wrong device leave a snapshot that needs a journal replay (X1 fails),
        /// the others a clean one.
        #[arg(long)]
        oracle: bool,
        /// The end record says N events were lost (as a run whose buffers overflowed).
        #[arg(long, value_name = "N", default_value_t = 0)]
        lost: u64,
        /// Every snapshot refused with -EINVAL before anything is frozen: two chunks, then
        /// libploop's one-chunk retry, refused too.
        #[arg(long)]
        refused: bool,
        /// The calling process's name (any bytes but NUL, as the kernel allows; escapes such
        /// as \x1b are not decoded here: pass the bytes).
        #[arg(long, value_name = "TEXT")]
        comm: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct LibploopArgs {
    /// The ploop disk, e.g. /dev/ploop0.
    #[arg(long, value_name = "DEVICE")]
    pub device: PathBuf,
    /// The new top delta (must not exist).
    #[arg(long, value_name = "DELTA_FILE")]
    pub delta: PathBuf,
    /// The partition whose node goes into chunk #1 instead of libploop's choice (DEVICEpN;
    /// 0: the disk itself).
    #[arg(long, value_name = "N", conflicts_with = "node")]
    pub part: Option<u32>,
    /// The node chunk #1 opens instead of libploop's choice. For a test stack that stands
    /// for a layout without carrying its signatures: `testkit dm-crypt` is plain mode (no
    /// LUKS header), so on the commit's stack pass what libploop names for a LUKS
    /// container, e.g. --node /dev/mapper/CRYPT-ploop0p1.
    #[arg(long, value_name = "PATH")]
    pub node: Option<PathBuf>,
}

/// The node whose fd libploop's create_image_snapshot passes as the sync fd (OpenVZ ploop
/// since commit 4f67197, 2020-10): `get_part_devname(NULL, device, ...)` in lib/ploop.c.
/// With no disk descriptor (NULL) its older dm-crypt branch (dm-crypt on ploopNp1, named
/// CRYPT-ploopNp1) is never taken: that layout gets the plain rule, ploopNp1, a node below
/// the dm-crypt device that holds the filesystem.
pub fn libploop_part_node(
    device: &std::path::Path,
    signature: impl Fn(&std::path::Path, Signature) -> Result<bool>,
) -> Result<PathBuf> {
    let gpt_part = |dev: &std::path::Path| -> Result<PathBuf> {
        Ok(if signature(dev, Signature::Gpt)? {
            PathBuf::from(format!("{}p1", dev.display()))
        } else {
            dev.to_path_buf()
        })
    };
    if signature(device, Signature::Luks)? {
        // crypt_get_device_name(): "/dev/mapper/CRYPT-" + basename(device); the partition
        // above it (the commit's dm-linear) is that name + "p1".
        let name = device.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        return gpt_part(&PathBuf::from(format!("/dev/mapper/CRYPT-{name}")));
    }
    gpt_part(device)
}

/// The two on-disk signatures get_part_devname() looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signature {
    /// is_luks(): "LUKS" in the first bytes of the device.
    Luks,
    /// has_partition(): "EFI PART" at the start of the second logical block.
    Gpt,
}

/// Reads `sig` from a block device node as libploop does.
fn read_signature(dev: &std::path::Path, sig: Signature) -> Result<bool> {
    use std::os::unix::fs::FileExt as _;
    let f = fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let (at, magic): (u64, &[u8]) = match sig {
        Signature::Luks => (0, b"LUKS"),
        Signature::Gpt => {
            let mut ssz: libc::c_int = 512;
            // SAFETY: BLKSSZGET writes one int through the pointer.
            if unsafe { libc::ioctl(f.as_raw_fd(), BLKSSZGET, &mut ssz) } < 0 {
                ssz = 512;
            }
            (ssz as u64, b"EFI PART")
        }
    };
    let mut buf = [0u8; 8];
    f.read_exact_at(&mut buf, at).with_context(|| format!("reading {}", dev.display()))?;
    Ok(buf.starts_with(magic))
}

/// `_IO(0x12, 104)`: the logical block size.
const BLKSSZGET: libc::Ioctl = nix::request_code_none!(0x12, 104);

/// The fixed aes-xts-plain64 key of `testkit dm-crypt` (test data only, never a secret).
pub const TEST_KEY: &str = "6d6f64656c2d6b65792d666f722d706c6f6f702d7665726966792d74657374a5";

/// `_IOR('X', 125, __u32)` (the kernel reads the flag, whatever the direction bits say).
const EXT4_IOC_SHUTDOWN: libc::Ioctl =
    nix::request_code_read!(b'X', 125, std::mem::size_of::<u32>());
const EXT4_GOING_FLAGS_DEFAULT: u32 = 0;

/// `testkit libploop-snapshot` and `ploop1-check` have exit statuses of their own.
pub fn run_with_status(cmd: Testkit) -> Result<ExitCode> {
    match cmd {
        Testkit::LibploopSnapshot(a) => libploop_snapshot(a),
        Testkit::Ploop1Check { file, in_use } => {
            let want = match in_use.as_deref() {
                None => None,
                Some("yes") => Some(true),
                Some("no") => Some(false),
                Some(o) => bail!("--in-use {o}: yes or no"),
            };
            let r = ploop1::check(&file, want)?;
            let h = &r.header;
            println!(
                "{}: ploop1 {:?}, {} bytes, cluster {} KiB, {}/{} clusters allocated, \
                 m_DiskInUse {:#x}, m_Flags {:#x}, file {} bytes",
                file.display(),
                h.version,
                h.device_bytes(),
                h.cluster_bytes() / 1024,
                r.allocated,
                h.m_Size,
                h.m_DiskInUse,
                h.m_Flags,
                r.file_bytes
            );
            for p in &r.problems {
                println!("{}: {p}", file.display());
            }
            Ok(if r.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        other => run(other).map(|()| ExitCode::SUCCESS),
    }
}

fn libploop_snapshot(a: LibploopArgs) -> Result<ExitCode> {
    let dev = PloopDev::open(&a.device)?;
    let size = dev.size()?;
    if size == 0 {
        bail!("{} has no delta: attach one first", a.device.display());
    }
    if a.delta.exists() {
        bail!("{} exists: libploop creates a new file", a.delta.display());
    }
    let Some(cluster_log) = dev.cluster_log() else {
        bail!("{}: no pstate/block_size (not a ploop device?)", a.device.display());
    };
    let node = match (a.part, &a.node) {
        (_, Some(node)) => node.clone(),
        (None, None) => libploop_part_node(&a.device, read_signature)?,
        (Some(0), None) => a.device.clone(),
        (Some(n), None) => PathBuf::from(format!("{}p{n}", a.device.display())),
    };
    // libploop checks the wrong variable after open(part) (`if (ret)`, not the fd), so a
    // failed open goes into chunk #1 as fd -1, which the kernel reads as "autodetect".
    let sync = fs::File::open(&node);
    let sync_fd = match &sync {
        Ok(f) => f.as_raw_fd(),
        Err(e) => {
            eprintln!(
                "libploop-snapshot: open({}) failed: {e}; sending fd -1 in chunk #1, as libploop does",
                node.display()
            );
            -1
        }
    };
    let (delta, created) =
        ploopctl::open_new_ploop1(&a.delta, size, cluster_log, dev.ploop1_version(), false)?;
    let mut req = Request::one(PLOOP_FMT_PLOOP1, PLOOP_FLAG_FS_SYNC, delta.as_raw_fd());
    req.ctl.pctl_cluster_log = cluster_log;
    req.ctl.pctl_size = 0;
    req.chunks[0].pctl_type = PLOOP_IO_AUTO;
    req.ctl.pctl_chunks = 2;
    req.chunks.push(PloopCtlChunk { pctl_fd: sync_fd, ..Default::default() });
    let mut buf = GuardedBuf::new()?;
    let t = Instant::now();
    let mut res = ploopctl::send_snapshot(&dev, &mut buf, &req, Fault::None);
    let mut what = format!(
        "PLOOP_IOC_SNAPSHOT ploop1 cluster_log {cluster_log}, 2 chunks, sync fd {sync_fd} of {} (O_RDONLY): {}",
        node.display(),
        answer(res)
    );
    if res == Err(Errno::EINVAL) {
        req.ctl.pctl_chunks = 1;
        req.chunks.truncate(1);
        res = ploopctl::send_snapshot(&dev, &mut buf, &req, Fault::None);
        what += &format!("; retried with 1 chunk (an old kernel): {}", answer(res));
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    match res {
        Ok(()) => {
            created.keep();
            println!("libploop-snapshot on {}: {what}; ok in {ms:.1} ms", a.device.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!(
                "libploop-snapshot on {}: {what}; failed: {}",
                a.device.display(),
                e.numbered()
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn answer(r: Result<(), Errno>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => e.numbered(),
    }
}

pub fn run(cmd: Testkit) -> Result<()> {
    match cmd {
        Testkit::LibploopSnapshot(_) | Testkit::Ploop1Check { .. } => {
            bail!("run through run_with_status")
        }
        Testkit::Gpt { device, parts } => {
            let sizes = parts
                .iter()
                .map(|p| match p.as_str() {
                    "rest" => Ok(None),
                    s => ploopctl::parse_size(s).map(Some),
                })
                .collect::<Result<Vec<_>>>()?;
            for n in gpt::write(&device, &sizes)? {
                println!("{}", n.display());
            }
        }
        Testkit::Ext4Shutdown { mountpoint } => {
            let dir = fs::File::open(&mountpoint)
                .with_context(|| format!("opening {}", mountpoint.display()))?;
            let flag = EXT4_GOING_FLAGS_DEFAULT;
            // SAFETY: the ioctl reads one u32 through the pointer.
            let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flag) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| {
                    format!("EXT4_IOC_SHUTDOWN on {} (is it ext4?)", mountpoint.display())
                });
            }
        }
        Testkit::DmLinear { name, device, read_only } => {
            if !device.exists() {
                bail!("{}: no such device", device.display());
            }
            let sectors = dm::sectors(&device)?;
            if sectors == 0 {
                bail!("{} has size 0", device.display());
            }
            let node = dm::create_with(
                &name,
                &[dm::Target {
                    start: 0,
                    length: sectors,
                    kind: "linear".into(),
                    params: format!("{} 0", device.display()),
                }],
                read_only,
            )?;
            println!("{}", node.display());
        }
        Testkit::DmSuspendResume { name } => {
            dm::suspend(&name)?;
            dm::resume(&name)?;
        }
        Testkit::DmRemove { name } => dm::remove(&name)?,
        Testkit::DmTable { name } => {
            for t in dm::table(&name)? {
                println!("{t}");
            }
        }
        Testkit::DmCrypt { name, device, uuid, no_uuid, key, read_only } => {
            if !device.exists() {
                bail!("{}: no such device", device.display());
            }
            let sectors = dm::sectors(&device)?;
            if sectors == 0 {
                bail!("{} has size 0", device.display());
            }
            let table = [dm::crypt_table(&device, sectors, &key)?];
            let node = if no_uuid {
                dm::create_with(&name, &table, read_only)?
            } else {
                let uuid = uuid.unwrap_or_else(|| format!("CRYPT-PLAIN-{name}"));
                dm::create_with_uuid(&name, &uuid, &table)?
            };
            println!("{}", node.display());
        }
        Testkit::FuzzSnapshot(a) => crate::kit::ploop_stress::fuzz(a)?,
        Testkit::SnapshotBench(a) => crate::kit::ploop_stress::bench(a)?,
        Testkit::SynthTrace { calls, wrong_freeze_every, oracle, lost, refused, comm, out } => {
            let extras = crate::verify::synth::Extras { lost, refused, comm };
            let events =
                crate::verify::synth::write_with(&out, calls, wrong_freeze_every, oracle, &extras)?;
            println!("{events} events in {calls} snapshot calls: {}", out.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(clippy::unnecessary_cast, reason = "libc::Ioctl is u64 on glibc, i32 on musl")]
    fn ext4_shutdown_request_number() {
        // From <linux/ext4.h>: EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32) = 0x8004587d
        assert_eq!(super::EXT4_IOC_SHUTDOWN as u64 & 0xffff_ffff, 0x8004_587d);
    }

    #[test]
    #[allow(clippy::unnecessary_cast, reason = "libc::Ioctl is u64 on glibc, i32 on musl")]
    fn blksszget_request_number() {
        // <linux/fs.h>: BLKSSZGET = _IO(0x12, 104)
        assert_eq!(super::BLKSSZGET as u64, 0x1268);
    }

    /// get_part_devname(NULL, ...) for every layout libploop creates.
    #[test]
    fn libploop_names_the_node_that_holds_the_filesystem() {
        use std::path::{Path, PathBuf};

        use super::{Signature::*, libploop_part_node};
        // (what carries which signature, the node libploop opens)
        let cases: [(&[(&str, super::Signature)], &str); 5] = [
            // A container image: GPT, ext4 on ploopNp1.
            (&[("/dev/ploop0", Gpt)], "/dev/ploop0p1"),
            // No partition table: the filesystem on the disk.
            (&[], "/dev/ploop0"),
            // LUKS on the whole disk, the GPT inside it: the commit's ploop -> dm_crypt ->
            // linear -> fs; the dm-linear partition is CRYPT-ploop0p1.
            (
                &[("/dev/ploop3", Luks), ("/dev/mapper/CRYPT-ploop3", Gpt)],
                "/dev/mapper/CRYPT-ploop3p1",
            ),
            // LUKS on the whole disk, no GPT inside.
            (&[("/dev/ploop3", Luks)], "/dev/mapper/CRYPT-ploop3"),
            // The older layout, dm-crypt on ploopNp1: without a disk descriptor libploop takes
            // the plain rule and names ploopNp1, below the dm-crypt device.
            (&[("/dev/ploop1", Gpt), ("/dev/ploop1p1", Luks)], "/dev/ploop1p1"),
        ];
        for (sigs, want) in cases {
            let dev = if want.contains("ploop3") {
                "/dev/ploop3"
            } else if want.contains("ploop1") {
                "/dev/ploop1"
            } else {
                "/dev/ploop0"
            };
            let got = libploop_part_node(Path::new(dev), |p, s| {
                Ok(sigs.iter().any(|&(d, k)| Path::new(d) == p && k == s))
            })
            .unwrap();
            assert_eq!(got, PathBuf::from(want), "{sigs:?}");
        }
    }
}
