//! The contract's invariants, each in one place: its id, what it reads, and its verdict on one
//! finished `ploop_snapshot` call. The ids are those of CONTRACT.md.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use ploop_common::Probe;

use super::{Call, Context, PatchState};
use crate::{
    errno::{Errno, ret_name},
    kernel::KDev,
    verify::events::{SyncState, Via},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "why", rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Fail(String),
    /// The invariant does not apply to this call (or cannot be judged here), and why.
    /// Mostly fixed texts: a `Cow` keeps a long run from holding a copy per call.
    NotApplicable(Cow<'static, str>),
    /// Waits for what a later record brings: the kernel's patch status (E1 on an ambiguous
    /// -EINVAL), the oracle's finding (X1 under `run --oracle`).
    Deferred,
}

pub struct Invariant {
    pub id: &'static str,
    pub title: &'static str,
    pub check: fn(&Call, &Context) -> Verdict,
}

pub const INVARIANTS: &[Invariant] = &[
    Invariant { id: "O1", title: "every freeze is thawed exactly once before return", check: o1 },
    Invariant { id: "O2", title: "freeze before the delta switch, thaw after it", check: o2 },
    Invariant { id: "O3", title: "nothing frozen without PLOOP_FLAG_FS_SYNC", check: o3 },
    Invariant { id: "O4", title: "3.10: thaw gets the super_block freeze returned", check: o4 },
    Invariant { id: "S1", title: "the frozen device is the sync fd's st_dev", check: s1 },
    Invariant {
        id: "S2",
        title: "the filesystem above ploop is frozen during the switch",
        check: s2,
    },
    Invariant { id: "S3", title: "a sync fd without a block device gives -ENODEV", check: s3 },
    Invariant {
        id: "S4",
        title: "a block-device node as sync fd names the device to freeze",
        check: s4,
    },
    Invariant {
        id: "E1",
        title: "pctl_chunks not 1 or 2: -ENOTSUPP (unpatched: -EINVAL)",
        check: e1,
    },
    Invariant { id: "E2", title: "chunk #1 with fields besides pctl_fd: -EINVAL", check: e2 },
    Invariant { id: "E3", title: "user-visible errno equals ploop_snapshot's return", check: e3 },
    Invariant { id: "C1", title: "a snapshot in progress refuses another with -EBUSY", check: c1 },
    Invariant { id: "T1", title: "the freeze window stays under the limit", check: t1 },
    Invariant {
        id: "T2",
        title: "no call stays in the kernel with a device frozen past the hang limit",
        check: t2,
    },
    Invariant {
        id: "X1",
        title: "the old snapshot's ext4 needs no journal replay (oracle)",
        check: x1,
    },
];

/// The errno `ploop_snapshot` returned, if it failed.
fn errno(call: &Call) -> Option<Errno> {
    call.result().and_then(Errno::from_ret)
}

fn na(why: impl Into<Cow<'static, str>>) -> Verdict {
    Verdict::NotApplicable(why.into())
}

/// Errors the kernel returns before it looks at the chunks or freezes anything.
fn failed_early(call: &Call) -> Option<String> {
    match errno(call) {
        Some(e @ (Errno::ENOENT | Errno::EBUSY | Errno::EFAULT)) => {
            Some(format!("failed before chunk parsing (-{e})"))
        }
        _ if !call.request.readable => Some("ploop_ctl unreadable".into()),
        _ => None,
    }
}

fn frozen_list(call: &Call) -> String {
    let devs: Vec<String> =
        call.freezes.iter().filter(|f| f.ok).map(|f| call.dev_name(f.dev)).collect();
    if devs.is_empty() { "nothing".into() } else { devs.join(", ") }
}

fn o1(call: &Call, _: &Context) -> Verdict {
    let mut problems: Vec<String> = call
        .freezes
        .iter()
        .filter(|f| f.ok && f.thaw.is_none())
        .map(|f| {
            format!(
                "freeze of {} leaked: not thawed before ploop_snapshot returned {}",
                call.dev_name(f.dev),
                call.result().map(ret_name).unwrap_or_else(|| "?".into())
            )
        })
        .collect();
    problems.extend(
        call.stray_thaws.iter().map(|t| {
            format!("thaw of {} without a freeze of it in this call", call.dev_name(t.dev))
        }),
    );
    if problems.is_empty() { Verdict::Pass } else { Verdict::Fail(problems.join("; ")) }
}

fn o2(call: &Call, ctx: &Context) -> Verdict {
    let pair = ctx.probed(Probe::PloopQuiesce) && ctx.probed(Probe::PloopRelax);
    let complete = ctx.probed(Probe::CompleteSnapshot);
    if !pair && !complete {
        return na("neither ploop_quiesce/ploop_relax nor the format's complete_snapshot is \
                   probed on this kernel");
    }
    let Some(switch) = call.switch() else {
        // A successful snapshot switched deltas: the probes did not see it.
        return na(match (call.result() == Some(0), complete) {
            (false, _) => "no delta switch in this call",
            (true, false) => {
                "ploop_quiesce/ploop_relax did not fire in this call: their call sites may be \
                 inlined"
            }
            (true, true) => {
                "neither complete_snapshot nor ploop_quiesce/ploop_relax fired in this call: the \
                 top delta's format has no probed complete_snapshot, and their call sites may \
                 be inlined"
            }
        });
    };
    let (q, r) = (switch.start_ns, switch.end_ns);
    let mut problems = Vec::new();
    for f in call.freezes.iter().filter(|f| f.ok) {
        if f.entry_ns > q && f.entry_ns < r {
            problems.push(format!("freeze of {} during the switch", call.dev_name(f.dev)));
        }
    }
    for f in call.counting(ctx.generation) {
        if f.entry_ns > r {
            problems.push(format!("freeze of {} after {}", call.dev_name(f.dev), switch.end_by));
        }
        if let Some(t) = &f.thaw
            && f.entry_ns < q
            && t.entry_ns < r
        {
            let when = if t.entry_ns < q {
                format!("before {}", switch.start_by)
            } else {
                format!("before {} returned", switch.end_by)
            };
            problems.push(format!("thaw of {} {when}", call.dev_name(f.dev)));
        }
    }
    if problems.is_empty() { Verdict::Pass } else { Verdict::Fail(problems.join("; ")) }
}

fn o3(call: &Call, _: &Context) -> Verdict {
    if !call.request.readable {
        return na("ploop_ctl unreadable");
    }
    if call.request.fs_sync() {
        return na("PLOOP_FLAG_FS_SYNC is set");
    }
    match call.freezes.iter().any(|f| f.ok) {
        false => Verdict::Pass,
        true => Verdict::Fail(format!("froze {} without PLOOP_FLAG_FS_SYNC", frozen_list(call))),
    }
}

fn o4(call: &Call, ctx: &Context) -> Verdict {
    if !ctx.generation.thaw_takes_super_block() {
        return na("thaw takes no super_block on this kernel");
    }
    let bad: Vec<String> = call
        .freezes
        .iter()
        .filter_map(|f| {
            let t = f.thaw.as_ref()?;
            (t.sb_arg != Some(f.ret as u64)).then(|| {
                format!(
                    "thaw of {} got super_block {:#x}, freeze returned {:#x}",
                    call.dev_name(f.dev),
                    t.sb_arg.unwrap_or(0),
                    f.ret as u64
                )
            })
        })
        .collect();
    if call.freezes.iter().all(|f| f.thaw.is_none()) {
        return na("no freeze/thaw pair");
    }
    if bad.is_empty() { Verdict::Pass } else { Verdict::Fail(bad.join("; ")) }
}

fn s1(call: &Call, ctx: &Context) -> Verdict {
    if !call.request.fs_sync() {
        return na("PLOOP_FLAG_FS_SYNC is not set");
    }
    let Some(sync) = &call.request.sync else { return na("no sync fd (autodetection)") };
    if sync.is_node() {
        return na(format!("sync fd {} is a block-device node: see S4", sync.fd));
    }
    if sync.state != SyncState::Resolved {
        return na(format!("sync fd {} is {}: see S3", sync.fd, sync.state));
    }
    let Some(want) = sync.dev else { return na("sync fd device unknown") };
    if !call.reached_freeze() {
        return na(format!(
            "failed before the freeze stage ({})",
            call.result().map(ret_name).unwrap_or_else(|| "?".into())
        ));
    }
    let counting = call.counting(ctx.generation);
    let via = if sync.via == Via::Proc { " (sync fd resolved through /proc)" } else { "" };
    if counting.is_empty() {
        return Verdict::Fail(format!(
            "nothing was frozen; the sync fd {} names {}{via}",
            sync.fd,
            call.dev_name(Some(want))
        ));
    }
    let other: Vec<String> =
        counting.iter().filter(|f| f.dev != Some(want)).map(|f| call.dev_name(f.dev)).collect();
    if other.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "froze {}; the sync fd {} names {}{via}",
            other.join(", "),
            sync.fd,
            call.dev_name(Some(want))
        ))
    }
}

