//! The ploop ioctl ABI (x86-64), exactly as `include/ploop_if.h` of the OpenVZ ploop tools
//! defines it: the eBPF programs read `struct ploop_ctl` from user memory, user space builds
//! requests, and the model driver's C header (`tests/ploop-model/ploop_if.h`) is generated
//! from the tables at the end of this file (`cargo xtask gen-ploop-if`; a test fails when the
//! committed header differs or when C computes another value for any of its names).

/// `PLOOPCTLTYPE`: the ioctl type byte of every ploop request.
pub const PLOOPCTLTYPE: u8 = b'P';
/// The block major of ploop devices on vz7: libploop makes `/dev/ploopN` nodes with it.
pub const PLOOP_DEVICE_MAJOR: u32 = 182;
/// Minors per device (vz7's `PLOOP_PART_SHIFT` of 4): the disk and 15 partitions.
pub const PLOOP_PART_SHIFT: u32 = 4;

/// `pctl_format`: raw delta (a sparse image of the device size).
pub const PLOOP_FMT_RAW: u32 = 1;
/// `pctl_format`: the ploop1 image format (`ploop1_image.h`), what every snapshot delta is.
pub const PLOOP_FMT_PLOOP1: u32 = 2;

/// ploop1 subversions, as `pstate/fmt_version` shows them.
pub const PLOOP_FMT_ERROR: i32 = -1;
pub const PLOOP_FMT_UNDEFINED: i32 = 0;
/// "WithoutFreeSpace": BAT entries in sectors, 32-bit size.
pub const PLOOP_FMT_V1: i32 = 1;
/// "WithouFreSpacExt": BAT entries in clusters, 64-bit size.
pub const PLOOP_FMT_V2: i32 = 2;

/// `pctl_flags` of `PLOOP_IOC_ADD_DELTA`: a read-only (lower) delta.
pub const PLOOP_FMT_RDONLY: u32 = 1;
/// The delta flags user space may pass.
pub const PLOOP_FMT_FLAGS: u32 = 1;
pub const PLOOP_FMT_PREALLOCATED: u32 = 2;
/// `pctl_flags` of `PLOOP_IOC_ADD_DELTA`: a cookie (`PLOOP_COOKIE_SIZE` bytes) follows the
/// chunk; vz7 shows it in `pstate/cookie`, and libploop takes a running device without one
/// for a device being removed.
pub const PLOOP_FLAG_COOKIE: u32 = 4;
pub const PLOOP_COOKIE_SIZE: u32 = 64;
pub const PLOOP_FLAG_CLUBLKS: u32 = 8;
/// `pctl_flags` of `PLOOP_IOC_SNAPSHOT`: freeze the filesystem around the delta switch.
pub const PLOOP_FLAG_FS_SYNC: u32 = 0x1000_0000;

/// `chunks[0].pctl_type`: the I/O engine of a delta. Let the kernel choose (what libploop
/// sends for a plain file).
pub const PLOOP_IO_AUTO: u32 = 0;
pub const PLOOP_IO_DIRECT: u32 = 1;
pub const PLOOP_IO_NFS: u32 = 2;
/// Kernel AIO, what libploop sends for images on a local filesystem with `kaio` support.
pub const PLOOP_IO_KAIO: u32 = 4;

/// BAT slots the ploop1 header takes in the first cluster.
pub const PLOOP_MAP_OFFSET: u32 = 16;

/// `maintenance_type` (`pstate/maintenance`, and what `PLOOP_IOC_BALLOON` reports).
pub const PLOOP_MNTN_OFF: u32 = 0;
pub const PLOOP_MNTN_BALLOON: u32 = 1;
pub const PLOOP_MNTN_FBLOADED: u32 = 2;
/// While a snapshot has the device frozen.
pub const PLOOP_MNTN_SNAPSHOT: u32 = 3;
pub const PLOOP_MNTN_TRACK: u32 = 4;
pub const PLOOP_MNTN_DISCARD: u32 = 5;
/// Every type above this one needs the fast path off.
pub const PLOOP_MNTN_NOFAST: u32 = 256;
pub const PLOOP_MNTN_MERGE: u32 = 257;
pub const PLOOP_MNTN_GROW: u32 = 258;
pub const PLOOP_MNTN_RELOC: u32 = 259;
pub const PLOOP_MNTN_PUSH_BACKUP: u32 = 260;

