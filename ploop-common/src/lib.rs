//! The event ABI shared by the eBPF programs and user space.
//!
//! This crate is the only place where the layout of what crosses the kernel/user boundary is
//! written down: the event record, the probe identifiers, the configuration slots and the map
//! names. Both sides compile it, so a change here is a change on both sides at once.
#![no_std]

/// Which kernel function an event comes from. Names are the 5.10-6.7 (and vz7) kernel names;
/// `bdev_freeze`/`bdev_thaw` on 6.8+ report as `FREEZE_BDEV`/`THAW_BDEV`: the role matters to
/// the checker, the symbol that was attached is recorded by user space.
pub mod func {
    pub const FREEZE_BDEV: u16 = 1;
    pub const THAW_BDEV: u16 = 2;
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
}

pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();
const _: () = assert!(EVENT_SIZE == 80);

/// Slots of the `PLOOP_CONFIG` array map (u64 values). Configuration lives in a map, not in
/// globals, so that the same object loads on kernels before 5.2.
pub mod config {
    /// `offsetof(struct block_device, bd_dev)`, read from BTF by user space. 36 on 6.1,
    /// 52 on 6.12. `u64::MAX` = unknown.
    pub const BD_DEV_OFFSET: u32 = 0;
    /// Number of slots.
    pub const LEN: u32 = 8;
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
