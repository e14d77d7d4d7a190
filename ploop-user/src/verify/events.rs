//! The decoded, user-facing form of a probe event: one JSON line of a trace.

use compact_str::CompactString;
use ploop_common::{
    Event, PLOOP_CTL_CHUNK_SIZE, Probe, flags, phase,
    ploop_if::{PLOOP_FLAG_FS_SYNC, PLOOP_IOC_SNAPSHOT, PloopCtl, PloopCtlChunk},
    sync_state,
};
use serde::{Deserialize, Serialize};

use crate::kernel::{Generation, KDev};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// Inline: most events are judged and dropped, and a replay reads millions.
    #[serde(deserialize_with = "comm")]
    pub comm: CompactString,
    /// The probe, by the role of the function (`freeze_bdev`), whatever its symbol here.
    pub func: Probe,
    pub phase: Phase,
    /// The `block_device` argument's `bd_dev`, absent when it could not be read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dev: Option<KDev>,
    /// Raw arguments (pointers identify objects, such as the 3.10 `super_block *`).
    pub args: Args,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ret: Option<i64>,
    pub cpu: u32,
    /// Set when the return probe did not see its entry (attached mid-call).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub no_entry: bool,
    /// `ploop_snapshot` entry: the request as the kernel was about to read it. Boxed: one
    /// event in fifteen has one, and every event is moved several times on its way.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request: Option<Box<Request>>,
}

/// The kernel's `TASK_COMM_LEN`: a task's name is at most 15 bytes and its NUL.
pub const TASK_COMM_LEN: usize = 16;
const _: () = assert!(Event::ZERO.comm.len() == TASK_COMM_LEN);

/// A comm as a trace holds it, refused when no task could have it. [`TraceEvent::from_raw`]
/// turns each byte run that is not UTF-8 into one U+FFFD: each of those stands for a byte at
/// least, every other character for its own bytes.
fn comm<'de, D: serde::Deserializer<'de>>(d: D) -> Result<CompactString, D::Error> {
    let s = CompactString::deserialize(d)?;
    let bytes: usize = s.chars().map(|c| if c == '\u{fffd}' { 1 } else { c.len_utf8() }).sum();
    if bytes >= TASK_COMM_LEN {
        return Err(serde::de::Error::custom(format_args!(
            "a comm of {bytes} bytes: the kernel's hold at most {} and a NUL",
            TASK_COMM_LEN - 1
        )));
    }
    Ok(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Entry,
    Return,
}

/// Up to three raw arguments, inline, written as `0x...` strings: pointers read better in
/// hex, and JSON numbers lose precision above 2^53 in many readers.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Args {
    len: u8,
    vals: [u64; 3],
}

impl Args {
    /// The first three of `args`.
    pub fn new(args: &[u64]) -> Self {
        let mut a = Args::default();
        for &v in args.iter().take(3) {
            a.vals[a.len as usize] = v;
            a.len += 1;
        }
        a
    }
}

impl std::ops::Deref for Args {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        &self.vals[..self.len as usize]
    }
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|a| format!("{a:#x}"))).finish()
    }
}

impl Serialize for Args {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for a in self.iter() {
            seq.serialize_element(&format_args!("{a:#x}"))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, SeqAccess, Visitor};
        struct Hex(u64);
        impl<'de> Deserialize<'de> for Hex {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = Hex;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an argument as a 0x... string")
                    }
                    fn visit_str<E: Error>(self, a: &str) -> Result<Hex, E> {
                        u64::from_str_radix(a.strip_prefix("0x").unwrap_or(a), 16)
                            .map(Hex)
                            .map_err(|_| E::custom(format_args!("argument {a:?} is not hex")))
                    }
                }
                d.deserialize_str(V)
            }
        }
        struct Seq;
        impl<'de> Visitor<'de> for Seq {
            type Value = Args;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("up to three arguments")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Args, A::Error> {
                let mut args = Args::default();
                while let Some(Hex(v)) = seq.next_element()? {
                    if args.len == 3 {
                        return Err(A::Error::custom("more than three arguments"));
                    }
                    args.vals[args.len as usize] = v;
                    args.len += 1;
                }
                Ok(args)
            }
        }
        d.deserialize_seq(Seq)
    }
}

