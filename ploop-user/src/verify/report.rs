//! Reports from one checked run, all into one directory: `summary.json`, `junit.xml` (one test
//! case per snapshot call and invariant), `results.ktap` (the kernel's test format),
//! `summary.md` (fit for a CI job summary) and `timeline.svg`. Every file is rendered in
//! memory first and renamed into place, so a failure leaves no half-written report.

use std::{
    fmt::{self, Write as _},
    fs, io,
    path::Path,
};

use anyhow::{Context as _, Result};
use ploop_common::Probe;
use serde::Serialize;

use crate::{
    errno::ret_name,
    kernel::KDev,
    verify::checker::{CallReport, Checker, INVARIANTS, PatchState, Verdict, Violation},
    verify::tracefile::{End, Header},
};

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
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize)]
pub struct Summary {
    pub tool: String,
    /// `clean`, `violations` or `nothing-verified`.
    pub verdict: &'static str,
    pub exit_code: u8,
    /// Why nothing could be verified, when that is the verdict.
    pub reason: Option<String>,
    pub kernel: serde_json::Value,
    pub plan: serde_json::Value,
    /// Whether the kernel has the sync-fd interface: a property, not a violation.
    pub kernel_patch: PatchState,
    pub probed: Vec<Probe>,
    pub narrowed: Vec<(Probe, String)>,
    pub snapshots: usize,
    pub incomplete: usize,
    pub violations: usize,
    pub events: u64,
    pub lost: u64,
    pub outside_snapshot_events: u64,
    pub invariants: Vec<InvariantTally>,
    pub freeze_window: Windows,
    pub violation_list: Vec<Violation>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn windows(ns: &[u64]) -> Windows {
    let mut v = ns.to_vec();
    v.sort_unstable();
    let ms = |x: u64| x as f64 / 1e6;
    Windows {
        count: v.len(),
        p50_ms: ms(percentile(&v, 50.0)),
        p99_ms: ms(percentile(&v, 99.0)),
        max_ms: ms(v.last().copied().unwrap_or(0)),
    }
}

/// The run's verdict. `expected`: the least number of snapshots the user expects (0: any).
pub fn summarise(
    checker: &Checker,
    header: &Header,
    end: &End,
    violations: Vec<Violation>,
    expected: usize,
) -> Summary {
    let tally = checker.tally();
    let n = checker.snapshots();
    let nviol = checker.violations();
    let reason = if !header.probed.contains(&Probe::PloopSnapshot) {
        Some("ploop_snapshot is not probed on this kernel: no verdict on ploop at all".to_string())
    } else if n == 0 {
        Some("no ploop_snapshot call was observed".to_string())
    } else if n < expected {
        Some(format!("{n} snapshot calls observed, {expected} expected"))
    } else if end.lost > 0 && nviol == 0 {
        Some(format!("{} events were lost: the verdicts are incomplete", end.lost))
    } else {
        None
    };
    let (verdict, exit_code) = match (nviol, &reason) {
        (v, _) if v > 0 => ("violations", 1),
        (_, Some(_)) => ("nothing-verified", 2),
        _ => ("clean", 0),
    };
    Summary {
        tool: header.tool.clone(),
        verdict,
        exit_code,
        reason,
        kernel: header.kernel.clone(),
        plan: header.plan.clone(),
        kernel_patch: checker.patched.clone(),
        probed: header.probed.clone(),
        narrowed: header.narrowed.clone(),
        snapshots: n,
        incomplete: checker.incomplete.len(),
        violations: nviol,
        events: checker.events,
        lost: end.lost,
        outside_snapshot_events: checker.outside,
        invariants: INVARIANTS
            .iter()
            .map(|i| {
                let (pass, fail, not_applicable) = tally[i.id];
                InvariantTally { id: i.id, title: i.title, pass, fail, not_applicable }
            })
            .collect(),
        freeze_window: windows(&checker.windows_ns),
        violation_list: violations,
    }
}

fn patch_text(p: &PatchState) -> String {
    match p {
        PatchState::Patched(why) => format!("has the sync-fd interface ({why})"),
        PatchState::Unpatched(why) => format!("lacks the sync-fd interface ({why})"),
        PatchState::Unknown => "sync-fd interface not determined (no decisive request seen)".into(),
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn call_label(r: &CallReport) -> String {
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

pub fn junit(s: &Summary, calls: &[CallReport], out: &mut impl fmt::Write) {
    let tests = calls.len() * INVARIANTS.len();
    let skipped: usize = s.invariants.iter().map(|i| i.not_applicable).sum();
    let _ = out.write_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"ploop-verify\" tests=\"{tests}\" failures=\"{}\" skipped=\"{skipped}\">",
        s.violations
    );
    if calls.is_empty() {
        let _ = writeln!(
            out,
            "  <testsuite name=\"ploop-verify\" tests=\"1\" failures=\"0\" skipped=\"1\">"
        );
        let _ = writeln!(
            out,
            "    <testcase classname=\"ploop-verify\" name=\"snapshots\"><skipped message=\"{}\"/></testcase>",
            xml(s.reason.as_deref().unwrap_or("no snapshot"))
        );
        let _ = out.write_str("  </testsuite>\n");
    }
    for r in calls {
        let fails = r.failures().count();
        let na = r
            .verdicts
            .iter()
            .filter(|(_, v)| !matches!(v, Verdict::Pass | Verdict::Fail(_)))
            .count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\" skipped=\"{na}\">",
            xml(&call_label(r)),
            r.verdicts.len()
        );
        for (inv, (id, v)) in INVARIANTS.iter().zip(&r.verdicts) {
            let name = xml(&format!("{id} snapshot #{}: {}", r.call.seq, inv.title));
            let _ = write!(out, "    <testcase classname=\"ploop-verify.{id}\" name=\"{name}\"");
            match v {
                Verdict::Pass => {
                    let _ = out.write_str("/>\n");
                }
                Verdict::Fail(why) => {
                    let _ = writeln!(
                        out,
                        "><failure message=\"{}\" type=\"{id}\">{}</failure></testcase>",
                        xml(why),
                        xml(why)
                    );
                }
                Verdict::NotApplicable(why) => {
                    let _ = writeln!(out, "><skipped message=\"{}\"/></testcase>", xml(why));
                }
                Verdict::Deferred => {
                    let _ = out.write_str("><skipped message=\"undecided\"/></testcase>\n");
                }
            }
        }
        let _ = out.write_str("  </testsuite>\n");
    }
    let _ = out.write_str("</testsuites>\n");
}

/// KTAP: one top-level test per snapshot call, one subtest per invariant.
pub fn ktap(s: &Summary, calls: &[CallReport], out: &mut impl fmt::Write) {
    // '#' starts a KTAP directive: keep it out of names and reasons.
    let clean = |t: &str| t.replace('#', "").replace('\n', " ");
    let _ = out.write_str("KTAP version 1\n");
    let _ =
        writeln!(out, "# {}: {} snapshot calls, {} violations", s.tool, s.snapshots, s.violations);
    if calls.is_empty() {
        let _ =
            writeln!(out, "1..0 # SKIP {}", clean(s.reason.as_deref().unwrap_or("no snapshot")));
        return;
    }
    let _ = writeln!(out, "1..{}", calls.len());
    for (n, r) in calls.iter().enumerate() {
        let _ = out.write_str("    KTAP version 1\n");
        let _ = writeln!(out, "    1..{}", r.verdicts.len());
        for (i, (id, v)) in r.verdicts.iter().enumerate() {
            let _ = match v {
                Verdict::Pass => writeln!(out, "    ok {} {id}", i + 1),
                Verdict::Fail(why) => {
                    writeln!(out, "    # {id}: {}\n    not ok {} {id}", clean(why), i + 1)
                }
                Verdict::NotApplicable(why) => {
                    writeln!(out, "    ok {} {id} # SKIP {}", i + 1, clean(why))
                }
                Verdict::Deferred => writeln!(out, "    ok {} {id} # SKIP undecided", i + 1),
            };
        }
        let ok = if r.failures().next().is_some() { "not ok" } else { "ok" };
        let _ = writeln!(out, "{ok} {} {}", n + 1, clean(&call_label(r)).replace(' ', "_"));
    }
}

pub fn markdown(s: &Summary) -> String {
    let mut out = String::from("## ploop-verify report\n\n");
    let icon = match s.verdict {
        "clean" => "✅ clean",
        "violations" => "❌ violations",
        _ => "⚠️ nothing verified",
    };
    let _ = writeln!(
        out,
        "**{icon}**: {} snapshot calls, {} violations, {} events, {} lost.\n",
        s.snapshots, s.violations, s.events, s.lost
    );
    if let Some(r) = &s.reason {
        let _ = writeln!(out, "> {r}\n");
    }
    let release = s.kernel.get("release").and_then(|r| r.as_str()).unwrap_or("?");
    let _ = writeln!(out, "- Kernel `{release}`: {}", patch_text(&s.kernel_patch));
    let probed: Vec<&str> = s.probed.iter().map(|p| p.name()).collect();
    let _ = writeln!(out, "- Probed: {}", probed.join(", "));
    for (role, why) in &s.narrowed {
        let _ = writeln!(out, "- Not probed: `{role}`: {why}");
    }
    let w = &s.freeze_window;
    let _ = writeln!(
        out,
        "- Freeze window over {} freezes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
        w.count, w.p50_ms, w.p99_ms, w.max_ms
    );
    out.push_str("| id | invariant | pass | fail | n/a |\n|---|---|---:|---:|---:|\n");
    for i in &s.invariants {
        let mark = if i.fail > 0 { " ❌" } else { "" };
        let _ = writeln!(
            out,
            "| {}{mark} | {} | {} | {} | {} |",
            i.id, i.title, i.pass, i.fail, i.not_applicable
        );
    }
    if !s.violation_list.is_empty() {
        out.push_str("\n### Violations\n\n");
        for v in s.violation_list.iter().take(50) {
            let _ = writeln!(
                out,
                "- **{}** snapshot #{} (tid {}, {}): {}",
                v.id, v.seq, v.tid, v.device, v.why
            );
        }
        if s.violation_list.len() > 50 {
            let _ = writeln!(out, "- ... and {} more (summary.json)", s.violation_list.len() - 50);
        }
    }
    out.push_str("\nTimeline and freeze-window histogram: `timeline.svg`.\n");
    out
}

const COLOURS: [&str; 6] = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Each snapshot call on its own row, on its own time scale (calls last milliseconds, runs
/// minutes): the call span, the freeze window per device, the switch, errors in red; then the
/// freeze-window histogram with p50, p99 and max.
pub fn svg(s: &Summary, calls: &[CallReport], windows_ns: &[u64], o: &mut impl fmt::Write) {
    const MAX_ROWS: usize = 300;
    let rows = calls.len().min(MAX_ROWS);
    let (left, width, row_h) = (260.0, 600.0, 18.0);
    let hist_top = 60.0 + rows as f64 * row_h + 40.0;
    let height = hist_top + 220.0;
    // Room on the right for the percentile labels of the histogram.
    let total_w = left + width + 130.0;
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_w}\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\">"
    );
    let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"20\" font-size=\"14\">ploop-verify: {} snapshot calls, {} violations ({})</text>",
        s.snapshots, s.violations, s.verdict
    );
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"38\" fill=\"#555\">each row: one call on its own scale; bars: freeze windows per device; black tick: ploop_quiesce..ploop_relax; red: error or violation</text>"
    );
    // Devices in order of first appearance, with a name for the legend.
    let mut devices: Vec<(Option<KDev>, String)> = Vec::new();
    for (i, r) in calls.iter().take(MAX_ROWS).enumerate() {
        let c = &r.call;
        let y = 60.0 + i as f64 * row_h;
        let end = c.end_ns.unwrap_or(c.start_ns + 1);
        let span = (end.saturating_sub(c.start_ns)).max(1) as f64;
        let x =
            |t: u64| left + (t.saturating_sub(c.start_ns) as f64 / span).clamp(0.0, 1.0) * width;
        let bad = r.failures().next().is_some();
        let err = c.ret.is_some_and(|r| r != 0);
        let colour = if bad || err { "#d62728" } else { "#333" };
        let _ = writeln!(
            o,
            "<text x=\"10\" y=\"{}\" fill=\"{colour}\">{}</text>",
            y + 12.0,
            xml(&format!(
                "#{} tid {} ret {}{}",
                c.seq,
                c.tid,
                c.ret.map(ret_name).unwrap_or_default(),
                if bad {
                    format!(" {}", r.failures().map(|(id, _)| id).collect::<Vec<_>>().join(","))
                } else {
                    String::new()
                }
            ))
        );
        let _ = writeln!(
            o,
            "<rect x=\"{left}\" y=\"{}\" width=\"{width}\" height=\"{}\" fill=\"#eee\" stroke=\"{}\"/>",
            y + 2.0,
            row_h - 4.0,
            if bad { "#d62728" } else { "#ccc" }
        );
        for f in c.freezes.iter().filter(|f| f.ok) {
            let k = devices.iter().position(|d| d.0 == f.dev).unwrap_or_else(|| {
                devices.push((f.dev, c.dev_name(f.dev)));
                devices.len() - 1
            });
            let to = f.thaw.as_ref().and_then(|t| t.ret_ns).unwrap_or(end);
            let leaked = f.thaw.is_none();
            let _ = writeln!(
                o,
                "<rect x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\" opacity=\"0.8\"><title>{}</title></rect>",
                x(f.ret_ns),
                y + 4.0,
                (x(to) - x(f.ret_ns)).max(1.0),
                row_h - 8.0,
                if leaked { "#d62728" } else { COLOURS[k % COLOURS.len()] },
                xml(&format!(
                    "{} frozen {:.2} ms{}",
                    c.dev_name(f.dev),
                    to.saturating_sub(f.ret_ns) as f64 / 1e6,
                    if leaked { " (never thawed)" } else { "" }
                ))
            );
        }
        if let (Some(q), Some(rl)) = (c.quiesce_ns, c.relax_ns) {
            let _ = writeln!(
                o,
                "<rect x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"3\" fill=\"black\"/>",
                x(q),
                y + row_h / 2.0 - 1.5,
                (x(rl) - x(q)).max(1.0)
            );
        }
    }
    if calls.len() > MAX_ROWS {
        let _ = writeln!(
            o,
            "<text x=\"10\" y=\"{}\">... {} more calls in summary.json</text>",
            60.0 + rows as f64 * row_h + 14.0,
            calls.len() - MAX_ROWS
        );
    }
    for (k, (_, name)) in devices.iter().enumerate() {
        let _ = writeln!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            10.0 + k as f64 * 150.0,
            hist_top - 30.0,
            COLOURS[k % COLOURS.len()],
            24.0 + k as f64 * 150.0,
            hist_top - 21.0,
            xml(name)
        );
    }
    histogram(o, &s.freeze_window, windows_ns, left, hist_top, width);
    let _ = o.write_str("</svg>\n");
}

