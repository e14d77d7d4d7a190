//! Loading, configuring and attaching the eBPF probes, and streaming their events.
//!
//! Two choices shape a probe session: the attach method (kprobe/kretprobe or fentry/fexit)
//! and the transport (BPF ring buffer or perf event array). Both are picked from what the
//! running kernel actually accepts, found by trying, and both can be forced by flag.

use std::{
    fmt,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf, perf::PerfEventArray},
    programs::{FEntry, FExit, KProbe, TracePoint},
};
use clap::{Args, ValueEnum};
use ploop_common::{Attach, Event, Probe, config, names};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{
    btf,
    errno::Errno,
    kernel::{
        KernelInfo,
        minimums::{self, Minimum},
        tracefs,
    },
    offsets::{self, FD_WALK, Offsets},
    verify::perf_ring::{PerfRecord, PerfRing},
};

pub(crate) static OBJ_RINGBUF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ploop-rb"));
/// The legacy object (perf buffer, no ring buffer): `kernel::verifier` holds it to old
/// verifiers.
pub(crate) static OBJ_PERF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ploop-perf"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// kprobe at entry, kretprobe at return (kernel 4.1+; reaches module functions).
    Kprobe,
    /// fentry/fexit trampolines (kernel 5.5+ with BTF; vmlinux functions only).
    Fentry,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// BPF ring buffer (kernel 5.8+): one ordered stream for all CPUs.
    Ringbuf,
    /// Perf event array (kernel 4.3+): one buffer per CPU, merged by timestamp.
    Perf,
}

impl Method {
    /// The kernel feature this method needs (the help above states its version).
    pub fn minimum(self) -> &'static Minimum {
        match self {
            Method::Kprobe => &minimums::KPROBE,
            Method::Fentry => &minimums::FENTRY,
        }
    }
}

impl Transport {
    /// The kernel feature this transport needs (the help above states its version).
    pub fn minimum(self) -> &'static Minimum {
        match self {
            Transport::Ringbuf => &minimums::RINGBUF,
            Transport::Perf => &minimums::PERF_EVENT_ARRAY,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().expect("no skipped variants").get_name())
    }
}
impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().expect("no skipped variants").get_name())
    }
}

/// Probe selection shared by every command that attaches.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Attach method; default: fentry where the kernel accepts it, else kprobe.
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// Event transport; default: ring buffer where the kernel has it (5.8+), else perf buffer.
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
}

/// Picks the plan: exactly what the user named, or what the kernel is found to accept.
pub fn plan(kernel: &KernelInfo, btf: Option<&Path>, args: &ProbeArgs) -> Result<Plan> {
    if let (Some(m), Some(t)) = (args.method, args.transport) {
        return Plan::explicit(kernel, btf, m, t);
    }
    Capabilities::probe(kernel, btf).plan(kernel, args.method, args.transport)
}

/// A kernel function a session attaches to, and the symbol it has on this kernel.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub role: Probe,
    pub symbol: String,
}

/// Why a probe matters, said when its function is missing.
pub fn missing_means(probe: Probe) -> &'static str {
    match probe {
        Probe::FreezeBdev | Probe::ThawBdev => "no freeze/thaw probes at all",
        Probe::PloopSnapshot => "no verdict on ploop snapshots (is the ploop module loaded?)",
        Probe::GetBdevFromFd => "unpatched kernel, or inlined: sync-fd resolution not observed",
        Probe::FindAndFreezeBdev => "freeze attribution relies on freeze_bdev alone",
        Probe::PloopQuiesce | Probe::PloopRelax => {
            "the delta switch is placed by the format's complete_snapshot alone"
        }
        Probe::CompleteSnapshot => {
            "the delta switch is placed by ploop_quiesce/ploop_relax alone (they may be inlined)"
        }
        Probe::SysExitIoctl => "the errno user space sees (E3) is not observed",
        Probe::SysEnterIoctl => {
            "calls are anchored at ploop_snapshot: those refused before it, or all of them \
             where it is inlined, are not seen"
        }
    }
}