/// Events in `pstate/event`.
pub const PLOOP_EVENT_ABORTED: u32 = 1;
pub const PLOOP_EVENT_STOPPED: u32 = 2;
pub const PLOOP_EVENT_ENOSPC: u32 = 3;

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
/// follow it in memory.
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

/// `struct ploop_ctl_delta`: what libploop passes to `PLOOP_IOC_ADD_DELTA` with
/// `PLOOP_FLAG_COOKIE`: one chunk, then the cookie.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PloopCtlDelta {
    pub c: PloopCtl,
    pub f: PloopCtlChunk,
    pub cookie: [u8; PLOOP_COOKIE_SIZE as usize],
}

/// `struct ploop_balloon_ctl`: `PLOOP_IOC_BALLOON`, which libploop also uses to read the
/// maintenance state (`inflate == 0`, `keep_intact == 1`) before an online snapshot.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopBalloonCtl {
    pub mntn_type: u32,
    pub alloc_head: u32,
    pub level: u8,
    pub inflate: u8,
    pub keep_intact: u8,
    pub mbz: u8,
}

/// `struct ploop_getdevice_ctl`: `PLOOP_IOC_GETDEVICE` answers the first unused minor.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopGetdeviceCtl {
    pub minor: u32,
    pub mbz1: u32,
}

/// `struct ploop_track_extent`: the argument of the tracking requests.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopTrackExtent {
    pub start: u64,
    pub end: u64,
}

/// `struct ploop_truncate_ctl`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopTruncateCtl {
    pub fd: i32,
    pub alloc_head: u32,
    pub level: u8,
    pub mbz1: u8,
    pub mbz2: u16,
}

/// `struct ploop_index_update_ctl` (the `rmap[0]` array follows).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopIndexUpdateCtl {
    pub n_maps: u32,
    pub level: u8,
    pub mbz1: u8,
    pub mbz2: u16,
}

/// `struct ploop_freeblks_ctl` (the extents follow).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopFreeblksCtl {
    pub n_extents: u32,
    pub alloc_head: u32,
    pub level: u8,
    pub mbz1: u8,
    pub mbz2: u16,
}

/// `struct ploop_relocblks_ctl` (the extents follow).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopRelocblksCtl {
    pub n_extents: u32,
    pub n_scanned: u32,
    pub alloc_head: u32,
    pub level: u8,
    pub mbz1: u8,
    pub mbz2: u16,
}

/// `struct ploop_push_backup_init_ctl`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopPushBackupInitCtl {
    pub cbt_uuid: [u8; 16],
    pub cbt_mask_addr: u64,
}

/// `struct ploop_push_backup_io_ctl` (the extents follow).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopPushBackupIoCtl {
    pub cbt_uuid: [u8; 16],
    pub direction: u32,
    pub n_extents: u32,
}

/// `struct ploop_push_backup_stop_ctl`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopPushBackupStopCtl {
    pub cbt_uuid: [u8; 16],
    pub status: u32,
}

/// `struct ploop_dump_bat_ctl` (the `bat[0]` array follows).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopDumpBatCtl {
    pub level: u32,
    pub start_cluster: u32,
    pub nr_clusters: u32,
}

const _: () = assert!(core::mem::size_of::<PloopCtl>() == 24);
const _: () = assert!(core::mem::align_of::<PloopCtl>() == 8);
const _: () = assert!(core::mem::size_of::<PloopCtlChunk>() == 32);
const _: () = assert!(core::mem::align_of::<PloopCtlChunk>() == 8);
const _: () = assert!(core::mem::size_of::<PloopCtlDelta>() == 120);

pub const CTL_SIZE: usize = core::mem::size_of::<PloopCtl>();
pub const CHUNK_SIZE: usize = core::mem::size_of::<PloopCtlChunk>();

