//! The checker on hand-made event sequences: one per correct configuration and per known bug
//! of the model driver, each with the exact set of invariants it must trip.

use super::*;
use ploop_common::ploop_if::PLOOP_FLAG_FS_SYNC;

use crate::{
    verify::events::{Args, Chunk, Phase, Request, SyncFd, SyncState, Via},
    verify::stack::{Stack, StackDev},
};

/// Devices as `major:minor` text keep the cases below readable.
fn k(d: &str) -> KDev {
    d.parse().unwrap()
}

const PLOOP: &str = "253:0";
const CRYPT: &str = "254:0";
const LINEAR: &str = "254:1";

fn dev(d: &str, name: &str, holders: &[&str], mounts: &[&str]) -> StackDev {
    StackDev {
        dev: k(d),
        name: name.into(),
        holders: holders.iter().map(|s| k(s)).collect(),
        partitions: Vec::new(),
        mounts: mounts.iter().map(|&s| s.into()).collect(),
        fstype: (!mounts.is_empty()).then(|| "ext4".into()),
    }
}

/// ext4 on dm-linear on dm-crypt on ploop: the stack of the commit message.
fn linear_stack() -> Stack {
    Stack {
        ploop_dev: k(PLOOP),
        devices: vec![
            dev(PLOOP, "ploop0", &[CRYPT], &[]),
            dev(CRYPT, "dm-0", &[LINEAR], &[]),
            dev(LINEAR, "dm-1", &[], &["/mnt"]),
        ],
        others: vec![],
    }
}

fn plain_stack() -> Stack {
    Stack {
        ploop_dev: k(PLOOP),
        devices: vec![dev(PLOOP, "ploop0", &[], &["/mnt"])],
        others: vec![],
    }
}

fn request(
    flags: u32,
    chunks: u16,
    chunk1: Option<Chunk>,
    sync: Option<(SyncState, Option<&str>)>,
) -> Request {
    let c0 = Chunk { fd: 5, kind: 0, flags: 0, offset: 0, start: 0, len: 0 };
    let c1 = chunk1.unwrap_or(Chunk { fd: 7, kind: 0, flags: 0, offset: 0, start: 0, len: 0 });
    Request {
        readable: true,
        format: 1,
        flags,
        chunks,
        sync: sync.map(|(state, dev)| SyncFd {
            fd: c1.fd,
            state,
            dev: dev.map(k),
            node: None,
            via: Via::Kernel,
        }),
        chunk: vec![c0, c1],
        delta: None,
    }
}

fn sync_req(sync_dev: &str) -> Request {
    request(PLOOP_FLAG_FS_SYNC, 2, None, Some((SyncState::Resolved, Some(sync_dev))))
}

/// Builds event sequences in time order.
struct Seq {
    ts: u64,
    events: Vec<TraceEvent>,
}

impl Seq {
    fn new() -> Self {
        Seq { ts: 1_000, events: Vec::new() }
    }
    fn ev(
        &mut self,
        tid: u32,
        func: &str,
        phase: &str,
        dev: Option<&str>,
        ret: Option<i64>,
    ) -> &mut TraceEvent {
        self.ts += 1_000_000;
        self.events.push(TraceEvent {
            ts_ns: self.ts,
            pid: tid,
            tid,
            comm: "ploop-verify".into(),
            func: Probe::from_name(func).unwrap(),
            phase: if phase == "entry" { Phase::Entry } else { Phase::Return },
            dev: dev.map(k),
            args: Args::new(&[0xffff0000]),
            ret,
            cpu: 0,
            no_entry: false,
            request: None,
        });
        self.events.last_mut().unwrap()
    }
    fn start(&mut self, tid: u32, req: Request) -> &mut Self {
        self.ev(tid, "ploop_snapshot", "entry", Some(PLOOP), None).request = Some(Box::new(req));
        self
    }
    fn call(&mut self, tid: u32, func: &str) -> &mut Self {
        self.ev(tid, func, "entry", None, None);
        self.ev(tid, func, "return", None, Some(0));
        self
    }
    fn freeze(&mut self, tid: u32, d: &str) -> &mut Self {
        self.ev(tid, "freeze_bdev", "entry", Some(d), None);
        self.ev(tid, "freeze_bdev", "return", Some(d), Some(0));
        self
    }
    fn thaw(&mut self, tid: u32, d: &str) -> &mut Self {
        self.ev(tid, "thaw_bdev", "entry", Some(d), None);
        self.ev(tid, "thaw_bdev", "return", Some(d), Some(0));
        self
    }
    fn switch(&mut self, tid: u32) -> &mut Self {
        self.call(tid, "ploop_quiesce").call(tid, "ploop_relax")
    }
    fn end(&mut self, tid: u32, ret: i64) -> &mut Self {
        self.ev(tid, "ploop_snapshot", "return", Some(PLOOP), Some(ret));
        self.ev(tid, "sys_exit_ioctl", "return", Some(PLOOP), Some(ret));
        self
    }
    /// A correct patched snapshot of `tid` freezing `d` through a sync fd.
    fn good_sync(&mut self, tid: u32, d: &str) -> &mut Self {
        self.start(tid, sync_req(d))
            .call(tid, "get_bdev_from_fd")
            .freeze(tid, d)
            .switch(tid)
            .thaw(tid, d)
            .end(tid, 0)
    }
    /// No sync fd on the commit's stack: the old autodetection freezes dm-crypt (no
    /// filesystem there) around the switch and never the ext4 on dm-linear (S2).
    fn autodetect_crypt(&mut self, tid: u32) -> &mut Self {
        self.start(tid, request(PLOOP_FLAG_FS_SYNC, 1, None, None))
            .freeze(tid, CRYPT)
            .switch(tid)
            .thaw(tid, CRYPT)
            .end(tid, 0)
    }
}

fn all_probed() -> Vec<Probe> {
    Probe::ALL.to_vec()
}