/// Probes on kernel functions: the freeze/thaw pair any session needs (`fentry` reaches
/// them), or the ploop driver's functions, optional and reached by kprobes.
fn function_probes(required: bool) -> impl Iterator<Item = Probe> {
    Probe::ALL.into_iter().filter(
        move |p| matches!(p.attach(), Attach::Function { fentry, .. } if fentry == required),
    )
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub method: Method,
    pub transport: Transport,
    /// freeze/thaw, attached with `method`.
    pub targets: Vec<Target>,
    /// Functions of the ploop driver present on this kernel, attached with kprobes.
    pub ploop_targets: Vec<Target>,
    /// BTF for fentry targets: the offsets' source when that is BTF, else none (no fentry).
    pub btf: Option<PathBuf>,
    /// Where the offsets below were read (`None` only in `Capabilities::probe`'s trial
    /// attach, which runs whether or not they were found: it tests the method, not them).
    pub offsets: Option<offsets::Source>,
    pub bd_dev_offset: u64,
    /// Offsets of the in-kernel fd walk (S1), by config slot; absent when the BTF lacks one.
    pub fd_walk: Option<Vec<(u32, u64)>>,
    /// ploop's block major (`None`: not registered, or not looked up).
    pub ploop_major: Option<u32>,
}

/// ploop's block major from /proc/devices ("182 ploop" on vz7; dynamic for the model
/// driver), for `sys_enter_ioctl`'s filter.
pub fn ploop_major() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/devices").ok()?;
    let block = text.split("Block devices:").nth(1)?;
    block.lines().find_map(|l| {
        let (major, name) = l.trim().split_once(' ')?;
        (name.trim() == "ploop").then(|| major.parse().ok())?
    })
}

/// Optional ploop functions present in this kernel: a target per symbol (several for a
/// probe on every format's operation).
pub fn ploop_targets(kernel: &KernelInfo) -> Vec<Target> {
    function_probes(false)
        .flat_map(|role| {
            kernel.symbols_of(role).iter().map(move |s| Target { role, symbol: s.name.clone() })
        })
        .collect()
}

/// What one capability check found, with what was seen or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The kernel accepts it.
    Supported(String),
    /// The kernel lacks it: no kprobe PMU, the verifier or the map code rejects it (ENOENT,
    /// EINVAL, ...), no BTF.
    Unsupported(String),
    /// The kernel refused us: EPERM, or EACCES from anything but the verifier (privileges,
    /// perf_event_paranoid, lockdown, the memlock limit before 5.11).
    Refused(String),
    /// Not tried, or no answer to tell by: a prerequisite failed, or the error names no errno.
    Unknown(String),
}

impl Check {
    /// A failed try, told by the errno somewhere in `error`'s chain.
    pub fn failed(error: &(dyn std::error::Error + 'static), reason: String) -> Check {
        let mut errno = None;
        let mut verifier = false;
        let mut cur = Some(error);
        while let Some(e) = cur {
            verifier |= matches!(
                e.downcast_ref::<aya::programs::ProgramError>(),
                Some(aya::programs::ProgramError::LoadError { .. })
            );
            if errno.is_none() {
                errno = e.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error());
            }
            cur = e.source();
        }
        match errno.map(Errno::from_raw) {
            // The verifier answers EACCES for a program it rejects: that is the kernel's
            // "cannot do this", not a refusal of the caller.
            Some(Errno::EACCES) if verifier => Check::Unsupported(reason),
            Some(Errno::EPERM | Errno::EACCES) => Check::Refused(reason),
            Some(_) => Check::Unsupported(reason),
            None => Check::Unknown(reason),
        }
    }

    pub fn is_supported(&self) -> bool {
        matches!(self, Check::Supported(_))
    }

    /// What was seen, or why not.
    pub fn text(&self) -> &str {
        match self {
            Check::Supported(t) | Check::Unsupported(t) | Check::Refused(t) | Check::Unknown(t) => {
                t
            }
        }
    }

    /// Why it is not supported; `None` if it is.
    pub fn reason(&self) -> Option<&str> {
        (!self.is_supported()).then(|| self.text())
    }

    /// The kind in one word.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Supported(_) => "supported",
            Check::Unsupported(_) => "unsupported",
            Check::Refused(_) => "refused",
            Check::Unknown(_) => "unknown",
        }
    }
}

/// `{"Ok": detail}` when supported, else `{"Err": reason}`, both with `"kind"`: the shape
/// `doctor --json` has always had, plus the kind.
impl Serialize for Check {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry(if self.is_supported() { "Ok" } else { "Err" }, self.text())?;
        m.serialize_entry("kind", self.kind())?;
        m.end()
    }
}

/// What the running kernel accepts, each found by trying it.
#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    pub btf: Check,
    /// Where the offsets come from (BTF, the DWARF cache, DWARF), or the one message that
    /// says what to install or pass.
    pub offsets: Check,
    pub offsets_source: Option<offsets::Source>,
    pub bd_dev_offset: Option<u64>,
    pub fd_walk: Option<Vec<(u32, u64)>>,
    pub kprobe: Check,
    pub fentry: Check,
    pub ringbuf: Check,
    pub perf: Check,
}

