//! `results.ktap`: one top-level test per snapshot call, one subtest per invariant; above
//! [`super::AGGREGATE_ABOVE`] calls, one test per invariant with its counts, then the failing
//! calls. The run's own problems (events lost, nothing verified) follow as `not ok` tests,
//! which the kernel's parser counts as failed.

use std::fmt::Write as _;

use super::{Summary, call_label};
use crate::verify::checker::{CallReport, Verdict};

/// '#' starts a KTAP directive: keep it out of names and reasons; a line break would end the
/// line, any other control character is written visibly.
fn clean(t: &str) -> String {
    // One pass: this runs for every n/a and failed verdict of every call (issue 15).
    let mut out = String::with_capacity(t.len());
    for c in t.chars().filter(|&c| c != '#') {
        match c {
            '\n' => out.push(' '),
            c if c.is_control() || c == '\u{fffe}' || c == '\u{ffff}' => {
                super::visible_into(&mut out, c.encode_utf8(&mut [0; 4]), false)
            }
            c => out.push(c),
        }
    }
    out
}

/// Everything before the per-call tests. `aggregated`: the number of failing calls that
/// follow, when the run is aggregated.
pub fn head(s: &Summary, calls: usize, aggregated: Option<usize>, out: &mut String) {
    out.push_str("KTAP version 1\n");
    let _ =
        writeln!(out, "# {}: {} snapshot calls, {} violations", s.tool, s.snapshots, s.violations);
    let _ = writeln!(out, "# report set: {}", s.report_set.id);
    let _ = writeln!(out, "# probes: {}", clean(&super::probes_text(s)));
    let problems = s.status.len();
    let Some(failing_calls) = aggregated else {
        // A run without a call has a problem that says so: the plan is never empty (the
        // kernel's parser reads "1..0" as an error of its own, "0 tests run!").
        let _ = writeln!(out, "1..{}", calls + problems);
        return;
    };
    let _ = writeln!(
        out,
        "# aggregated: {calls} snapshot calls (more than {}): one test per invariant with its \
         counts, then the failing calls (each names its snapshot #)",
        super::AGGREGATE_ABOVE
    );
    let _ = writeln!(out, "1..{}", s.invariants.len() + failing_calls + problems);
    for (n, i) in s.invariants.iter().enumerate() {
        let _ =
            writeln!(out, "# {}: pass {}, fail {}, n/a {}", i.id, i.pass, i.fail, i.not_applicable);
        let _ = match (i.fail, i.pass) {
            (0, 0) => writeln!(out, "ok {} {} # SKIP not applicable to any call", n + 1, i.id),
            (0, _) => writeln!(out, "ok {} {}", n + 1, i.id),
            _ => writeln!(out, "not ok {} {}", n + 1, i.id),
        };
    }
}

/// After the per-call tests: the run's problems, each a failed test. `aggregated`: as for
/// [`head`].
pub fn tail(s: &Summary, calls: usize, aggregated: Option<usize>) -> String {
    let before = match aggregated {
        Some(failing_calls) => s.invariants.len() + failing_calls,
        None => calls,
    };
    let mut out = String::new();
    for (i, p) in s.status.iter().enumerate() {
        let _ =
            writeln!(out, "# {}\nnot ok {} run_status_{}", clean(&p.text), before + i + 1, p.kind);
    }
    out
}

/// A snapshot as test `n` of the file, with its invariants as subtests: those of each of its
/// ioctl calls (a retried request has two, named by call).
pub fn call(n: usize, r: &CallReport, out: &mut String) {
    out.push_str("    KTAP version 1\n");
    let subtests: usize = r.calls().map(|c| c.verdicts.len()).sum();
    let _ = writeln!(out, "    1..{subtests}");
    // After the plan: the kernel's parser (6.1) takes the line after the version for the
    // plan, and loses the whole file when it is not.
    let _ = writeln!(out, "    # client: {}", clean(&r.client()));
    let pair = r.retried.is_some();
    let verdicts = r.calls().flat_map(|c| c.verdicts.iter().map(move |v| (c.call.seq, v)));
    for (i, (seq, (id, v))) in verdicts.enumerate() {
        let name = if pair { format!("{id}_snapshot_{seq}") } else { id.to_string() };
        let _ = match v {
            Verdict::Pass => writeln!(out, "    ok {} {name}", i + 1),
            Verdict::Fail(why) => {
                writeln!(out, "    # {id}: {}\n    not ok {} {name}", clean(why), i + 1)
            }
            Verdict::NotApplicable(why) => {
                writeln!(out, "    ok {} {name} # SKIP {}", i + 1, clean(why))
            }
            Verdict::Deferred => writeln!(out, "    ok {} {name} # SKIP undecided", i + 1),
        };
    }
    let ok = if r.snapshot_failed() { "not ok" } else { "ok" };
    let _ = writeln!(out, "{ok} {n} {}", clean(&call_label(r)).replace(' ', "_"));
}