/// A run through a checker: the checker, the sorted, deduplicated violated ids, and the
/// judged calls as the reports receive them, a retried request's two calls one after the
/// other (`units` keeps them as the reports receive them).
struct Ran {
    c: Checker,
    judged: Vec<CallReport>,
    units: Vec<CallReport>,
}

fn run(stack: Stack, seq: &Seq) -> (Ran, Vec<String>) {
    run_probed(all_probed(), stack, seq)
}

/// [`run`] on a kernel where only `probed` attached.
fn run_probed(probed: Vec<Probe>, stack: Stack, seq: &Seq) -> (Ran, Vec<String>) {
    let mut c = Checker::new(
        Generation::FreezeBdev,
        probed,
        Options { max_freeze_ns: 5_000_000_000, max_hang_ns: 10_000_000_000 },
    );
    c.stack(&stack);
    let mut units = Vec::new();
    let mut ids = Vec::new();
    for e in &seq.events {
        ids.extend(c.event(e).into_iter().map(|v| v.id));
        units.extend(c.take_judged());
    }
    let end = seq.events.last().map_or(0, |e| e.ts_ns);
    ids.extend(c.finish(end).into_iter().map(|v| v.id));
    units.extend(c.take_judged());
    ids.sort();
    ids.dedup();
    let judged = units
        .iter()
        .flat_map(|u| u.calls().cloned().collect::<Vec<_>>())
        .map(|mut r| {
            r.retried = None;
            r
        })
        .collect();
    (Ran { c, judged, units }, ids)
}

impl Ran {
    /// Per invariant id: (pass, fail, not applicable).
    fn tally(&self) -> std::collections::BTreeMap<&'static str, (usize, usize, usize)> {
        INVARIANTS
            .iter()
            .zip(self.c.outcome().tally)
            .map(|(i, t)| (i.id, (t.pass, t.fail, t.not_applicable)))
            .collect()
    }
}

#[test]
fn correct_sync_fd_snapshot_on_the_linear_stack_is_clean() {
    let mut s = Seq::new();
    s.good_sync(10, LINEAR);
    let (c, ids) = run(linear_stack(), &s);
    assert!(ids.is_empty(), "{ids:?}: {:?}", c.judged[0].verdicts);
    assert_eq!(c.c.snapshots(), 1);
    let t = c.tally();
    for id in ["O1", "O2", "S1", "S2", "E3", "C1", "T1"] {
        assert_eq!(t[id].0, 1, "{id} judged and passed");
    }
    assert!(matches!(c.c.patched, PatchState::Patched(_)));
}

#[test]
fn autodetection_on_the_linear_stack_trips_s2() {
    // No sync fd: the old autodetection freezes dm-crypt (no filesystem there) and keeps it.
    let mut s = Seq::new();
    s.autodetect_crypt(10);
    let (c, ids) = run(linear_stack(), &s);
    assert_eq!(ids, ["S2"]);
    let why = c.judged[0].failures().next().unwrap().1.to_string();
    assert!(why.contains("dm-1 (254:1)") && why.contains("holds no filesystem"), "{why}");
}

#[test]
fn autodetection_walk_pairs_on_a_plain_device_are_normal() {
    // ext4 directly on ploop: freeze ploop (it has the filesystem) around the switch.
    let mut s = Seq::new();
    s.start(10, request(PLOOP_FLAG_FS_SYNC, 1, None, None))
        .freeze(10, PLOOP)
        .switch(10)
        .thaw(10, PLOOP)
        .end(10, 0);
    assert!(run(plain_stack(), &s).1.is_empty());
    // No filesystem anywhere: the walk freezes and thaws ploop at once; nothing to flag.
    let bare = Stack {
        ploop_dev: k(PLOOP),
        devices: vec![dev(PLOOP, "ploop0", &[], &[])],
        others: vec![],
    };
    let mut s = Seq::new();
    s.start(10, request(PLOOP_FLAG_FS_SYNC, 1, None, None))
        .freeze(10, PLOOP)
        .thaw(10, PLOOP)
        .switch(10)
        .end(10, 0);
    assert!(run(bare, &s).1.is_empty());
}

#[test]
fn bug_leak_freeze_is_o1() {
    let mut s = Seq::new();
    s.start(10, sync_req(LINEAR))
        .call(10, "get_bdev_from_fd")
        .freeze(10, LINEAR)
        .call(10, "ploop_quiesce");
    s.end(10, -9);
    assert_eq!(run(linear_stack(), &s).1, ["O1"]);
}

#[test]
fn bug_thaw_other_is_o1() {
    let mut s = Seq::new();
    s.start(10, sync_req(LINEAR))
        .call(10, "get_bdev_from_fd")
        .freeze(10, LINEAR)
        .switch(10)
        .thaw(10, PLOOP)
        .end(10, 0);
    assert_eq!(run(linear_stack(), &s).1, ["O1"]);
}

#[test]
fn bug_ignore_sync_fd_is_s1_and_leaves_the_filesystem_unfrozen() {
    let mut s = Seq::new();
    s.start(10, sync_req(LINEAR)).freeze(10, CRYPT).switch(10).thaw(10, CRYPT).end(10, 0);
    assert_eq!(run(linear_stack(), &s).1, ["S1", "S2"]);
}

#[test]
fn bug_thaw_early_is_o2_and_leaves_the_switch_unfrozen() {
    let mut s = Seq::new();
    s.start(10, sync_req(LINEAR))
        .call(10, "get_bdev_from_fd")
        .freeze(10, LINEAR)
        .thaw(10, LINEAR)
        .switch(10);
    s.end(10, 0);
    assert_eq!(run(linear_stack(), &s).1, ["O2", "S2"]);
}