/// An error as one short reason: a verifier log is cut to its first line and its verdict.
fn err_chain(e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    let lines: Vec<&str> = full.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= 3 {
        return lines.join(" ");
    }
    let verdict = lines
        .iter()
        .rev()
        .filter(|l| {
            !["verification time", "stack depth", "processed ", ": "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .take(1)
        .copied()
        .collect::<Vec<_>>();
    format!(
        "{} ... {} ({})",
        lines[0],
        verdict.join(" "),
        lines[lines.len() - 1].trim_start_matches(": ")
    )
}

/// The freeze/thaw targets: these are required for any session.
pub fn freeze_thaw_targets(kernel: &KernelInfo) -> Result<Vec<Target>> {
    function_probes(true)
        .map(|role| {
            let sym = kernel.symbol(role).ok_or_else(|| {
                anyhow!("this kernel has neither {role} nor its 6.8+ name in /proc/kallsyms")
            })?;
            Ok(Target { role, symbol: sym.name.clone() })
        })
        .collect()
}

impl Capabilities {
    /// Tries each capability for real: load the objects, attach and detach each method.
    pub fn probe(kernel: &KernelInfo, btf_file: Option<&Path>) -> Self {
        let found = offsets::for_running_kernel(btf_file, &kernel.release);
        let bd_dev_offset = found.as_ref().ok().and_then(Offsets::bd_dev);
        let fd_walk = found.as_ref().ok().and_then(Offsets::fd_walk);
        let btf = match (offsets::btf_path(btf_file), &found) {
            (Some(p), Ok(_)) => match bd_dev_offset {
                Some(off) => {
                    Check::Supported(format!("{} (block_device.bd_dev at {off})", p.display()))
                }
                None => {
                    Check::Unsupported(format!("{}: block_device.bd_dev not found", p.display()))
                }
            },
            // The BTF reader keeps no errno: opening the file again tells a kernel without
            // BTF (ENOENT) from a refusal; a file that opens but does not parse is unknown.
            (Some(p), Err(e)) => match std::fs::File::open(&p) {
                Err(io) => Check::failed(&io, err_chain(e)),
                Ok(_) => Check::Unknown(err_chain(e)),
            },
            (None, _) => Check::Unsupported(format!("no {}: the kernel has no BTF", btf::SYS_BTF)),
        };
        let offsets = match (&found, bd_dev_offset) {
            (Ok(o), Some(_)) => Check::Supported(o.source.to_string()),
            (Ok(o), None) => {
                Check::Unsupported(format!("{}: block_device.bd_dev not found", o.source))
            }
            (Err(e), _) => Check::Unsupported(format!("{e:#}")),
        };
        let offsets_source = found.as_ref().ok().map(|o| o.source.clone());
        let plan_btf = offsets_source.as_ref().and_then(plan_btf);
        let targets = freeze_thaw_targets(kernel);
        let attach = |method, transport| -> Check {
            let targets = match &targets {
                Ok(t) => t,
                // Nothing to attach to: the method was not tried.
                Err(e) => return Check::Unknown(err_chain(e)),
            };
            let plan = Plan {
                method,
                transport,
                targets: targets.clone(),
                ploop_targets: Vec::new(),
                btf: plan_btf.clone(),
                offsets: offsets_source.clone(),
                bd_dev_offset: bd_dev_offset.unwrap_or(config::UNKNOWN),
                fd_walk: None,
                ploop_major: None,
            };
            match Session::attach(&plan) {
                Ok(_) => Check::Supported(format!("attached to {}", plan.symbols())),
                Err(e) => Check::failed(e.as_ref(), err_chain(&e)),
            }
        };
        let ringbuf = match EbpfLoader::new().load(OBJ_RINGBUF) {
            Ok(_) => Check::Supported("ring buffer maps load".to_string()),
            Err(e) => {
                let why = format!(
                    "loading the ring-buffer object: {e} (ring buffers need {}+)",
                    minimums::RINGBUF.since
                );
                Check::failed(&e, why)
            }
        };
        let perf = match EbpfLoader::new().load(OBJ_PERF) {
            Ok(_) => Check::Supported("perf event array maps load".to_string()),
            Err(e) => Check::failed(&e, format!("loading the perf object: {e}")),
        };
        let kprobe = if !kprobe_interface_present() {
            Check::Unsupported("no kprobe PMU (/sys/bus/event_source/devices/kprobe) and no kprobe_events in tracefs: CONFIG_KPROBES is off".into())
        } else if perf.is_supported() {
            attach(Method::Kprobe, Transport::Perf)
        } else {
            Check::Unknown("cannot test: the perf object does not load".into())
        };
        let fentry = if !btf.is_supported() {
            Check::Unknown("needs kernel BTF".into())
        } else if perf.is_supported() {
            attach(Method::Fentry, Transport::Perf)
        } else {
            Check::Unknown("cannot test: the perf object does not load".into())
        };
        Capabilities {
            btf,
            offsets,
            offsets_source,
            bd_dev_offset,
            fd_walk,
            kprobe,
            fentry,
            ringbuf,
            perf,
        }
    }

    /// The plan `auto` would use, or why there is none.
    pub fn plan(
        &self,
        kernel: &KernelInfo,
        method: Option<Method>,
        transport: Option<Transport>,
    ) -> Result<Plan> {
        let method = match method {
            Some(m) => m,
            None if self.fentry.is_supported() => Method::Fentry,
            None if self.kprobe.is_supported() => Method::Kprobe,
            None => bail!(
                "no attach method works here: kprobe: {}; fentry: {}",
                self.kprobe.text(),
                self.fentry.text()
            ),
        };
        let transport = match transport {
            Some(t) => t,
            None if self.ringbuf.is_supported() => Transport::Ringbuf,
            None if self.perf.is_supported() => Transport::Perf,
            None => bail!("no transport loads: {}", self.perf.text()),
        };
        let (Some(bd_dev_offset), Some(source)) = (self.bd_dev_offset, &self.offsets_source) else {
            bail!("block_device.bd_dev offset unknown: {}", self.offsets.text())
        };
        Ok(Plan {
            method,
            transport,
            targets: freeze_thaw_targets(kernel)?,
            ploop_targets: ploop_targets(kernel),
            btf: plan_btf(source),
            offsets: Some(source.clone()),
            bd_dev_offset,
            fd_walk: self.fd_walk.clone(),
            ploop_major: ploop_major(),
        })
    }
}

/// The BTF fentry resolves its targets in: only a BTF source gives one.
fn plan_btf(source: &offsets::Source) -> Option<PathBuf> {
    match source {
        offsets::Source::Btf { path } => Some(path.clone()),
        _ => None,
    }
}

fn kprobe_interface_present() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
        || tracefs::ensure().is_some_and(|t| t.join("kprobe_events").exists())
}

impl Plan {
    /// A plan without trying capabilities: the user said exactly what to use.
    pub fn explicit(
        kernel: &KernelInfo,
        btf_file: Option<&Path>,
        method: Method,
        transport: Transport,
    ) -> Result<Self> {
        let found = offsets::for_running_kernel(btf_file, &kernel.release)?;
        let bd_dev_offset = found
            .bd_dev()
            .ok_or_else(|| anyhow!("{}: block_device.bd_dev not found", found.source))?;
        if method == Method::Fentry && !found.source.is_btf() {
            bail!(
                "--method fentry needs kernel BTF; this kernel's offsets come from {}",
                found.source
            );
        }
        Ok(Plan {
            method,
            transport,
            targets: freeze_thaw_targets(kernel)?,
            ploop_targets: ploop_targets(kernel),
            btf: plan_btf(&found.source),
            fd_walk: found.fd_walk(),
            offsets: Some(found.source),
            bd_dev_offset,
            ploop_major: ploop_major(),
        })
    }

    pub fn symbols(&self) -> String {
        self.targets.iter().map(|t| t.symbol.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn ploop_symbols(&self) -> String {
        if self.ploop_targets.is_empty() {
            return "no ploop functions".into();
        }
        let names: Vec<&str> = self.ploop_targets.iter().map(|t| t.symbol.as_str()).collect();
        format!("{} via kprobe", names.join(", "))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} via {}; {}; events through {}, block_device.bd_dev at offset {}",
            self.symbols(),
            self.method,
            self.ploop_symbols(),
            self.transport,
            self.bd_dev_offset,
        )?;
        match &self.offsets {
            Some(source) => write!(f, " (offsets from {source})"),
            None => Ok(()),
        }
    }
}

/// What the event readers hand to the consumer.
#[derive(Debug)]
pub enum Record {
    Event(Event),
    /// Events the transport dropped (perf `PERF_RECORD_LOST`).
    Lost(u64),
}

/// The probes' buffers, drained by the consumer when it chooses (see [`Session::stream`]).
pub enum EventSource {
    Ring(RingBuf<MapData>),
    Perf(Vec<PerfRing>),
}

impl EventSource {
    /// Hands every record waiting in the buffers to `f`, in buffer order; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(Record)) -> usize {
        let mut n = 0;
        match self {
            EventSource::Ring(ring) => {
                while let Some(item) = ring.next() {
                    if let Some(ev) = decode(&item) {
                        f(Record::Event(ev));
                        n += 1;
                    }
                }
            }
            EventSource::Perf(bufs) => {
                for buf in bufs {
                    n += buf.drain(|r| match r {
                        PerfRecord::Sample(bytes) => {
                            if let Some(ev) = decode(bytes) {
                                f(Record::Event(ev));
                            }
                        }
                        PerfRecord::Lost(count) => f(Record::Lost(count)),
                    });
                }
            }
        }
        n
    }
}

/// Attached probes. Dropping it detaches everything.
pub struct Session {
    ebpf: Ebpf,
    pub plan: Plan,
    readers: Option<Readers>,
    _perf_array: Option<PerfEventArray<MapData>>,
    /// Optional probes that did not attach, and why.
    pub narrowed: Vec<(Probe, String)>,
    /// The probes attached.
    pub probed: Vec<Probe>,
}

/// A program of the object, as the type its section says it is.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("no program {name} in the object"))?;
    Ok(prog.try_into()?)
}