const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((PLOOPCTLTYPE as u64) << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(IOC_NONE, nr, 0)
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(IOC_WRITE, nr, core::mem::size_of::<T>())
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(IOC_READ, nr, core::mem::size_of::<T>())
}

/// Add a delta; the device must be stopped.
pub const PLOOP_IOC_ADD_DELTA: u64 = iow::<PloopCtl>(0);
/// Close the images, free everything, return the device to its initial state.
pub const PLOOP_IOC_CLEAR: u64 = io(1);
pub const PLOOP_IOC_STOP: u64 = io(2);
pub const PLOOP_IOC_START: u64 = io(3);
/// A new top delta on a running device (on a stopped one: an add-delta).
pub const PLOOP_IOC_SNAPSHOT: u64 = iow::<PloopCtl>(4);
/// Remove a delta; the argument is its level.
pub const PLOOP_IOC_DEL_DELTA: u64 = iow::<u32>(5);
pub const PLOOP_IOC_TRACK_INIT: u64 = ior::<PloopTrackExtent>(6);
pub const PLOOP_IOC_TRACK_STOP: u64 = io(7);
pub const PLOOP_IOC_TRACK_ABORT: u64 = io(8);
pub const PLOOP_IOC_TRACK_SETPOS: u64 = iow::<u64>(9);
pub const PLOOP_IOC_TRACK_READ: u64 = ior::<PloopTrackExtent>(10);
/// Sync the deltas' cached state to disk.
pub const PLOOP_IOC_SYNC: u64 = io(11);
/// Merge the top delta into the one below it and delete it.
pub const PLOOP_IOC_MERGE: u64 = io(12);
pub const PLOOP_IOC_REPLACE_DELTA: u64 = iow::<PloopCtl>(13);
pub const PLOOP_IOC_TRUNCATE: u64 = iow::<PloopTruncateCtl>(14);
pub const PLOOP_IOC_UPDATE_INDEX: u64 = iow::<PloopIndexUpdateCtl>(16);
pub const PLOOP_IOC_GROW: u64 = iow::<PloopCtl>(17);
pub const PLOOP_IOC_FBGET: u64 = iow::<PloopFreeblksCtl>(18);
/// Start ballooning, or read the maintenance type.
pub const PLOOP_IOC_BALLOON: u64 = iow::<PloopBalloonCtl>(19);
pub const PLOOP_IOC_FREEBLKS: u64 = iow::<PloopFreeblksCtl>(20);
pub const PLOOP_IOC_RELOCBLKS: u64 = iow::<PloopRelocblksCtl>(21);
/// The first unused minor.
pub const PLOOP_IOC_GETDEVICE: u64 = iow::<PloopGetdeviceCtl>(22);
pub const PLOOP_IOC_DISCARD_INIT: u64 = io(23);
pub const PLOOP_IOC_DISCARD_FINI: u64 = io(24);
pub const PLOOP_IOC_DISCARD_WAIT: u64 = io(25);
pub const PLOOP_IOC_FBDROP: u64 = io(26);
/// `_IOR('P', 27, unsigned long)`: 8 bytes on x86-64.
pub const PLOOP_IOC_FBFILTER: u64 = ior::<u64>(27);
/// The largest size the top delta may grow to.
pub const PLOOP_IOC_MAX_DELTA_SIZE: u64 = iow::<u64>(28);
pub const PLOOP_IOC_PUSH_BACKUP_INIT: u64 = ior::<PloopPushBackupInitCtl>(29);
pub const PLOOP_IOC_PUSH_BACKUP_IO: u64 = ior::<PloopPushBackupIoCtl>(30);
pub const PLOOP_IOC_PUSH_BACKUP_STOP: u64 = ior::<PloopPushBackupStopCtl>(31);
/// Freeze the filesystem mounted over the device: not a snapshot.
pub const PLOOP_IOC_FREEZE: u64 = io(32);
pub const PLOOP_IOC_THAW: u64 = io(33);
pub const PLOOP_IOC_DUMP_CACHED_BAT: u64 = iow::<PloopDumpBatCtl>(34);

