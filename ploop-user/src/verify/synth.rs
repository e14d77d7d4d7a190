//! Synthetic traces for the replay benchmark: realistic snapshot calls (device stack, sync-fd
//! request, get_bdev_from_fd, freeze, switch, thaw, ioctl exit) written with the real trace
//! types, so the benchmark measures exactly what `ploop-verify report` does with a real trace.

use std::path::Path;

use anyhow::Result;

use ploop_common::ploop_if::PLOOP_FLAG_FS_SYNC;

use crate::{
    kernel::Generation,
    verify::events::{Chunk, Request, SyncFd, TraceEvent},
    verify::stack::{Stack, StackDev},
    verify::tracefile::{End, Header, TOOL, TraceLine, Writer},
};

/// Writes a trace of `calls` snapshot calls on the stack ploop -> dm-crypt -> dm-linear ->
/// ext4, spread over 4 threads and 2 devices; returns the number of events.
pub fn write(path: &Path, calls: u64) -> Result<u64> {
    let mut w = Writer::create(path)?;
    let probed =
        ["freeze_bdev", "thaw_bdev", "ploop_snapshot", "find_and_freeze_bdev", "get_bdev_from_fd"]
            .iter()
            .chain(&["ploop_quiesce", "ploop_relax", "sys_exit_ioctl"])
            .map(|s| s.to_string())
            .collect();
    w.line(&TraceLine::Header(Header {
        tool: TOOL.into(),
        kernel: serde_json::json!({"release": "synthetic", "generation": "freeze-bdev"}),
        generation: Generation::FreezeBdev,
        plan: serde_json::json!({"synthetic": true}),
        probed,
        narrowed: vec![],
    }))?;
    let mut ts = 1_000_000_000u64;
    let mut events = 0u64;
    for i in 0..calls {
        let tid = 100 + (i % 4) as u32;
        let n = (i % 2) as u32;
        let (ploop, crypt, linear) =
            (format!("253:{n}"), format!("254:{}", 2 * n), format!("254:{}", 2 * n + 1));
        let dev = |d: &str, name: String, h: Vec<String>, m: &[&str]| StackDev {
            dev: d.to_string(),
            name,
            holders: h,
            mounts: m.iter().map(|s| s.to_string()).collect(),
            fstype: (!m.is_empty()).then(|| "ext4".into()),
        };
        w.line(&TraceLine::Stack(Stack {
            ploop_dev: ploop.clone(),
            devices: vec![
                dev(&ploop, format!("ploop{n}"), vec![crypt.clone()], &[]),
                dev(&crypt, format!("dm-{}", 2 * n), vec![linear.clone()], &[]),
                dev(&linear, format!("dm-{}", 2 * n + 1), vec![], &["/mnt"]),
            ],
        }))?;
        let chunk = |fd| Chunk { fd, kind: 0, flags: 0, offset: 0, start: 0, len: 0 };
        let request = Request {
            readable: true,
            format: 1,
            flags: PLOOP_FLAG_FS_SYNC,
            chunks: 2,
            chunk: vec![chunk(5), chunk(6)],
            sync: Some(SyncFd {
                fd: 6,
                state: "resolved".into(),
                dev: Some(linear.clone()),
                via: "kernel".into(),
            }),
        };
        let steps: [(&str, &str, Option<&str>, Option<i64>); 15] = [
            ("ploop_snapshot", "entry", Some(&ploop), None),
            ("find_and_freeze_bdev", "entry", None, None),
            ("get_bdev_from_fd", "entry", None, None),
            ("get_bdev_from_fd", "return", None, Some(0)),
            ("freeze_bdev", "entry", Some(&linear), None),
            ("freeze_bdev", "return", Some(&linear), Some(0)),
            ("find_and_freeze_bdev", "return", None, Some(0)),
            ("ploop_quiesce", "entry", None, None),
            ("ploop_quiesce", "return", None, Some(0)),
            ("ploop_relax", "entry", None, None),
            ("ploop_relax", "return", None, Some(0)),
            ("thaw_bdev", "entry", Some(&linear), None),
            ("thaw_bdev", "return", Some(&linear), Some(0)),
            ("ploop_snapshot", "return", Some(&ploop), Some(0)),
            ("sys_ioctl", "return", Some(&ploop), Some(0)),
        ];
        for (func, phase, d, ret) in steps {
            ts += 50_000;
            w.line(&TraceLine::Event(TraceEvent {
                ts_ns: ts,
                pid: tid,
                tid,
                comm: "ploop-verify".into(),
                func: func.into(),
                phase: phase.into(),
                dev: d.map(str::to_string),
                args: vec![format!("{:#x}", 0xffff_8880_0000_0000u64 + u64::from(n) * 0x1000)],
                ret,
                cpu: n,
                no_entry: false,
                request: (func == "ploop_snapshot" && phase == "entry").then(|| request.clone()),
            }))?;
            events += 1;
        }
    }
    w.line(&TraceLine::End(End { events, lost: 0, command_status: Some(0) }))?;
    w.finish()?;
    Ok(events)
}