fn s2(call: &Call, ctx: &Context) -> Verdict {
    if !call.request.fs_sync() {
        return na("PLOOP_FLAG_FS_SYNC is not set");
    }
    if !call.reached_freeze() || call.result() != Some(0) {
        return na(format!(
            "no completed switch ({})",
            call.result().map(ret_name).unwrap_or_else(|| "?".into())
        ));
    }
    let Some(stack) = &call.stack else { return na("no device stack was recorded") };
    let filesystems: Vec<_> = stack.filesystems().collect();
    if filesystems.is_empty() {
        return na(format!("no filesystem mounted above {}", stack.name(stack.ploop_dev)));
    }
    let held = call.held_during_switch(ctx.generation);
    let mut problems = Vec::new();
    if !filesystems.iter().any(|fs| held.iter().any(|f| f.dev == Some(fs.dev))) {
        let fs = filesystems[0];
        let when = if call.switch_seen() { "during the switch" } else { "at any time in the call" };
        problems.push(format!(
            "the filesystem on {} ({} at {}) was not frozen {when}; frozen: {}",
            stack.name(fs.dev),
            fs.fstype.as_deref().unwrap_or("?"),
            fs.mounts.join(", "),
            if held.is_empty() {
                "nothing".to_string()
            } else {
                held.iter().map(|f| call.dev_name(f.dev)).collect::<Vec<_>>().join(", ")
            }
        ));
    }
    for f in &held {
        if call.has_fs(f.dev, ctx.generation) == Some(false) {
            problems.push(format!("froze {}, which holds no filesystem", call.dev_name(f.dev)));
        }
    }
    if problems.is_empty() { Verdict::Pass } else { Verdict::Fail(problems.join("; ")) }
}

