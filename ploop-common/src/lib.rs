//! The event ABI shared by the eBPF programs and user space.
//!
//! This crate is the only place where the layout of what crosses the kernel/user boundary is
//! written down: the event record, the probe identifiers, the configuration slots and the map
//! names. Both sides compile it, so a change here is a change on both sides at once.
#![no_std]

pub mod ploop_if;

/// Which kernel function an event comes from. Names are the 5.10-6.7 (and vz7) kernel names;
/// `bdev_freeze`/`bdev_thaw` on 6.8+ report as `FREEZE_BDEV`/`THAW_BDEV`: the role matters to
/// the checker, the symbol that was attached is recorded by user space.
pub mod func {
    pub const FREEZE_BDEV: u16 = 1;
    pub const THAW_BDEV: u16 = 2;
    /// `ploop_snapshot(plo, arg, bdev)`; the entry event carries the request from `arg`.
    pub const PLOOP_SNAPSHOT: u16 = 3;
    pub const FIND_AND_FREEZE_BDEV: u16 = 4;
    pub const GET_BDEV_FROM_FD: u16 = 5;
    pub const PLOOP_QUIESCE: u16 = 6;
    pub const PLOOP_RELAX: u16 = 7;
    /// Exit of the `ioctl` syscall that carried a `ploop_snapshot` call: the errno user
    /// space sees (E3). Emitted only for threads inside a snapshot call.
    pub const SYS_IOCTL: u16 = 8;
}

/// Which argument of each function is a `struct block_device *` (`NO_DEV`: none).
pub const fn dev_arg(func: u16) -> usize {
    match func {
        func::FREEZE_BDEV | func::THAW_BDEV => 0,
        func::PLOOP_SNAPSHOT => 2,
        _ => NO_DEV,
    }
}
pub const NO_DEV: usize = usize::MAX;

/// [`Event::sync_state`]: how chunk #1's fd resolved in the kernel at `ploop_snapshot` entry.
pub mod sync_state {
    /// Not a two-chunk request (or the request could not be read).
    pub const NONE: u32 = 0;
    /// The fd's superblock has a block device; `sync_dev` is its `s_dev`.
    pub const RESOLVED: u32 = 1;
    /// No open file at that fd.
    pub const NO_FILE: u32 = 2;
    /// The superblock has no block device (tmpfs, proc, ...); `sync_dev` is its `s_dev`.
    pub const NO_BDEV: u32 = 3;
    /// The walk task -> files -> fdtable -> file -> inode -> sb failed or offsets are unknown.
    pub const UNREAD: u32 = 4;
}

/// Whether the event was taken at function entry or at return.
pub mod phase {
    pub const ENTRY: u8 = 0;
    pub const RETURN: u8 = 1;
}

/// Bits of [`Event::flags`].
pub mod flags {
    /// `block_device.bd_dev` could not be read (bad pointer or offset unknown).
    pub const DEV_UNREAD: u8 = 1 << 0;
    /// A return event whose entry was not seen (attached mid-call, or stash map full).
    pub const NO_ENTRY: u8 = 1 << 1;
    /// `ploop_snapshot` entry: the `ploop_ctl` could not be read from user memory.
    pub const CTL_UNREAD: u8 = 1 << 2;
    /// `ploop_snapshot` entry: chunks #0 and #1 could not be read from user memory.
    pub const CHUNKS_UNREAD: u8 = 1 << 3;
}

/// One probe hit. Fixed size, 8-byte aligned, no padding holes: the same bytes go through a
/// ring buffer or a perf buffer and are read back with `read_unaligned` in user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: monotonic, comparable across CPUs (the perf buffer is not
    /// ordered across CPUs, so user space sorts by this).
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the upper half, tid in the lower half.
    pub pid_tgid: u64,
    pub func: u16,
    pub phase: u8,
    pub flags: u8,
    pub cpu: u32,
    /// Kernel-internal `dev_t` (`MAJOR << 20 | MINOR`) of the `block_device` in argument 0.
    pub dev: u32,
    pub _pad: u32,
    /// Raw arguments 0..3 at entry (pointers are identities, e.g. the 3.10 `super_block *`
    /// that `thaw_bdev` receives); copied to the return event from the entry stash.
    pub args: [u64; 3],
    /// Return value (at return only): an `int`, or on 3.10 `freeze_bdev` a pointer.
    pub ret: i64,
    pub comm: [u8; 16],
    /// `ploop_snapshot` entry only: `struct ploop_ctl` as the caller passed it.
    pub ctl: [u8; PLOOP_CTL_SIZE],
    /// `ploop_snapshot` entry only: chunks #0 and #1 following the `ploop_ctl` (read whatever
    /// `pctl_chunks` says; the kernel reads #1 only when it is 2).
    pub chunks: [u8; 2 * PLOOP_CTL_CHUNK_SIZE],
    /// `super_block.s_dev` of chunk #1's fd, resolved in the caller's fd table.
    pub sync_dev: u32,
    pub sync_state: u32,
}

impl Event {
    /// All fields zero: a starting point for tests and replays.
    pub const ZERO: Event = Event {
        ts_ns: 0,
        pid_tgid: 0,
        func: 0,
        phase: 0,
        flags: 0,
        cpu: 0,
        dev: 0,
        _pad: 0,
        args: [0; 3],
        ret: 0,
        comm: [0; 16],
        ctl: [0; PLOOP_CTL_SIZE],
        chunks: [0; 2 * PLOOP_CTL_CHUNK_SIZE],
        sync_dev: 0,
        sync_state: 0,
    };
}

pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();
const _: () = assert!(EVENT_SIZE == 176);

pub use ploop_if::{CHUNK_SIZE as PLOOP_CTL_CHUNK_SIZE, CTL_SIZE as PLOOP_CTL_SIZE};

/// Slots of the `PLOOP_CONFIG` array map (u64 values). Configuration lives in a map, not in
/// globals, so that the same object loads on kernels before 5.2.
pub mod config {
    /// `offsetof(struct block_device, bd_dev)`, read from BTF by user space. 36 on 6.1,
    /// 52 on 6.12. `u64::MAX` = unknown.
    pub const BD_DEV_OFFSET: u32 = 0;
    /// The fd walk of S1: `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds`,
    /// `fdtable.fd`, `file.f_inode`, `inode.i_sb`, `super_block.s_dev`, `super_block.s_bdev`.
    pub const TASK_FILES: u32 = 1;
    pub const FILES_FDT: u32 = 2;
    pub const FDT_MAX_FDS: u32 = 3;
    pub const FDT_FD: u32 = 4;
    pub const FILE_F_INODE: u32 = 5;
    pub const INODE_I_SB: u32 = 6;
    pub const SB_S_DEV: u32 = 7;
    pub const SB_S_BDEV: u32 = 8;
    /// Number of slots.
    pub const LEN: u32 = 16;
    pub const UNKNOWN: u64 = u64::MAX;
}

/// Map and program names, as user space looks them up.
pub mod names {
    pub const CONFIG_MAP: &str = "PLOOP_CONFIG";
    pub const EVENTS_MAP: &str = "PLOOP_EVENTS";
    pub const LOST_MAP: &str = "PLOOP_LOST";
}

/// Key of the entry stash that lets a return probe report the arguments of its call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StashKey {
    pub pid_tgid: u64,
    pub func: u32,
    pub _pad: u32,
}

/// What the entry probe leaves for the return probe of the same call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stash {
    pub args: [u64; 3],
    pub dev: u32,
    pub flags: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `repr(C)`, no padding holes (the `_pad` fields are explicit).
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::StashKey {}
    unsafe impl aya::Pod for super::Stash {}
}