#[test]
fn bug_einval_is_e1_once_the_kernel_shows_it_is_patched() {
    // The ambiguous answer comes first; the proof of the patch later resolves it.
    let mut s = Seq::new();
    s.start(11, request(0, 0, None, None)).end(11, -22);
    s.good_sync(10, LINEAR);
    let (c, ids) = run(linear_stack(), &s);
    assert_eq!(ids, ["E1"]);
    assert!(matches!(c.c.patched, PatchState::Patched(_)));
}

#[test]
fn unpatched_kernel_is_a_property_not_a_violation() {
    let mut s = Seq::new();
    s.start(11, request(0, 0, None, None)).end(11, -22);
    s.start(12, request(PLOOP_FLAG_FS_SYNC, 2, None, Some((SyncState::Resolved, Some(LINEAR)))))
        .end(12, -22);
    s.start(13, request(PLOOP_FLAG_FS_SYNC, 1, None, None))
        .freeze(13, PLOOP)
        .switch(13)
        .thaw(13, PLOOP)
        .end(13, 0);
    let (c, ids) = run(plain_stack(), &s);
    assert!(ids.is_empty(), "{ids:?}");
    assert!(matches!(c.c.patched, PatchState::Unpatched(_)), "{:?}", c.c.patched);
}

#[test]
fn patched_error_codes_pass_and_wrong_ones_fail() {
    let mut s = Seq::new();
    s.start(11, request(0, 0, None, None)).end(11, -524);
    s.start(12, request(0, 3, None, None)).end(12, -524);
    let bad_chunk1 = Chunk { fd: 7, kind: 0, flags: 0, offset: 4, start: 0, len: 0 };
    s.start(13, request(PLOOP_FLAG_FS_SYNC, 2, Some(bad_chunk1), None)).end(13, -22);
    // tmpfs sync fd: -ENODEV, nothing frozen.
    s.start(14, request(PLOOP_FLAG_FS_SYNC, 2, None, Some((SyncState::NoBdev, Some("0:40")))));
    s.call(14, "get_bdev_from_fd").end(14, -19);
    let (c, ids) = run(plain_stack(), &s);
    assert!(ids.is_empty(), "{ids:?}");
    let t = c.tally();
    assert_eq!((t["E1"].0, t["E2"].0, t["S3"].0), (2, 1, 1));

    let mut s = Seq::new();
    let bad_chunk1 = Chunk { fd: 7, kind: 1, flags: 0, offset: 0, start: 0, len: 0 };
    s.start(13, request(0, 2, Some(bad_chunk1), None)).end(13, 0);
    s.start(14, request(PLOOP_FLAG_FS_SYNC, 2, None, Some((SyncState::NoFile, None))))
        .freeze(14, PLOOP)
        .switch(14);
    s.thaw(14, PLOOP).end(14, 0);
    assert_eq!(run(plain_stack(), &s).1, ["E2", "S3"]);
}

#[test]
fn errno_mismatch_is_e3_and_fs_sync_off_freezing_is_o3() {
    let mut s = Seq::new();
    s.start(10, request(0, 1, None, None)).freeze(10, PLOOP).switch(10).thaw(10, PLOOP);
    s.ev(10, "ploop_snapshot", "return", Some(PLOOP), Some(0));
    s.ev(10, "sys_exit_ioctl", "return", Some(PLOOP), Some(-5));
    assert_eq!(run(plain_stack(), &s).1, ["E3", "O3"]);
}

#[test]
fn overlapping_snapshots_on_one_device_are_c1_and_other_threads_do_not_mix() {
    let mut s = Seq::new();
    s.start(10, sync_req(PLOOP)).freeze(10, PLOOP);
    s.start(11, sync_req(PLOOP)).freeze(11, PLOOP).switch(11).thaw(11, PLOOP).end(11, 0);
    s.switch(10).thaw(10, PLOOP).end(10, 0);
    // PLOOP_IOC_FREEZE/THAW from another thread: not a snapshot, not counted in one.
    s.freeze(12, PLOOP).thaw(12, PLOOP);
    let (c, ids) = run(plain_stack(), &s);
    assert!(ids.contains(&"C1".to_string()), "{ids:?}");
    assert_eq!(c.c.outcome().outside, 4);
    // Serial snapshots on one device are fine, and -EBUSY with nothing frozen is right.
    let mut s = Seq::new();
    s.good_sync(10, PLOOP).good_sync(10, PLOOP);
    s.start(11, sync_req(PLOOP)).end(11, -16);
    assert!(run(plain_stack(), &s).1.is_empty());
}

#[test]
fn long_freeze_windows_are_t1() {
    let mut s = Seq::new();
    s.start(10, sync_req(PLOOP)).call(10, "get_bdev_from_fd").freeze(10, PLOOP).switch(10);
    s.ts += 6_000_000_000;
    s.thaw(10, PLOOP).end(10, 0);
    assert_eq!(run(plain_stack(), &s).1, ["T1"]);
}

#[test]
fn vz7_thaw_must_get_the_super_block_freeze_returned() {
    let mut s = Seq::new();
    s.start(10, sync_req(PLOOP));
    s.ev(10, "freeze_bdev", "entry", Some(PLOOP), None);
    s.ev(10, "freeze_bdev", "return", Some(PLOOP), Some(0x7fff_1000));
    s.switch(10);
    s.ev(10, "thaw_bdev", "entry", Some(PLOOP), None).args = Args::new(&[0xffff0000, 0x7fff2000]);
    s.ev(10, "thaw_bdev", "return", Some(PLOOP), Some(0));
    s.end(10, 0);
    let mut c = Checker::new(
        Generation::Vz7,
        all_probed(),
        Options { max_freeze_ns: u64::MAX, max_hang_ns: u64::MAX },
    );
    c.stack(&plain_stack());
    let ids: Vec<String> = s.events.iter().flat_map(|e| c.event(e)).map(|v| v.id).collect();
    assert_eq!(ids, ["O4"]);
}

