//! The event ABI shared by the eBPF programs and user space.
//!
//! This crate is the only place where the layout of what crosses the kernel/user boundary is
//! written down: the event record, the probe identifiers, the configuration slots and the map
//! names. Both sides compile it, so a change here is a change on both sides at once.
#![no_std]

pub mod ploop_if;

/// Every probe the tool attaches, named as the kernel names what it probes. This enum is the
/// one place a probe's identity is written down: its id in [`Event::func`], its name in
/// traces and reports, where it attaches and which argument is a `struct block_device *`.
/// Adding a variant makes the compiler list every place that must learn about it.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Probe {
    /// `freeze_bdev` (3.10 to 6.7) or `bdev_freeze` (6.8+): the role matters to the checker;
    /// the symbol that was attached is recorded by user space.
    FreezeBdev = 1,
    /// `thaw_bdev` (3.10 to 6.7) or `bdev_thaw` (6.8+).
    ThawBdev = 2,
    /// `ploop_snapshot(plo, arg, bdev)`; the entry event carries the request from `arg`.
    PloopSnapshot = 3,
    FindAndFreezeBdev = 4,
    GetBdevFromFd = 5,
    PloopQuiesce = 6,
    PloopRelax = 7,
    /// `syscalls:sys_exit_ioctl` of a thread whose ioctl was a ploop snapshot call (armed
    /// by `sys_enter_ioctl` or `ploop_snapshot`): the errno user space sees (E3).
    SysExitIoctl = 8,
    /// `syscalls:sys_enter_ioctl` of `PLOOP_IOC_SNAPSHOT`, `_FREEZE` or `_THAW` on a ploop
    /// block device: where a snapshot call is anchored, since the syscall cannot be inlined
    /// away and calls refused before `ploop_snapshot` (vz7's -EBUSY at dispatch) are calls
    /// too. `dev` is the device the fd names; the arguments are fd, cmd, arg.
    SysEnterIoctl = 9,
    /// The top delta format's `complete_snapshot` operation (`top_delta->ops->
    /// complete_snapshot(top_delta, &snapdata)`: `ploop1_complete_snapshot`,
    /// `raw_complete_snapshot`): the delta switch itself. Reached through an ops table, it
    /// keeps its symbol whatever the compiler inlines, so it places the switch where
    /// `ploop_quiesce`/`ploop_relax` do not fire.
    CompleteSnapshot = 10,
}

/// How a probe reaches the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A kernel function, by the first of `symbols` the kernel has (newest name first), or
    /// where `every`, by each of them: one operation with an implementation per delta
    /// format, any of which a kernel may call. kprobe/kretprobe always; fentry/fexit only
    /// where `fentry` (vmlinux functions with one argument: fentry cannot reach module
    /// functions, aya-rs/aya#301).
    Function { symbols: &'static [&'static str], fentry: bool, every: bool },
    /// A static tracepoint.
    Tracepoint { category: &'static str, name: &'static str },
}

impl Probe {
    pub const ALL: [Probe; 10] = [
        Probe::FreezeBdev,
        Probe::ThawBdev,
        Probe::PloopSnapshot,
        Probe::FindAndFreezeBdev,
        Probe::GetBdevFromFd,
        Probe::PloopQuiesce,
        Probe::PloopRelax,
        Probe::SysExitIoctl,
        Probe::SysEnterIoctl,
        Probe::CompleteSnapshot,
    ];

    #[inline(always)]
    pub const fn id(self) -> u16 {
        self as u16
    }

    pub const fn from_id(id: u16) -> Option<Probe> {
        Some(match id {
            1 => Probe::FreezeBdev,
            2 => Probe::ThawBdev,
            3 => Probe::PloopSnapshot,
            4 => Probe::FindAndFreezeBdev,
            5 => Probe::GetBdevFromFd,
            6 => Probe::PloopQuiesce,
            7 => Probe::PloopRelax,
            8 => Probe::SysExitIoctl,
            9 => Probe::SysEnterIoctl,
            10 => Probe::CompleteSnapshot,
            _ => return None,
        })
    }

