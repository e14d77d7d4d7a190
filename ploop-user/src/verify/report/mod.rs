//! Reports from one checked run, all into one directory: `summary.json`, `junit.xml`,
//! `results.ktap` (the kernel's test format), `summary.md` (fit for a CI job summary) and
//! `timeline.svg`, each format in its own file here.
//!
//! Judged calls stream through [`Reports::call`] and are not kept: the per-call parts of
//! JUnit and KTAP go to unnamed temporary files, the timeline keeps its first rows, and the
//! rest comes from the checker's [`Outcome`]. Above [`AGGREGATE_ABOVE`] calls JUnit and KTAP
//! hold one case per invariant with its counts plus one per failing call, and say so.
//!
//! One run, one set of reports: every file carries the set's id (a hash of the trace's
//! header, its end and the limits judged with), the whole set is written into a fresh
//! directory inside `--out` and moved into place only once every file is complete,
//! summary.json last: it lists the set's files, so a set without its summary.json is not
//! complete. The previous set is renamed `NAME.stale` first (and removed once the new one is
//! in place), so a failed write or a refused trace never leaves another run's reports
//! looking like this one's. The run's own status ([`status`]) is in every file as something
//! its consumer counts.

mod junit;
pub mod kcidb;
mod ktap;
mod markdown;
pub mod status;
pub(crate) mod svg;

use std::{
    fmt, fs,
    io::{self, Seek as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use ploop_common::Probe;
use serde::Serialize;

use crate::errno::ret_name;
use crate::verify::{
    checker::{CallReport, ClientUse, INVARIANTS, Outcome, PatchState, Violation},
    run::Policy,
    tracefile::{End, Header},
};
pub use status::{Problem, StatusEntry};

/// Above this many snapshot calls, JUnit and KTAP are aggregated: CI test viewers do not load
/// files of a million cases (100 k calls made a 185 MB junit.xml).
pub const AGGREGATE_ABOVE: usize = 1000;

/// summary.json keeps this many violations; the count covers all of them.
pub const VIOLATIONS_LISTED: usize = 1000;

#[derive(Serialize)]
pub struct InvariantTally {
    pub id: &'static str,
    pub title: &'static str,
    pub pass: usize,
    pub fail: usize,
    pub not_applicable: usize,
}

#[derive(Serialize, Clone, Copy)]
pub struct Windows {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What became of one probe in the run: a helper that was probed and never fired may have
/// been inlined by this kernel's compiler, and its invariants are n/a, never failed.
#[derive(Serialize)]
pub struct ProbeUse {
    pub probe: Probe,
    pub state: ProbeState,
    pub events: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeState {
    Fired,
    NeverFired,
    /// Its function is there but the probe did not attach (see `narrowed`).
    NotAttached,
    /// No symbol for it on this kernel (or, for the ioctl exit, nothing to arm it).
    Absent,
}

impl ProbeState {
    pub fn text(self) -> &'static str {
        match self {
            ProbeState::Fired => "fired",
            ProbeState::NeverFired => "probed, never fired",
            ProbeState::NotAttached => "not attached",
            ProbeState::Absent => "absent",
        }
    }
}

/// The run's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunVerdict {
    Clean,
    Violations,
    NothingVerified,
}

impl RunVerdict {
    /// 0 clean, 1 violations, 2 nothing verified.
    pub fn exit_code(self) -> u8 {
        match self {
            RunVerdict::Clean => 0,
            RunVerdict::Violations => 1,
            RunVerdict::NothingVerified => 2,
        }
    }
}

impl fmt::Display for RunVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunVerdict::Clean => "clean",
            RunVerdict::Violations => "violations",
            RunVerdict::NothingVerified => "nothing-verified",
        })
    }
}

