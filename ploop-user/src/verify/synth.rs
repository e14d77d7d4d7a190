//! Synthetic traces for the replay benchmark: realistic snapshot calls (device stack, sync-fd
//! request, get_bdev_from_fd, freeze, switch, thaw, ioctl exit) written with the real trace
//! types, so the benchmark measures exactly what `ploop-verify report` does with a real trace.

use std::path::Path;

use anyhow::Result;

use ploop_common::{Probe, ploop_if::PLOOP_FLAG_FS_SYNC};

use crate::{
    kernel::{Generation, KDev},
    verify::events::{Args, Chunk, Phase, Request, SyncFd, SyncState, TraceEvent, Via},
    verify::oracle::{Finding, OracleVerdict},
    verify::stack::{Stack, StackDev},
    verify::tracefile::{End, Header, TOOL, TraceLine, WallClock, Writer},
};

/// What a synthetic trace holds besides its correct calls: the damage and oddities a run
/// can meet, for the reports' tests.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// The end record's count of lost events (a run whose buffers overflowed).
    pub lost: u64,
    /// Every snapshot refused with -EINVAL before anything is frozen, as a driver without
    /// the interface the client needs does: the two-chunk request, then libploop's retry
    /// with one chunk, refused too.
    pub refused: bool,
    /// The calling process's comm (default `ploop-verify`): the kernel allows any byte but
    /// NUL in it.
    pub comm: Option<String>,
}

/// Writes a trace of `calls` snapshot calls on the stack ploop -> dm-crypt -> dm-linear ->
/// ext4, spread over 4 threads and 2 devices; returns the number of events. Every
/// `wrong_freeze_every`th call (0: none) freezes dm-crypt instead of the sync fd's dm-linear,
/// the autodetection bug (S1 and S2 fail), so that reports are exercised with failing calls
/// among many. `oracle`: each call also gets the finding `run --oracle` would record, X1
/// failing exactly on those calls (the filesystem was not frozen).
pub fn write(path: &Path, calls: u64, wrong_freeze_every: u64, oracle: bool) -> Result<u64> {
    write_with(path, calls, wrong_freeze_every, oracle, &Extras::default())
}

