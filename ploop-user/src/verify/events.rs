//! The decoded, user-facing form of a probe event: one JSON line of a trace.

use ploop_common::{
    Event, PLOOP_CTL_CHUNK_SIZE, flags, func, phase,
    ploop_if::{PLOOP_FLAG_FS_SYNC, PloopCtl, PloopCtlChunk},
    sync_state,
};
use serde::{Deserialize, Serialize};

use crate::kernel::{Generation, KDev};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Role of the function (`freeze_bdev`, `thaw_bdev`), whatever its symbol on this kernel.
    pub func: String,
    /// `entry` or `return`.
    pub phase: String,
    /// `major:minor` of the `block_device` argument, absent when it could not be read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dev: Option<String>,
    /// Raw arguments, hex (pointers identify objects, such as the 3.10 `super_block *`).
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ret: Option<i64>,
    pub cpu: u32,
    /// Set when the return probe did not see its entry (attached mid-call).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub no_entry: bool,
    /// `ploop_snapshot` entry: the request as the kernel was about to read it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request: Option<Request>,
}

/// A `PLOOP_IOC_SNAPSHOT` request copied from user memory at `ploop_snapshot` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
pub struct SyncFd {
    pub fd: i32,
    /// `resolved` (a filesystem on a block device), `no-file`, `no-bdev`, or `unread`.
    pub state: String,
    /// `s_dev` of the fd's filesystem, `major:minor`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dev: Option<String>,
    /// `kernel` (walked at ploop_snapshot entry) or `proc` (user space, /proc/PID/fd, later).
    pub via: String,
}

impl Request {
    /// A request whose `ploop_ctl` could not be read from user memory.
    pub fn unreadable() -> Self {
        Request { readable: false, format: 0, flags: 0, chunks: 0, chunk: vec![], sync: None }
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
        let chunk = if e.flags & flags::CHUNKS_UNREAD != 0 {
            Vec::new()
        } else {
            e.chunks
                .chunks(PLOOP_CTL_CHUNK_SIZE)
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
        };
        let fd = req.sync_fd();
        if fd != -1 {
            let state = match e.sync_state {
                sync_state::RESOLVED => "resolved",
                sync_state::NO_FILE => "no-file",
                sync_state::NO_BDEV => "no-bdev",
                _ => "unread",
            };
            let has_dev = matches!(e.sync_state, sync_state::RESOLVED | sync_state::NO_BDEV);
            req.sync = Some(SyncFd {
                fd,
                state: state.into(),
                dev: has_dev.then(|| KDev(e.sync_dev).to_string()),
                via: "kernel".into(),
            });
        }
        req
    }
}

pub fn func_name(id: u16) -> &'static str {
    match id {
        func::FREEZE_BDEV => "freeze_bdev",
        func::THAW_BDEV => "thaw_bdev",
        func::PLOOP_SNAPSHOT => "ploop_snapshot",
        func::FIND_AND_FREEZE_BDEV => "find_and_freeze_bdev",
        func::GET_BDEV_FROM_FD => "get_bdev_from_fd",
        func::PLOOP_QUIESCE => "ploop_quiesce",
        func::PLOOP_RELAX => "ploop_relax",
        func::SYS_IOCTL => "sys_ioctl",
        _ => "unknown",
    }
}

