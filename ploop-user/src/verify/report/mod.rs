//! Reports from one checked run, all into one directory: `summary.json`, `junit.xml`,
//! `results.ktap` (the kernel's test format), `summary.md` (fit for a CI job summary) and
//! `timeline.svg`, each format in its own file here.
//!
//! Judged calls stream through [`Reports::call`] and are not kept: the per-call parts of
//! JUnit and KTAP go to unnamed temporary files, the timeline keeps its first rows, and the
//! rest comes from the checker's [`Outcome`]. Above [`AGGREGATE_ABOVE`] calls JUnit and KTAP
//! hold one case per invariant with its counts plus one per failing call, and say so. Every
//! file is completed under a temporary name and renamed into place at the end, so a failed
//! or interrupted run leaves no half-written report, and a damaged trace none at all.

mod junit;
pub mod kcidb;
mod ktap;
mod markdown;
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
    checker::{CallReport, INVARIANTS, Outcome, PatchState, Violation},
    tracefile::{End, Header},
};

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
    /// Why nothing could be verified, when that is the verdict.
    pub reason: Option<String>,
    pub kernel: serde_json::Value,
    pub plan: serde_json::Value,
    /// Whether the kernel has the sync-fd interface: a property, not a violation.
    pub kernel_patch: PatchState,
    pub probed: Vec<Probe>,
    pub narrowed: Vec<(Probe, String)>,
    /// Every probe the tool knows, and what became of it.
    pub probes: Vec<ProbeUse>,
    pub snapshots: usize,
    /// libploop's one-chunk retries of a two-chunk request refused with -EINVAL: each
    /// pair of calls is one snapshot for the client (absent when there were none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<Fallbacks>,
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
            let was = self.reason.take().map(|r| format!("; {r}")).unwrap_or_default();
            self.reason = Some(format!("{}: the verdicts are not trusted{was}", t.text()));
        }
        self.trace = Some(t);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fallbacks {
    pub count: usize,
    /// (refused two-chunk call, its one-chunk retry), the first
    /// [`crate::verify::checker::FALLBACKS_LISTED`].
    pub calls: Vec<(u64, u64)>,
}