/// A `PLOOP_IOC_SNAPSHOT` request copied from user memory at `ploop_snapshot` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// `false` when the `ploop_ctl` itself could not be read (the kernel answers -EFAULT).
    pub readable: bool,
    pub format: u32,
    pub flags: u32,
    pub chunks: u16,
    /// Chunks #0 and #1 as found after the `ploop_ctl` (absent if unreadable).
    #[serde(default)]
    pub chunk: Vec<Chunk>,
    /// Chunk #1's fd resolved to a filesystem (two-chunk requests with a fd other than -1).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sync: Option<SyncFd>,
    /// Chunk #0's file (the new top delta) as the kernel walk found it in the caller's fd
    /// table: what the oracle (X1) looks for among the device's deltas.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delta: Option<FileId>,
}

/// A file by identity: its filesystem's `s_dev` and its inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileId {
    pub dev: KDev,
    pub ino: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub fd: i32,
    #[serde(rename = "type")]
    pub kind: u32,
    pub flags: u32,
    pub offset: u32,
    pub start: u64,
    pub len: u64,
}

impl Chunk {
    /// Any field but `pctl_fd` set: what the patch rejects in chunk #1 (E2).
    pub fn has_extra_fields(&self) -> bool {
        self.kind != 0 || self.flags != 0 || self.offset != 0 || self.start != 0 || self.len != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFd {
    pub fd: i32,
    pub state: SyncState,
    /// `s_dev` of the fd's filesystem: what the seed's `get_bdev_from_fd` reads
    /// (`file_inode(f)->i_sb`), also for a device node.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dev: Option<KDev>,
    /// The device the fd names when it is a block-device node (`i_rdev`): libploop's sync fd
    /// (`/dev/ploopNp1`), meant as that device's filesystem (S4). Absent for any other file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<KDev>,
    pub via: Via,
}

impl SyncFd {
    /// The two readings of a device-node fd, for S4's texts.
    pub fn is_node(&self) -> bool {
        self.node.is_some()
    }
}

/// How the sync fd resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    /// A filesystem on a block device.
    Resolved,
    /// No open file at that fd.
    NoFile,
    /// A filesystem without a block device (tmpfs, proc, devtmpfs).
    NoBdev,
    /// Not read (the in-kernel walk failed and /proc was not asked yet).
    Unread,
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncState::Resolved => "resolved",
            SyncState::NoFile => "no-file",
            SyncState::NoBdev => "no-bdev",
            SyncState::Unread => "unread",
        })
    }
}

/// Where the sync fd was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// Walked in the kernel at `ploop_snapshot` entry.
    Kernel,
    /// By user space through /proc/PID/fd, later (racy by nature: marked).
    Proc,
}

impl Request {
    /// A request whose `ploop_ctl` could not be read from user memory.
    pub fn unreadable() -> Self {
        Request {
            readable: false,
            format: 0,
            flags: 0,
            chunks: 0,
            chunk: vec![],
            sync: None,
            delta: None,
        }
    }

    pub fn fs_sync(&self) -> bool {
        self.flags & PLOOP_FLAG_FS_SYNC != 0
    }
    /// The sync fd the patched kernel would use (`-1`: none, autodetection).
    pub fn sync_fd(&self) -> i32 {
        match (self.chunks, self.chunk.get(1)) {
            (2, Some(c)) => c.fd,
            _ => -1,
        }
    }

    fn decode(e: &Event) -> Self {
        // SAFETY (both reads): plain-old-data structs read from byte arrays of their size.
        let ctl: PloopCtl = unsafe { std::ptr::read_unaligned(e.ctl.as_ptr().cast()) };
        if e.flags & flags::CTL_UNREAD != 0 {
            return Request::unreadable();
        }
        // Chunk #1 unread: only chunk #0 is known (and a one-chunk request has no other).
        let known = if e.flags & flags::CHUNK1_UNREAD != 0 { 1 } else { 2 };
        let chunk = if e.flags & flags::CHUNKS_UNREAD != 0 {
            Vec::new()
        } else {
            e.chunks
                .chunks(PLOOP_CTL_CHUNK_SIZE)
                .take(known)
                .map(|c| {
                    let c: PloopCtlChunk = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
                    Chunk {
                        fd: c.pctl_fd,
                        kind: c.pctl_type,
                        flags: c.pctl_flags,
                        offset: c.pctl_offset,
                        start: c.pctl_start,
                        len: c.pctl_len,
                    }
                })
                .collect()
        };
        let mut req = Request {
            readable: true,
            format: ctl.pctl_format,
            flags: ctl.pctl_flags,
            chunks: ctl.pctl_chunks,
            chunk,
            sync: None,
            // Inode 0 is never a file's: the walk did not get there.
            delta: (e.delta_ino != 0)
                .then_some(FileId { dev: KDev(e.delta_dev), ino: e.delta_ino }),
        };
        let fd = req.sync_fd();
        if fd != -1 {
            let state = match e.sync_state {
                sync_state::RESOLVED => SyncState::Resolved,
                sync_state::NO_FILE => SyncState::NoFile,
                sync_state::NO_BDEV => SyncState::NoBdev,
                _ => SyncState::Unread,
            };
            let has_dev = matches!(state, SyncState::Resolved | SyncState::NoBdev);
            const S_IFBLK: u32 = 0o060000;
            req.sync = Some(SyncFd {
                fd,
                state,
                dev: has_dev.then_some(KDev(e.sync_dev)),
                node: (e.sync_mode == S_IFBLK).then_some(KDev(e.sync_rdev)),
                via: Via::Kernel,
            });
        }
        req
    }
}