impl TraceEvent {
    pub fn from_raw(e: &Event, generation: Generation) -> Self {
        let func = func_name(e.func);
        let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        let is_return = e.phase == phase::RETURN;
        TraceEvent {
            ts_ns: e.ts_ns,
            pid: (e.pid_tgid >> 32) as u32,
            tid: e.pid_tgid as u32,
            comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
            func: func.to_string(),
            phase: if is_return { "return" } else { "entry" }.to_string(),
            dev: (e.flags & flags::DEV_UNREAD == 0).then(|| KDev(e.dev).to_string()),
            args: e.args[..generation.arity(func).min(e.args.len())]
                .iter()
                .map(|a| format!("{a:#x}"))
                .collect(),
            ret: is_return.then_some(if generation.returns_int(func) {
                e.ret as i32 as i64
            } else {
                e.ret
            }),
            cpu: e.cpu,
            no_entry: e.flags & flags::NO_ENTRY != 0,
            request: (e.func == func::PLOOP_SNAPSHOT && !is_return).then(|| Request::decode(e)),
        }
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
            func: func::FREEZE_BDEV,
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
        let t = TraceEvent::from_raw(&raw, Generation::FreezeBdev);
        assert_eq!(t.args.len(), 1);
        assert_eq!((t.pid, t.tid), (100, 101));
        assert_eq!(t.comm, "mount");
        assert_eq!(t.dev.as_deref(), Some("7:3"));
        assert_eq!(t.ret, Some(-16));
        assert_eq!(t.args[0], "0xffff888000001000");
        let line = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<TraceEvent>(&line).unwrap(), t);
    }

    #[test]
    fn unreadable_device_and_missing_entry_are_visible() {
        let raw = Event {
            ts_ns: 1,
            pid_tgid: 1,
            func: func::THAW_BDEV,
            phase: phase::RETURN,
            flags: flags::DEV_UNREAD | flags::NO_ENTRY,
            ..Event::ZERO
        };
        let t = TraceEvent::from_raw(&raw, Generation::Vz7);
        assert_eq!(t.args.len(), 2, "3.10 thaw_bdev also takes the super_block");
        assert_eq!(t.dev, None);
        assert!(t.no_entry);
        assert!(serde_json::to_string(&t).unwrap().contains("\"no_entry\":true"));
    }

    /// A two-chunk request as the eBPF program copies it: ctl, chunk #0, chunk #1.
    fn snapshot_entry(chunks: u16, chunk1: [u32; 4], sync: (u32, u32)) -> Event {
        let mut ev = Event { func: func::PLOOP_SNAPSHOT, phase: phase::ENTRY, ..Event::ZERO };
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
        let t = TraceEvent::from_raw(&ev, Generation::FreezeBdev);
        let r = t.request.expect("a request on ploop_snapshot entry");
        assert!(r.readable && r.fs_sync());
        assert_eq!((r.format, r.chunks, r.chunk[0].fd), (1, 2, 5));
        assert_eq!(r.sync_fd(), 7);
        assert!(!r.chunk[1].has_extra_fields());
        let s = r.sync.unwrap();
        assert_eq!(
            (s.state.as_str(), s.dev.as_deref(), s.via.as_str()),
            ("resolved", Some("254:1"), "kernel")
        );
    }

    #[test]
    fn chunk1_extra_fields_and_missing_files_are_decoded() {
        let ev = snapshot_entry(2, [7, 0, 3, 0], (0, sync_state::NO_FILE));
        let r = TraceEvent::from_raw(&ev, Generation::FreezeBdev).request.unwrap();
        assert!(r.chunk[1].has_extra_fields(), "pctl_flags of chunk #1 is set");
        assert_eq!(r.sync.unwrap().state, "no-file");
        // One chunk: chunk #1 is whatever follows and never a sync fd.
        let ev = snapshot_entry(1, [7, 0, 0, 0], (0, 0));
        let r = TraceEvent::from_raw(&ev, Generation::FreezeBdev).request.unwrap();
        assert_eq!((r.sync_fd(), r.sync), (-1, None));
        let ev = Event { flags: flags::CTL_UNREAD, ..snapshot_entry(2, [7, 0, 0, 0], (0, 0)) };
        assert!(!TraceEvent::from_raw(&ev, Generation::FreezeBdev).request.unwrap().readable);
    }

    #[test]
    fn int_returns_read_from_a_64_bit_register_are_sign_extended() {
        let ev = Event {
            func: func::PLOOP_SNAPSHOT,
            phase: phase::RETURN,
            ret: 4294966772,
            ..Event::ZERO
        };
        assert_eq!(TraceEvent::from_raw(&ev, Generation::FreezeBdev).ret, Some(-524));
        let ev = Event { func: func::SYS_IOCTL, phase: phase::RETURN, ret: -524, ..Event::ZERO };
        assert_eq!(TraceEvent::from_raw(&ev, Generation::FreezeBdev).ret, Some(-524));
        let ptr = 0xffff_8880_1234_5000u64 as i64;
        let ev = Event { func: func::FREEZE_BDEV, phase: phase::RETURN, ret: ptr, ..Event::ZERO };
        assert_eq!(
            TraceEvent::from_raw(&ev, Generation::Vz7).ret,
            Some(ptr),
            "3.10: a super_block *"
        );
    }
}
