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
    /// (PLOOP_IO_AUTO), #1 an fd of the partition node DEVICEpN opened O_RDONLY. If the kernel
    /// answers EINVAL, the same request once more with pctl_chunks=1 (an old kernel); any
    /// other errno fails the snapshot (the delta is removed). Prints what happened.
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
    /// The partition whose node goes into chunk #1 (DEVICEpN; 0: the disk itself).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub part: u32,
    /// An encrypted container's layout, named as libploop's get_part_devname() names the
    /// node (OpenVZ/ploop lib/ploop.c, lib/crypt.c): `luks`, dm-crypt on the whole disk with
    /// the GPT inside it, /dev/mapper/CRYPT-ploopN plus `p1` (the partition above dm-crypt;
    /// without `p1` with --part 0); `part`, the older layout, dm-crypt on ploopNp1,
    /// /dev/mapper/CRYPT-ploopNp1.
    #[arg(long, value_name = "LAYOUT", value_parser = ["luks", "part"])]
    pub crypt: Option<String>,
}

/// The node libploop's get_part_devname() opens for chunk #1: the device that holds the
/// filesystem.
fn part_devname(a: &LibploopArgs) -> PathBuf {
    let disk = a.device.display().to_string();
    let base = disk.rsplit('/').next().unwrap_or(&disk).to_string();
    let p = |n: u32| if n == 0 { String::new() } else { format!("p{n}") };
    PathBuf::from(match a.crypt.as_deref() {
        Some("luks") => format!("/dev/mapper/CRYPT-{base}{}", p(a.part)),
        Some(_) => format!("/dev/mapper/CRYPT-{base}p1"),
        None => format!("{disk}{}", p(a.part)),
    })
}

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
    let node = part_devname(&a);
    let sync = ploopctl::open_sync_dev(&node)?;
    let (delta, created) =
        ploopctl::open_new_ploop1(&a.delta, size, cluster_log, dev.ploop1_version(), false)?;
    let mut req = Request::one(PLOOP_FMT_PLOOP1, PLOOP_FLAG_FS_SYNC, delta.as_raw_fd());
    req.ctl.pctl_cluster_log = cluster_log;
    req.ctl.pctl_size = 0;
    req.chunks[0].pctl_type = PLOOP_IO_AUTO;
    req.ctl.pctl_chunks = 2;
    req.chunks.push(PloopCtlChunk { pctl_fd: sync.as_raw_fd(), ..Default::default() });
    let mut buf = GuardedBuf::new()?;
    let t = Instant::now();
    let mut res = ploopctl::send_snapshot(&dev, &mut buf, &req, Fault::None);
    let mut what = format!(
        "PLOOP_IOC_SNAPSHOT ploop1 cluster_log {cluster_log}, 2 chunks, sync fd {} (O_RDONLY): {}",
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
        Testkit::SynthTrace { calls, wrong_freeze_every, oracle, out } => {
            let events = crate::verify::synth::write(&out, calls, wrong_freeze_every, oracle)?;
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

    /// The node of each layout libploop knows, as its get_part_devname() names it.
    #[test]
    fn libploop_names_the_node_that_holds_the_filesystem() {
        let name = |part: u32, crypt: Option<&str>| {
            let a = super::LibploopArgs {
                device: "/dev/ploop3".into(),
                delta: "/tmp/d".into(),
                part,
                crypt: crypt.map(str::to_string),
            };
            super::part_devname(&a).display().to_string()
        };
        assert_eq!(name(1, None), "/dev/ploop3p1", "a GPT");
        assert_eq!(name(0, None), "/dev/ploop3", "no partition table");
        assert_eq!(name(1, Some("luks")), "/dev/mapper/CRYPT-ploop3p1", "the commit's stack");
        assert_eq!(name(0, Some("luks")), "/dev/mapper/CRYPT-ploop3", "LUKS, no GPT inside");
        assert_eq!(name(1, Some("part")), "/dev/mapper/CRYPT-ploop3p1", "dm-crypt on ploopNp1");
    }
}
