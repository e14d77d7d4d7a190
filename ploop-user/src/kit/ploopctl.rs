//! `ploop-verify device|snapshot|support`: bring a ploop device up from delta files, take
//! snapshots (also hand-made malformed ones, for error-code tests) and tell a patched kernel
//! from an unpatched one.
//!
//! Exit status of these commands: 0 success; 1 the kernel refused the request (the errno is
//! printed by name and number); 2 bad input found before any ioctl (missing file, not a block
//! device, bad size...). A command line that does not parse at all is 64, as everywhere.

use std::{
    fs,
    io::ErrorKind,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::{
    errno::Errno,
    ploop_abi::{
        self as abi, PLOOP_FLAG_FS_SYNC, PLOOP_FMT_PLOOP1, PLOOP_FMT_RAW, PLOOP_FMT_RDONLY,
        PLOOP_IO_AUTO, PloopCtlChunk, Request,
    },
    ploop1,
};

// ------------------------------------------------------------------------------------------
// command line

#[derive(Subcommand, Debug)]
pub enum Device {
    /// Make a delta file: raw (sparse, SIZE bytes) or an empty ploop1 delta
    ///
    /// A raw delta takes no space. A ploop1 delta is a header and an empty BAT (as libploop
    /// creates a snapshot delta); SIZE is rounded up to a cluster. The first delta attached to
    /// a device fixes the device's size; every other delta of the device must have the same
    /// size.
    ///
    /// Example: ploop-verify device create --size 64M /tmp/base.img
    ///          ploop-verify device create --format ploop1 --size 64M /tmp/top.hds
    Create {
        /// Size in bytes, a multiple of 512; suffixes K, M, G, T (powers of 1024).
        #[arg(long, value_name = "SIZE")]
        size: String,
        /// raw or ploop1.
        #[arg(long, default_value = "raw", value_parser = parse_format)]
        format: u32,
        /// ploop1: log2 of the cluster size in sectors (11: 1 MiB, libploop's default).
        #[arg(long, value_name = "N", default_value_t = ploop1::DEFAULT_CLUSTER_LOG)]
        cluster_log: u32,
        /// Replace an existing file (default: refuse).
        #[arg(long)]
        force: bool,
        /// The delta file to create.
        #[arg(value_name = "DELTA_FILE")]
        delta: PathBuf,
    },
    /// Bring DEVICE up from delta files, base first
    ///
    /// PLOOP_IOC_ADD_DELTA for each delta, base first: every delta but the last is added read-only (PLOOP_FMT_RDONLY); the last one is the writable top,
    /// unless --read-only. The device must have no delta yet. If any delta is refused, the
    /// ones already added are dropped again (PLOOP_IOC_CLEAR): the device is left as it was.
    ///
    /// Example: ploop-verify device attach --device /dev/ploop0 base.img snap1.img top.img
    Attach {
        /// The ploop block device, e.g. /dev/ploop0.
        #[arg(long, value_name = "DEVICE")]
        device: PathBuf,
        /// Add the top delta read-only too (the device becomes read-only).
        #[arg(long)]
        read_only: bool,
        /// pctl_cluster_log of every delta (the device's cluster size, pstate/block_size)
        /// [default: the first ploop1 delta's, else 0]. Each delta's format (raw or ploop1)
        /// comes from its header.
        #[arg(long, value_name = "N")]
        cluster_log: Option<u32>,
        /// Delta files, the base first, the top last.
        #[arg(value_name = "DELTA", required = true)]
        deltas: Vec<PathBuf>,
    },
    /// Drop every delta of DEVICE (PLOOP_IOC_CLEAR)
    ///
    /// Its size goes back to 0. Fails with
    /// EBUSY while the device is open elsewhere: a mounted filesystem, a dm device on top of
    /// it, a snapshot in progress. A short EBUSY (a process closing the device) is retried
    /// for about two seconds.
    Detach {
        /// The ploop block device, e.g. /dev/ploop0.
        #[arg(long, value_name = "DEVICE")]
        device: PathBuf,
    },
    /// PLOOP_IOC_FREEZE: freeze the ploop device itself
    ///
    /// Freezes the filesystem directly on it, if any. Not a snapshot; undo with `device thaw`.
    Freeze {
        /// The ploop block device, e.g. /dev/ploop0.
        #[arg(long, value_name = "DEVICE")]
        device: PathBuf,
    },
    /// PLOOP_IOC_THAW: undo `device freeze`, or recover leaked freezes
    ///
    /// On the model driver it also thaws the freezes that an injected bug leaked
    /// (pstate/leaked_freezes): the way to recover from them.
    Thaw {
        /// The ploop block device, e.g. /dev/ploop0.
        #[arg(long, value_name = "DEVICE")]
        device: PathBuf,
    },
}

/// Where a `--raw` request buffer is cut short or placed, to make the kernel's copy from
/// user space fault (EFAULT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// The whole request is readable.
    None,
    /// `ploop_ctl` itself straddles into an unmapped page.
    Ctl,
    /// The buffer ends right after `ploop_ctl`: chunk #0 (and #1) are unmapped.
    Chunk0,
    /// The buffer ends right after chunk #0: chunk #1 is unmapped.
    Chunk1,
    /// The pointer is NULL.
    Null,
    /// The pointer is a kernel address (fails access_ok).
    Kernel,
}