/// One `#define` of the generated C header: its name, the C text that defines it, and the
/// value this crate computes for it (the header test compiles the C text and compares).
pub struct CDefine {
    pub name: &'static str,
    pub c: &'static str,
    pub value: i64,
}

macro_rules! defines {
    ($($name:ident = $c:literal),* $(,)?) => {
        &[$(CDefine { name: stringify!($name), c: $c, value: $name as i64 }),*]
    };
}

/// Every constant above, as `include/ploop_if.h` spells it, in the order of that header.
pub const C_DEFINES: &[CDefine] = defines![
    PLOOP_FMT_RAW = "1",
    PLOOP_FMT_PLOOP1 = "2",
    PLOOP_FMT_ERROR = "(-1)",
    PLOOP_FMT_UNDEFINED = "0",
    PLOOP_FMT_V1 = "1",
    PLOOP_FMT_V2 = "2",
    PLOOP_FMT_RDONLY = "1",
    PLOOP_FMT_FLAGS = "1",
    PLOOP_FLAG_FS_SYNC = "0x10000000",
    PLOOP_FMT_PREALLOCATED = "2",
    PLOOP_FLAG_COOKIE = "4",
    PLOOP_COOKIE_SIZE = "64",
    PLOOP_FLAG_CLUBLKS = "8",
    PLOOP_IO_AUTO = "0",
    PLOOP_IO_DIRECT = "1",
    PLOOP_IO_NFS = "2",
    PLOOP_IO_KAIO = "4",
    PLOOP_MAP_OFFSET = "16",
    PLOOP_MNTN_OFF = "0",
    PLOOP_MNTN_BALLOON = "1",
    PLOOP_MNTN_FBLOADED = "2",
    PLOOP_MNTN_SNAPSHOT = "3",
    PLOOP_MNTN_TRACK = "4",
    PLOOP_MNTN_DISCARD = "5",
    PLOOP_MNTN_NOFAST = "256",
    PLOOP_MNTN_MERGE = "257",
    PLOOP_MNTN_GROW = "258",
    PLOOP_MNTN_RELOC = "259",
    PLOOP_MNTN_PUSH_BACKUP = "260",
    PLOOP_EVENT_ABORTED = "1",
    PLOOP_EVENT_STOPPED = "2",
    PLOOP_EVENT_ENOSPC = "3",
    PLOOP_DEVICE_MAJOR = "182",
    PLOOP_PART_SHIFT = "4",
    PLOOP_IOC_ADD_DELTA = "_IOW(PLOOPCTLTYPE, 0, struct ploop_ctl)",
    PLOOP_IOC_CLEAR = "_IO(PLOOPCTLTYPE, 1)",
    PLOOP_IOC_STOP = "_IO(PLOOPCTLTYPE, 2)",
    PLOOP_IOC_START = "_IO(PLOOPCTLTYPE, 3)",
    PLOOP_IOC_SNAPSHOT = "_IOW(PLOOPCTLTYPE, 4, struct ploop_ctl)",
    PLOOP_IOC_DEL_DELTA = "_IOW(PLOOPCTLTYPE, 5, __u32)",
    PLOOP_IOC_TRACK_INIT = "_IOR(PLOOPCTLTYPE, 6, struct ploop_track_extent)",
    PLOOP_IOC_TRACK_STOP = "_IO(PLOOPCTLTYPE, 7)",
    PLOOP_IOC_TRACK_ABORT = "_IO(PLOOPCTLTYPE, 8)",
    PLOOP_IOC_TRACK_SETPOS = "_IOW(PLOOPCTLTYPE, 9, __u64)",
    PLOOP_IOC_TRACK_READ = "_IOR(PLOOPCTLTYPE, 10, struct ploop_track_extent)",
    PLOOP_IOC_SYNC = "_IO(PLOOPCTLTYPE, 11)",
    PLOOP_IOC_MERGE = "_IO(PLOOPCTLTYPE, 12)",
    PLOOP_IOC_REPLACE_DELTA = "_IOW(PLOOPCTLTYPE, 13, struct ploop_ctl)",
    PLOOP_IOC_TRUNCATE = "_IOW(PLOOPCTLTYPE, 14, struct ploop_truncate_ctl)",
    PLOOP_IOC_UPDATE_INDEX = "_IOW(PLOOPCTLTYPE, 16, struct ploop_index_update_ctl)",
    PLOOP_IOC_GROW = "_IOW(PLOOPCTLTYPE, 17, struct ploop_ctl)",
    PLOOP_IOC_FBGET = "_IOW(PLOOPCTLTYPE, 18, struct ploop_freeblks_ctl)",
    PLOOP_IOC_BALLOON = "_IOW(PLOOPCTLTYPE, 19, struct ploop_balloon_ctl)",
    PLOOP_IOC_FREEBLKS = "_IOW(PLOOPCTLTYPE, 20, struct ploop_freeblks_ctl)",
    PLOOP_IOC_RELOCBLKS = "_IOW(PLOOPCTLTYPE, 21, struct ploop_relocblks_ctl)",
    PLOOP_IOC_GETDEVICE = "_IOW(PLOOPCTLTYPE, 22, struct ploop_getdevice_ctl)",
    PLOOP_IOC_DISCARD_INIT = "_IO(PLOOPCTLTYPE, 23)",
    PLOOP_IOC_DISCARD_FINI = "_IO(PLOOPCTLTYPE, 24)",
    PLOOP_IOC_DISCARD_WAIT = "_IO(PLOOPCTLTYPE, 25)",
    PLOOP_IOC_FBDROP = "_IO(PLOOPCTLTYPE, 26)",
    PLOOP_IOC_FBFILTER = "_IOR(PLOOPCTLTYPE, 27, unsigned long)",
    PLOOP_IOC_MAX_DELTA_SIZE = "_IOW(PLOOPCTLTYPE, 28, __u64)",
    PLOOP_IOC_PUSH_BACKUP_INIT = "_IOR(PLOOPCTLTYPE, 29, struct ploop_push_backup_init_ctl)",
    PLOOP_IOC_PUSH_BACKUP_IO = "_IOR(PLOOPCTLTYPE, 30, struct ploop_push_backup_io_ctl)",
    PLOOP_IOC_PUSH_BACKUP_STOP = "_IOR(PLOOPCTLTYPE, 31, struct ploop_push_backup_stop_ctl)",
    PLOOP_IOC_FREEZE = "_IO(PLOOPCTLTYPE, 32)",
    PLOOP_IOC_THAW = "_IO(PLOOPCTLTYPE, 33)",
    PLOOP_IOC_DUMP_CACHED_BAT = "_IOW(PLOOPCTLTYPE, 34, struct ploop_dump_bat_ctl)",
];