/// What a replay could prove of the trace it read (absent from a live run's summary).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceIntegrity {
    pub status: TraceStatus,
    /// Records read, the header's included.
    pub records: u64,
    /// Integrity failures read through with `--accept-damaged`; the first
    /// [`crate::verify::tracefile::PROBLEMS_LISTED`] in `listed`, each with its line.
    pub problems: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listed: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceStatus {
    /// Every record in its turn, unchanged, in time, and as many events as the end counts.
    Intact,
    /// A damaged trace read anyway (`--accept-damaged`): no verdict of it is trusted, and the
    /// run is "nothing verified" (exit 2) whatever the calls gave.
    Damaged,
    /// An old trace, written before records carried `rec` and `crc`: its integrity is not
    /// checkable.
    Unchecked,
}

impl TraceIntegrity {
    /// The console's and the reports' line on it.
    pub fn text(&self) -> String {
        match self.status {
            TraceStatus::Intact => format!("trace intact: {} records checked", self.records),
            TraceStatus::Damaged => format!(
                "damaged trace read anyway: {} integrity {} ({}{})",
                self.problems,
                if self.problems == 1 { "problem" } else { "problems" },
                self.listed.first().map(String::as_str).unwrap_or_default(),
                if self.problems > 1 { "; ..." } else { "" }
            ),
            TraceStatus::Unchecked => {
                "old trace, integrity not checkable: its records carry no `rec` and `crc`".into()
            }
        }
    }
}

#[derive(Serialize)]
pub struct Summary {
    pub tool: String,
    pub verdict: RunVerdict,
    pub exit_code: u8,
    /// The run's own problems, in one sentence (see `status`); absent when it has none.
    pub reason: Option<String>,
    /// What made the verdicts incomplete, each as the reports write it: every report counts
    /// each one as an error (a failure in KTAP).
    pub status: Vec<StatusEntry>,
    /// The set this summary completes: its id, which every file of the set carries, and the
    /// files.
    pub report_set: ReportSet,
    pub kernel: serde_json::Value,
    pub plan: serde_json::Value,
    /// Whether the kernel has the sync-fd interface: a property, not a violation.
    pub kernel_patch: PatchState,
    pub probed: Vec<Probe>,
    pub narrowed: Vec<(Probe, String)>,
    /// Every probe the tool knows, and what became of it.
    pub probes: Vec<ProbeUse>,
    /// Snapshots: a request libploop retried with one chunk after -EINVAL is one, as it is
    /// for the client, in every report.
    pub snapshots: usize,
    /// Snapshots that succeeded.
    pub succeeded: usize,
    /// Who asked for the snapshots, and how.
    pub clients: Vec<ClientUse>,
    /// libploop's fallback: a two-chunk request refused with -EINVAL whose one-chunk retry
    /// succeeded (the kernel lacks the sync fd); absent when there were none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<Fallbacks>,
    /// Such retries that were refused too: no fallback, a failed snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_retries: Option<Fallbacks>,
    /// Under `run --oracle`: the snapshot calls X1 could not be judged on, and why (absent
    /// when the oracle judged every one, or was off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oracle_unjudged: Option<crate::verify::checker::Unjudged>,
    pub incomplete: usize,
    pub violations: usize,
    pub events: u64,
    pub lost: u64,
    pub outside_snapshot_events: u64,
    pub invariants: Vec<InvariantTally>,
    pub freeze_window: Windows,
    /// The first [`VIOLATIONS_LISTED`]; `violations` counts them all.
    pub violation_list: Vec<Violation>,
    /// A replay's: what it could prove of its trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceIntegrity>,
}