fn s3(call: &Call, ctx: &Context) -> Verdict {
    if !call.request.fs_sync() {
        return na("PLOOP_FLAG_FS_SYNC is not set");
    }
    let Some(sync) = &call.request.sync else { return na("no sync fd") };
    if sync.is_node() {
        return na(format!("sync fd {} is a block-device node: see S4", sync.fd));
    }
    if !matches!(sync.state, SyncState::NoFile | SyncState::NoBdev) {
        return na(format!("sync fd {} is {}", sync.fd, sync.state));
    }
    if let PatchState::Unpatched(_) = ctx.patched {
        return na("this kernel lacks the sync-fd interface");
    }
    if call.request.chunk.get(1).is_some_and(|c| c.has_extra_fields()) {
        return na("chunk #1 carries other fields: see E2");
    }
    let froze = call.freezes.iter().any(|f| f.ok);
    let ret = call.result().unwrap_or(0);
    let nodev = Errno::from_ret(ret) == Some(Errno::ENODEV);
    let reached = call.find_and_freeze_ret.is_some() || call.get_bdev_called || ret == 0;
    if !reached && !nodev {
        return na(format!("failed before the freeze stage ({})", ret_name(ret)));
    }
    match (nodev, froze) {
        (true, false) => Verdict::Pass,
        (true, true) => Verdict::Fail(format!("returned -ENODEV but froze {}", frozen_list(call))),
        (false, _) => Verdict::Fail(format!(
            "sync fd {} ({}) answered {} and froze {}; -ENODEV with nothing frozen is due",
            sync.fd,
            sync.state,
            ret_name(ret),
            frozen_list(call)
        )),
    }
}

