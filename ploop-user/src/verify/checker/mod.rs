//! The checker: one deterministic automaton per `ploop_snapshot` call, keyed by thread (the
//! contract runs everything in the caller's task). Freeze and thaw events of a thread with no
//! snapshot call open (PLOOP_IOC_FREEZE/THAW, dm suspend, fsfreeze, ...) are counted and
//! never mixed into a call. A call is judged when it completes: at the exit of its ioctl
//! when that is probed, else at `ploop_snapshot`'s return. A verdict that needs a later record
//! is deferred, and the call held until it comes: E1 on an ambiguous -EINVAL (the kernel's
//! patch status), X1 under `run --oracle` (the oracle's finding, which follows the call).

pub mod invariants;

use std::{collections::VecDeque, sync::Arc};

// Keys here are thread ids and device numbers, not attacker-chosen: a fast hash over SipHash.
use rustc_hash::FxHashMap as HashMap;

use serde::{Deserialize, Serialize};

use ploop_common::{
    Probe,
    ploop_if::{PLOOP_FLAG_FS_SYNC, PLOOP_IOC_SNAPSHOT},
};

use crate::errno::Errno;
use crate::{
    kernel::{Generation, KDev},
    stats::Distribution,
    verify::events::{Phase, Request, TraceEvent},
    verify::stack::Stack,
};
pub use invariants::{INVARIANTS, Verdict};