fn attaching(prog: &str, t: &Target) -> String {
    format!("loading and attaching {prog} to {}", t.symbol)
}

/// The eBPF program of `probe` for `hook`: `<name>_<hook>`, as ploop-ebpf's `probes!`
/// names them (a unit test checks every one exists in both objects).
pub fn program_name(probe: Probe, hook: &str) -> String {
    format!("{}_{hook}", probe.name())
}

/// kretprobe first, then kprobe: every entry seen then has its return seen too. A program
/// already loaded for another symbol of the same probe is attached again, not reloaded.
fn attach_kprobes(ebpf: &mut Ebpf, t: &Target) -> Result<()> {
    for prog in [program_name(t.role, "kretprobe"), program_name(t.role, "kprobe")] {
        let p: &mut KProbe = program(ebpf, &prog)?;
        let loaded = if p.fd().is_ok() { Ok(()) } else { p.load() };
        loaded
            .and_then(|()| p.attach(&t.symbol, 0).map(drop))
            .with_context(|| attaching(&prog, t))?;
    }
    Ok(())
}

fn attach_tracepoint(ebpf: &mut Ebpf, probe: Probe) -> Result<()> {
    let Attach::Tracepoint { category, name } = probe.attach() else {
        bail!("{probe} is not a tracepoint");
    };
    let p: &mut TracePoint = program(ebpf, probe.name())?;
    p.load().with_context(|| format!("loading {probe}"))?;
    p.attach(category, name).with_context(|| format!("attaching {category}:{name}"))?;
    Ok(())
}