/// One PLOOP_IOC_SNAPSHOT (a new top delta, the filesystem frozen around the switch), or a
/// hand-made malformed one (--raw)
///
/// The snapshot makes NEW_DELTA the new writable top delta of DEVICE; the old top becomes a
/// read-only lower delta that never changes again.
///
/// By default the request has PLOOP_FLAG_FS_SYNC: the kernel freezes the filesystem around
/// the delta switch, so the old top holds a clean filesystem image. Which filesystem: with
/// --sync-fd-from MOUNTPOINT, the one mounted there (pctl_chunks=2, chunk #1 carries the fd
/// of MOUNTPOINT: needs the patched kernel, and works through any device-mapper stack, e.g.
/// ploop -> dm-crypt -> dm-linear -> ext4); without it, the kernel's own autodetection (a
/// dm-crypt device directly on ploop, else the ploop device itself).
///
/// NEW_DELTA is created with the device's size if it does not exist (and removed again if the
/// snapshot fails); an existing file must have exactly that size.
///
/// --raw sends a hand-made request for error-code testing instead: every field comes from
/// the options below (nothing is checked), the buffer always holds two chunks, and --fault
/// makes the copy from user space fault.
///
/// Examples:
///   ploop-verify snapshot --device /dev/ploop0 --delta /tmp/s1.img --sync-fd-from /mnt
///   ploop-verify snapshot --raw --device /dev/ploop0 --delta /tmp/s2.img --chunks 0
///   ploop-verify snapshot --raw --device /dev/ploop0 --delta /tmp/s2.img --chunks 2
///       --sync-fd-from /mnt --chunk1-len 4096          (EINVAL: chunk #1 must be zero)
///
/// Exit status: 0 done; 1 the kernel refused (errno printed, 524 as ENOTSUPP); 2 bad input
/// (missing file, not a block device, wrong size); 64 a command line that does not parse.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SnapshotArgs {
    /// The ploop block device, e.g. /dev/ploop0.
    #[arg(long, value_name = "DEVICE")]
    pub device: PathBuf,
    /// The new top delta file (created with the device's size if missing). With --raw it may
    /// be left out (see --chunk0-fd).
    #[arg(long, value_name = "NEW_DELTA_FILE", required_unless_present = "raw")]
    pub delta: Option<PathBuf>,
    /// Freeze the filesystem mounted at MOUNTPOINT: its fd (O_RDONLY|O_DIRECTORY) goes into
    /// chunk #1 (pctl_chunks=2). A block device node is opened O_RDONLY instead (as
    /// --sync-fd-dev).
    #[arg(long, value_name = "MOUNTPOINT")]
    pub sync_fd_from: Option<PathBuf>,
    /// An fd of the block device node DEVICE (opened O_RDONLY, libploop's way: the
    /// partition the filesystem is on, e.g. /dev/ploop0p1) goes into chunk #1.
    #[arg(long, value_name = "DEVICE", conflicts_with_all = ["sync_fd_from", "sync_fd"])]
    pub sync_fd_dev: Option<PathBuf>,
    /// pctl_format: raw or ploop1 (or a number, with --raw) [default: raw]. A missing
    /// ploop1 delta is created empty, with the device's size and cluster size (with --raw
    /// the delta file is always a raw one).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<u32>,
    /// chunks[0].pctl_type, the I/O engine: auto, direct, kaio (or a number) [default: auto].
    #[arg(long, value_name = "TYPE", value_parser = parse_io_type)]
    pub io_type: Option<u32>,
    /// pctl_cluster_log [default: the device's, from pstate/block_size, else 0].
    #[arg(long, value_name = "N", value_parser = parse_u32)]
    pub cluster_log: Option<u32>,
    /// Leave PLOOP_FLAG_FS_SYNC out: nothing is frozen (the old top may hold a filesystem
    /// in the middle of a journal transaction).
    #[arg(long)]
    pub no_fs_sync: bool,

    /// Send the hand-made request described by the options below.
    #[arg(long, help_heading = "Raw mode")]
    pub raw: bool,
    /// pctl_chunks [default: 2 with --sync-fd-from or --sync-fd, else 1].
    #[arg(long, requires = "raw", value_name = "N", value_parser = parse_u16, help_heading = "Raw mode")]
    pub chunks: Option<u16>,
    /// pctl_flags of ploop_ctl [default: 0x10000000 (PLOOP_FLAG_FS_SYNC), 0 with --no-fs-sync].
    #[arg(long, requires = "raw", value_name = "N", value_parser = parse_u32, help_heading = "Raw mode")]
    pub ctl_flags: Option<u32>,
    /// chunks[0].pctl_fd as a number, instead of an fd of --delta (e.g. 999 or -5).
    #[arg(
        long,
        requires = "raw",
        conflicts_with = "delta",
        value_name = "FD",
        allow_negative_numbers = true,
        help_heading = "Raw mode"
    )]
    pub chunk0_fd: Option<i32>,
    /// Open --delta read-only (the kernel refuses it only after the freeze: an error path
    /// that must thaw).
    #[arg(long, requires = "raw", help_heading = "Raw mode")]
    pub delta_readonly: bool,
    /// chunks[1].pctl_fd as a number [default: the fd of --sync-fd-from, else -1].
    #[arg(
        long,
        requires = "raw",
        conflicts_with = "sync_fd_from",
        value_name = "FD",
        allow_negative_numbers = true,
        help_heading = "Raw mode"
    )]
    pub sync_fd: Option<i32>,
    /// chunks[1].pctl_type (must be 0).
    #[arg(long, requires = "raw", default_value_t = 0, value_name = "N", value_parser = parse_u32, help_heading = "Raw mode")]
    pub chunk1_type: u32,
    /// chunks[1].pctl_flags (must be 0).
    #[arg(long, requires = "raw", default_value_t = 0, value_name = "N", value_parser = parse_u32, help_heading = "Raw mode")]
    pub chunk1_flags: u32,
    /// chunks[1].pctl_offset (must be 0).
    #[arg(long, requires = "raw", default_value_t = 0, value_name = "N", value_parser = parse_u32, help_heading = "Raw mode")]
    pub chunk1_offset: u32,
    /// chunks[1].pctl_start (must be 0).
    #[arg(long, requires = "raw", default_value_t = 0, value_name = "N", value_parser = parse_u64, help_heading = "Raw mode")]
    pub chunk1_start: u64,
    /// chunks[1].pctl_len (must be 0).
    #[arg(long, requires = "raw", default_value_t = 0, value_name = "N", value_parser = parse_u64, help_heading = "Raw mode")]
    pub chunk1_len: u64,
    /// Make the kernel's copy of the request fault (EFAULT).
    #[arg(long, requires = "raw", value_enum, default_value_t = Fault::None, help_heading = "Raw mode")]
    pub fault: Fault,
}