/// S4: libploop passes `/dev/ploopNp1` and means the filesystem on that device. Two
/// readings are given on failure: what the kernel did with the fd (through the superblock
/// of the filesystem holding the node, as the seed does, or as the device itself), and
/// what the client meant.
fn s4(call: &Call, ctx: &Context) -> Verdict {
    if !call.request.fs_sync() {
        return na("PLOOP_FLAG_FS_SYNC is not set");
    }
    let Some(sync) = &call.request.sync else { return na("no sync fd") };
    let Some(node) = sync.node else {
        return na(format!("sync fd {} is not a block-device node: see S1/S3", sync.fd));
    };
    if let PatchState::Unpatched(_) = ctx.patched {
        return na("this kernel lacks the sync-fd interface");
    }
    if call.request.chunk.get(1).is_some_and(|c| c.has_extra_fields()) {
        return na("chunk #1 carries other fields: see E2");
    }
    let ret = call.result().unwrap_or(0);
    let nodev = Errno::from_ret(ret) == Some(Errno::ENODEV);
    if !call.reached_freeze() && !nodev {
        return na(format!("failed before the freeze stage ({})", ret_name(ret)));
    }
    // What the client meant: the filesystem on the node's device, or stacked above it.
    let meant = match call.stack.as_deref() {
        Some(stack) => stack.filesystems_on(node).first().map(|fs| {
            format!(
                "{} at {}",
                fs.fstype.as_deref().unwrap_or("a filesystem"),
                fs.mounts.join(", ")
            )
        }),
        None => None,
    };
    let via = if sync.via == Via::Proc { " (sync fd resolved through /proc)" } else { "" };
    let named = format!(
        "sync fd {} is a block node of {}{}{via}",
        sync.fd,
        call.dev_name(Some(node)),
        meant.as_deref().map(|m| format!(", {m}")).unwrap_or_default()
    );
    // What the kernel did: the filesystem that holds the node (the seed's reading).
    let holder = match (sync.state, sync.dev) {
        (SyncState::NoBdev, Some(d)) => format!("its filesystem ({d}, no block device)"),
        (SyncState::Resolved, Some(d)) => format!("its filesystem (on {})", call.dev_name(Some(d))),
        _ => "its filesystem".to_string(),
    };
    let counting = call.counting(ctx.generation);
    if nodev {
        if counting.iter().any(|f| f.ok) {
            return Verdict::Fail(format!("returned -ENODEV but froze {}", frozen_list(call)));
        }
        return match &meant {
            // Nothing to freeze there: refusing it costs the client nothing.
            None => Verdict::Pass,
            Some(m) => Verdict::Fail(format!(
                "{named}; the kernel resolved it through {holder} and answered -ENODEV: {m} \
                 was not frozen; libploop does not retry on ENODEV: the snapshot failed"
            )),
        };
    }
    if counting.is_empty() {
        return Verdict::Fail(format!("{named}; nothing was frozen"));
    }
    let other: Vec<String> =
        counting.iter().filter(|f| f.dev != Some(node)).map(|f| call.dev_name(f.dev)).collect();
    if other.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "{named}; the kernel froze {} instead, reading the fd through {holder}",
            other.join(", ")
        ))
    }
}

fn e1(call: &Call, ctx: &Context) -> Verdict {
    if let Some(why) = failed_early(call) {
        return na(why);
    }
    let n = call.request.chunks;
    if n == 1 || n == 2 {
        return na(format!("pctl_chunks is {n}"));
    }
    if call.freezes.iter().any(|f| f.ok) {
        return Verdict::Fail(format!("pctl_chunks={n} froze {}", frozen_list(call)));
    }
    match (errno(call), &ctx.patched) {
        (Some(Errno::ENOTSUPP), _) => Verdict::Pass,
        (Some(Errno::EINVAL), PatchState::Patched(why)) => Verdict::Fail(format!(
            "pctl_chunks={n} answered -EINVAL where -ENOTSUPP (524) is due ({why})"
        )),
        (Some(Errno::EINVAL), PatchState::Unpatched(_)) => Verdict::Pass,
        (Some(Errno::EINVAL), PatchState::Unknown) => Verdict::Deferred,
        _ => Verdict::Fail(format!(
            "pctl_chunks={n} answered {}; -ENOTSUPP (524) is due (-EINVAL unpatched)",
            call.result().map(ret_name).unwrap_or_else(|| "?".into())
        )),
    }
}

fn e2(call: &Call, _: &Context) -> Verdict {
    if let Some(why) = failed_early(call) {
        return na(why);
    }
    let extra =
        call.request.chunks == 2 && call.request.chunk.get(1).is_some_and(|c| c.has_extra_fields());
    if !extra {
        return na("chunk #1 carries only pctl_fd, or there is none");
    }
    if call.freezes.iter().any(|f| f.ok) {
        return Verdict::Fail(format!("a malformed chunk #1 froze {}", frozen_list(call)));
    }
    match errno(call) {
        Some(Errno::EINVAL) => Verdict::Pass,
        _ => Verdict::Fail(format!(
            "chunk #1 with fields besides pctl_fd answered {}; -EINVAL is due",
            call.result().map(ret_name).unwrap_or_else(|| "?".into())
        )),
    }
}

