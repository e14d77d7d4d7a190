//! The ploop ioctl ABI (x86-64), exactly as CONTRACT.md and `include/ploop_if.h` of the
//! OpenVZ ploop tools define it: the eBPF programs read `struct ploop_ctl` from user memory
//! and user space builds it, so both sides take it from here.

/// `PLOOPCTLTYPE`: the ioctl type byte of every ploop request.
pub const PLOOPCTLTYPE: u8 = b'P';

/// `pctl_format`: raw delta (a sparse image of the device size).
pub const PLOOP_FMT_RAW: u32 = 1;
/// `pctl_format`: the ploop1 image format (not supported by the model driver).
pub const PLOOP_FMT_PLOOP1: u32 = 2;
/// `pctl_flags` of `PLOOP_IOC_ADD_DELTA`: a read-only (lower) delta.
pub const PLOOP_FMT_RDONLY: u32 = 1;
/// `pctl_flags` of `PLOOP_IOC_SNAPSHOT`: freeze the filesystem around the delta switch.
pub const PLOOP_FLAG_FS_SYNC: u32 = 0x1000_0000;
/// `maintenance_type` while a snapshot has the device frozen (the model driver shows it in
/// `pstate/maintenance`).
pub const PLOOP_MNTN_SNAPSHOT: u32 = 3;

/// Kernel-internal `ENOTSUPP`: user space sees errno 524, which has no libc name.
pub const ENOTSUPP: i32 = 524;

/// `struct ploop_ctl_chunk` (32 bytes, aligned 8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopCtlChunk {
    pub pctl_fd: i32,
    pub pctl_type: u32,
    pub pctl_flags: u32,
    pub pctl_offset: u32,
    pub pctl_start: u64,
    pub pctl_len: u64,
}

/// `struct ploop_ctl` (24 bytes, aligned 8 because of the trailing `chunks[0]`). The chunks
/// follow it in memory: see [`Request`].
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopCtl {
    pub pctl_format: u32,
    pub pctl_flags: u32,
    pub pctl_cluster_log: u32,
    pub pctl_size: u32,
    pub pctl_chunks: u16,
    pub pctl_level: u8,
    pub mbz1: u8,
    pub mbz2: u32,
}

const _: () = assert!(core::mem::size_of::<PloopCtl>() == 24);
const _: () = assert!(core::mem::align_of::<PloopCtl>() == 8);
const _: () = assert!(core::mem::size_of::<PloopCtlChunk>() == 32);
const _: () = assert!(core::mem::align_of::<PloopCtlChunk>() == 8);

pub const CTL_SIZE: usize = core::mem::size_of::<PloopCtl>();
pub const CHUNK_SIZE: usize = core::mem::size_of::<PloopCtlChunk>();

const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;

const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | ((PLOOPCTLTYPE as u64) << 8) | nr
}

/// `_IOW('P', 0, struct ploop_ctl)`
pub const PLOOP_IOC_ADD_DELTA: u64 = ioc(IOC_WRITE, 0, CTL_SIZE as u64);
/// `_IOW('P', 4, struct ploop_ctl)`
pub const PLOOP_IOC_SNAPSHOT: u64 = ioc(IOC_WRITE, 4, CTL_SIZE as u64);
/// `_IO('P', 6)`: drop every delta (the device goes back to size 0).
pub const PLOOP_IOC_CLEAR: u64 = ioc(IOC_NONE, 6, 0);
/// `_IO('P', 32)`
pub const PLOOP_IOC_FREEZE: u64 = ioc(IOC_NONE, 32, 0);
/// `_IO('P', 33)`
pub const PLOOP_IOC_THAW: u64 = ioc(IOC_NONE, 33, 0);
