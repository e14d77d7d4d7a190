//! The decoded, user-facing form of a probe event: one JSON line of a trace.

use ploop_common::{Event, flags, func, phase};
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
}

pub fn func_name(id: u16) -> &'static str {
    match id {
        func::FREEZE_BDEV => "freeze_bdev",
        func::THAW_BDEV => "thaw_bdev",
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
            ret: is_return.then_some(e.ret),
            cpu: e.cpu,
            no_entry: e.flags & flags::NO_ENTRY != 0,
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
            cpu: 0,
            dev: 0,
            _pad: 0,
            args: [0; 3],
            ret: 0,
            comm: [0; 16],
        };
        let t = TraceEvent::from_raw(&raw, Generation::Vz7);
        assert_eq!(t.args.len(), 2, "3.10 thaw_bdev also takes the super_block");
        assert_eq!(t.dev, None);
        assert!(t.no_entry);
        assert!(
            serde_json::to_string(&t)
                .unwrap()
                .contains("\"no_entry\":true")
        );
    }
}
