//! `summary.md`: the verdict, the kernel, the invariant table and the first violations, fit
//! for a CI job summary.

use super::svg::axis::{grouped, plural};
use std::fmt::Write as _;

use super::{ProbeState, RunVerdict, Summary, clients_text, patch_text, probes_text, visible};

pub fn render(s: &Summary) -> String {
    let mut out = String::from("## ploop-verify report\n\n");
    let icon = match s.verdict {
        RunVerdict::Clean => "✅ clean",
        RunVerdict::Violations => "❌ violations",
        RunVerdict::NothingVerified => "⚠️ nothing verified",
    };
    let _ = writeln!(
        out,
        "**{icon}**: {}, {}, {}, {} lost.\n",
        plural(s.snapshots as u64, "snapshot call", "snapshot calls"),
        plural(s.violations as u64, "violation", "violations"),
        plural(s.events, "event", "events"),
        grouped(s.lost)
    );
    for p in &s.status {
        let _ = writeln!(out, "> ⚠️ **{}**: {}\n", p.kind, visible(&p.text));
    }
    // The cause and its consequence together: the commit's symptom, shown.
    let failed = |id: &str| s.invariants.iter().any(|i| i.id == id && i.fail > 0);
    if failed("S2") && failed("X1") {
        out.push_str("S2 failed, and the snapshot it left needs a journal replay (X1).\n\n");
    }
    let release = s.kernel.get("release").and_then(|r| r.as_str()).unwrap_or("?");
    let _ = writeln!(out, "- Kernel `{release}`: {}", patch_text(&s.kernel_patch));
    let _ = writeln!(out, "- Clients: {}", visible(&clients_text(s)));
    if let Some(f) = &s.fallbacks {
        let pairs: Vec<String> = f.calls.iter().map(|(a, b)| format!("#{a}+#{b}")).collect();
        let _ = writeln!(
            out,
            "- {} fell back to one chunk after a two-chunk request was refused with -EINVAL, \
             and the retry succeeded (libploop's fallback for a kernel without the sync fd; \
             each pair is one snapshot): {}",
            plural(f.count as u64, "snapshot", "snapshots"),
            pairs.join(", ")
        );
    }
    if let Some(f) = &s.refused_retries {
        let pairs: Vec<String> = f.calls.iter().map(|(a, b)| format!("#{a}+#{b}")).collect();
        let _ = writeln!(
            out,
            "- {} retried with one chunk after -EINVAL and were refused again (no fallback: \
             failed snapshots; each pair is one snapshot): {}",
            plural(f.count as u64, "snapshot", "snapshots"),
            pairs.join(", ")
        );
    }
    if let Some(u) = &s.oracle_unjudged {
        let _ = writeln!(
            out,
            "- X1 n/a on {} the oracle was to judge: {}",
            plural(u.calls as u64, "snapshot call", "snapshot calls"),
            u.why
        );
    }
    let probed: Vec<&str> = s.probed.iter().map(|p| p.name()).collect();
    let _ = writeln!(out, "- Probed: {}", probed.join(", "));
    let _ = writeln!(out, "- Probes: {}", probes_text(s));
    if s.probes.iter().any(|u| u.state == ProbeState::NeverFired) {
        out.push_str(
            "- A probed helper that never fired may be inlined by this kernel's compiler: the \
             invariants that need it are n/a, never failed.\n",
        );
    }
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
                v.id,
                v.seq,
                v.tid,
                visible(&v.device),
                visible(&v.why)
            );
        }
        if s.violations > 50 {
            let _ = writeln!(out, "- ... and {} more (summary.json)", s.violations - 50);
        }
    }
    out.push_str("\nTimeline and freeze-window histogram: `timeline.svg`.\n");
    let _ = writeln!(out, "\n<!-- ploop-verify report set {} -->", s.report_set.id);
    out
}