/// Does PLOOP_IOC_SNAPSHOT take a sync fd? Prints patched, unpatched or unknown
///
/// The probe of the patch: one request with pctl_chunks=0 (nothing is frozen or switched). A patched kernel answers
/// ENOTSUPP (errno 524), an unpatched one EINVAL; anything else is "unknown". DEVICE needs at
/// least one delta (else the kernel answers ENOENT first).
///
/// Exit status: 0 patched or unpatched; 1 unknown; 2 bad input; 64 bad usage.
#[derive(Args, Debug)]
pub struct SupportArgs {
    /// The ploop block device, e.g. /dev/ploop0.
    #[arg(long, value_name = "DEVICE")]
    pub device: PathBuf,
}

fn parse_num(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a number (decimal or 0x hex): {e}"))
}
fn parse_u64(s: &str) -> Result<u64, String> {
    parse_num(s)
}
fn parse_u32(s: &str) -> Result<u32, String> {
    u32::try_from(parse_num(s)?).map_err(|_| format!("{s} does not fit in 32 bits"))
}
fn parse_format(s: &str) -> Result<u32, String> {
    match s {
        "raw" => Ok(PLOOP_FMT_RAW),
        "ploop1" => Ok(PLOOP_FMT_PLOOP1),
        _ => parse_u32(s).map_err(|e| format!("{e} (or raw, ploop1)")),
    }
}
fn parse_io_type(s: &str) -> Result<u32, String> {
    match s {
        "auto" => Ok(abi::PLOOP_IO_AUTO),
        "direct" => Ok(abi::PLOOP_IO_DIRECT),
        "kaio" => Ok(abi::PLOOP_IO_KAIO),
        _ => parse_u32(s).map_err(|e| format!("{e} (or auto, direct, kaio)")),
    }
}
fn parse_u16(s: &str) -> Result<u16, String> {
    u16::try_from(parse_num(s)?).map_err(|_| format!("{s} does not fit in 16 bits"))
}

/// `64M`, `1G`, `4096`, `512K` -> bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let unit = t[i..].trim_end_matches("iB").trim_end_matches('B');
            let m = match unit.to_ascii_uppercase().as_str() {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => bail!("size {s:?}: unknown unit (use K, M, G or T)"),
            };
            (&t[..i], m)
        }
    };
    let n: u64 = digits.parse().map_err(|_| anyhow!("size {s:?} is not a number"))?;
    let bytes = n.checked_mul(mult).ok_or_else(|| anyhow!("size {s:?} is too large"))?;
    if bytes == 0 || bytes % 512 != 0 {
        bail!("size {s:?} must be a non-zero multiple of 512 bytes");
    }
    Ok(bytes)
}

// ------------------------------------------------------------------------------------------
// the device and its ioctls