    /// The name in traces, reports and eBPF program names (`<name>_kprobe`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Probe::FreezeBdev => "freeze_bdev",
            Probe::ThawBdev => "thaw_bdev",
            Probe::PloopSnapshot => "ploop_snapshot",
            Probe::FindAndFreezeBdev => "find_and_freeze_bdev",
            Probe::GetBdevFromFd => "get_bdev_from_fd",
            Probe::PloopQuiesce => "ploop_quiesce",
            Probe::PloopRelax => "ploop_relax",
            Probe::SysExitIoctl => "sys_exit_ioctl",
            Probe::SysEnterIoctl => "sys_enter_ioctl",
            Probe::CompleteSnapshot => "complete_snapshot",
        }
    }

    pub fn from_name(name: &str) -> Option<Probe> {
        // A match, not a search of ALL by name(): a replay looks up every event's probe.
        Some(match name {
            "freeze_bdev" => Probe::FreezeBdev,
            "thaw_bdev" => Probe::ThawBdev,
            "ploop_snapshot" => Probe::PloopSnapshot,
            "find_and_freeze_bdev" => Probe::FindAndFreezeBdev,
            "get_bdev_from_fd" => Probe::GetBdevFromFd,
            "ploop_quiesce" => Probe::PloopQuiesce,
            "ploop_relax" => Probe::PloopRelax,
            // Traces written before the names were unified call the ioctl exit `sys_ioctl`.
            "sys_exit_ioctl" | "sys_ioctl" => Probe::SysExitIoctl,
            "sys_enter_ioctl" => Probe::SysEnterIoctl,
            "complete_snapshot" => Probe::CompleteSnapshot,
            _ => return None,
        })
    }

    pub const fn attach(self) -> Attach {
        let (symbols, fentry): (&'static [&'static str], bool) = match self {
            Probe::FreezeBdev => (&["bdev_freeze", "freeze_bdev"], true),
            Probe::ThawBdev => (&["bdev_thaw", "thaw_bdev"], true),
            Probe::PloopSnapshot => (&["ploop_snapshot"], false),
            Probe::FindAndFreezeBdev => (&["find_and_freeze_bdev"], false),
            Probe::GetBdevFromFd => (&["get_bdev_from_fd"], false),
            Probe::PloopQuiesce => (&["ploop_quiesce"], false),
            Probe::PloopRelax => (&["ploop_relax"], false),
            // vz7's formats are modules of their own (fmt_ploop1.c, fmt_raw.c): both may be
            // loaded, and the top delta of a device is either.
            Probe::CompleteSnapshot => {
                return Attach::Function {
                    symbols: &["ploop1_complete_snapshot", "raw_complete_snapshot"],
                    fentry: false,
                    every: true,
                };
            }
            Probe::SysExitIoctl => {
                return Attach::Tracepoint { category: "syscalls", name: "sys_exit_ioctl" };
            }
            Probe::SysEnterIoctl => {
                return Attach::Tracepoint { category: "syscalls", name: "sys_enter_ioctl" };
            }
        };
        Attach::Function { symbols, fentry, every: false }
    }

    /// Which argument is a `struct block_device *`, whose `bd_dev` the event carries.
    #[inline(always)]
    pub const fn dev_arg(self) -> Option<usize> {
        match self {
            Probe::FreezeBdev | Probe::ThawBdev => Some(0),
            Probe::PloopSnapshot => Some(2),
            _ => None,
        }
    }
}

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
    /// `ploop_snapshot` entry: chunk #0 was read, chunk #1 could not be (a one-chunk request
    /// ending at the last bytes of a mapping, such as the top of the caller's stack).
    pub const CHUNK1_UNREAD: u8 = 1 << 4;
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
    /// [`Probe::id`].
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
    /// `inode.i_mode & S_IFMT` of chunk #1's fd (0: not read). A block-device node (what
    /// libploop passes) names a device by `i_rdev`, not by its filesystem: S4.
    pub sync_mode: u32,
    /// `inode.i_rdev` of chunk #1's fd when it is a block-device node, else 0.
    pub sync_rdev: u32,
    /// `inode.i_ino` and its superblock's `s_dev` of chunk #0's fd (the new top delta),
    /// resolved in the caller's fd table (0, 0: not read). The oracle (X1) finds the new top
    /// among the device's deltas by it: the caller may be gone before user space looks.
    pub delta_ino: u64,
    pub delta_dev: u32,
    pub _pad2: u32,
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
        sync_mode: 0,
        sync_rdev: 0,
        delta_ino: 0,
        delta_dev: 0,
        _pad2: 0,
    };
}

pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();
const _: () = assert!(EVENT_SIZE == 200);

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
    /// For `sys_enter_ioctl`'s filter (is the fd a ploop block device?) and S4 (is the sync
    /// fd a block-device node, and of which device?): `inode.i_mode`, `inode.i_rdev`; and
    /// ploop's major from /proc/devices (`UNKNOWN`: any block device).
    pub const INODE_I_MODE: u32 = 9;
    pub const INODE_I_RDEV: u32 = 10;
    pub const PLOOP_MAJOR: u32 = 11;
    /// `inode.i_ino`: the identity of chunk #0's file (the new top delta, for X1).
    pub const INODE_I_INO: u32 = 12;
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

#[cfg(test)]
mod tests {
    use super::Probe;

    #[test]
    fn probe_ids_and_names_round_trip_and_are_unique() {
        for (i, p) in Probe::ALL.into_iter().enumerate() {
            assert_eq!(Probe::from_id(p.id()), Some(p));
            assert_eq!(Probe::from_name(p.name()), Some(p));
            assert!(Probe::ALL[..i].iter().all(|q| q.id() != p.id() && q.name() != p.name()));
        }
        assert_eq!(Probe::from_id(0), None);
        assert_eq!(Probe::from_name("sys_ioctl"), Some(Probe::SysExitIoctl), "old traces");
    }
}

#[cfg(feature = "user")]
mod user {
    use super::Probe;

    // SAFETY: plain-old-data, `repr(C)`, no padding holes (the `_pad` fields are explicit).
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::StashKey {}
    unsafe impl aya::Pod for super::Stash {}

    /// By name: traces and reports are read by people.
    impl serde::Serialize for Probe {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.name())
        }
    }

    impl<'de> serde::Deserialize<'de> for Probe {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Name;
            impl serde::de::Visitor<'_> for Name {
                type Value = Probe;
                fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.write_str("a probe name such as \"freeze_bdev\"")
                }
                fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Probe, E> {
                    Probe::from_name(name)
                        .ok_or_else(|| E::custom(format_args!("unknown probe {name:?}")))
                }
            }
            d.deserialize_str(Name)
        }
    }

    impl core::fmt::Display for Probe {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.name())
        }
    }
}