/// Whether the kernel has the sync-fd interface, and the evidence for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "evidence", rename_all = "kebab-case")]
pub enum PatchState {
    Unknown,
    Patched(String),
    Unpatched(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thaw {
    /// `None`: the device number could not be read.
    pub dev: Option<KDev>,
    pub entry_ns: u64,
    pub ret_ns: Option<u64>,
    pub ret: Option<i64>,
    /// 3.10: the `super_block *` passed to `thaw_bdev`.
    pub sb_arg: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// `None`: the device number could not be read.
    pub dev: Option<KDev>,
    pub entry_ns: u64,
    pub ret_ns: u64,
    pub ret: i64,
    /// The device was frozen (the call succeeded; on 3.10 also with a NULL super_block).
    pub ok: bool,
    pub thaw: Option<Thaw>,
}

/// One `ploop_snapshot` call as observed.
#[derive(Clone, Debug)]
pub struct Call {
    pub seq: u64,
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    /// Where the call was seen to start: `sys_enter_ioctl`, or `ploop_snapshot` where the
    /// ioctl is not probed.
    pub anchor: Probe,
    /// `ploop_snapshot` was seen in this call (it may have been refused before it, or
    /// inlined).
    pub snapshot_entered: bool,
    pub ploop_dev: Option<KDev>,
    /// `struct ploop_device *`: identifies the device when its dev_t is unreadable.
    pub plo: u64,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub request: Request,
    pub freezes: Vec<Freeze>,
    pub stray_thaws: Vec<Thaw>,
    /// Freeze entries whose return has not been seen yet.
    pending_freezes: Vec<Freeze>,
    pub quiesce_ns: Option<u64>,
    pub relax_ns: Option<u64>,
    /// The format's `complete_snapshot`: its entry and its return, the switch itself.
    pub complete_ns: Option<u64>,
    pub completed_ns: Option<u64>,
    pub get_bdev_called: bool,
    pub find_and_freeze_ret: Option<i64>,
    /// What `ploop_snapshot` returned.
    pub ret: Option<i64>,
    /// What the ioctl returned to user space (syscall exit).
    pub user_ret: Option<i64>,
    /// Shared with every call that saw the same stack: one copy per change, not per call.
    pub stack: Option<Arc<Stack>>,
    /// T2 was reported while the call hung: not reported again when it returns.
    pub hang_reported: bool,
    /// This one-chunk call repeats call #N of the same thread on the same device, a
    /// two-chunk request answered -EINVAL: libploop's retry, its fallback for a kernel
    /// without the sync-fd interface when it succeeds. One snapshot for the client, not two.
    pub retry_of: Option<u64>,
    /// The oracle's finding on the snapshot this call left (X1), as the trace records it.
    pub oracle: Option<crate::verify::oracle::Finding>,
}

impl Call {
    /// What the call answered: `ploop_snapshot`'s return, else the ioctl's (a call refused
    /// before `ploop_snapshot`, or one whose `ploop_snapshot` was inlined).
    pub fn result(&self) -> Option<i64> {
        self.ret.or(self.user_ret)
    }

    pub fn dev_name(&self, dev: Option<KDev>) -> String {
        match (dev, &self.stack) {
            (None, _) => "?".into(),
            (Some(d), Some(s)) => s.name(d),
            (Some(d), None) => d.to_string(),
        }
    }

    /// Whether `dev` held a filesystem: 3.10 says so through freeze's return (NULL: none);
    /// otherwise the mount table at the time of the call does.
    pub fn has_fs(&self, dev: Option<KDev>, generation: Generation) -> Option<bool> {
        if generation.freeze_returns_super_block() {
            return self.freezes.iter().find(|f| f.dev == dev).map(|f| f.ret != 0);
        }
        let stack = self.stack.as_ref()?;
        // A device outside the ploop stack (a sync fd elsewhere) was named for its filesystem.
        Some(stack.device(dev?).is_none_or(|d| !d.mounts.is_empty()))
    }

    /// Successful freezes that count: the partition walk of the autodetection freezes devices
    /// without a filesystem and thaws them at once; such pairs before the switch are normal.
    pub fn counting(&self, generation: Generation) -> Vec<&Freeze> {
        let switch_at = self.switch().map(|s| s.start_ns).or(self.end_ns).unwrap_or(u64::MAX);
        self.freezes
            .iter()
            .filter(|f| f.ok)
            .filter(|f| {
                let walk_pair = self.has_fs(f.dev, generation) == Some(false)
                    && f.thaw.as_ref().is_some_and(|t| t.entry_ns < switch_at);
                !walk_pair
            })
            .collect()
    }

    /// Freezes in force across the delta switch. When the switch was not seen (its probes
    /// absent, or its call sites inlined), it happened somewhere inside the call, so every
    /// freeze that counts may have covered it: a failure then needs positive evidence, a
    /// filesystem never frozen at all in the call.
    pub fn held_during_switch(&self, generation: Generation) -> Vec<&Freeze> {
        let counting = self.counting(generation).into_iter();
        match self.switch() {
            Some(s) => counting
                .filter(|f| {
                    f.ret_ns <= s.start_ns && f.thaw.as_ref().is_none_or(|t| t.entry_ns >= s.end_ns)
                })
                .collect(),
            None => counting.collect(),
        }
    }

    /// The delta switch as the probes placed it (CONTRACT.md: `ploop_quiesce`, the format's
    /// `complete_snapshot`, `ploop_relax`): from the first of those seen to begin to the last
    /// seen to end. `complete_snapshot` is reached through an ops table and cannot be inlined
    /// away; where `ploop_quiesce`/`ploop_relax` fired too they bracket it, and place it.
    pub fn switch(&self) -> Option<Switch> {
        let start =
            [(self.quiesce_ns, Probe::PloopQuiesce), (self.complete_ns, Probe::CompleteSnapshot)]
                .into_iter()
                .filter_map(|(t, by)| Some((t?, by)))
                .min_by_key(|&(t, _)| t)?;
        let end =
            [(self.relax_ns, Probe::PloopRelax), (self.completed_ns, Probe::CompleteSnapshot)]
                .into_iter()
                .filter_map(|(t, by)| Some((t?, by)))
                .max_by_key(|&(t, _)| t)?;
        Some(Switch { start_ns: start.0, start_by: start.1, end_ns: end.0, end_by: end.1 })
    }

    /// Whether the delta switch was seen in this call.
    pub fn switch_seen(&self) -> bool {
        self.switch().is_some()
    }

    pub fn reached_freeze(&self) -> bool {
        self.result() == Some(0)
            || !self.freezes.is_empty()
            || self.find_and_freeze_ret.is_some()
            || self.quiesce_ns.is_some()
            || self.complete_ns.is_some()
    }

    /// From the first freeze (or the switch) to the last thaw (or the end of the switch).
    pub fn maintenance_window(&self) -> Option<(u64, u64)> {
        let ok = self.freezes.iter().filter(|f| f.ok);
        let start =
            ok.clone().map(|f| f.entry_ns).chain(self.quiesce_ns).chain(self.complete_ns).min()?;
        let end = ok
            .filter_map(|f| f.thaw.as_ref().and_then(|t| t.ret_ns))
            .chain(self.relax_ns)
            .chain(self.completed_ns)
            .max()
            .unwrap_or(start);
        Some((start, end))
    }

    /// The device this call works on: its dev_t, or the `ploop_device` pointer.
    fn device_key(&self) -> DeviceKey {
        self.ploop_dev.map_or(DeviceKey::Plo(self.plo), DeviceKey::Dev)
    }

    /// The shape of the request, which tells the client apart (CONTRACT.md, "The client's
    /// request"): libploop before 2020 sends one chunk, since then two with a device node as
    /// the sync fd, and retries with one chunk after -EINVAL.
    pub fn request_shape(&self) -> String {
        let r = &self.request;
        if !r.readable {
            return "a request that could not be read".into();
        }
        // No call numbers or fds here: the shape is what calls of one client have in common.
        if self.retry_of.is_some() {
            let answer = match self.result() {
                Some(0) => "succeeded".to_string(),
                Some(ret) => format!("refused too, {}", crate::errno::ret_name(ret)),
                None => "unanswered".into(),
            };
            return format!("the retry with one chunk after -EINVAL ({answer})");
        }
        match r.chunks {
            1 if r.flags & PLOOP_FLAG_FS_SYNC == 0 => {
                "one chunk, without PLOOP_FLAG_FS_SYNC".into()
            }
            1 => "one chunk (the kernel's autodetection chooses what to freeze)".into(),
            2 => match r.chunk.get(1).map(|c| c.fd) {
                // libploop checks the wrong variable after open(part) fails and sends -1.
                Some(-1) => "two chunks with chunk #1's fd -1: libploop's failed open() of the \
                             partition node, which the kernel turns into the autodetection"
                    .into(),
                Some(_) => match &r.sync {
                    Some(s) if s.is_node() => "two chunks, the sync fd a device node".into(),
                    Some(_) => "two chunks, the sync fd a file or mountpoint".into(),
                    None => "two chunks".into(),
                },
                None => "two chunks (chunk #1 unread)".into(),
            },
            n => format!("{n} chunks"),
        }
    }

    /// The device as reports name it.
    pub fn device_name(&self) -> String {
        match self.ploop_dev {
            Some(d) => self.dev_name(Some(d)),
            None => format!("{:#x}", self.plo),
        }
    }
}

/// Where the delta switch began and ended in a call, and which probe marked each end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// `ploop_quiesce`'s entry, or `complete_snapshot`'s.
    pub start_ns: u64,
    pub start_by: Probe,
    /// `ploop_relax`'s return, or `complete_snapshot`'s.
    pub end_ns: u64,
    pub end_by: Probe,
}

/// A ploop device, by dev_t where the probe could read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DeviceKey {
    Dev(KDev),
    Plo(u64),
}