fn histogram(
    o: &mut impl fmt::Write,
    w: &Windows,
    windows_ns: &[u64],
    left: f64,
    top: f64,
    width: f64,
) {
    let h = 150.0;
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"{}\" font-size=\"13\">freeze windows: {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)</text>",
        top + 14.0,
        w.count,
        w.p50_ms,
        w.p99_ms,
        w.max_ms
    );
    if windows_ns.is_empty() {
        return;
    }
    const BINS: usize = 30;
    let max = w.max_ms.max(1e-6);
    let mut bins = [0usize; BINS];
    for &ns in windows_ns {
        let b = ((ns as f64 / 1e6) / max * BINS as f64) as usize;
        bins[b.min(BINS - 1)] += 1;
    }
    let peak = *bins.iter().max().unwrap_or(&1) as f64;
    let base = top + 30.0 + h;
    let bw = width / BINS as f64;
    for (i, n) in bins.iter().enumerate() {
        let bh = *n as f64 / peak * h;
        let _ = writeln!(
            o,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#1f77b4\"><title>{n}</title></rect>",
            left + i as f64 * bw,
            base - bh,
            bw - 1.0
        );
    }
    let _ = writeln!(
        o,
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>",
        left + width
    );
    for (label, v, colour) in
        [("p50", w.p50_ms, "#2ca02c"), ("p99", w.p99_ms, "#ff7f0e"), ("max", w.max_ms, "#d62728")]
    {
        let x = left + (v / max).clamp(0.0, 1.0) * width;
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{base}\" stroke=\"{colour}\" stroke-dasharray=\"4 2\"/><text x=\"{:.1}\" y=\"{}\" fill=\"{colour}\">{label} {v:.2} ms</text>",
            top + 30.0,
            x + 3.0,
            top + 40.0
                + if label == "p99" {
                    12.0
                } else if label == "max" {
                    24.0
                } else {
                    0.0
                }
        );
    }
    let _ = writeln!(o, "<text x=\"{left}\" y=\"{}\">0 ms</text>", base + 14.0);
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max:.2} ms</text>",
        left + width,
        base + 14.0
    );
}