/// One member of a generated C struct, with the offset this crate's `repr(C)` gives it.
pub struct CMember {
    pub decl: &'static str,
    pub name: &'static str,
    pub offset: usize,
}

/// One generated C struct: its members, and the size and alignment of the Rust twin.
pub struct CStruct {
    pub name: &'static str,
    pub members: &'static [CMember],
    /// The flexible array member that follows, if any (`struct ploop_ctl_chunk chunks[0]`).
    pub tail: Option<&'static str>,
    pub size: usize,
    pub align: usize,
}

macro_rules! c_struct {
    ($c:literal, $t:ty, [$($decl:literal $field:ident as $cname:literal),* $(,)?] $(, tail $tail:literal)?) => {
        CStruct {
            name: $c,
            members: &[$(CMember {
                decl: $decl,
                name: $cname,
                offset: core::mem::offset_of!($t, $field),
            }),*],
            tail: c_struct!(@tail $($tail)?),
            size: core::mem::size_of::<$t>(),
            align: core::mem::align_of::<$t>(),
        }
    };
    (@tail $tail:literal) => { Some($tail) };
    (@tail) => { None };
}

/// The structs of `include/ploop_if.h`, in its order.
pub const C_STRUCTS: &[CStruct] = &[
    c_struct!("ploop_ctl_chunk", PloopCtlChunk, [
        "__s32" pctl_fd as "pctl_fd",
        "__u32" pctl_type as "pctl_type",
        "__u32" pctl_flags as "pctl_flags",
        "__u32" pctl_offset as "pctl_offset",
        "__u64" pctl_start as "pctl_start",
        "__u64" pctl_len as "pctl_len",
    ]),
    c_struct!("ploop_ctl", PloopCtl, [
        "__u32" pctl_format as "pctl_format",
        "__u32" pctl_flags as "pctl_flags",
        "__u32" pctl_cluster_log as "pctl_cluster_log",
        "__u32" pctl_size as "pctl_size",
        "__u16" pctl_chunks as "pctl_chunks",
        "__u8" pctl_level as "pctl_level",
        "__u8" mbz1 as "__mbz1",
        "__u32" mbz2 as "__mbz2",
    ], tail "struct ploop_ctl_chunk chunks[0]"),
    c_struct!("ploop_ctl_delta", PloopCtlDelta, [
        "struct ploop_ctl" c as "c",
        "struct ploop_ctl_chunk" f as "f",
        "char" cookie as "cookie[PLOOP_COOKIE_SIZE]",
    ]),
    c_struct!("ploop_truncate_ctl", PloopTruncateCtl, [
        "int" fd as "fd",
        "__u32" alloc_head as "alloc_head",
        "__u8" level as "level",
        "__u8" mbz1 as "__mbz1",
        "__u16" mbz2 as "__mbz2",
    ]),
    c_struct!("ploop_index_update_ctl", PloopIndexUpdateCtl, [
        "__u32" n_maps as "n_maps",
        "__u8" level as "level",
        "__u8" mbz1 as "__mbz1",
        "__u16" mbz2 as "__mbz2",
    ]),
    c_struct!("ploop_freeblks_ctl", PloopFreeblksCtl, [
        "__u32" n_extents as "n_extents",
        "__u32" alloc_head as "alloc_head",
        "__u8" level as "level",
        "__u8" mbz1 as "__mbz1",
        "__u16" mbz2 as "__mbz2",
    ]),
    c_struct!("ploop_relocblks_ctl", PloopRelocblksCtl, [
        "__u32" n_extents as "n_extents",
        "__u32" n_scanned as "n_scanned",
        "__u32" alloc_head as "alloc_head",
        "__u8" level as "level",
        "__u8" mbz1 as "__mbz1",
        "__u16" mbz2 as "__mbz2",
    ]),
    c_struct!("ploop_balloon_ctl", PloopBalloonCtl, [
        "__u32" mntn_type as "mntn_type",
        "__u32" alloc_head as "alloc_head",
        "__u8" level as "level",
        "__u8" inflate as "inflate",
        "__u8" keep_intact as "keep_intact",
        "__u8" mbz as "__mbz",
    ]),
    c_struct!("ploop_getdevice_ctl", PloopGetdeviceCtl, [
        "__u32" minor as "minor",
        "__u32" mbz1 as "__mbz1",
    ]),
    c_struct!("ploop_push_backup_init_ctl", PloopPushBackupInitCtl, [
        "__u8" cbt_uuid as "cbt_uuid[16]",
        "__u64" cbt_mask_addr as "cbt_mask_addr",
    ]),
    c_struct!("ploop_push_backup_io_ctl", PloopPushBackupIoCtl, [
        "__u8" cbt_uuid as "cbt_uuid[16]",
        "__u32" direction as "direction",
        "__u32" n_extents as "n_extents",
    ]),
    c_struct!("ploop_push_backup_stop_ctl", PloopPushBackupStopCtl, [
        "__u8" cbt_uuid as "cbt_uuid[16]",
        "__u32" status as "status",
    ]),
    c_struct!("ploop_dump_bat_ctl", PloopDumpBatCtl, [
        "__u32" level as "level",
        "__u32" start_cluster as "start_cluster",
        "__u32" nr_clusters as "nr_clusters",
    ], tail "__u32 bat[0]"),
    c_struct!("ploop_track_extent", PloopTrackExtent, [
        "__u64" start as "start",
        "__u64" end as "end",
    ]),
];