/// What invariants may consult besides the call itself.
pub struct Context<'a> {
    pub generation: Generation,
    pub patched: &'a PatchState,
    pub max_freeze_ns: u64,
    pub max_hang_ns: u64,
    pub probed: &'a [Probe],
    /// The run judged with the oracle: X1 waits for its findings.
    pub oracle: bool,
    recent: &'a HashMap<DeviceKey, VecDeque<Recent>>,
}

/// What C1 needs of a judged call: its maintenance window on its device.
pub struct Recent {
    pub seq: u64,
    pub tid: u32,
    pub window: (u64, u64),
}

/// Judged calls remembered per device for C1: an overlap needs two calls in flight at once,
/// so the last few suffice and the checker stays linear in the number of calls.
const RECENT_PER_DEVICE: usize = 16;

impl Context<'_> {
    pub fn probed(&self, probe: Probe) -> bool {
        self.probed.contains(&probe)
    }
    /// The last calls judged on the same device as `call`.
    pub fn recent_on_device(&self, call: &Call) -> impl Iterator<Item = &Recent> {
        self.recent.get(&call.device_key()).into_iter().flatten()
    }
}

#[derive(Clone, Debug)]
pub struct CallReport {
    pub call: Call,
    /// Invariant id -> verdict, in the order of [`INVARIANTS`].
    pub verdicts: Vec<(&'static str, Verdict)>,
    /// When the call was judged: the time of the event that completed it.
    pub judged_ns: u64,
    /// The refused two-chunk call this one retried with one chunk (libploop's retry after
    /// -EINVAL): one snapshot for the client, so the reports carry the two as one.
    pub retried: Option<Box<CallReport>>,
}

impl CallReport {
    /// The verdict of invariant `id` on this call.
    pub fn verdict(&self, id: &str) -> Option<&Verdict> {
        self.verdicts.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    fn verdict_mut(&mut self, id: &str) -> Option<&mut Verdict> {
        self.verdicts.iter_mut().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.verdicts.iter().filter_map(|(id, v)| match v {
            Verdict::Fail(why) => Some((*id, why.as_str())),
            _ => None,
        })
    }

    /// The ioctl calls of this snapshot, in order: the refused two-chunk call it retried,
    /// if any, then this one.
    pub fn calls(&self) -> impl Iterator<Item = &CallReport> + Clone {
        self.retried.as_deref().into_iter().chain(std::iter::once(self))
    }

    /// Some verdict of the snapshot (either of its calls) failed.
    pub fn snapshot_failed(&self) -> bool {
        self.calls().any(|r| r.failures().next().is_some())
    }

    /// The snapshot's request as the reports name it (see [`Call::request_shape`]).
    pub fn request(&self) -> String {
        match &self.retried {
            Some(first) => {
                format!("{}, then {}", first.call.request_shape(), self.call.request_shape())
            }
            None => self.call.request_shape(),
        }
    }

    /// The client and its request: the process's comm, then [`CallReport::request`].
    pub fn client(&self) -> String {
        format!("{}: {}", self.call.comm, self.request())
    }
}

/// A violation, as printed the moment it is known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub id: String,
    pub seq: u64,
    pub tid: u32,
    pub device: String,
    pub ts_ns: u64,
    pub why: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VIOLATION {} snapshot #{} (tid {}, {}): {}",
            self.id, self.seq, self.tid, self.device, self.why
        )
    }
}

pub struct Options {
    pub max_freeze_ns: u64,
    /// T2: a call with a device frozen longer than this is reported while it hangs.
    pub max_hang_ns: u64,
}

pub struct Checker {
    generation: Generation,
    probed: Vec<Probe>,
    opts: Options,
    pub patched: PatchState,
    open: HashMap<u32, Call>,
    recent: HashMap<DeviceKey, VecDeque<Recent>>,
    /// Latest device stack per ploop dev, recorded just before the call that uses it.
    stacks: HashMap<KDev, Arc<Stack>>,
    /// Judged calls on their way to the reports (see [`Checker::take_judged`]).
    judged: VecDeque<CallReport>,
    /// Judged calls with a verdict deferred: E1 waiting for the kernel's patch status, X1
    /// for the oracle's finding.
    held: Vec<CallReport>,
    /// The run judged with the oracle (its header says so): X1 waits for findings.
    oracle: bool,
    /// Calls judged since [`Checker::take_for_oracle`] whose X1 waits for a finding.
    for_oracle: Vec<Call>,
    unjudged: Option<Unjudged>,
    /// What the outcome counts; kept as counts, so a long run holds no call it has judged.
    tally: [Tally; INVARIANTS.len()],
    snapshots: usize,
    violations: usize,
    incomplete: usize,
    /// freeze/thaw events of threads outside any snapshot call.
    outside: u64,
    pub events: u64,
    /// Events per probe, by [`Probe::id`]: what fired tells what a kernel inlined.
    fired: [u64; FIRED_SLOTS],
    seq: u64,
    /// Freeze windows of judged calls (ns).
    windows: Distribution,
    /// Per thread, its last call if it was a two-chunk request answered -EINVAL: the
    /// request a client may now repeat with one chunk.
    refused_two_chunk: HashMap<u32, Refused>,
    /// Per thread, its refused two-chunk call, judged and kept from the reports until the
    /// thread's next call says whether it was retried: the two are then one snapshot.
    awaiting_retry: HashMap<u32, CallReport>,
    /// Retries whose one-chunk half succeeded (see [`Call::retry_of`]): (first call, retry).
    fallbacks: Vec<(u64, u64)>,
    fallback_count: usize,
    /// Retries refused too: not libploop's fallback to an old kernel, just a failed snapshot.
    refused_retries: Vec<(u64, u64)>,
    refused_retry_count: usize,
    /// Snapshots (a retried request counted once) that succeeded.
    succeeded: usize,
    /// Snapshots per client (comm) and request shape, in the order first seen.
    clients: Vec<ClientUse>,
}