#[test]
fn unfinished_calls_are_incomplete_not_judged() {
    let mut s = Seq::new();
    s.start(10, sync_req(PLOOP)).freeze(10, PLOOP);
    let (c, ids) = run(plain_stack(), &s);
    assert!(ids.is_empty());
    assert_eq!((c.c.snapshots(), c.c.outcome().incomplete), (0, 1));
}

/// Calls anchored at the ioctl, as on a kernel whose ploop_snapshot may be inlined or may
/// refuse a call before it runs (vz7's -EBUSY at dispatch).
impl Seq {
    fn ioctl(&mut self, tid: u32, cmd: u64, req: Option<Request>) -> &mut Self {
        let e = self.ev(tid, "sys_enter_ioctl", "entry", Some(PLOOP), None);
        e.args = Args::new(&[3, cmd, 0x7fff_0000]);
        e.request = req.map(Box::new);
        self
    }
    fn ioctl_exit(&mut self, tid: u32, ret: i64) -> &mut Self {
        self.ev(tid, "sys_exit_ioctl", "return", Some(PLOOP), Some(ret));
        self
    }
}

#[test]
fn a_call_refused_at_dispatch_is_a_call_and_c1_judges_it() {
    use ploop_common::ploop_if::PLOOP_IOC_SNAPSHOT;
    let mut s = Seq::new();
    // Thread 10 holds the device frozen; thread 11's snapshot is refused before
    // ploop_snapshot runs, as vz7's ploop_ioctl does during maintenance.
    s.ioctl(10, PLOOP_IOC_SNAPSHOT, Some(sync_req(PLOOP))).start(10, sync_req(PLOOP));
    s.call(10, "get_bdev_from_fd").freeze(10, PLOOP);
    s.ioctl(11, PLOOP_IOC_SNAPSHOT, Some(sync_req(PLOOP))).ioctl_exit(11, -16);
    s.switch(10).thaw(10, PLOOP).end(10, 0);
    let (c, ids) = run(plain_stack(), &s);
    assert!(ids.is_empty(), "{ids:?}");
    assert_eq!(c.c.snapshots(), 2, "the refused call counts");
    let refused = c.judged.iter().find(|r| r.call.tid == 11).unwrap();
    assert_eq!(*verdict(refused, "C1"), Verdict::Pass);
    assert!(
        matches!(verdict(refused, "E3"), Verdict::NotApplicable(why) if why.contains("did not run"))
    );
    assert_eq!(c.tally()["C1"].0, 2);
}

#[test]
fn an_inlined_ploop_snapshot_leaves_the_call_judged_from_the_ioctl() {
    use ploop_common::ploop_if::PLOOP_IOC_SNAPSHOT;
    let mut s = Seq::new();
    // No ploop_snapshot, no helpers: freeze and thaw inside the ioctl, as an inlining
    // compiler leaves it.
    s.ioctl(10, PLOOP_IOC_SNAPSHOT, Some(sync_req(LINEAR)))
        .freeze(10, LINEAR)
        .thaw(10, LINEAR)
        .ioctl_exit(10, 0);
    // The same with the filesystem never frozen: S2 fails on positive evidence.
    s.ioctl(11, PLOOP_IOC_SNAPSHOT, Some(request(PLOOP_FLAG_FS_SYNC, 1, None, None)))
        .freeze(11, CRYPT)
        .thaw(11, CRYPT)
        .ioctl_exit(11, 0);
    let (c, ids) = run(linear_stack(), &s);
    assert_eq!(ids, ["S2"]);
    assert_eq!(c.c.snapshots(), 2);
    let first = &c.judged[0];
    assert_eq!(first.failures().count(), 0, "{:?}", first.verdicts);
    let o2 = verdict(first, "O2");
    assert!(matches!(o2, Verdict::NotApplicable(why) if why.contains("inlined")), "{o2:?}");
}

#[test]
fn freeze_and_thaw_ioctls_are_no_snapshot_calls() {
    use ploop_common::ploop_if::{PLOOP_IOC_FREEZE, PLOOP_IOC_THAW};
    let mut s = Seq::new();
    s.ioctl(10, PLOOP_IOC_FREEZE, None).freeze(10, PLOOP).ioctl_exit(10, 0);
    s.ioctl(10, PLOOP_IOC_THAW, None).thaw(10, PLOOP).ioctl_exit(10, 0);
    let (c, ids) = run(plain_stack(), &s);
    assert!(ids.is_empty(), "{ids:?}");
    assert_eq!((c.c.snapshots(), c.c.outcome().outside), (0, 4));
}

#[test]
fn a_hung_call_is_t2_while_it_hangs_once_and_when_the_run_ends() {
    let hang = 10_000_000_000;
    let mut c = Checker::new(
        Generation::FreezeBdev,
        all_probed(),
        Options { max_freeze_ns: u64::MAX, max_hang_ns: hang },
    );
    c.stack(&plain_stack());
    let mut s = Seq::new();
    s.start(10, sync_req(PLOOP)).call(10, "get_bdev_from_fd").freeze(10, PLOOP);
    for e in &s.events {
        assert!(c.event(e).is_empty());
    }
    let frozen_at = s.events.last().unwrap().ts_ns;
    assert!(c.hung(frozen_at + hang).is_empty(), "not past the limit yet");
    let found = c.hung(frozen_at + hang + 1);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, "T2");
    assert_eq!(found[0].ts_ns, frozen_at + hang, "stamped when it became hung");
    assert!(found[0].why.contains("has not returned: hung (tid 10"), "{}", found[0].why);
    assert!(c.hung(frozen_at + 2 * hang).is_empty(), "reported once");
    // It returns at last: T2 fails for it, and is not reported a second time.
    let mut later = Seq { ts: frozen_at + 2 * hang, events: Vec::new() };
    later.switch(10).thaw(10, PLOOP).end(10, 0);
    let after: Vec<String> = later.events.iter().flat_map(|e| c.event(e)).map(|v| v.id).collect();
    assert!(after.is_empty(), "{after:?}");
    let t2 = c.take_judged().next().unwrap().verdicts.into_iter().find(|(i, _)| *i == "T2");
    assert!(matches!(t2, Some((_, Verdict::Fail(_)))), "{t2:?}");
    assert_eq!(c.violations(), 1);

    // A call still hanging when the run ends is reported then, and stays incomplete.
    let mut s = Seq { ts: frozen_at + 3 * hang, events: Vec::new() };
    s.start(11, sync_req(PLOOP)).freeze(11, PLOOP);
    for e in &s.events {
        c.event(e);
    }
    let end = s.events.last().unwrap().ts_ns + hang + 1;
    let found: Vec<String> = c.finish(end).into_iter().map(|v| v.id).collect();
    assert_eq!(found, ["T2"]);
    assert_eq!(c.outcome().incomplete, 1);
}