fn e3(call: &Call, ctx: &Context) -> Verdict {
    if !ctx.probed(Probe::SysExitIoctl) {
        return na("syscalls:sys_exit_ioctl is not attached");
    }
    let Some(u) = call.user_ret else { return na("the ioctl exit was not seen") };
    let Some(k) = call.ret else {
        return na(if call.snapshot_entered {
            "ploop_snapshot's return was not seen"
        } else {
            "ploop_snapshot did not run in this call (refused before it, or inlined)"
        });
    };
    if k == u {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "ploop_snapshot returned {}, the ioctl returned {}",
            ret_name(k),
            ret_name(u)
        ))
    }
}

fn c1(call: &Call, ctx: &Context) -> Verdict {
    let busy = errno(call) == Some(Errno::EBUSY);
    if busy && call.freezes.iter().any(|f| f.ok) {
        return Verdict::Fail(format!("answered -EBUSY but froze {}", frozen_list(call)));
    }
    let Some(mine) = call.maintenance_window() else {
        return if busy { Verdict::Pass } else { na("no maintenance window") };
    };
    let clash: Vec<String> = ctx
        .recent_on_device(call)
        .filter(|o| o.window.0 < mine.1 && mine.0 < o.window.1)
        .map(|o| format!("snapshot #{} (tid {})", o.seq, o.tid))
        .collect();
    if clash.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "its freeze/switch window overlapped {} on the same device; -EBUSY was due",
            clash.join(", ")
        ))
    }
}

fn t1(call: &Call, ctx: &Context) -> Verdict {
    let windows: Vec<(Option<KDev>, u64)> = call
        .freezes
        .iter()
        .filter(|f| f.ok)
        .filter_map(|f| Some((f.dev, f.thaw.as_ref()?.ret_ns?.saturating_sub(f.ret_ns))))
        .collect();
    if windows.is_empty() {
        return na("no completed freeze window");
    }
    over_limit(call, &windows, ctx.max_freeze_ns, |dev, w| {
        format!(
            "{dev} stayed frozen {:.1} ms (limit {:.1} ms)",
            w as f64 / 1e6,
            ctx.max_freeze_ns as f64 / 1e6
        )
    })
}

fn t2(call: &Call, ctx: &Context) -> Verdict {
    let frozen: Vec<(Option<KDev>, u64)> = call
        .freezes
        .iter()
        .filter(|f| f.ok)
        .map(|f| {
            let until = f.thaw.as_ref().and_then(|t| t.ret_ns).or(call.end_ns).unwrap_or(f.ret_ns);
            (f.dev, until.saturating_sub(f.ret_ns))
        })
        .collect();
    if frozen.is_empty() {
        return na("nothing frozen");
    }
    over_limit(call, &frozen, ctx.max_hang_ns, |dev, w| {
        format!(
            "{dev} stayed frozen {:.1} s in the call (hang limit {:.1} s)",
            w as f64 / 1e9,
            ctx.max_hang_ns as f64 / 1e9
        )
    })
}

/// T1 and T2: a failure naming each device frozen longer than `limit` (in `text`, given the
/// device's name and how long), else a pass.
fn over_limit(
    call: &Call,
    frozen: &[(Option<KDev>, u64)],
    limit: u64,
    text: impl Fn(&str, u64) -> String,
) -> Verdict {
    let over: Vec<String> = frozen
        .iter()
        .filter(|(_, d)| *d > limit)
        .map(|&(dev, d)| text(&call.dev_name(dev), d))
        .collect();
    if over.is_empty() { Verdict::Pass } else { Verdict::Fail(over.join("; ")) }
}

/// X1 from the oracle's recorded finding only: the trace holds it, so a replay agrees, and
/// nothing here reads an image.
fn x1(call: &Call, ctx: &Context) -> Verdict {
    use crate::verify::oracle::{OracleVerdict, awaits_finding};
    let Some(f) = &call.oracle else {
        if ctx.oracle && awaits_finding(call) {
            return Verdict::Deferred;
        }
        return na("no oracle finding: the oracle judges successful PLOOP_FLAG_FS_SYNC \
                   snapshots under `run --oracle`");
    };
    match f.verdict {
        OracleVerdict::Clean => Verdict::Pass,
        OracleVerdict::NeedsRecovery => Verdict::Fail(format!(
            "the old snapshot cannot be mounted read-only without a journal replay: ext4 at \
             {} in {} has needs_recovery",
            f.at,
            f.deltas.join(", ")
        )),
        OracleVerdict::NotApplicable => na(format!("the oracle could not judge: {}", f.why)),
    }
}