/// The events whose probe copied a snapshot request: `ploop_snapshot`'s entry, and the
/// entry of a `PLOOP_IOC_SNAPSHOT` ioctl (its arguments: fd, cmd, arg).
fn carries_request(func: Probe, is_return: bool, args: &[u64]) -> bool {
    !is_return
        && match func {
            Probe::PloopSnapshot => true,
            Probe::SysEnterIoctl => args.get(1) == Some(&PLOOP_IOC_SNAPSHOT),
            _ => false,
        }
}

impl TraceEvent {
    /// `None` for an event of a probe this build does not know (a newer object).
    pub fn from_raw(e: &Event, generation: Generation) -> Option<Self> {
        let func = Probe::from_id(e.func)?;
        let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        let is_return = e.phase == phase::RETURN;
        Some(TraceEvent {
            ts_ns: e.ts_ns,
            pid: (e.pid_tgid >> 32) as u32,
            tid: e.pid_tgid as u32,
            comm: CompactString::from_utf8_lossy(&e.comm[..comm_len]),
            func,
            phase: if is_return { Phase::Return } else { Phase::Entry },
            dev: (e.flags & flags::DEV_UNREAD == 0).then_some(KDev(e.dev)),
            args: Args::new(&e.args[..generation.arity(func).min(e.args.len())]),
            ret: is_return.then_some(if generation.returns_int(func) {
                e.ret as i32 as i64
            } else {
                e.ret
            }),
            cpu: e.cpu,
            no_entry: e.flags & flags::NO_ENTRY != 0,
            request: carries_request(func, is_return, &e.args)
                .then(|| Box::new(Request::decode(e))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_freeze_return() {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"mount");
        let raw = Event {
            ts_ns: 42,
            pid_tgid: (100u64 << 32) | 101,
            func: Probe::FreezeBdev.id(),
            phase: phase::RETURN,
            flags: 0,
            cpu: 1,
            dev: (7 << 20) | 3,
            _pad: 0,
            args: [0xffff_8880_0000_1000, 0, 0],
            ret: -16,
            comm,
            ..Event::ZERO
        };
        let t = TraceEvent::from_raw(&raw, Generation::FreezeBdev).unwrap();
        assert_eq!(t.args.len(), 1);
        assert_eq!((t.pid, t.tid), (100, 101));
        assert_eq!(t.comm, "mount");
        assert_eq!(t.dev, Some(KDev((7 << 20) | 3)));
        assert_eq!(t.ret, Some(-16));
        assert_eq!(t.args[0], 0xffff_8880_0000_1000);
        let line = serde_json::to_string(&t).unwrap();
        assert!(line.contains(r#""args":["0xffff888000001000"]"#), "{line}");
        assert!(line.contains(r#""func":"freeze_bdev","phase":"return","dev":"7:3""#), "{line}");
        assert_eq!(serde_json::from_str::<TraceEvent>(&line).unwrap(), t);
    }

    #[test]
    fn unreadable_device_and_missing_entry_are_visible() {
        let raw = Event {
            ts_ns: 1,
            pid_tgid: 1,
            func: Probe::ThawBdev.id(),
            phase: phase::RETURN,
            flags: flags::DEV_UNREAD | flags::NO_ENTRY,
            ..Event::ZERO
        };
        let t = TraceEvent::from_raw(&raw, Generation::Vz7).unwrap();
        assert_eq!(t.args.len(), 2, "3.10 thaw_bdev also takes the super_block");
        assert_eq!(t.dev, None);
        assert!(t.no_entry);
        assert!(serde_json::to_string(&t).unwrap().contains("\"no_entry\":true"));
    }

    /// A two-chunk request as the eBPF program copies it: ctl, chunk #0, chunk #1.
    fn snapshot_entry(chunks: u16, chunk1: [u32; 4], sync: (u32, u32)) -> Event {
        let mut ev = Event { func: Probe::PloopSnapshot.id(), phase: phase::ENTRY, ..Event::ZERO };
        ev.ctl[0..4].copy_from_slice(&1u32.to_le_bytes());
        ev.ctl[4..8].copy_from_slice(&PLOOP_FLAG_FS_SYNC.to_le_bytes());
        ev.ctl[16..18].copy_from_slice(&chunks.to_le_bytes());
        ev.chunks[0..4].copy_from_slice(&5i32.to_le_bytes());
        for (i, v) in chunk1.iter().enumerate() {
            ev.chunks[32 + 4 * i..36 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        (ev.sync_dev, ev.sync_state) = sync;
        ev
    }

    #[test]
    fn decodes_a_snapshot_request_with_a_sync_fd() {
        let ev = snapshot_entry(2, [7, 0, 0, 0], ((254 << 20) | 1, sync_state::RESOLVED));
        let t = TraceEvent::from_raw(&ev, Generation::FreezeBdev).unwrap();
        let r = t.request.expect("a request on ploop_snapshot entry");
        assert!(r.readable && r.fs_sync());
        assert_eq!((r.format, r.chunks, r.chunk[0].fd), (1, 2, 5));
        assert_eq!(r.sync_fd(), 7);
        assert!(!r.chunk[1].has_extra_fields());
        let s = r.sync.unwrap();
        assert_eq!(
            (s.state, s.dev, s.via),
            (SyncState::Resolved, Some(KDev((254 << 20) | 1)), Via::Kernel)
        );
    }

    #[test]
    fn chunk1_extra_fields_and_missing_files_are_decoded() {
        let ev = snapshot_entry(2, [7, 0, 3, 0], (0, sync_state::NO_FILE));
        let r = TraceEvent::from_raw(&ev, Generation::FreezeBdev).unwrap().request.unwrap();
        assert!(r.chunk[1].has_extra_fields(), "pctl_flags of chunk #1 is set");
        assert_eq!(r.sync.unwrap().state, SyncState::NoFile);
        // One chunk: chunk #1 is whatever follows and never a sync fd.
        let ev = snapshot_entry(1, [7, 0, 0, 0], (0, 0));
        let r = TraceEvent::from_raw(&ev, Generation::FreezeBdev).unwrap().request.unwrap();
        assert_eq!((r.sync_fd(), r.sync), (-1, None));
        // A one-chunk request at the end of its mapping: chunk #0 alone, which names the new
        // delta (the oracle's new top).
        let ev = Event { flags: flags::CHUNK1_UNREAD, ..snapshot_entry(1, [7, 0, 0, 0], (0, 0)) };
        let r = TraceEvent::from_raw(&ev, Generation::FreezeBdev).unwrap().request.unwrap();
        assert_eq!((r.chunk.len(), r.chunk[0].fd, r.sync_fd()), (1, 5, -1));
        let ev = Event { flags: flags::CTL_UNREAD, ..snapshot_entry(2, [7, 0, 0, 0], (0, 0)) };
        assert!(
            !TraceEvent::from_raw(&ev, Generation::FreezeBdev).unwrap().request.unwrap().readable
        );
    }

    #[test]
    fn int_returns_read_from_a_64_bit_register_are_sign_extended() {
        let ev = Event {
            func: Probe::PloopSnapshot.id(),
            phase: phase::RETURN,
            ret: 4294966772,
            ..Event::ZERO
        };
        assert_eq!(TraceEvent::from_raw(&ev, Generation::FreezeBdev).unwrap().ret, Some(-524));
        let ev = Event {
            func: Probe::SysExitIoctl.id(),
            phase: phase::RETURN,
            ret: -524,
            ..Event::ZERO
        };
        assert_eq!(TraceEvent::from_raw(&ev, Generation::FreezeBdev).unwrap().ret, Some(-524));
        let ptr = 0xffff_8880_1234_5000u64 as i64;
        let ev =
            Event { func: Probe::FreezeBdev.id(), phase: phase::RETURN, ret: ptr, ..Event::ZERO };
        assert_eq!(
            TraceEvent::from_raw(&ev, Generation::Vz7).unwrap().ret,
            Some(ptr),
            "3.10: a super_block *"
        );
    }
}