enum Readers {
    Ring(RingBuf<MapData>),
    /// The array is kept so that its fd lives as long as the session.
    Perf(PerfEventArray<MapData>, Vec<PerfRing>),
}

fn watch<T: AsRawFd>(inner: T) -> Result<AsyncFd<T>> {
    // SAFETY: every `T` used here owns its fd and closes it only when dropped, which
    // `AsyncFd` does after deregistering.
    unsafe { AsyncFd::register(inner) }.map_err(|e| anyhow!("registering a reader: {e}"))
}

fn decode(bytes: &[u8]) -> Option<Event> {
    (bytes.len() >= ploop_common::EVENT_SIZE)
        // SAFETY: `Event` is plain old data and the length was checked.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

impl Session {
    pub fn attach(plan: &Plan) -> Result<Self> {
        // Before aya looks for tracefs (once per process): on 3.10 it takes mounting debugfs.
        tracefs::ensure();
        let obj = match plan.transport {
            Transport::Ringbuf => OBJ_RINGBUF,
            Transport::Perf => OBJ_PERF,
        };
        let mut ebpf = EbpfLoader::new()
            .load(obj)
            .with_context(|| format!("loading the {} object", plan.transport))?;
        {
            let mut cfg: Array<_, u64> = Array::try_from(
                ebpf.map_mut(names::CONFIG_MAP)
                    .ok_or_else(|| anyhow!("no {} map", names::CONFIG_MAP))?,
            )?;
            cfg.set(config::BD_DEV_OFFSET, &plan.bd_dev_offset, 0)?;
            // Unknown offsets stay UNKNOWN: the programs then report the fd as unread.
            let unknown: Vec<(u32, u64)> =
                FD_WALK.iter().map(|&(slot, ..)| (slot, config::UNKNOWN)).collect();
            for &(slot, off) in plan.fd_walk.as_ref().unwrap_or(&unknown) {
                cfg.set(slot, &off, 0)?;
            }
            let major = plan.ploop_major.map_or(config::UNKNOWN, u64::from);
            cfg.set(config::PLOOP_MAJOR, &major, 0)?;
        }
        let readers = match plan.transport {
            Transport::Ringbuf => Readers::Ring(RingBuf::try_from(
                ebpf.take_map(names::EVENTS_MAP).ok_or_else(|| anyhow!("no events map"))?,
            )?),
            Transport::Perf => {
                let mut array: PerfEventArray<MapData> = PerfEventArray::try_from(
                    ebpf.take_map(names::EVENTS_MAP).ok_or_else(|| anyhow!("no events map"))?,
                )?;
                let cpus = aya::util::online_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
                let mut bufs = Vec::new();
                for cpu in cpus {
                    let buf = PerfRing::open(cpu, 64)
                        .with_context(|| format!("opening the perf buffer of CPU {cpu}"))?;
                    array.set(cpu, &buf)?;
                    bufs.push(buf);
                }
                Readers::Perf(array, bufs)
            }
        };
        let fentry_btf = match plan.method {
            Method::Fentry => Some(match &plan.btf {
                None => bail!("fentry needs kernel BTF, and the offsets do not come from BTF"),
                Some(p) if p == Path::new(btf::SYS_BTF) => {
                    Btf::from_sys_fs().context("reading kernel BTF for fentry")?
                }
                Some(p) => Btf::parse_file(p, aya::Endianness::default())
                    .with_context(|| format!("reading {}", p.display()))?,
            }),
            Method::Kprobe => None,
        };
        for t in &plan.targets {
            // Return probes first: every entry seen then has its return seen too.
            match plan.method {
                Method::Kprobe => attach_kprobes(&mut ebpf, t)?,
                Method::Fentry => {
                    let btf = fentry_btf.as_ref().expect("set for fentry");
                    let fexit = program_name(t.role, "fexit");
                    let fentry = program_name(t.role, "fentry");
                    let p: &mut FExit = program(&mut ebpf, &fexit)?;
                    p.load(&t.symbol, btf)
                        .and_then(|()| p.attach().map(drop))
                        .with_context(|| attaching(&fexit, t))?;
                    let p: &mut FEntry = program(&mut ebpf, &fentry)?;
                    p.load(&t.symbol, btf)
                        .and_then(|()| p.attach().map(drop))
                        .with_context(|| attaching(&fentry, t))?;
                }
            }
        }
        // The ploop functions are optional: what does not attach narrows the checks. A probe
        // on several symbols is probed where any of them attached (the others are still
        // told): a switch in a format whose symbol refused is a call where it did not fire,
        // n/a like any other.
        let mut narrowed = Vec::new();
        let mut attached = Vec::new();
        for t in &plan.ploop_targets {
            match attach_kprobes(&mut ebpf, t) {
                Ok(()) => attached.push(t),
                Err(e) => narrowed.push((t.role, err_chain(&e))),
            }
        }
        let attached_roles: Vec<Probe> = attached.iter().map(|t| t.role).collect();
        for (role, why) in narrowed.iter_mut().filter(|(r, _)| attached_roles.contains(r)) {
            let on: Vec<&str> =
                attached.iter().filter(|t| t.role == *role).map(|t| t.symbol.as_str()).collect();
            *why = format!("probed on {} alone: {why}", on.join(", "));
        }
        // Snapshot calls are anchored at the ioctl, whose filter needs the fd walk to tell a
        // ploop device; only a session that looks at ploop at all wants it.
        let snapshot_attached = plan.ploop_targets.iter().any(|t| t.role == Probe::PloopSnapshot)
            && !narrowed.iter().any(|(r, _)| *r == Probe::PloopSnapshot);
        // ploop is there when its module registered its major, even if ploop_snapshot was
        // inlined away.
        let ploop_present = snapshot_attached || plan.ploop_major.is_some();
        let mut anchored = false;
        if ploop_present {
            let attached = match plan.fd_walk {
                None => Err(anyhow!("the fd walk's offsets are not in the BTF")),
                Some(_) => attach_tracepoint(&mut ebpf, Probe::SysEnterIoctl),
            };
            match attached {
                Ok(()) => anchored = true,
                Err(e) => narrowed.push((Probe::SysEnterIoctl, err_chain(&e))),
            }
        }
        // The ioctl exit is armed by the ioctl's entry or ploop_snapshot's: useless without.
        if ploop_present && let Err(e) = attach_tracepoint(&mut ebpf, Probe::SysExitIoctl) {
            narrowed.push((Probe::SysExitIoctl, err_chain(&e)));
        }
        let mut probed: Vec<Probe> = Vec::new();
        for role in plan
            .targets
            .iter()
            .chain(&plan.ploop_targets)
            .map(|t| t.role)
            .chain(anchored.then_some(Probe::SysEnterIoctl))
            .chain(ploop_present.then_some(Probe::SysExitIoctl))
            .filter(|r| attached_roles.contains(r) || !narrowed.iter().any(|(n, _)| n == r))
        {
            if !probed.contains(&role) {
                probed.push(role);
            }
        }
        Ok(Session {
            ebpf,
            plan: plan.clone(),
            readers: Some(readers),
            _perf_array: None,
            narrowed,
            probed,
        })
    }

    /// The event source, read by polling: the consumer drains it on its own clock (the
    /// drive loop's tick) instead of being woken for every event. A wake-up per event is what
    /// a snapshot paid for in the guest (issue 15): about fifteen cross-CPU wake-ups of the
    /// tool while the snapshot runs. The ring-buffer programs commit with BPF_RB_NO_WAKEUP
    /// for the same reason. Also starts aya-log's reader (ring-buffer object only), which
    /// stays woken: it carries only rare diagnostics.
    pub fn stream(&mut self) -> Result<EventSource> {
        let source = match self.readers.take().ok_or_else(|| anyhow!("already streaming"))? {
            Readers::Ring(ring) => EventSource::Ring(ring),
            Readers::Perf(array, bufs) => {
                self._perf_array = Some(array);
                EventSource::Perf(bufs)
            }
        };
        if self.plan.transport == Transport::Ringbuf {
            // aya-log: diagnostics from the programs go to stderr.
            let logger = aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, &StderrLog)
                .context("starting aya-log")?;
            let mut fd = watch(logger)?;
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Ok(source)
    }

    /// Events the programs themselves could not hand over (ring buffer full).
    pub fn dropped_in_kernel(&self) -> Result<u64> {
        let map = self.ebpf.map(names::LOST_MAP).ok_or_else(|| anyhow!("no lost map"))?;
        let lost: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(lost.get(&0, 0)?.iter().sum())
    }
}

struct StderrLog;
impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        eprintln!("ebpf {}: {}", record.level(), record.args());
    }
    fn flush(&self) {}
}