/// The run's verdict from the checker's outcome. `expected`: the least number of snapshots
/// the user expects (0: any).
pub fn summarise(
    outcome: &Outcome,
    header: &Header,
    end: &End,
    mut violations: Vec<Violation>,
    expected: usize,
) -> Summary {
    let n = outcome.snapshots;
    let anchored =
        [Probe::SysEnterIoctl, Probe::PloopSnapshot].iter().any(|p| header.probed.contains(p));
    let reason = if !anchored {
        Some(
            "neither the ploop ioctl nor ploop_snapshot is probed on this kernel: no verdict on \
             ploop at all"
                .to_string(),
        )
    } else if n == 0 {
        Some("no ploop_snapshot call was observed".to_string())
    } else if n < expected {
        Some(format!("{n} snapshot calls observed, {expected} expected"))
    } else if end.lost > 0 && outcome.violations == 0 {
        Some(format!("{} events were lost: the verdicts are incomplete", end.lost))
    } else {
        None
    };
    let verdict = match (outcome.violations, &reason) {
        (v, _) if v > 0 => RunVerdict::Violations,
        (_, Some(_)) => RunVerdict::NothingVerified,
        _ => RunVerdict::Clean,
    };
    violations.truncate(VIOLATIONS_LISTED);
    let w = &outcome.windows;
    let ms = |ns: u64| ns as f64 / 1e6;
    Summary {
        tool: header.tool.clone(),
        verdict,
        exit_code: verdict.exit_code(),
        reason,
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
        fallbacks: (outcome.fallback_count > 0)
            .then(|| Fallbacks { count: outcome.fallback_count, calls: outcome.fallbacks.clone() }),
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

pub(crate) fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    xml_into(&mut out, s);
    out
}

/// [`xml`] appended to `out` in one pass: the per-call reports escape a dozen texts per
/// call, and four `replace`s each were most of their cost in a guest (issue 15).
pub(crate) fn xml_into(out: &mut String, s: &str) {
    let mut rest = s;
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
    format!(
        "snapshot #{} {}[{}/{}] {} ret {}",
        c.seq,
        c.comm,
        c.pid,
        c.tid,
        c.ploop_dev.map_or_else(|| "?".to_string(), |d| d.to_string()),
        c.ret.map(ret_name).unwrap_or_else(|| "?".into())
    )
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
    /// part or, aggregated, the failing calls', then `tail`.
    fn write(
        self,
        dir: &Path,
        name: &str,
        aggregated: bool,
        head: impl FnOnce(Option<usize>) -> String,
        tail: &str,
    ) -> Result<()> {
        let PerCall { all, failing, failing_calls } = self;
        write_file(dir, name, |w| {
            w.write_all(head(aggregated.then_some(failing_calls)).as_bytes())?;
            match all.filter(|_| !aggregated) {
                Some(all) => all.copy_into(w)?,
                None => failing.copy_into(w)?,
            }
            Ok(w.write_all(tail.as_bytes())?)
        })
    }
}

/// The reports of one run, fed call by call.
pub struct Reports {
    calls: usize,
    junit: PerCall,
    ktap: PerCall,
    timeline: svg::Rows,
    /// `--kcidb`: the writer and its per-call tests.
    kcidb: Option<(kcidb::Kcidb, PerCall)>,
    /// n/a verdicts of the failing calls: the skipped cases an aggregated JUnit file holds.
    skipped_in_failing: usize,
}

impl Reports {
    pub fn new() -> Result<Self> {
        Ok(Reports {
            calls: 0,
            junit: PerCall::new()?,
            ktap: PerCall::new()?,
            timeline: svg::Rows::default(),
            kcidb: None,
            skipped_in_failing: 0,
        })
    }

    /// Also write the KCIDB report.
    pub fn with_kcidb(mut self, k: kcidb::Kcidb) -> Result<Self> {
        self.kcidb = Some((k, PerCall::new()?));
        Ok(self)
    }

    /// One judged call; the reports keep what they need of it.
    pub fn call(&mut self, r: CallReport) -> Result<()> {
        self.calls += 1;
        let n = self.calls;
        let failed = r.failures().next().is_some();
        if failed {
            self.skipped_in_failing += r.verdicts.iter().filter(|(_, v)| junit::skipped(v)).count();
        }
        self.junit.call(n, failed, |_, o| junit::call(&r, o))?;
        self.ktap.call(n, failed, |k, o| ktap::call(k, &r, o))?;
        if let Some((k, per_call)) = &mut self.kcidb {
            let run = k.run_id(Some(&r));
            per_call.call(n, failed, |_, o| k.call(&run, &r, o))?;
        }
        self.timeline.push(r);
        Ok(())
    }

    /// Writes every report into `dir` (created if needed), each file atomically.
    pub fn write(self, dir: &Path, s: &Summary, outcome: &Outcome) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let aggregated = self.calls > AGGREGATE_ABOVE;
        let json = serde_json::to_string_pretty(s)? + "\n";
        write_file(dir, "summary.json", |w| Ok(w.write_all(json.as_bytes())?))?;
        let head = |f: fn(&Summary, usize, Option<usize>, &mut String)| {
            move |failing: Option<usize>| {
                let mut text = String::new();
                f(s, self.calls, failing, &mut text);
                text
            }
        };
        // JUnit's totals count the failing calls' skipped cases too, which only the calls know.
        let skipped_in_failing = self.skipped_in_failing;
        let junit_head = |failing: Option<usize>| {
            let mut text = String::new();
            junit::head(s, self.calls, failing.map(|n| (n, skipped_in_failing)), &mut text);
            text
        };
        self.junit.write(dir, "junit.xml", aggregated, junit_head, junit::TAIL)?;
        self.ktap.write(dir, "results.ktap", aggregated, head(ktap::head), "")?;
        if let Some((mut k, per_call)) = self.kcidb {
            let path = k.opts.path.clone();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("--kcidb {}: not a file name", path.display()))?;
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            fs::create_dir_all(&parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            let calls = self.calls;
            per_call.write(
                &parent,
                name,
                aggregated,
                |failing| k.head(s, calls, failing),
                kcidb::Kcidb::TAIL,
            )?;
        }
        let md = markdown::render(s);
        write_file(dir, "summary.md", |w| Ok(w.write_all(md.as_bytes())?))?;
        let mut svg = String::new();
        svg::render(s, &self.timeline, self.calls, &outcome.windows, &mut svg);
        write_file(dir, "timeline.svg", |w| Ok(w.write_all(svg.as_bytes())?))
    }
}

/// Renders one report into `dir/.NAME.partial`, then renames it into place.
fn write_file(
    dir: &Path,
    name: &str,
    render: impl FnOnce(&mut io::BufWriter<fs::File>) -> Result<()>,
) -> Result<()> {
    let path: PathBuf = dir.join(name);
    let tmp = dir.join(format!(".{name}.partial"));
    let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = io::BufWriter::new(f);
    let done = render(&mut w).and_then(|()| {
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    });
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", tmp.display())));
    }
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
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