/// An open ploop block device.
pub struct PloopDev {
    pub path: PathBuf,
    pub file: fs::File,
    /// `/sys/dev/block/MAJ:MIN`.
    pub sys: PathBuf,
}

impl PloopDev {
    /// Opens `path` (read-only is enough for the ploop ioctls); bad input if it is not a
    /// block device.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = fs::metadata(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if !meta.file_type().is_block_device() {
            bail!(
                "{} is not a block device (want a ploop device such as /dev/ploop0)",
                path.display()
            );
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
        let rdev = meta.rdev();
        let sys = PathBuf::from(format!("/sys/dev/block/{}", crate::kernel::KDev::from_user(rdev)));
        Ok(PloopDev { path: path.to_path_buf(), file, sys })
    }

    /// `pstate/<attr>` of the model driver, if this kernel has it.
    pub fn pstate(&self, attr: &str) -> Option<i64> {
        fs::read_to_string(self.sys.join("pstate").join(attr)).ok()?.trim().parse().ok()
    }

    /// The device's cluster size as `pctl_cluster_log` (log2 of `pstate/block_size`, in
    /// sectors, as libploop computes it: `ffs(blocksize) - 1`).
    pub fn cluster_log(&self) -> Option<u32> {
        self.pstate("block_size").filter(|&b| b > 0).map(|b| (b as u64).trailing_zeros())
    }

    /// The ploop1 version new deltas get: `pstate/fmt_version` (V1 only when it says 1).
    pub fn ploop1_version(&self) -> ploop1::Version {
        if self.pstate("fmt_version") == Some(1) {
            ploop1::Version::V1
        } else {
            ploop1::Version::V2
        }
    }

    /// Size in bytes (BLKGETSIZE64).
    pub fn size(&self) -> Result<u64> {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
        if let Err(e) = unsafe { blkgetsize64(self.file.as_raw_fd(), &mut size) } {
            bail!("BLKGETSIZE64 on {}: {}", self.path.display(), std::io::Error::from(e));
        }
        Ok(size)
    }

    /// The holders (dm devices and the like) of this device, by name.
    pub fn holders(&self) -> Vec<String> {
        fs::read_dir(self.sys.join("holders"))
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }

    /// An ioctl that takes no argument; `Err(errno)` on failure.
    pub fn ioctl_none(&self, nr: libc::Ioctl) -> Result<(), Errno> {
        // SAFETY: the request takes no argument.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), nr, 0usize) };
        if rc < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    /// An ioctl whose argument is the user pointer `ptr` (which may be bad on purpose: the
    /// kernel checks every access, so a bad pointer is an EFAULT, never undefined behaviour
    /// here).
    #[allow(
        clippy::not_unsafe_ptr_arg_deref,
        reason = "only the kernel reads through ptr, and it checks every access"
    )]
    pub fn ioctl_ptr(&self, nr: libc::Ioctl, ptr: *const u8) -> Result<(), Errno> {
        // SAFETY: the kernel only reads through `ptr` with copy_from_user.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), nr, ptr) };
        if rc < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    /// PLOOP_IOC_CLEAR, retrying EBUSY for about two seconds.
    pub fn clear(&self) -> Result<(), Errno> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.ioctl_none(abi::PLOOP_IOC_CLEAR) {
                Err(Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                r => return r,
            }
        }
    }
}

// `BLKGETSIZE64` of <linux/fs.h>: `_IOR(0x12, 114, size_t)`.
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// What an errno from PLOOP_IOC_SNAPSHOT means, for people.
fn snapshot_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOENT => "the device has no delta: attach one first (ploop-verify device attach)",
        Errno::EBUSY => "another snapshot or maintenance operation is in progress on the device",
        Errno::EFAULT => {
            "the kernel could not read the request (ploop_ctl or a chunk) from user memory"
        }
        Errno::EINVAL => {
            "malformed request: a non-zero field in chunk #1, an unknown pctl_format or I/O \
             type, a pctl_cluster_log other than the device's, a delta of the wrong size, not a \
             regular file or with a bad ploop1 header; an unpatched kernel also answers EINVAL \
             to every pctl_chunks but 1 (no sync fd support)"
        }
        Errno::ENOTSUPP => "pctl_chunks is neither 1 nor 2 (patched kernel)",
        Errno::ENODEV => {
            "the sync fd has no block device under it (tmpfs, proc, a closed fd); a block device \
             node as sync fd is resolved through the filesystem holding the node (devtmpfs) by \
             the seed patch: S4"
        }
        Errno::EBADF => {
            "the new delta's fd is not open for reading and writing (or not open at all)"
        }
        Errno::ENOTTY => "not a ploop device",
        Errno::EPERM => "needs CAP_SYS_ADMIN (run as root)",
        Errno::E2BIG => "the device has the maximum number of deltas",
        Errno::ETIMEDOUT => "in-flight I/O did not drain during the switch",
        _ => "",
    }
}