/// Where a user-supplied BTF path is checked early, with the flag's name in the message.
pub fn check_btf_arg(path: Option<&Path>) -> Result<()> {
    if let Some(p) = path
        && !p.is_file()
    {
        bail!("--btf {}: no such file", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

    /// (opcode, src_reg, imm) of every instruction in the object's program sections.
    fn instructions(obj: &object::File) -> Vec<(u8, u8, i32)> {
        obj.sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .flat_map(|s| {
                s.data()
                    .unwrap()
                    .as_chunks::<8>()
                    .0
                    .iter()
                    .map(|i| (i[0], i[1] >> 4, i32::from_le_bytes([i[4], i[5], i[6], i[7]])))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every program user space will ask for, by the names [`super::program_name`] derives
    /// from the probe's identity, exists in both objects.
    #[test]
    fn every_probe_has_its_programs_in_both_objects() {
        use ploop_common::{Attach, Probe};
        for bytes in [super::OBJ_RINGBUF, super::OBJ_PERF] {
            let obj = object::File::parse(bytes).unwrap();
            let has = |name: &str| obj.symbols().any(|s| s.name() == Ok(name));
            for p in Probe::ALL {
                let wanted: Vec<String> = match p.attach() {
                    Attach::Function { fentry, .. } => ["kprobe", "kretprobe"]
                        .into_iter()
                        .chain(fentry.then_some(["fentry", "fexit"]).into_iter().flatten())
                        .map(|hook| super::program_name(p, hook))
                        .collect(),
                    Attach::Tracepoint { .. } => vec![p.name().to_string()],
                };
                for prog in wanted {
                    assert!(has(&prog), "{prog} missing from an object");
                }
            }
        }
    }

    /// The legacy object must stay loadable on old mainline kernels (4.8+): none of the
    /// features `kernel::minimums` lists as avoided (bpf-to-bpf calls, global data,
    /// bpf_probe_read_kernel/_user), no ring buffer, and no helper newer than
    /// bpf_get_current_task. vz7's 3.10 verifier has its own profile: `kernel::verifier`.
    #[test]
    fn perf_object_is_fit_for_old_kernels() {
        use crate::kernel::minimums::GET_CURRENT_TASK;
        let obj = object::File::parse(super::OBJ_PERF).unwrap();
        let insns = instructions(&obj);
        assert!(insns.len() > 100);
        const CALL: u8 = 0x85;
        assert!(!insns.iter().any(|&(op, src, _)| op == CALL && src == 1), "bpf-to-bpf call");
        let helpers: std::collections::BTreeSet<i32> = insns
            .iter()
            .filter(|&&(op, src, _)| op == CALL && src == 0)
            .map(|&(_, _, imm)| imm)
            .collect();
        // map ops 1-3, probe_read 4, ktime 5, smp id 8, pid_tgid 14, comm 16,
        // perf_event_output 25, get_current_task 35.
        let newest = GET_CURRENT_TASK.since;
        assert!(helpers.iter().all(|&h| h <= 35), "helpers newer than {newest}: {helpers:?}");
        assert!(helpers.contains(&4) && !helpers.contains(&113) && !helpers.contains(&112));
        for s in obj.sections() {
            let name = s.name().unwrap();
            assert!(
                ![".data", ".bss", ".rodata"].iter().any(|g| name.starts_with(g)),
                "global data: {name}"
            );
        }
        let syms: Vec<String> = obj.symbols().map(|s| s.name().unwrap().to_string()).collect();
        assert!(!syms.iter().any(|s| s.contains("AYA_LOG")), "aya-log needs a ring buffer");
    }

    /// Failed tries are told apart by the errno in the error chain, under any context.
    #[test]
    fn failed_checks_say_unsupported_refused_or_unknown() {
        use super::Check;
        use crate::errno::Errno;
        let io = |e: Errno| std::io::Error::from_raw_os_error(e.raw());
        let tried = |e: anyhow::Error| Check::failed(e.as_ref(), "why".into());
        assert_eq!(Check::failed(&io(Errno::EPERM), "x".into()), Check::Refused("x".into()));
        assert_eq!(
            tried(anyhow::Error::new(io(Errno::EACCES)).context("attaching")).kind(),
            "refused"
        );
        for unsupported in [Errno::ENOENT, Errno::EINVAL, Errno::E2BIG, Errno::ENOTSUPP] {
            let e = anyhow::Error::new(io(unsupported)).context("loading").context("kprobe");
            assert_eq!(tried(e), Check::Unsupported("why".into()), "{unsupported}");
        }
        // A syscall error as aya reports it (the io::Error is its source).
        let sys = aya::sys::SyscallError { call: "perf_event_open", io_error: io(Errno::EACCES) };
        assert_eq!(tried(anyhow::Error::new(sys)).kind(), "refused");
        assert_eq!(tried(anyhow::anyhow!("no program x in the object")).kind(), "unknown");
    }

    /// `doctor --json` keeps `{"Ok": ...}` / `{"Err": ...}` and adds the kind.
    #[test]
    fn checks_serialize_as_ok_or_err_with_their_kind() {
        use super::Check;
        let json = |c: Check| serde_json::to_value(c).unwrap();
        assert_eq!(
            json(Check::Supported("attached".into())),
            serde_json::json!({"Ok": "attached", "kind": "supported"})
        );
        assert_eq!(
            json(Check::Refused("EPERM".into())),
            serde_json::json!({"Err": "EPERM", "kind": "refused"})
        );
        assert_eq!(json(Check::Unknown("x".into()))["kind"], "unknown");
        assert_eq!(json(Check::Unsupported("x".into()))["Err"], "x");
        assert_eq!(Check::Unknown("x".into()).reason(), Some("x"));
        assert_eq!(Check::Supported("y".into()).reason(), None);
    }

    #[test]
    fn ring_buffer_object_has_every_program_of_the_perf_one() {
        let names = |bytes: &[u8]| -> std::collections::BTreeSet<String> {
            let obj = object::File::parse(bytes).unwrap();
            obj.symbols()
                .filter(|s| s.kind() == object::SymbolKind::Text && s.is_global())
                .map(|s| s.name().unwrap().to_string())
                .collect()
        };
        let perf = names(super::OBJ_PERF);
        assert!(perf.contains("ploop_snapshot_kprobe") && perf.contains("thaw_bdev_fexit"));
        assert!(perf.is_subset(&names(super::OBJ_RINGBUF)));
    }
}