/// ext4 on ploop0p1: the partitioned image every container carries (CONTRACT.md, as
/// deployed). libploop's sync fd is the node `/dev/ploop0p1`.
const P1: &str = "253:1";

fn partitioned_stack() -> Stack {
    let mut disk = dev(PLOOP, "ploop0", &[], &[]);
    disk.partitions = vec![k(P1)];
    Stack {
        ploop_dev: k(PLOOP),
        devices: vec![disk, dev(P1, "ploop0p1", &[], &["/mnt"])],
        others: vec![],
    }
}

/// libploop's request: chunk #1 an fd of the node of `node`, whose own inode sits on the
/// filesystem `holder` (devtmpfs `0:5` has no block device).
fn node_req(node: &str, state: SyncState, holder: &str) -> Request {
    let mut r = request(PLOOP_FLAG_FS_SYNC, 2, None, Some((state, Some(holder))));
    r.sync.as_mut().unwrap().node = Some(k(node));
    r
}

fn verdict<'a>(r: &'a CallReport, id: &str) -> &'a Verdict {
    r.verdict(id).unwrap()
}

#[test]
fn s4_a_device_node_refused_with_enodev_is_the_seed_reading_and_fails() {
    // The seed takes the node's superblock: devtmpfs, no block device: -ENODEV.
    let mut s = Seq::new();
    s.start(10, node_req(P1, SyncState::NoBdev, "0:5")).call(10, "get_bdev_from_fd").end(10, -19);
    let (c, ids) = run(partitioned_stack(), &s);
    assert_eq!(ids, ["S4"], "{:?}", c.judged[0].verdicts);
    let Verdict::Fail(why) = verdict(&c.judged[0], "S4") else { unreachable!() };
    for part in [
        "sync fd 7 is a block node of ploop0p1 (253:1), ext4 at /mnt",
        "resolved it through its filesystem (0:5, no block device)",
        "answered -ENODEV: ext4 at /mnt was not frozen",
        "libploop does not retry on ENODEV",
    ] {
        assert!(why.contains(part), "{why:?} lacks {part:?}");
    }
    // S1 and S3 are for fds on a filesystem; a node is S4's alone.
    for id in ["S1", "S3"] {
        assert!(matches!(verdict(&c.judged[0], id), Verdict::NotApplicable(_)), "{id}");
    }
}

#[test]
fn s4_a_device_node_frozen_as_itself_passes() {
    // 0002 (and the model's `bdev` mode): the node names its own device.
    let mut s = Seq::new();
    s.start(10, node_req(P1, SyncState::NoBdev, "0:5"))
        .call(10, "get_bdev_from_fd")
        .freeze(10, P1)
        .switch(10)
        .thaw(10, P1)
        .end(10, 0);
    let (c, ids) = run(partitioned_stack(), &s);
    assert!(ids.is_empty(), "{ids:?}: {:?}", c.judged[0].verdicts);
    assert_eq!(verdict(&c.judged[0], "S4"), &Verdict::Pass);
    // The filesystem on the partition counts for S2, through the disk's partitions.
    assert_eq!(verdict(&c.judged[0], "S2"), &Verdict::Pass);
}

#[test]
fn s4_a_node_on_a_disk_filesystem_freezes_the_wrong_filesystem_and_fails() {
    // /dev on a disk (8:1): the seed freezes the root filesystem instead of ploop0p1's.
    let mut s = Seq::new();
    s.start(10, node_req(P1, SyncState::Resolved, "8:1"))
        .call(10, "get_bdev_from_fd")
        .freeze(10, "8:1")
        .switch(10)
        .thaw(10, "8:1")
        .end(10, 0);
    let (c, ids) = run(partitioned_stack(), &s);
    assert!(ids.contains(&"S4".to_string()), "{ids:?}");
    let Verdict::Fail(why) = verdict(&c.judged[0], "S4") else { unreachable!() };
    assert!(why.contains("the kernel froze 8:1 instead"), "{why}");
    // The filesystem the client meant was not frozen either: S2 says so in its own words.
    assert!(ids.contains(&"S2".to_string()), "{ids:?}");
}

#[test]
fn s4_an_unused_partition_refused_with_enodev_passes() {
    // Nothing mounted on the node's device: refusing it freezes nothing the client needs.
    let mut stack = partitioned_stack();
    stack.devices[1].mounts.clear();
    let mut s = Seq::new();
    s.start(10, node_req(P1, SyncState::NoBdev, "0:5")).end(10, -19);
    let (c, ids) = run(stack, &s);
    assert!(ids.is_empty(), "{ids:?}");
    assert_eq!(verdict(&c.judged[0], "S4"), &Verdict::Pass);
}