fn report_failure(what: &str, dev: &Path, errno: Errno, hint: &str) {
    eprintln!("ploop-verify: {what} on {} failed: {}", dev.display(), errno.numbered());
    if !hint.is_empty() {
        eprintln!("ploop-verify: {hint}");
    }
}

/// Two pages, the second one PROT_NONE: a request placed to end at the boundary makes any
/// read past its end fault in the kernel.
pub struct GuardedBuf {
    base: *mut u8,
    page: usize,
}

// SAFETY: the mapping is owned by the struct and only touched through `&mut self`.
unsafe impl Send for GuardedBuf {}

impl GuardedBuf {
    pub fn new() -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh anonymous private mapping; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the second page belongs to the mapping just made.
        if unsafe { libc::mprotect(base.cast::<u8>().add(page).cast(), page, libc::PROT_NONE) } != 0
        {
            let e = std::io::Error::last_os_error();
            // SAFETY: unmapping what we mapped.
            unsafe { libc::munmap(base, 2 * page) };
            bail!("mprotect: {e}");
        }
        Ok(GuardedBuf { base: base.cast(), page })
    }

    /// Copies `bytes` (a ctl and its chunks) so that the part `fault` says is readable ends
    /// exactly at the guard page; returns the pointer to pass to the kernel.
    pub fn place(&mut self, bytes: &[u8], fault: Fault) -> *const u8 {
        let keep = match fault {
            Fault::None => bytes.len(),
            Fault::Ctl => abi::CTL_SIZE / 2,
            Fault::Chunk0 => abi::CTL_SIZE,
            Fault::Chunk1 => abi::CTL_SIZE + abi::CHUNK_SIZE,
            Fault::Null => return std::ptr::null(),
            Fault::Kernel => return 0xffff_8880_0000_0000usize as *const u8,
        }
        .min(bytes.len())
        .min(self.page);
        // Keep 8-byte alignment of the start (the kernel does not care; real callers align).
        let start = self.page - keep;
        // SAFETY: [start, page) lies in the first (writable) page of the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(start), keep);
            self.base.add(start)
        }
    }
}

impl Drop for GuardedBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), 2 * self.page) };
    }
}

/// Sends `req` as PLOOP_IOC_SNAPSHOT (through a guarded buffer, cut short as `fault` says).
pub fn send_snapshot(
    dev: &PloopDev,
    buf: &mut GuardedBuf,
    req: &Request,
    fault: Fault,
) -> Result<(), Errno> {
    let ptr = buf.place(&req.to_bytes(), fault);
    dev.ioctl_ptr(abi::PLOOP_IOC_SNAPSHOT, ptr)
}

/// Opens `dir` as a sync fd: O_RDONLY|O_DIRECTORY; a block device node O_RDONLY, as
/// [`open_sync_dev`].
pub fn open_sync_fd(dir: &Path) -> Result<fs::File> {
    if fs::metadata(dir).is_ok_and(|m| m.file_type().is_block_device()) {
        return open_sync_dev(dir);
    }
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| anyhow!("opening mountpoint {} (O_RDONLY|O_DIRECTORY): {e}", dir.display()))
}

/// Opens the block device node `node` O_RDONLY as a sync fd, as libploop does with
/// /dev/ploopNp1.
pub fn open_sync_dev(node: &Path) -> Result<fs::File> {
    let m = fs::metadata(node).map_err(|e| anyhow!("{}: {e}", node.display()))?;
    if !m.file_type().is_block_device() {
        bail!("{} is not a block device node", node.display());
    }
    fs::File::open(node).map_err(|e| anyhow!("opening {} (O_RDONLY): {e}", node.display()))
}

/// Opens (creating it empty if missing, removed again unless kept) a ploop1 delta for a
/// device of `size` bytes with clusters of 2^`cluster_log` sectors, as libploop's
/// create_snapshot_delta does.
pub fn open_new_ploop1(
    path: &Path,
    size: u64,
    cluster_log: u32,
    version: ploop1::Version,
    read_only: bool,
) -> Result<(fs::File, NewFile)> {
    let mut created = NewFile { path: None };
    if !path.exists() {
        let header = ploop1::empty_header(size, cluster_log, version)?;
        ploop1::write_empty(create_delta_file(path, false)?, path, &header)?;
        created.path = Some(path.to_path_buf());
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    Ok((f, created))
}

/// A new delta file at `path` for `device create` and new snapshot tops: it must not exist
/// unless `force` (then it is emptied).
fn create_delta_file(path: &Path, force: bool) -> Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    o.open(path).map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            anyhow!("{} exists (use --force to replace it)", path.display())
        } else {
            anyhow!("creating {}: {e}", path.display())
        }
    })
}

/// A delta file created by this command, removed again unless kept.
pub struct NewFile {
    path: Option<PathBuf>,
}