/// `fmt::Write` into a file: the big reports are rendered straight to disk, never held whole.
struct Sink<W: io::Write> {
    w: W,
    err: Option<io::Error>,
}

impl<W: io::Write> fmt::Write for Sink<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.w.write_all(s.as_bytes()).map_err(|e| {
            self.err.get_or_insert(e);
            fmt::Error
        })
    }
}

/// Renders one report into `dir/.NAME.partial`, then renames it into place.
fn write_file(
    dir: &Path,
    name: &str,
    render: impl FnOnce(&mut Sink<io::BufWriter<fs::File>>),
) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.partial"));
    let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut sink = Sink { w: io::BufWriter::new(f), err: None };
    render(&mut sink);
    if let Some(e) = sink.err {
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    sink.w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// Writes every report into `dir` (created if needed), each file atomically.
pub fn write_all(dir: &Path, s: &Summary, checker: &Checker) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let calls = &checker.finished;
    let json = serde_json::to_string_pretty(s)? + "\n";
    write_file(dir, "summary.json", |w| {
        let _ = w.write_str(&json);
    })?;
    write_file(dir, "junit.xml", |w| junit(s, calls, w))?;
    write_file(dir, "results.ktap", |w| ktap(s, calls, w))?;
    write_file(dir, "summary.md", |w| {
        let _ = w.write_str(&markdown(s));
    })?;
    write_file(dir, "timeline.svg", |w| svg(s, calls, &checker.windows_ns, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        let w = windows(&[3_000_000, 1_000_000, 2_000_000]);
        assert_eq!((w.count, w.p50_ms, w.max_ms), (3, 2.0, 3.0));
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