/// How many distinct (client, request) pairs the reports list; the rest are counted together.
pub const CLIENTS_LISTED: usize = 32;

/// The snapshots one client made with one shape of request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientUse {
    /// The process's comm, or "(others)" past [`CLIENTS_LISTED`].
    pub comm: String,
    pub request: String,
    pub snapshots: usize,
}

/// What identifies "the same request" for libploop's one-chunk retry.
#[derive(Clone, Copy, Debug)]
struct Refused {
    seq: u64,
    device: DeviceKey,
    chunk0_fd: Option<i32>,
    format: u32,
    flags: u32,
}

impl Refused {
    /// `now` is the same request: device, format and flags alike, and chunk #0's fd too
    /// where both were read (a request that ends where its memory does leaves the probe's
    /// two-chunk read unread).
    fn repeated_by(&self, now: &Refused) -> bool {
        let fd_alike = match (self.chunk0_fd, now.chunk0_fd) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.device == now.device
            && self.format == now.format
            && self.flags == now.flags
            && fd_alike
    }

    fn of(call: &Call) -> Refused {
        Refused {
            seq: call.seq,
            device: call.device_key(),
            chunk0_fd: call.request.chunk.first().map(|c| c.fd),
            format: call.request.format,
            flags: call.request.flags,
        }
    }
}

/// How many fallbacks a report lists by call number (the count is always exact).
pub const FALLBACKS_LISTED: usize = 100;

/// Snapshot calls the oracle was to judge and could not (X1 n/a there), and why the first
/// could not: a run that asked for the oracle is told, not left to count n/a's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unjudged {
    pub calls: usize,
    pub why: String,
}

/// How often one invariant passed, failed, or did not apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub pass: usize,
    pub fail: usize,
    pub not_applicable: usize,
}

/// What the checker concludes about a whole run: all the reports need besides the calls.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub patched: PatchState,
    /// Per invariant, in the order of [`INVARIANTS`].
    pub tally: [Tally; INVARIANTS.len()],
    pub snapshots: usize,
    pub violations: usize,
    /// Calls still open when the run ended (never judged).
    pub incomplete: usize,
    pub events: u64,
    /// freeze/thaw events of threads outside any snapshot call.
    pub outside: u64,
    /// Freeze windows of judged calls, in ns.
    pub windows: Distribution,
    fired: [u64; FIRED_SLOTS],
    /// One-chunk retries of a refused two-chunk request that succeeded (libploop's fallback
    /// to a kernel without the sync fd): (first call, retry), the first
    /// [`FALLBACKS_LISTED`]; and how many there were.
    pub fallbacks: Vec<(u64, u64)>,
    pub fallback_count: usize,
    /// Such retries refused too, likewise.
    pub refused_retries: Vec<(u64, u64)>,
    pub refused_retry_count: usize,
    /// Snapshots that succeeded (each retried request counted once, as in `snapshots`).
    pub succeeded: usize,
    pub clients: Vec<ClientUse>,
    pub oracle_unjudged: Option<Unjudged>,
}

/// Probe ids are small and dense (1..=10 today); one slot each, 0 unused.
const FIRED_SLOTS: usize = Probe::ALL.len() + 1;

impl Outcome {
    /// How many events `probe` produced in the run.
    pub fn fired(&self, probe: Probe) -> u64 {
        self.fired.get(usize::from(probe.id())).copied().unwrap_or(0)
    }
}

impl Checker {
    /// `probed`: the probes attached.
    pub fn new(generation: Generation, probed: Vec<Probe>, opts: Options) -> Self {
        Checker {
            generation,
            probed,
            opts,
            patched: PatchState::Unknown,
            open: HashMap::default(),
            recent: HashMap::default(),
            stacks: HashMap::default(),
            judged: VecDeque::new(),
            held: Vec::new(),
            oracle: false,
            for_oracle: Vec::new(),
            unjudged: None,
            tally: [Tally::default(); INVARIANTS.len()],
            snapshots: 0,
            violations: 0,
            incomplete: 0,
            outside: 0,
            events: 0,
            fired: [0; FIRED_SLOTS],
            seq: 0,
            windows: Distribution::default(),
            refused_two_chunk: HashMap::default(),
            awaiting_retry: HashMap::default(),
            fallbacks: Vec::new(),
            fallback_count: 0,
            refused_retries: Vec::new(),
            refused_retry_count: 0,
            succeeded: 0,
            clients: Vec::new(),
        }
    }

    /// The run judged with the oracle: a call X1 needs a finding on is held until it arrives
    /// (see [`Checker::oracle`]), and offered to the oracle by [`Checker::take_for_oracle`].
    pub fn expect_oracle(&mut self) {
        self.oracle = true;
    }