impl NewFile {
    pub fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Opens the delta for a snapshot, creating it (sparse, `size` bytes) if missing. `check`:
/// an existing file must have exactly `size` bytes.
pub fn open_new_delta(
    path: &Path,
    size: u64,
    read_only: bool,
    check: bool,
) -> Result<(fs::File, NewFile)> {
    let mut created = NewFile { path: None };
    let file = match fs::OpenOptions::new().read(true).write(true).create_new(true).open(path) {
        Ok(f) => {
            created.path = Some(path.to_path_buf());
            f.set_len(size).map_err(|e| anyhow!("sizing {}: {e}", path.display()))?;
            if read_only {
                drop(f);
                fs::File::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?
            } else {
                f
            }
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(path)
                .map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
            let len = f.metadata().map_err(|e| anyhow!("{}: {e}", path.display()))?.len();
            if check && len != size {
                bail!(
                    "{} has {len} bytes, the device {size}: a delta must have the device's size",
                    path.display()
                );
            }
            f
        }
        Err(e) => bail!("creating {}: {e}", path.display()),
    };
    Ok((file, created))
}

// ------------------------------------------------------------------------------------------
// commands

pub fn device(cmd: Device) -> Result<ExitCode> {
    match cmd {
        Device::Create { size, format, cluster_log, force, delta }
            if format == PLOOP_FMT_PLOOP1 =>
        {
            let h = ploop1::empty_header(parse_size(&size)?, cluster_log, ploop1::Version::V2)?;
            ploop1::write_empty(create_delta_file(&delta, force)?, &delta, &h)?;
            println!(
                "{}: ploop1 delta (v2), {} bytes, cluster {} KiB, empty",
                delta.display(),
                h.device_bytes(),
                h.cluster_bytes() / 1024
            );
            Ok(ExitCode::SUCCESS)
        }
        Device::Create { format, .. } if format != PLOOP_FMT_RAW => {
            bail!("--format: raw or ploop1")
        }
        Device::Create { size, force, delta, .. } => {
            let bytes = parse_size(&size)?;
            let f = create_delta_file(&delta, force)?;
            f.set_len(bytes).map_err(|e| anyhow!("sizing {}: {e}", delta.display()))?;
            println!("{}: raw delta, {bytes} bytes (sparse)", delta.display());
            Ok(ExitCode::SUCCESS)
        }
        Device::Attach { device, read_only, cluster_log, deltas } => {
            attach(&device, &deltas, read_only, cluster_log)
        }
        Device::Detach { device } => {
            let dev = PloopDev::open(&device)?;
            match dev.clear() {
                Ok(()) => {
                    println!("{}: detached", device.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    let holders = dev.holders();
                    let hint = if e == Errno::EBUSY
                        && dev.pstate("maintenance").is_some_and(|m| m != 0)
                    {
                        "a snapshot is in progress on the device".to_string()
                    } else if e == Errno::EBUSY {
                        format!(
                            "the device is in use: unmount it and remove the dm devices on it{}",
                            if holders.is_empty() {
                                String::new()
                            } else {
                                format!(" (holders: {})", holders.join(", "))
                            }
                        )
                    } else {
                        String::new()
                    };
                    report_failure("PLOOP_IOC_CLEAR", &device, e, &hint);
                    Ok(ExitCode::from(1))
                }
            }
        }
        Device::Freeze { device } => {
            simple_ioctl(&device, abi::PLOOP_IOC_FREEZE, "PLOOP_IOC_FREEZE")
        }
        Device::Thaw { device } => simple_ioctl(&device, abi::PLOOP_IOC_THAW, "PLOOP_IOC_THAW"),
    }
}

fn simple_ioctl(device: &Path, nr: libc::Ioctl, what: &str) -> Result<ExitCode> {
    let dev = PloopDev::open(device)?;
    match dev.ioctl_none(nr) {
        Ok(()) => {
            println!("{what} on {}: ok", device.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let hint = match e {
                Errno::EBUSY => "a snapshot is in progress",
                Errno::EINVAL => "the device has no delta",
                Errno::ENOTTY => "not a ploop device",
                _ => "",
            };
            report_failure(what, device, e, hint);
            Ok(ExitCode::from(1))
        }
    }
}

fn attach(
    device: &Path,
    deltas: &[PathBuf],
    read_only: bool,
    cluster_log: Option<u32>,
) -> Result<ExitCode> {
    let dev = PloopDev::open(device)?;
    if let Some(n) = dev.pstate("nr_deltas").filter(|&n| n > 0) {
        bail!("{} already has {n} delta(s): detach it first", device.display());
    }
    // Check everything before the first ioctl.
    let mut files = Vec::new();
    let mut size = None;
    let mut formats = Vec::new();
    let mut header_log = None;
    for p in deltas {
        if let Some(h) = ploop1::read_header(p)? {
            header_log.get_or_insert(ploop1::cluster_log(&h));
            formats.push((PLOOP_FMT_PLOOP1, Some(h.device_bytes())));
        } else {
            formats.push((PLOOP_FMT_RAW, None));
        }
    }
    let cluster_log = cluster_log.or(header_log).unwrap_or(0);
    for (i, p) in deltas.iter().enumerate() {
        let top = i + 1 == deltas.len();
        let rdonly = !top || read_only;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(!rdonly)
            .open(p)
            .map_err(|e| anyhow!("opening delta {}: {e}", p.display()))?;
        let meta = f.metadata().map_err(|e| anyhow!("{}: {e}", p.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", p.display());
        }
        let len = formats[i].1.unwrap_or(meta.len());
        match size {
            None => size = Some(len),
            Some(s) if s != len => bail!(
                "{} is for {len} bytes but {} for {s}: all deltas of a device have the same size",
                p.display(),
                deltas[0].display()
            ),
            _ => {}
        }
        files.push((f, rdonly));
    }
    for (i, (f, rdonly)) in files.iter().enumerate() {
        let flags = if *rdonly { PLOOP_FMT_RDONLY } else { 0 };
        let mut req = Request::one(formats[i].0, flags, f.as_raw_fd());
        req.ctl.pctl_cluster_log = cluster_log;
        req.chunks[0].pctl_len = size.unwrap_or(0);
        let mut buf = GuardedBuf::new()?;
        let ptr = buf.place(&req.to_bytes(), Fault::None);
        if let Err(e) = dev.ioctl_ptr(abi::PLOOP_IOC_ADD_DELTA, ptr) {
            report_failure(
                &format!("PLOOP_IOC_ADD_DELTA of {} (level {i})", deltas[i].display()),
                device,
                e,
                match e {
                    Errno::EINVAL => {
                        "the delta is not a regular file, its size is wrong, its ploop1 header \
                         is bad or disagrees with --cluster-log"
                    }
                    Errno::EBUSY => {
                        "the device is busy, the file is already a delta of it, or its ploop1 \
                         header says it is in use"
                    }
                    Errno::EBADF => "the delta must be writable unless added read-only",
                    Errno::ENOTTY => "not a ploop device",
                    _ => "",
                },
            );
            if i > 0 {
                match dev.clear() {
                    Ok(()) => eprintln!("ploop-verify: dropped the {i} delta(s) already added"),
                    Err(c) => eprintln!(
                        "ploop-verify: could not drop the {i} delta(s) already added: PLOOP_IOC_CLEAR: {}",
                        c.numbered()
                    ),
                }
            }
            return Ok(ExitCode::from(1));
        }
    }
    println!(
        "{}: {} delta(s), {} bytes, top {} ({})",
        device.display(),
        deltas.len(),
        size.unwrap_or(0),
        deltas[deltas.len() - 1].display(),
        if read_only { "read-only" } else { "writable" }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn snapshot(a: SnapshotArgs) -> Result<ExitCode> {
    let dev = PloopDev::open(&a.device)?;
    let size = dev.size()?;
    let sync = match (&a.sync_fd_from, &a.sync_fd_dev) {
        (Some(p), _) => Some(open_sync_fd(p)?),
        (None, Some(p)) => Some(open_sync_dev(p)?),
        (None, None) => None,
    };
    let format = a.format.unwrap_or(PLOOP_FMT_RAW);
    let cluster_log = a.cluster_log.or_else(|| dev.cluster_log()).unwrap_or(0);
    let delta = match &a.delta {
        Some(p) => {
            if size == 0 && !a.raw {
                bail!("{} has size 0: it has no delta (attach one first)", a.device.display());
            }
            // --raw sends whatever --format says with a raw file: the kernel judges it
            if format == PLOOP_FMT_PLOOP1 && !a.raw {
                let v = dev.ploop1_version();
                Some(open_new_ploop1(p, size, cluster_log, v, a.delta_readonly)?)
            } else {
                Some(open_new_delta(p, size, a.delta_readonly, !a.raw)?)
            }
        }
        None => None,
    };
    let delta_fd = delta.as_ref().map(|(f, _)| f.as_raw_fd());
    let sync_fd: Option<RawFd> = a.sync_fd.or(sync.as_ref().map(|f| f.as_raw_fd()));

    let req = if a.raw {
        let chunks = a.chunks.unwrap_or(if sync_fd.is_some() { 2 } else { 1 });
        let flags = a.ctl_flags.unwrap_or(if a.no_fs_sync { 0 } else { PLOOP_FLAG_FS_SYNC });
        let mut r = Request::one(format, flags, a.chunk0_fd.or(delta_fd).unwrap_or(-1));
        r.ctl.pctl_chunks = chunks;
        r.ctl.pctl_cluster_log = cluster_log;
        r.chunks[0].pctl_type = a.io_type.unwrap_or(PLOOP_IO_AUTO);
        r.chunks.push(PloopCtlChunk {
            pctl_fd: sync_fd.unwrap_or(-1),
            pctl_type: a.chunk1_type,
            pctl_flags: a.chunk1_flags,
            pctl_offset: a.chunk1_offset,
            pctl_start: a.chunk1_start,
            pctl_len: a.chunk1_len,
        });
        r
    } else {
        let flags = if a.no_fs_sync { 0 } else { PLOOP_FLAG_FS_SYNC };
        let mut r = Request::one(format, flags, delta_fd.expect("--delta is required"));
        r.ctl.pctl_cluster_log = cluster_log;
        r.chunks[0].pctl_type = a.io_type.unwrap_or(PLOOP_IO_AUTO);
        if let Some(fd) = sync_fd {
            r.ctl.pctl_chunks = 2;
            r.chunks.push(PloopCtlChunk { pctl_fd: fd, ..Default::default() });
        }
        r
    };

    let mut buf = GuardedBuf::new()?;
    let start = Instant::now();
    let res = send_snapshot(&dev, &mut buf, &req, a.fault);
    let took = start.elapsed();
    match res {
        Ok(()) => {
            if let Some((_, created)) = delta {
                created.keep();
            }
            let level = dev.pstate("top").map(|t| format!(" (level {t})")).unwrap_or_default();
            println!(
                "PLOOP_IOC_SNAPSHOT on {}: ok in {:.1} ms; new top {}{level}",
                a.device.display(),
                took.as_secs_f64() * 1e3,
                a.delta
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "delta".into()),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            report_failure("PLOOP_IOC_SNAPSHOT", &a.device, e, snapshot_hint(e));
            Ok(ExitCode::from(1))
        }
    }
}

/// What the `pctl_chunks == 0` probe says about a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    Patched,
    Unpatched,
    Unknown,
}

/// The probe itself: `Err(errno)` is what the kernel answered (`Ok` only if it accepted it).
pub fn probe_support(dev: &PloopDev) -> (Support, Result<(), Errno>) {
    let mut req = Request::one(PLOOP_FMT_RAW, 0, -1);
    req.ctl.pctl_chunks = 0;
    req.chunks.push(PloopCtlChunk { pctl_fd: -1, ..Default::default() });
    let res = match GuardedBuf::new() {
        Ok(mut buf) => send_snapshot(dev, &mut buf, &req, Fault::None),
        Err(_) => Err(Errno::ENOMEM),
    };
    let s = match res {
        Err(Errno::ENOTSUPP) => Support::Patched,
        Err(Errno::EINVAL) => Support::Unpatched,
        _ => Support::Unknown,
    };
    (s, res)
}

pub fn support(a: SupportArgs) -> Result<ExitCode> {
    let dev = PloopDev::open(&a.device)?;
    let (s, res) = probe_support(&dev);
    let seen = match res {
        Ok(()) => "the request was accepted".to_string(),
        Err(e) => e.numbered(),
    };
    match s {
        Support::Patched => {
            println!(
                "patched: pctl_chunks=0 gave {seen}; PLOOP_IOC_SNAPSHOT takes a sync fd in chunk #1"
            );
            Ok(ExitCode::SUCCESS)
        }
        Support::Unpatched => {
            println!(
                "unpatched: pctl_chunks=0 gave {seen}; no sync fd support (autodetection only)"
            );
            Ok(ExitCode::SUCCESS)
        }
        Support::Unknown => {
            let why = match res {
                Err(Errno::ENOENT) => " (the device has no delta: attach one first)",
                Err(Errno::EBUSY) => " (a snapshot is in progress: try again)",
                Err(Errno::ENOTTY) => " (not a ploop device)",
                _ => "",
            };
            println!("unknown: pctl_chunks=0 gave {seen}{why}; want ENOTSUPP (524) or EINVAL (22)");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new delta never replaces a file unless --force says so.
    #[test]
    fn a_delta_file_is_replaced_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        create_delta_file(&p, false).unwrap();
        let err = create_delta_file(&p, false).unwrap_err().to_string();
        assert!(err.contains("exists (use --force to replace it)"), "{err}");
        create_delta_file(&p, true).unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        for bad in ["", "0", "100", "12Q", "M", "-1M", "99999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32("0x10000000").unwrap(), 0x1000_0000);
        assert_eq!(parse_u16("255").unwrap(), 255);
        assert!(parse_u16("65536").is_err());
        assert!(parse_u32("x").is_err());
    }

    #[test]
    fn guarded_buffer_places_requests_at_the_boundary() {
        let mut b = GuardedBuf::new().unwrap();
        let bytes = [7u8; 88];
        let p = b.place(&bytes, Fault::None) as usize;
        assert_eq!((p + 88) % b.page, 0);
        let p = b.place(&bytes, Fault::Chunk0) as usize;
        assert_eq!((p + 24) % b.page, 0);
        let p = b.place(&bytes, Fault::Chunk1) as usize;
        assert_eq!((p + 56) % b.page, 0);
        // SAFETY: reading the readable part just written.
        assert_eq!(unsafe { *(p as *const u8) }, 7);
        assert!(b.place(&bytes, Fault::Null).is_null());
    }

    #[test]
    fn non_block_devices_are_bad_input() {
        assert!(PloopDev::open(Path::new("/dev/null")).is_err());
        assert!(PloopDev::open(Path::new("/nonexistent/ploop0")).is_err());
    }
}