/// libploop on a kernel without the sync fd: two chunks, -EINVAL, then the same request
/// with one chunk. One snapshot with a fallback, and the kernel named unpatched.
#[test]
fn libploop_retry_with_one_chunk_after_einval_is_one_snapshot_with_a_fallback() {
    let mut s = Seq::new();
    s.start(10, node_req(P1, SyncState::NoBdev, "0:5")).end(10, -22);
    let mut one = request(PLOOP_FLAG_FS_SYNC, 1, None, None);
    one.chunk.truncate(1);
    s.start(10, one).freeze(10, PLOOP).switch(10).thaw(10, PLOOP).end(10, 0);
    let (c, ids) = run(partitioned_stack(), &s);
    let o = c.c.outcome();
    assert_eq!((o.fallback_count, o.fallbacks.clone()), (1, vec![(1, 2)]));
    assert_eq!(c.judged[1].call.retry_of, Some(1));
    // One snapshot, in the count and as the reports receive it, with both calls' verdicts.
    assert_eq!((o.snapshots, o.succeeded, c.units.len()), (1, 1, 1));
    assert_eq!(c.units[0].retried.as_ref().map(|r| r.call.seq), Some(1));
    let per_invariant: Vec<usize> =
        o.tally.iter().map(|t| t.pass + t.fail + t.not_applicable).collect();
    assert!(per_invariant.iter().all(|&n| n == 2), "both calls judged: {per_invariant:?}");
    assert!(
        c.units[0].request().contains("then the retry with one chunk after -EINVAL (succeeded)")
    );
    assert!(
        matches!(o.patched, PatchState::Unpatched(ref why) if why.contains("#1")),
        "{:?}",
        o.patched
    );
    // The refused two-chunk call is no violation of S4 on an unpatched kernel.
    assert!(!ids.contains(&"S4".to_string()), "{ids:?}");
}

/// The retry refused too (a model that refuses every snapshot): one failed snapshot, not
/// libploop's fallback, and the kernel not named unpatched for it.
#[test]
fn a_retry_refused_too_is_one_failed_snapshot_and_no_fallback() {
    let mut s = Seq::new();
    s.start(10, node_req(P1, SyncState::NoBdev, "0:5")).end(10, -22);
    let mut one = request(PLOOP_FLAG_FS_SYNC, 1, None, None);
    one.chunk.truncate(1);
    s.start(10, one).end(10, -22);
    let (c, _) = run(partitioned_stack(), &s);
    let o = c.c.outcome();
    assert_eq!((o.fallback_count, o.refused_retry_count), (0, 1));
    assert_eq!(o.refused_retries, [(1, 2)]);
    assert_eq!((o.snapshots, o.succeeded, c.units.len()), (1, 0, 1));
    assert!(!matches!(o.patched, PatchState::Unpatched(_)), "{:?}", o.patched);
    assert!(c.units[0].request().ends_with("(refused too, -EINVAL)"), "{}", c.units[0].request());
}

/// A refused two-chunk call its thread never retried is a snapshot of its own, reported.
#[test]
fn a_refused_two_chunk_call_never_retried_is_reported_alone() {
    let mut s = Seq::new();
    s.start(10, node_req(P1, SyncState::NoBdev, "0:5")).end(10, -22);
    let (c, _) = run(partitioned_stack(), &s);
    let o = c.c.outcome();
    assert_eq!((o.snapshots, c.units.len(), o.fallback_count, o.refused_retry_count), (1, 1, 0, 0));
    assert_eq!(o.clients.len(), 1);
    assert!(o.clients[0].request.starts_with("two chunks, the sync fd"), "{:?}", o.clients);
}

/// libploop's failed open() of the partition node sends chunk #1's fd as -1: named so.
#[test]
fn a_two_chunk_request_with_fd_minus_one_is_named_as_libploops_failed_open() {
    let mut s = Seq::new();
    let mut req = node_req(P1, SyncState::NoBdev, "0:5");
    req.chunk[1].fd = -1;
    req.sync = None;
    s.start(10, req).freeze(10, P1).switch(10).thaw(10, P1).end(10, 0);
    let (c, _) = run(partitioned_stack(), &s);
    let shape = c.judged[0].call.request_shape();
    assert!(shape.contains("libploop's failed open()"), "{shape}");
    assert!(shape.contains("autodetection"), "{shape}");
}

#[test]
fn a_retry_from_another_thread_or_with_another_delta_is_no_fallback() {
    for (tid, fd) in [(11, 5), (10, 6)] {
        let mut s = Seq::new();
        s.start(10, node_req(P1, SyncState::NoBdev, "0:5")).end(10, -22);
        let mut one = request(PLOOP_FLAG_FS_SYNC, 1, None, None);
        one.chunk.truncate(1);
        one.chunk[0].fd = fd;
        s.start(tid, one).end(tid, 0);
        let (c, _) = run(partitioned_stack(), &s);
        assert_eq!(c.c.outcome().fallback_count, 0, "tid {tid} fd {fd}");
    }
}

/// The retry's chunk #0 unread (its request ends where its page does): still the fallback.
#[test]
fn a_retry_whose_chunk0_was_unread_is_still_the_fallback() {
    let mut s = Seq::new();
    s.start(10, node_req(P1, SyncState::NoBdev, "0:5")).end(10, -22);
    let mut one = request(PLOOP_FLAG_FS_SYNC, 1, None, None);
    one.chunk.clear();
    s.start(10, one).freeze(10, PLOOP).switch(10).thaw(10, PLOOP).end(10, 0);
    let (c, _) = run(partitioned_stack(), &s);
    assert_eq!(c.c.outcome().fallback_count, 1);
}

fn finding(
    call: &Call,
    verdict: crate::verify::oracle::OracleVerdict,
) -> crate::verify::oracle::Finding {
    crate::verify::oracle::Finding {
        seq: call.seq,
        tid: call.tid,
        verdict,
        why: String::new(),
        top: "/d/1.hds".into(),
        deltas: vec!["/d/0.img".into()],
        at: "partition 1".into(),
        cost_us: 10,
    }
}

fn oracle_checker() -> Checker {
    let mut c = Checker::new(
        Generation::FreezeBdev,
        all_probed(),
        Options { max_freeze_ns: 5_000_000_000, max_hang_ns: 10_000_000_000 },
    );
    c.expect_oracle();
    c.stack(&linear_stack());
    c
}