    /// Calls whose X1 now waits for the oracle's finding: the live run judges them.
    pub fn take_for_oracle(&mut self) -> impl Iterator<Item = Call> + '_ {
        self.for_oracle.drain(..)
    }

    pub fn stack(&mut self, stack: &Stack) {
        // The stack rarely changes between calls: keep the shared copy when it is the same.
        if self.stacks.get(&stack.ploop_dev).is_none_or(|s| **s != *stack) {
            self.stacks.insert(stack.ploop_dev, Arc::new(stack.clone()));
        }
    }

    pub fn snapshots(&self) -> usize {
        self.snapshots
    }

    pub fn violations(&self) -> usize {
        self.violations
    }

    /// What the invariants may consult besides the call.
    fn context(&self) -> Context<'_> {
        Context {
            generation: self.generation,
            patched: &self.patched,
            max_freeze_ns: self.opts.max_freeze_ns,
            max_hang_ns: self.opts.max_hang_ns,
            probed: &self.probed,
            oracle: self.oracle,
            recent: &self.recent,
        }
    }

    /// Calls judged since the last call, in the order their verdicts became final. The
    /// checker keeps none of them: whoever wants them (the reports) takes them here.
    pub fn take_judged(&mut self) -> impl Iterator<Item = CallReport> + '_ {
        self.judged.drain(..)
    }

    /// A call whose verdicts are final leaves for the reports, counted.
    fn release(&mut self, r: CallReport) {
        // The oracle was on (this run's header, or a finding in an older trace) and this call
        // was one for it: its n/a is the oracle's failure to judge.
        let for_oracle = self.oracle || r.call.oracle.is_some();
        if let Verdict::NotApplicable(why) = x1_of(&r)
            && for_oracle
            && crate::verify::oracle::awaits_finding(&r.call)
        {
            let u =
                self.unjudged.get_or_insert_with(|| Unjudged { calls: 0, why: why.to_string() });
            u.calls += 1;
        }
        for call in r.calls() {
            for (t, (_, v)) in self.tally.iter_mut().zip(&call.verdicts) {
                match v {
                    Verdict::Pass => t.pass += 1,
                    Verdict::Fail(_) => t.fail += 1,
                    Verdict::NotApplicable(_) | Verdict::Deferred => t.not_applicable += 1,
                }
            }
        }
        let request = r.request();
        let known = self.clients.iter().position(|u| u.comm == r.call.comm && u.request == request);
        let others = || ClientUse { comm: "(others)".into(), request: "any".into(), snapshots: 0 };
        let i = match known {
            Some(i) => i,
            None if self.clients.len() < CLIENTS_LISTED => {
                let comm = r.call.comm.clone();
                self.clients.push(ClientUse { comm, request, snapshots: 0 });
                self.clients.len() - 1
            }
            None => {
                if self.clients.len() == CLIENTS_LISTED {
                    self.clients.push(others());
                }
                CLIENTS_LISTED
            }
        };
        self.clients[i].snapshots += 1;
        self.judged.push_back(r);
    }

    /// A snapshot call starts at `e` (its anchor); one still open on the thread never ended.
    fn open_call(&mut self, e: &TraceEvent) {
        if self.open.remove(&e.tid).is_some() {
            self.incomplete += 1;
        }
        self.seq += 1;
        let ploop_dev = e.dev;
        let stack = ploop_dev.and_then(|d| self.stacks.get(&d)).cloned();
        let at_snapshot = e.func == Probe::PloopSnapshot;
        self.open.insert(
            e.tid,
            Call {
                seq: self.seq,
                tid: e.tid,
                pid: e.pid,
                comm: e.comm.to_string(),
                anchor: e.func,
                snapshot_entered: at_snapshot,
                ploop_dev,
                plo: if at_snapshot { e.args.first().copied().unwrap_or_default() } else { 0 },
                start_ns: e.ts_ns,
                end_ns: None,
                request: e.request.as_deref().cloned().unwrap_or_else(Request::unreadable),
                freezes: Vec::new(),
                stray_thaws: Vec::new(),
                pending_freezes: Vec::new(),
                quiesce_ns: None,
                relax_ns: None,
                complete_ns: None,
                completed_ns: None,
                get_bdev_called: false,
                find_and_freeze_ret: None,
                ret: None,
                user_ret: None,
                stack,
                hang_reported: false,
                retry_of: None,
                oracle: None,
            },
        );
    }

    /// The oracle's finding on the call it names: a judged call held for it (X1 is judged now,
    /// and the call released), or, in traces that recorded findings before the completing
    /// event, the open call. Returns the violation it completes; `None` for a finding on
    /// neither (a damaged trace), which changes nothing.
    pub fn oracle(&mut self, f: &crate::verify::oracle::Finding) -> Option<Vec<Violation>> {
        if let Some(call) = self.open.get_mut(&f.tid).filter(|c| c.seq == f.seq) {
            call.oracle = Some(f.clone());
            return Some(Vec::new());
        }
        let i = self.held.iter().position(|r| r.call.seq == f.seq && r.call.oracle.is_none())?;
        let mut r = self.held.remove(i);
        r.call.oracle = Some(f.clone());
        // Stamped with the moment the call was judged, as if the finding had been there:
        // live and replayed runs agree, and with traces that held the finding before.
        let at = r.judged_ns;
        let out = self.redo_deferred(&mut r, at);
        self.hold_or_release(r);
        Some(out)
    }

    /// Feeds one event; returns the violations it completes.
    pub fn event(&mut self, e: &TraceEvent) -> Vec<Violation> {
        self.events += 1;
        if let Some(n) = self.fired.get_mut(usize::from(e.func.id())) {
            *n += 1;
        }
        let entry = e.phase == Phase::Entry;
        // Where a call starts: at the ioctl where that is probed (it cannot be inlined away,
        // and refusals before ploop_snapshot are calls too), else at ploop_snapshot. A
        // ploop_snapshot inside an anchored call adds its detail to it.
        match (e.func, entry) {
            (Probe::SysEnterIoctl, true) => {
                if e.args.get(1) == Some(&PLOOP_IOC_SNAPSHOT) {
                    self.open_call(e);
                }
                // PLOOP_IOC_FREEZE/THAW: no snapshot; their freezes count as outside.
                return Vec::new();
            }
            (Probe::PloopSnapshot, true) => {
                match self.open.get_mut(&e.tid) {
                    Some(call) if call.anchor == Probe::SysEnterIoctl && !call.snapshot_entered => {
                        call.snapshot_entered = true;
                        call.plo = e.args.first().copied().unwrap_or_default();
                        call.ploop_dev = call.ploop_dev.or(e.dev);
                    }
                    _ => self.open_call(e),
                }
                return Vec::new();
            }
            _ => {}
        }
        let Some(call) = self.open.get_mut(&e.tid) else {
            if matches!(e.func, Probe::FreezeBdev | Probe::ThawBdev) {
                self.outside += 1;
            }
            return Vec::new();
        };
        let dev = e.dev;
        let ret = e.ret.unwrap_or(0);
        match (e.func, e.phase) {
            (Probe::FreezeBdev, Phase::Entry) => call.pending_freezes.push(Freeze {
                dev,
                entry_ns: e.ts_ns,
                ret_ns: 0,
                ret: 0,
                ok: false,
                thaw: None,
            }),
            (Probe::FreezeBdev, Phase::Return) => {
                let i = call.pending_freezes.iter().rposition(|f| f.dev == dev);
                let mut f = match i {
                    Some(i) => call.pending_freezes.remove(i),
                    None => {
                        Freeze { dev, entry_ns: e.ts_ns, ret_ns: 0, ret: 0, ok: false, thaw: None }
                    }
                };
                f.ret_ns = e.ts_ns;
                f.ret = ret;
                f.ok = !self.generation.freeze_failed(ret);
                call.freezes.push(f);
            }
            (Probe::ThawBdev, Phase::Entry) => {
                let thaw = Thaw {
                    dev,
                    entry_ns: e.ts_ns,
                    ret_ns: None,
                    ret: None,
                    sb_arg: e.args.get(1).copied(),
                };
                match call
                    .freezes
                    .iter_mut()
                    .rev()
                    .find(|f| f.ok && f.dev == dev && f.thaw.is_none())
                {
                    Some(f) => f.thaw = Some(thaw),
                    None => call.stray_thaws.push(thaw),
                }
            }
            (Probe::ThawBdev, Phase::Return) => {
                let open = call
                    .freezes
                    .iter_mut()
                    .rev()
                    .filter_map(|f| f.thaw.as_mut())
                    .chain(call.stray_thaws.iter_mut().rev())
                    .find(|t| t.dev == dev && t.ret_ns.is_none());
                if let Some(t) = open {
                    t.ret_ns = Some(e.ts_ns);
                    t.ret = Some(ret);
                }
            }
            (Probe::PloopQuiesce, Phase::Entry) => {
                call.quiesce_ns.get_or_insert(e.ts_ns);
            }
            (Probe::PloopRelax, Phase::Return) => call.relax_ns = Some(e.ts_ns),
            (Probe::CompleteSnapshot, Phase::Entry) => {
                call.complete_ns.get_or_insert(e.ts_ns);
            }
            (Probe::CompleteSnapshot, Phase::Return) => call.completed_ns = Some(e.ts_ns),
            (Probe::GetBdevFromFd, Phase::Entry) => call.get_bdev_called = true,
            (Probe::FindAndFreezeBdev, Phase::Return) => call.find_and_freeze_ret = Some(ret),
            (Probe::PloopSnapshot, Phase::Return) => {
                call.ret = Some(ret);
                call.end_ns = Some(e.ts_ns);
                if !self.probed.contains(&Probe::SysExitIoctl) {
                    return self.judge(e.tid, e.ts_ns);
                }
            }
            (Probe::SysExitIoctl, Phase::Return) => {
                call.user_ret = Some(ret);
                return self.judge(e.tid, e.ts_ns);
            }
            (Probe::PloopSnapshot | Probe::SysEnterIoctl, Phase::Entry)
            | (Probe::SysEnterIoctl, Phase::Return)
            | (Probe::FindAndFreezeBdev | Probe::GetBdevFromFd, _)
            | (Probe::PloopQuiesce | Probe::PloopRelax | Probe::SysExitIoctl, _) => {}
        }
        Vec::new()
    }

    /// What this call tells about the kernel's patch status.
    fn evidence(call: &Call) -> Option<String> {
        let r = &call.request;
        if call.result() == Some(Errno::ENOTSUPP.ret()) {
            return Some(format!("pctl_chunks={} answered -ENOTSUPP", r.chunks));
        }
        if call.get_bdev_called {
            return Some("get_bdev_from_fd ran for a sync fd".into());
        }
        if r.chunks == 2
            && call.result() == Some(0)
            && r.chunk.get(1).is_some_and(|c| !c.has_extra_fields())
        {
            return Some("a two-chunk snapshot succeeded".into());
        }
        None
    }

    /// libploop's fallback: a two-chunk request refused with -EINVAL, then the same request
    /// with one chunk on the same device from the same thread. Marks the retry; a retry that
    /// succeeds shows the kernel lacks the sync-fd interface.
    fn fallback(&mut self, call: &mut Call) -> Option<String> {
        let prev = self.refused_two_chunk.remove(&call.tid);
        let r = &call.request;
        if r.chunks == 2
            && call.result() == Some(Errno::EINVAL.ret())
            && r.chunk.get(1).is_some_and(|c| !c.has_extra_fields())
        {
            self.refused_two_chunk.insert(call.tid, Refused::of(call));
            return None;
        }
        let prev = prev?;
        if r.chunks != 1 || !prev.repeated_by(&Refused::of(call)) {
            return None;
        }
        call.retry_of = Some(prev.seq);
        let ok = call.result() == Some(0);
        let (list, count) = if ok {
            (&mut self.fallbacks, &mut self.fallback_count)
        } else {
            (&mut self.refused_retries, &mut self.refused_retry_count)
        };
        *count += 1;
        if list.len() < FALLBACKS_LISTED {
            list.push((prev.seq, call.seq));
        }
        ok.then(|| {
            format!(
                "snapshot #{}: two chunks answered -EINVAL, the same request with one chunk \
                 (#{}) succeeded",
                prev.seq, call.seq
            )
        })
    }

    fn judge(&mut self, tid: u32, now: u64) -> Vec<Violation> {
        let Some(mut call) = self.open.remove(&tid) else { return Vec::new() };
        let mut out = Vec::new();
        let unpatched = self.fallback(&mut call);
        if self.patched == PatchState::Unknown {
            if let Some(why) = Self::evidence(&call) {
                self.patched = PatchState::Patched(why);
            } else if let Some(why) = unpatched {
                self.patched = PatchState::Unpatched(why);
            }
            out.extend(self.resolve_deferred(now));
        }
        let ctx = self.context();
        let verdicts: Vec<(&'static str, Verdict)> =
            INVARIANTS.iter().map(|inv| (inv.id, (inv.check)(&call, &ctx))).collect();
        let mut report = CallReport { call, verdicts, judged_ns: now, retried: None };
        // The thread's refused two-chunk call: this one's first half, or a snapshot alone.
        if let Some(first) = self.awaiting_retry.remove(&tid) {
            if report.call.retry_of == Some(first.call.seq) {
                report.retried = Some(Box::new(first));
            } else {
                self.release(first);
            }
        }
        if let Some(window) = report.call.maintenance_window() {
            let q = self.recent.entry(report.call.device_key()).or_default();
            q.push_back(Recent { seq: report.call.seq, tid: report.call.tid, window });
            if q.len() > RECENT_PER_DEVICE {
                q.pop_front();
            }
        }
        for f in report.call.freezes.iter().filter(|f| f.ok) {
            if let Some(end) = f.thaw.as_ref().and_then(|t| t.ret_ns) {
                self.windows.record(end.saturating_sub(f.ret_ns));
            }
        }
        // libploop's retry is the same snapshot as the call it repeats: counted once.
        if report.call.retry_of.is_none() {
            self.snapshots += 1;
        }
        if report.call.result() == Some(0) {
            self.succeeded += 1;
        }
        // A hang was reported while it lasted (and counted then).
        let told = report.call.hang_reported;
        let new: Vec<_> = report.failures().filter(|(id, _)| !(told && *id == "T2")).collect();
        self.violations += new.len();
        out.extend(new.into_iter().map(|(id, why)| violation(&report.call, id, why, now)));
        // X1 waits exactly where the oracle has a finding to give (oracle::awaits_finding).
        if x1_of(&report) == &Verdict::Deferred {
            self.for_oracle.push(report.call.clone());
        }
        // Kept until the thread's next call tells whether libploop retried it (a verdict
        // still deferred goes its usual way: such a call is no retry's first half).
        if self.refused_two_chunk.get(&tid).is_some_and(|r| r.seq == report.call.seq)
            && !report.verdicts.iter().any(|(_, v)| *v == Verdict::Deferred)
        {
            self.awaiting_retry.insert(tid, report);
        } else {
            self.hold_or_release(report);
        }
        out
    }

    /// Judges the held calls' deferred verdicts again now that the patch status is known;
    /// each invariant keeps its one wording, whenever it is judged.
    fn resolve_deferred(&mut self, now: u64) -> Vec<Violation> {
        if self.patched == PatchState::Unknown {
            return Vec::new();
        }
        let mut out = Vec::new();
        for mut r in std::mem::take(&mut self.held) {
            out.extend(self.redo_deferred(&mut r, now));
            self.hold_or_release(r);
        }
        out
    }

    /// Judges `r`'s deferred verdicts again; returns the violations they now are.
    fn redo_deferred(&mut self, r: &mut CallReport, now: u64) -> Vec<Violation> {
        let deferred: Vec<usize> =
            (0..r.verdicts.len()).filter(|&i| r.verdicts[i].1 == Verdict::Deferred).collect();
        let ctx = self.context();
        for &i in &deferred {
            r.verdicts[i].1 = (INVARIANTS[i].check)(&r.call, &ctx);
        }
        let mut out = Vec::new();
        for &i in &deferred {
            if let (id, Verdict::Fail(why)) = &r.verdicts[i] {
                self.violations += 1;
                out.push(violation(&r.call, id, why, now));
            }
        }
        out
    }

    /// A call still waiting for a verdict stays held; else it leaves for the reports.
    fn hold_or_release(&mut self, r: CallReport) {
        if r.verdicts.iter().any(|(_, v)| *v == Verdict::Deferred) {
            self.held.push(r);
        } else {
            self.release(r);
        }
    }

    /// T2 while it happens: every open call that has held a device frozen longer than the
    /// limit at `now`, once per call. Called as time passes (live: on a timer; replayed: at
    /// each event and at the end), so a hung snapshot is reported before it returns, if ever.
    pub fn hung(&mut self, now: u64) -> Vec<Violation> {
        let limit = self.opts.max_hang_ns;
        // The moment `call` became hung, if it has.
        let hung_since = |call: &Call| {
            if call.hang_reported {
                return None;
            }
            call.freezes
                .iter()
                .filter(|f| f.ok && f.thaw.as_ref().and_then(|t| t.ret_ns).is_none())
                .map(|f| f.ret_ns.saturating_add(limit))
                .filter(|&since| now > since)
                .min()
        };
        // Called at every event of a replay: nothing to allocate while nothing hangs.
        if !self.open.values().any(|c| hung_since(c).is_some()) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut hung: Vec<&mut Call> = self.open.values_mut().collect();
        hung.sort_by_key(|c| c.seq);
        for call in hung {
            let Some(since) = hung_since(call) else { continue };
            let f = call
                .freezes
                .iter()
                .find(|f| f.ok && f.ret_ns.saturating_add(limit) == since)
                .expect("the freeze hung_since found");
            let why = format!(
                "{} has been frozen for more than {:.1} s and the snapshot call has not \
                 returned: hung (tid {}, {})",
                call.dev_name(f.dev),
                limit as f64 / 1e9,
                call.tid,
                call.comm
            );
            call.hang_reported = true;
            // Stamped with the moment it became hung, not when it was noticed: live and
            // replayed runs then report the same violation.
            out.push(violation(call, "T2", &why, since));
        }
        self.violations += out.len();
        out
    }

    /// End of the run: open calls are incomplete; an undecided patch status with -EINVAL
    /// answers to bad chunk counts means an unpatched kernel. Returns the violations this
    /// completes; [`Checker::outcome`] then holds the run's conclusion.
    pub fn finish(&mut self, now: u64) -> Vec<Violation> {
        let mut out = self.hung(now);
        // Refused two-chunk calls never retried: snapshots of their own.
        let mut unretried: Vec<CallReport> = self.awaiting_retry.drain().map(|(_, r)| r).collect();
        unretried.sort_by_key(|r| r.call.seq);
        for r in unretried {
            self.release(r);
        }
        self.incomplete += self.open.len();
        // A call still hanging when the run ends failed T2: the reports must carry it as a
        // failing case like any other (a CI test view read "all passed" while the run
        // exited 1). Everything else about it is unknown. Other open calls are dropped.
        let mut open: Vec<Call> = self.open.drain().map(|(_, c)| c).collect();
        open.sort_by_key(|c| c.seq);
        for mut call in open.into_iter().filter(|c| c.hang_reported) {
            call.end_ns = Some(now);
            let ctx = self.context();
            let verdicts = INVARIANTS
                .iter()
                .map(|inv| {
                    let v = if inv.id == "T2" {
                        (inv.check)(&call, &ctx)
                    } else {
                        Verdict::NotApplicable(
                            "the call had not returned when the run ended".into(),
                        )
                    };
                    (inv.id, v)
                })
                .collect();
            self.release(CallReport { call, verdicts, judged_ns: now, retried: None });
        }
        // A finding that never came: X1 is n/a, said so (the oracle was slower than the run,
        // or its thread died). Before the patch status below, which reads E1's waits alone.
        for r in &mut self.held {
            if let Some(v) = r.verdict_mut("X1")
                && *v == Verdict::Deferred
            {
                *v = Verdict::NotApplicable(
                    "the oracle did not finish: no finding on this snapshot by the end of the \
                     run"
                    .into(),
                );
            }
        }
        for r in std::mem::take(&mut self.held) {
            self.hold_or_release(r);
        }
        if self.patched == PatchState::Unknown && !self.held.is_empty() {
            self.patched = PatchState::Unpatched(
                "pctl_chunks outside {1, 2} answered -EINVAL, not -ENOTSUPP".into(),
            );
        }
        out.extend(self.resolve_deferred(now));
        out
    }

    /// What the run concludes so far (final after [`Checker::finish`]).
    pub fn outcome(&self) -> Outcome {
        Outcome {
            patched: self.patched.clone(),
            tally: self.tally,
            snapshots: self.snapshots,
            violations: self.violations,
            incomplete: self.incomplete,
            events: self.events,
            outside: self.outside,
            windows: self.windows.clone(),
            fired: self.fired,
            fallbacks: self.fallbacks.clone(),
            fallback_count: self.fallback_count,
            refused_retries: self.refused_retries.clone(),
            refused_retry_count: self.refused_retry_count,
            succeeded: self.succeeded,
            clients: self.clients.clone(),
            oracle_unjudged: self.unjudged.clone(),
        }
    }
}

/// X1's verdict in `r`.
fn x1_of(r: &CallReport) -> &Verdict {
    r.verdict("X1").expect("X1 is an invariant")
}

fn violation(call: &Call, id: &str, why: &str, now: u64) -> Violation {
    Violation {
        id: id.to_string(),
        seq: call.seq,
        tid: call.tid,
        device: call.device_name(),
        ts_ns: now,
        why: why.to_string(),
    }
}

#[cfg(test)]
mod tests;