impl Summary {
    /// The replay's word on its trace; a damaged one read anyway verifies nothing.
    pub fn with_trace(mut self, t: TraceIntegrity) -> Self {
        if t.status == TraceStatus::Damaged {
            self.verdict = RunVerdict::NothingVerified;
            self.exit_code = self.verdict.exit_code();
            // First: every other problem was judged from a trace that cannot be trusted.
            self.status.insert(0, StatusEntry::from(&Problem::DamagedTrace { what: t.text() }));
            self.reason =
                Some(self.status.iter().map(|e| e.text.as_str()).collect::<Vec<_>>().join("; "));
        }
        self.trace = Some(t);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReportSet {
    pub id: String,
    pub files: Vec<String>,
}

/// The files of a set besides summary.json (and the `--kcidb` file, wherever it goes), in
/// the order they are moved into place.
pub const SET_FILES: [&str; 4] = ["junit.xml", "results.ktap", "summary.md", "timeline.svg"];

/// The set's id: the same for a run and every replay of its trace with its limits, another
/// for anything else.
fn set_id(header: &Header, end: &End, policy: &Policy) -> String {
    let seed = serde_json::to_string(&(header, end, policy)).unwrap_or_default();
    kcidb::sha256_hex(seed.as_bytes())[..16].to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fallbacks {
    pub count: usize,
    /// (refused two-chunk call, its one-chunk retry), the first
    /// [`crate::verify::checker::FALLBACKS_LISTED`].
    pub calls: Vec<(u64, u64)>,
}

/// The run's verdict from the checker's outcome, judged with `policy`: violations, else
/// any problem of the run's own (nothing verified), else clean.
pub fn summarise(
    outcome: &Outcome,
    header: &Header,
    end: &End,
    mut violations: Vec<Violation>,
    policy: &Policy,
) -> Summary {
    let n = outcome.snapshots;
    let anchored =
        [Probe::SysEnterIoctl, Probe::PloopSnapshot].iter().any(|p| header.probed.contains(p));
    let problems = status::problems(&status::Observed {
        anchored,
        snapshots: n,
        succeeded: outcome.succeeded,
        expected: policy.expect_snapshots.max(1),
        refusals_expected: policy.expect_refusals,
        lost: end.lost,
    });
    let status: Vec<StatusEntry> = problems.iter().map(StatusEntry::from).collect();
    let reason = (!status.is_empty())
        .then(|| status.iter().map(|e| e.text.as_str()).collect::<Vec<_>>().join("; "));
    let verdict = match (outcome.violations, status.is_empty()) {
        (v, _) if v > 0 => RunVerdict::Violations,
        (_, false) => RunVerdict::NothingVerified,
        _ => RunVerdict::Clean,
    };
    let mut files: Vec<String> = SET_FILES.iter().map(|f| f.to_string()).collect();
    files.push("summary.json".into());
    violations.truncate(VIOLATIONS_LISTED);
    let w = &outcome.windows;
    let ms = |ns: u64| ns as f64 / 1e6;
    Summary {
        tool: header.tool.clone(),
        verdict,
        exit_code: verdict.exit_code(),
        reason,
        status,
        report_set: ReportSet { id: set_id(header, end, policy), files },
        kernel: header.kernel.clone(),
        plan: header.plan.clone(),
        kernel_patch: outcome.patched.clone(),
        probed: header.probed.clone(),
        narrowed: header.narrowed.clone(),
        probes: Probe::ALL
            .into_iter()
            .map(|probe| {
                let events = outcome.fired(probe);
                let state = if header.probed.contains(&probe) {
                    if events > 0 { ProbeState::Fired } else { ProbeState::NeverFired }
                } else if header.narrowed.iter().any(|(p, _)| *p == probe) {
                    ProbeState::NotAttached
                } else {
                    ProbeState::Absent
                };
                ProbeUse { probe, state, events }
            })
            .collect(),
        snapshots: n,
        succeeded: outcome.succeeded,
        clients: outcome.clients.clone(),
        fallbacks: (outcome.fallback_count > 0)
            .then(|| Fallbacks { count: outcome.fallback_count, calls: outcome.fallbacks.clone() }),
        refused_retries: (outcome.refused_retry_count > 0).then(|| Fallbacks {
            count: outcome.refused_retry_count,
            calls: outcome.refused_retries.clone(),
        }),
        oracle_unjudged: outcome.oracle_unjudged.clone(),
        incomplete: outcome.incomplete,
        violations: outcome.violations,
        events: outcome.events,
        lost: end.lost,
        outside_snapshot_events: outcome.outside,
        invariants: INVARIANTS
            .iter()
            .zip(&outcome.tally)
            .map(|(i, t)| InvariantTally {
                id: i.id,
                title: i.title,
                pass: t.pass,
                fail: t.fail,
                not_applicable: t.not_applicable,
            })
            .collect(),
        freeze_window: Windows {
            count: w.count(),
            p50_ms: ms(w.percentile(50.0)),
            p99_ms: ms(w.percentile(99.0)),
            max_ms: ms(w.max()),
        },
        violation_list: violations,
        trace: None,
    }
}

pub(crate) fn patch_text(p: &PatchState) -> String {
    match p {
        PatchState::Patched(why) => format!("has the sync-fd interface ({why})"),
        PatchState::Unpatched(why) => format!("lacks the sync-fd interface ({why})"),
        PatchState::Unknown => "sync-fd interface not determined (no decisive request seen)".into(),
    }
}

/// One line: each probe and what became of it.
pub(crate) fn probes_text(s: &Summary) -> String {
    let uses: Vec<String> = s
        .probes
        .iter()
        .map(|u| match u.state {
            ProbeState::Fired => format!("{} fired ({})", u.probe, u.events),
            other => format!("{} {}", u.probe, other.text()),
        })
        .collect();
    uses.join("; ")
}

/// Text from the kernel or the user (a comm may hold any byte but NUL, a mount point any
/// but NUL and '/') with its control characters written visibly, `\x1b` for ESC: XML 1.0
/// forbids most of them, and in Markdown, KTAP or a terminal they would act, not show.
/// `keep_lines`: newlines and tabs stay (XML allows them). Idempotent: a backslash stays.
pub(crate) fn visible_into(out: &mut String, s: &str, keep_lines: bool) {
    for c in s.chars() {
        match c {
            '\n' | '\t' if keep_lines => out.push(c),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = fmt::Write::write_fmt(out, format_args!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || c == '\u{fffe}' || c == '\u{ffff}' => {
                let _ = fmt::Write::write_fmt(out, format_args!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
}

/// [`visible_into`] of one line: newlines too are written visibly.
pub(crate) fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    visible_into(&mut out, s, false);
    out
}

/// Whether `s` needs [`visible`]: almost no text does, so the common case copies nothing.
fn needs_visible(s: &str) -> bool {
    s.chars().any(|c| c.is_control() || c == '\u{fffe}' || c == '\u{ffff}')
}

pub(crate) fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    xml_into(&mut out, s);
    out
}

/// [`xml`] appended to `out` in one pass: the per-call reports escape a dozen texts per
/// call, and four `replace`s each were most of their cost in a guest (issue 15).
pub(crate) fn xml_into(out: &mut String, s: &str) {
    let shown;
    let mut rest = if needs_visible(s) {
        let mut v = String::with_capacity(s.len() + 8);
        visible_into(&mut v, s, true);
        shown = v;
        shown.as_str()
    } else {
        s
    };
    while let Some(i) = rest.find(['&', '<', '>', '"']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            _ => "&quot;",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

pub(crate) fn call_label(r: &CallReport) -> String {
    let c = &r.call;
    let mut label = format!(
        "snapshot #{} {}[{}/{}] {} ret {}",
        c.seq,
        c.comm,
        c.pid,
        c.tid,
        c.ploop_dev.map_or_else(|| "?".to_string(), |d| d.to_string()),
        c.ret.map(ret_name).unwrap_or_else(|| "?".into())
    );
    if let Some(first) = &r.retried {
        label.push_str(&format!(" (the retry of #{})", first.call.seq));
    }
    label
}

/// The clients of the run in one line: "ploop: 3 snapshots (one chunk ...); ...".
pub(crate) fn clients_text(s: &Summary) -> String {
    let uses: Vec<String> = s
        .clients
        .iter()
        .map(|u| {
            let n = svg::axis::plural(u.snapshots as u64, "snapshot", "snapshots");
            format!("{}: {n} ({})", u.comm, u.request)
        })
        .collect();
    if uses.is_empty() { "none".into() } else { uses.join("; ") }
}

/// Text written as it comes to an unnamed temporary file, read back once at the end.
struct Spool {
    file: io::BufWriter<fs::File>,
}

impl Spool {
    fn new() -> Result<Self> {
        let file = tempfile::tempfile().context("creating a temporary file for the reports")?;
        Ok(Spool { file: io::BufWriter::new(file) })
    }

    fn write(&mut self, render: impl FnOnce(&mut String)) -> Result<()> {
        let mut text = String::new();
        render(&mut text);
        self.file.write_all(text.as_bytes()).context("writing a temporary report file")
    }

    /// Appends everything written so far to `out`.
    fn copy_into(self, out: &mut impl io::Write) -> Result<()> {
        let mut f = self.file.into_inner().map_err(|e| e.into_error())?;
        f.rewind()?;
        io::copy(&mut f, out)?;
        Ok(())
    }
}

/// The per-call parts of one report format: every call's until [`AGGREGATE_ABOVE`], the
/// failing calls' always.
struct PerCall {
    all: Option<Spool>,
    failing: Spool,
    failing_calls: usize,
}

impl PerCall {
    fn new() -> Result<Self> {
        Ok(PerCall { all: Some(Spool::new()?), failing: Spool::new()?, failing_calls: 0 })
    }

    /// Call `n` of the run; `render` gets the number it has in the file it goes to (KTAP
    /// numbers its tests in sequence, and an aggregated file lists the invariants first).
    fn call(&mut self, n: usize, failed: bool, render: impl Fn(usize, &mut String)) -> Result<()> {
        if n > AGGREGATE_ABOVE {
            self.all = None;
        }
        if let Some(all) = &mut self.all {
            all.write(|o| render(n, o))?;
        }
        if failed {
            self.failing_calls += 1;
            let k = INVARIANTS.len() + self.failing_calls;
            self.failing.write(|o| render(k, o))?;
        }
        Ok(())
    }
}

impl PerCall {
    /// The report: `head` (given the number of failing calls when aggregated), every call's
    /// part or, aggregated, the failing calls', then `tail` (given the same).
    fn write(
        self,
        path: &Path,
        aggregated: bool,
        head: impl FnOnce(Option<usize>) -> String,
        tail: impl FnOnce(Option<usize>) -> String,
    ) -> Result<()> {
        let PerCall { all, failing, failing_calls } = self;
        let failing_calls = aggregated.then_some(failing_calls);
        write_file(path, |w| {
            w.write_all(head(failing_calls).as_bytes())?;
            match all.filter(|_| !aggregated) {
                Some(all) => all.copy_into(w)?,
                None => failing.copy_into(w)?,
            }
            Ok(w.write_all(tail(failing_calls).as_bytes())?)
        })
    }
}

/// The reports of one run, fed call by call.
pub struct Reports {
    /// Snapshots fed (a retried request is one).
    calls: usize,
    /// Their ioctl calls, as the timeline draws them.
    ioctls: usize,
    junit: PerCall,
    ktap: PerCall,
    timeline: svg::Rows,
    /// `--kcidb`: the writer and its per-call tests.
    kcidb: Option<(kcidb::Kcidb, PerCall)>,
    /// Verdicts of the failing calls, and how many are n/a: the cases an aggregated JUnit
    /// file holds, and its skipped ones.
    cases_in_failing: usize,
    skipped_in_failing: usize,
}

impl Reports {
    pub fn new() -> Result<Self> {
        Ok(Reports {
            calls: 0,
            ioctls: 0,
            junit: PerCall::new()?,
            ktap: PerCall::new()?,
            timeline: svg::Rows::default(),
            kcidb: None,
            cases_in_failing: 0,
            skipped_in_failing: 0,
        })
    }

    /// Also write the KCIDB report.
    pub fn with_kcidb(mut self, k: kcidb::Kcidb) -> Result<Self> {
        self.kcidb = Some((k, PerCall::new()?));
        Ok(self)
    }

    /// One judged snapshot (with the refused call it retried, if any); the reports keep
    /// what they need of it.
    pub fn call(&mut self, mut r: CallReport) -> Result<()> {
        self.calls += 1;
        self.ioctls += r.calls().count();
        let n = self.calls;
        let failed = r.snapshot_failed();
        if failed {
            let verdicts = r.calls().flat_map(|c| &c.verdicts);
            self.cases_in_failing += verdicts.clone().count();
            self.skipped_in_failing += verdicts.filter(|(_, v)| junit::skipped(v)).count();
        }
        self.junit.call(n, failed, |_, o| junit::call(&r, o))?;
        self.ktap.call(n, failed, |k, o| ktap::call(k, &r, o))?;
        if let Some((k, per_call)) = &mut self.kcidb {
            let run = k.run_id(r.calls().next());
            per_call.call(n, failed, |_, o| r.calls().for_each(|c| k.call(&run, c, o)))?;
        }
        // The timeline draws each ioctl where it happened.
        if let Some(first) = r.retried.take() {
            self.timeline.push(*first);
        }
        self.timeline.push(r);
        Ok(())
    }

    /// Writes the set of reports into `dir` (created if needed): every file into a fresh
    /// directory there, then, once all are complete, each moved into place, summary.json
    /// last. The previous set is marked `.stale` first and removed once this one is in
    /// place; on an error nothing of this set is left in `dir` and the error says what `dir`
    /// holds.
    pub fn write(self, dir: &Path, s: &Summary, outcome: &Outcome) -> Result<()> {
        let kcidb_path = self.kcidb.as_ref().map(|(k, _)| k.opts.path.clone());
        if let Some(p) = &kcidb_path
            && p.file_name().is_none()
        {
            anyhow::bail!("--kcidb {}: not a file name", p.display());
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        retire(dir, kcidb_path.as_deref())?;
        // What an interrupted write left: never part of any set.
        for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten()
        {
            if e.file_name().to_string_lossy().starts_with(STAGE) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let id = &s.report_set.id;
        let stage = dir.join(format!("{STAGE}{id}"));
        let kcidb_stage = kcidb_path.as_deref().map(|p| sibling(p, &format!(".partial-{id}")));
        let staged = fs::create_dir(&stage)
            .with_context(|| format!("creating {}", stage.display()))
            .and_then(|()| self.stage(&stage, kcidb_stage.as_deref(), s, outcome));
        let mut moved = Vec::new();
        let committed = staged.and_then(|()| {
            for name in SET_FILES.iter().chain(["summary.json"].iter()) {
                let (from, to) = (stage.join(name), dir.join(name));
                if *name == "summary.json"
                    && let (Some(from), Some(to)) = (&kcidb_stage, &kcidb_path)
                {
                    rename(from, to)?;
                    moved.push(to.clone());
                }
                rename(&from, &to)?;
                moved.push(to);
            }
            Ok(())
        });
        let _ = fs::remove_dir_all(&stage);
        if let Err(e) = committed {
            if let Some(k) = &kcidb_stage {
                let _ = fs::remove_file(k);
            }
            // Whatever was moved already is this set's, and incomplete without the rest.
            for m in &moved {
                let _ = fs::remove_file(m);
            }
            return Err(e.context(format!(
                "writing the reports: none written; {}",
                holds(dir, kcidb_path.as_deref())
            )));
        }
        for name in SET_FILES.iter().chain(["summary.json"].iter()) {
            let _ = fs::remove_file(stale(&dir.join(name)));
        }
        if let Some(k) = &kcidb_path {
            let _ = fs::remove_file(stale(k));
        }
        Ok(())
    }

    /// Every file of the set, complete, into `stage` (KCIDB's to `kcidb`).
    fn stage(
        self,
        stage: &Path,
        kcidb: Option<&Path>,
        s: &Summary,
        outcome: &Outcome,
    ) -> Result<()> {
        let aggregated = self.calls > AGGREGATE_ABOVE;
        let set = &s.report_set.id;
        let head = |f: fn(&Summary, usize, Option<usize>, &mut String)| {
            move |failing: Option<usize>| {
                let mut text = String::new();
                f(s, self.calls, failing, &mut text);
                text
            }
        };
        // JUnit's totals count the failing calls' skipped cases too, which only the calls know.
        let in_failing = (self.cases_in_failing, self.skipped_in_failing);
        let junit_head = |failing: Option<usize>| {
            let mut text = String::new();
            junit::head(s, self.calls, failing.map(|_| in_failing), &mut text);
            text
        };
        let tail = |_| junit::TAIL.to_string();
        self.junit.write(&stage.join("junit.xml"), aggregated, junit_head, tail)?;
        let calls = self.calls;
        let ktap_tail = |failing: Option<usize>| ktap::tail(s, calls, failing);
        self.ktap.write(&stage.join("results.ktap"), aggregated, head(ktap::head), ktap_tail)?;
        if let (Some((mut k, per_call)), Some(path)) = (self.kcidb, kcidb) {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let head = |failing| k.head(s, calls, failing);
            per_call.write(path, aggregated, head, |_| kcidb::Kcidb::TAIL.to_string())?;
        }
        let md = markdown::render(s);
        write_file(&stage.join("summary.md"), |w| Ok(w.write_all(md.as_bytes())?))?;
        let mut svg = String::new();
        svg::render(s, &self.timeline, self.ioctls, &outcome.windows, &mut svg);
        // A comment may follow the XML declaration, not precede it.
        let at = if svg.starts_with("<?xml") { svg.find('\n').map_or(0, |i| i + 1) } else { 0 };
        svg.insert_str(at, &format!("<!-- ploop-verify report set {set} -->\n"));
        write_file(&stage.join("timeline.svg"), |w| Ok(w.write_all(svg.as_bytes())?))?;
        let json = serde_json::to_string_pretty(s)? + "\n";
        write_file(&stage.join("summary.json"), |w| Ok(w.write_all(json.as_bytes())?))
    }
}

/// The name of the directory inside `--out` a set is written into before it moves into place.
const STAGE: &str = ".ploop-verify-partial-";

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Where a report of an earlier set is kept: out of the way of anything that reads reports
/// by name (a CI's `junit.xml`), and marked as not this run's.
fn stale(path: &Path) -> PathBuf {
    sibling(path, ".stale")
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

/// Marks the reports of an earlier run in `dir` (and the `--kcidb` file) as not this run's:
/// each is renamed `NAME.stale`, summary.json first, so that the old set stops being complete
/// before any of it moves. Returns the files marked. Called before a run writes anything of
/// its own, and when a trace is refused.
pub fn retire(dir: &Path, kcidb: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut marked = Vec::new();
    let names = ["summary.json"].into_iter().chain(SET_FILES);
    for path in names.map(|n| dir.join(n)).chain(kcidb.map(Path::to_path_buf)) {
        if path.symlink_metadata().is_ok() {
            rename(&path, &stale(&path))?;
            marked.push(path);
        }
    }
    Ok(marked)
}

/// What `dir` holds now, for an error's message: no report of this run; the trace if it is
/// there; the earlier run's reports, marked.
pub fn holds(dir: &Path, kcidb: Option<&Path>) -> String {
    let names = ["summary.json"].into_iter().chain(SET_FILES);
    let mut marked: Vec<String> = names
        .map(|n| dir.join(n))
        .chain(kcidb.map(Path::to_path_buf))
        .filter(|p| stale(p).exists())
        .map(|p| stale(&p).display().to_string())
        .collect();
    let mut text = format!("{} holds no report of this run", dir.display());
    if dir.join("trace.jsonl").is_file() {
        text.push_str(" (its trace.jsonl is replayable: ploop-verify report TRACE --out DIR)");
    }
    if !marked.is_empty() {
        marked.sort();
        text.push_str(&format!(
            "; an earlier run's reports are kept, marked as not this run's: {}",
            marked.join(", ")
        ));
    }
    text
}

/// Renders one report into `path` (in the stage), flushed to disk.
fn write_file(
    path: &Path,
    render: impl FnOnce(&mut io::BufWriter<fs::File>) -> Result<()>,
) -> Result<()> {
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = io::BufWriter::new(f);
    render(&mut w)
        .and_then(|()| {
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(())
        })
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}

#[cfg(test)]
mod escape_tests {
    #[test]
    fn xml_escapes_in_one_pass_as_four_replaces_did() {
        for s in ["", "plain", "a&b<c>d\"e", "&&", "\"<>\"", "ünïcødé & <ok>", "end&"] {
            let four = s
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;");
            assert_eq!(super::xml(s), four, "{s:?}");
        }
    }
}