/// Under `run --oracle` the finding comes after the call's last event (the oracle judges on
/// its own thread): the call's other verdicts are known at once, and the call reaches the
/// reports only with X1, from the finding.
#[test]
fn x1_waits_for_a_finding_that_follows_the_call() {
    use crate::verify::oracle::OracleVerdict;
    let mut s = Seq::new();
    // Autodetection: dm-crypt frozen, ext4 on dm-linear not (S2), then a clean sync-fd call.
    s.autodetect_crypt(10);
    s.good_sync(11, LINEAR);
    // And one with FS_SYNC off: nothing for the oracle, judged at once.
    s.start(12, request(0, 1, None, None)).switch(12).end(12, 0);
    let mut c = oracle_checker();
    let mut ids = Vec::new();
    for e in &s.events {
        ids.extend(c.event(e).into_iter().map(|v| v.id));
    }
    assert_eq!(ids, ["S2"], "S2 said at once, without waiting for the oracle");
    let judged: Vec<CallReport> = c.take_judged().collect();
    assert_eq!(judged.iter().map(|r| r.call.seq).collect::<Vec<_>>(), [3], "only #3 is free");
    let waiting: Vec<Call> = c.take_for_oracle().collect();
    assert_eq!(waiting.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(c.take_for_oracle().count(), 0, "each call is offered once");
    // Out of order, as a slow judgement may make them.
    let found = c.oracle(&finding(&waiting[1], OracleVerdict::Clean)).unwrap();
    assert!(found.is_empty());
    // The same finding again: no call waits for it now.
    assert_eq!(c.oracle(&finding(&waiting[1], OracleVerdict::Clean)), None);
    let found = c.oracle(&finding(&waiting[0], OracleVerdict::NeedsRecovery)).unwrap();
    assert_eq!(found.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), ["X1"]);
    let exit = s.events.iter().find(|e| e.tid == 10 && e.func == Probe::SysExitIoctl).unwrap();
    assert_eq!(found[0].ts_ns, exit.ts_ns, "stamped with the call's completing event");
    let judged: Vec<CallReport> = c.take_judged().collect();
    assert_eq!(judged.iter().map(|r| r.call.seq).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(verdict(&judged[0], "X1"), &Verdict::Pass);
    assert!(matches!(verdict(&judged[1], "X1"), Verdict::Fail(_)));
    assert!(c.finish(s.ts).is_empty());
    let t = c.outcome().tally[INVARIANTS.iter().position(|i| i.id == "X1").unwrap()];
    assert_eq!((t.pass, t.fail, t.not_applicable), (1, 1, 1));
    assert_eq!(c.outcome().oracle_unjudged, None, "the n/a call (no FS_SYNC) was none of its");
}

/// A finding that never comes (the run ended first): X1 is n/a and says so; the call is
/// counted, and the wait is not mistaken for E1's (an unpatched kernel).
#[test]
fn x1_without_its_finding_by_the_end_is_na_the_oracle_did_not_finish() {
    let mut s = Seq::new();
    s.good_sync(10, LINEAR);
    let mut c = oracle_checker();
    for e in &s.events {
        assert!(c.event(e).is_empty());
    }
    assert_eq!(c.take_judged().count(), 0);
    assert!(c.finish(s.ts).is_empty());
    let judged: Vec<CallReport> = c.take_judged().collect();
    assert_eq!(judged.len(), 1);
    match verdict(&judged[0], "X1") {
        Verdict::NotApplicable(why) => assert!(why.contains("the oracle did not finish"), "{why}"),
        v => panic!("{v:?}"),
    }
    let u = c.outcome().oracle_unjudged.expect("said in the outcome");
    assert_eq!(u.calls, 1);
    assert!(u.why.contains("the oracle did not finish"), "{u:?}");
    assert!(matches!(c.outcome().patched, PatchState::Patched(_)));
}

/// Traces written before the oracle had its thread hold the finding before the completing
/// event, and their header says nothing of the oracle: the call is judged at once, from it.
#[test]
fn x1_from_a_finding_recorded_before_the_completing_event() {
    use crate::verify::oracle::OracleVerdict;
    let mut s = Seq::new();
    s.good_sync(10, LINEAR);
    let mut c = Checker::new(
        Generation::FreezeBdev,
        all_probed(),
        Options { max_freeze_ns: 5_000_000_000, max_hang_ns: 10_000_000_000 },
    );
    c.stack(&linear_stack());
    let (last, before) = s.events.split_last().unwrap();
    for e in before {
        c.event(e);
    }
    let open = c.open.get(&10).unwrap().clone();
    assert_eq!(c.oracle(&finding(&open, OracleVerdict::NeedsRecovery)), Some(vec![]));
    let ids: Vec<String> = c.event(last).into_iter().map(|v| v.id).collect();
    assert_eq!(ids, ["X1"]);
    assert_eq!(c.take_for_oracle().count(), 0);
    assert_eq!(c.take_judged().count(), 1);
}

/// An E1 wait and an X1 wait on the same run: the patch status resolves E1 and leaves X1
/// waiting for its finding.
#[test]
fn a_patch_status_resolving_e1_leaves_x1_waiting() {
    use crate::verify::oracle::OracleVerdict;
    let mut s = Seq::new();
    s.start(11, request(0, 0, None, None)).end(11, -22);
    s.good_sync(10, LINEAR);
    let mut c = oracle_checker();
    let mut ids = Vec::new();
    for e in &s.events {
        ids.extend(c.event(e).into_iter().map(|v| v.id));
    }
    assert_eq!(ids, ["E1"]);
    assert_eq!(c.take_judged().map(|r| r.call.seq).collect::<Vec<_>>(), [1]);
    let waiting: Vec<Call> = c.take_for_oracle().collect();
    assert_eq!(c.oracle(&finding(&waiting[0], OracleVerdict::Clean)), Some(vec![]));
    assert_eq!(c.take_judged().map(|r| r.call.seq).collect::<Vec<_>>(), [2]);
}

/// What the model built with PLOOP_MODEL_INLINED=y leaves probed: no ploop_snapshot,
/// find_and_freeze_bdev or get_bdev_from_fd symbol; ploop_quiesce/ploop_relax attached but
/// never firing (their call sites inlined); the format's complete_snapshot, reached through
/// its ops table, attached where `complete` (vz7's layout).
fn inlined_build(complete: bool) -> Vec<Probe> {
    use Probe::*;
    [FreezeBdev, ThawBdev, PloopQuiesce, PloopRelax, SysEnterIoctl, SysExitIoctl]
        .into_iter()
        .chain(complete.then_some(CompleteSnapshot))
        .collect()
}

impl Seq {
    /// An ioctl-anchored snapshot call with the sync fd on `d`: freeze, thaw and the
    /// format's complete_snapshot in the order `steps` gives ('f', 't', 'c').
    fn inlined_call(&mut self, tid: u32, d: &str, steps: &str) -> &mut Self {
        use ploop_common::ploop_if::PLOOP_IOC_SNAPSHOT;
        self.ioctl(tid, PLOOP_IOC_SNAPSHOT, Some(sync_req(d)));
        for step in steps.chars() {
            match step {
                'f' => self.freeze(tid, d),
                't' => self.thaw(tid, d),
                'c' => self.call(tid, "complete_snapshot"),
                _ => unreachable!("step {step}"),
            };
        }
        self.ioctl_exit(tid, 0)
    }
}

/// thaw_early on the inlined build: ploop_quiesce/ploop_relax never fire, complete_snapshot
/// places the switch, and the thaw before it is O2; the filesystem unfrozen during it, S2.
#[test]
fn a_thaw_before_complete_snapshot_is_o2_where_quiesce_and_relax_are_inlined() {
    let mut s = Seq::new();
    s.inlined_call(10, LINEAR, "ftc");
    let (c, ids) = run_probed(inlined_build(true), linear_stack(), &s);
    assert_eq!(ids, ["O2", "S2"]);
    let r = &c.judged[0];
    assert_eq!(
        *verdict(r, "O2"),
        Verdict::Fail("thaw of dm-1 (254:1) before complete_snapshot".into())
    );
    let Verdict::Fail(s2) = verdict(r, "S2") else { panic!("{:?}", verdict(r, "S2")) };
    assert!(s2.contains("was not frozen during the switch"), "{s2}");
}

#[test]
fn complete_snapshot_inside_the_freeze_passes_o2_and_s2() {
    let mut s = Seq::new();
    s.inlined_call(10, LINEAR, "fct");
    let (c, ids) = run_probed(inlined_build(true), linear_stack(), &s);
    assert!(ids.is_empty(), "{ids:?}");
    let t = c.tally();
    assert_eq!((t["O2"].0, t["S2"].0), (1, 1), "judged and passed: {:?}", c.judged[0].verdicts);
}

/// Without complete_snapshot (no symbol: the formats are not vz7's) and with the pair
/// silent, the switch is nowhere: O2 is n/a and says why, the thaw_early bug goes unseen, as
/// it did before; with nothing at all to place the switch, O2 says that.
#[test]
fn without_complete_snapshot_an_unseen_switch_is_no_verdict() {
    let mut s = Seq::new();
    s.inlined_call(10, LINEAR, "ft");
    let (c, ids) = run_probed(inlined_build(false), linear_stack(), &s);
    assert!(ids.is_empty(), "{ids:?}");
    let o2 = verdict(&c.judged[0], "O2");
    assert!(matches!(o2, Verdict::NotApplicable(why) if why.contains("did not fire")), "{o2:?}");
    let mut none = inlined_build(false);
    none.retain(|p| !matches!(p, Probe::PloopQuiesce | Probe::PloopRelax));
    let (c, ids) = run_probed(none, linear_stack(), &s);
    assert!(ids.is_empty(), "{ids:?}");
    let o2 = verdict(&c.judged[0], "O2");
    assert!(
        matches!(o2, Verdict::NotApplicable(why) if why.contains("complete_snapshot is probed")),
        "{o2:?}"
    );
    // Probed and silent in a successful call (a format whose symbol is not known): n/a too.
    let mut s = Seq::new();
    s.inlined_call(10, LINEAR, "ft");
    let (c, _) = run_probed(inlined_build(true), linear_stack(), &s);
    let o2 = verdict(&c.judged[0], "O2");
    assert!(
        matches!(o2, Verdict::NotApplicable(why) if why.contains("neither complete_snapshot")),
        "{o2:?}"
    );
}

/// Where ploop_quiesce/ploop_relax fire too they bracket complete_snapshot and the switch
/// spans them all: a freeze after ploop_quiesce, before complete_snapshot, is during it.
#[test]
fn the_switch_spans_quiesce_complete_snapshot_and_relax() {
    let mut s = Seq::new();
    s.start(10, sync_req(LINEAR)).call(10, "get_bdev_from_fd");
    s.ev(10, "ploop_quiesce", "entry", None, None);
    s.freeze(10, LINEAR);
    s.ev(10, "ploop_quiesce", "return", None, Some(0));
    s.call(10, "complete_snapshot").call(10, "ploop_relax").thaw(10, LINEAR).end(10, 0);
    let (c, ids) = run(linear_stack(), &s);
    assert_eq!(ids, ["O2", "S2"]);
    let sw = c.judged[0].call.switch().unwrap();
    assert_eq!((sw.start_by, sw.end_by), (Probe::PloopQuiesce, Probe::PloopRelax));
    assert_eq!(
        *verdict(&c.judged[0], "O2"),
        Verdict::Fail("freeze of dm-1 (254:1) during the switch".into())
    );
}