/// [`write`] with [`Extras`].
pub fn write_with(
    path: &Path,
    calls: u64,
    wrong_freeze_every: u64,
    oracle: bool,
    extras: &Extras,
) -> Result<u64> {
    let comm = extras.comm.as_deref().unwrap_or("ploop-verify");
    let mut w = Writer::create(path)?;
    let probed = Probe::ALL.to_vec();
    w.line(&TraceLine::Header(Box::new(Header {
        tool: TOOL.into(),
        kernel: serde_json::json!({"release": "synthetic", "generation": "freeze-bdev"}),
        generation: Generation::FreezeBdev,
        plan: serde_json::json!({"synthetic": true}),
        probed,
        narrowed: vec![],
        policy: None,
        oracle,
        // Fixed, so that a synthetic trace is the same file every time: 2026-01-01 at boot.
        clock: Some(WallClock { realtime_ns: 1_767_225_600 * 1_000_000_000, monotonic_ns: 0 }),
    })))?;
    let mut ts = 1_000_000_000u64;
    let mut events = 0u64;
    for i in 0..calls {
        let tid = 100 + (i % 4) as u32;
        let n = (i % 2) as u32;
        let (ploop, crypt, linear) =
            (KDev((253 << 20) | n), KDev((254 << 20) | (2 * n)), KDev((254 << 20) | (2 * n + 1)));
        let dev = |dev, name: String, h: Vec<KDev>, m: &[&str]| StackDev {
            dev,
            name: name.into(),
            holders: h,
            partitions: Vec::new(),
            mounts: m.iter().map(|&s| s.into()).collect(),
            fstype: (!m.is_empty()).then(|| "ext4".into()),
        };
        w.line(&TraceLine::Stack(Stack {
            ploop_dev: ploop,
            devices: vec![
                dev(ploop, format!("ploop{n}"), vec![crypt], &[]),
                dev(crypt, format!("dm-{}", 2 * n), vec![linear], &[]),
                dev(linear, format!("dm-{}", 2 * n + 1), vec![], &["/mnt"]),
            ],
            others: vec![],
        }))?;
        let chunk = |fd| Chunk { fd, kind: 0, flags: 0, offset: 0, start: 0, len: 0 };
        let request = Request {
            readable: true,
            format: 1,
            flags: PLOOP_FLAG_FS_SYNC,
            chunks: 2,
            chunk: vec![chunk(5), chunk(6)],
            sync: Some(SyncFd {
                node: None,
                fd: 6,
                state: SyncState::Resolved,
                dev: Some(linear),
                via: Via::Kernel,
            }),
            // Synthetic calls have no delta files for an oracle to read.
            delta: None,
        };
        let wrong = wrong_freeze_every > 0 && (i + 1) % wrong_freeze_every == 0;
        let frozen = if wrong { crypt } else { linear };
        use {Phase::*, Probe::*};
        let event = |ts_ns, func, phase, dev, ret, request: Option<&Request>| TraceEvent {
            ts_ns,
            pid: tid,
            tid,
            comm: comm.into(),
            func,
            phase,
            dev,
            args: Args::new(&[0xffff_8880_0000_0000u64 + u64::from(n) * 0x1000]),
            ret,
            cpu: n,
            no_entry: false,
            request: request.map(|r| Box::new(r.clone())),
        };
        if extras.refused {
            let mut retry = request.clone();
            retry.chunks = 1;
            retry.chunk.truncate(1);
            retry.sync = None;
            for r in [&request, &retry] {
                let einval = Some(-22);
                for (func, phase, ret) in [
                    (PloopSnapshot, Entry, None),
                    (PloopSnapshot, Return, einval),
                    (SysExitIoctl, Return, einval),
                ] {
                    ts += 50_000;
                    let req = (func == PloopSnapshot && phase == Entry).then_some(r);
                    w.line(&TraceLine::Event(event(ts, func, phase, Some(ploop), ret, req)))?;
                    events += 1;
                }
            }
            continue;
        }
        let steps: [(Probe, Phase, Option<KDev>, Option<i64>); 15] = [
            (PloopSnapshot, Entry, Some(ploop), None),
            (FindAndFreezeBdev, Entry, None, None),
            (GetBdevFromFd, Entry, None, None),
            (GetBdevFromFd, Return, None, Some(0)),
            (FreezeBdev, Entry, Some(frozen), None),
            (FreezeBdev, Return, Some(frozen), Some(0)),
            (FindAndFreezeBdev, Return, None, Some(0)),
            (PloopQuiesce, Entry, None, None),
            (PloopQuiesce, Return, None, Some(0)),
            (PloopRelax, Entry, None, None),
            (PloopRelax, Return, None, Some(0)),
            (ThawBdev, Entry, Some(frozen), None),
            (ThawBdev, Return, Some(frozen), Some(0)),
            (PloopSnapshot, Return, Some(ploop), Some(0)),
            (SysExitIoctl, Return, Some(ploop), Some(0)),
        ];
        for (func, phase, d, ret) in steps {
            ts += 50_000;
            let req = (func == PloopSnapshot && phase == Entry).then_some(&request);
            w.line(&TraceLine::Event(event(ts, func, phase, d, ret, req)))?;
            events += 1;
            // As live (header `oracle`): the finding follows the event that completes the call.
            if oracle && func == SysExitIoctl {
                w.line(&TraceLine::Oracle(Finding {
                    seq: i + 1,
                    tid,
                    verdict: if wrong {
                        OracleVerdict::NeedsRecovery
                    } else {
                        OracleVerdict::Clean
                    },
                    why: String::new(),
                    top: format!("/tmp/p{n}-{}.img", i + 1),
                    deltas: vec![format!("/tmp/p{n}-0.img")],
                    at: "dm-crypt, dm-linear offset 0".into(),
                    cost_us: 0,
                }))?;
            }
        }
    }
    let lost = extras.lost;
    w.line(&TraceLine::End(End { events, lost, command_status: Some(0), end_ns: None }))?;
    w.finish()?;
    Ok(events)
}
