//! `results.ktap`: one top-level test per snapshot call, one subtest per invariant; above
//! [`super::AGGREGATE_ABOVE`] calls, one test per invariant with its counts, then the failing
//! calls.

use std::fmt::Write as _;

use super::{Summary, call_label};
use crate::verify::checker::{CallReport, Verdict};

/// '#' starts a KTAP directive: keep it out of names and reasons.
fn clean(t: &str) -> String {
    // One pass: this runs for every n/a and failed verdict of every call (issue 15).
    t.chars().filter(|&c| c != '#').map(|c| if c == '\n' { ' ' } else { c }).collect()
}

/// Everything before the per-call tests. `aggregated`: the number of failing calls that
/// follow, when the run is aggregated.
pub fn head(s: &Summary, calls: usize, aggregated: Option<usize>, out: &mut String) {
    out.push_str("KTAP version 1\n");
    let _ =
        writeln!(out, "# {}: {} snapshot calls, {} violations", s.tool, s.snapshots, s.violations);
    let _ = writeln!(out, "# probes: {}", clean(&super::probes_text(s)));
    let Some(failing_calls) = aggregated else {
        if calls == 0 {
            // One skipped test, as in junit.xml: the kernel's parser reads an empty plan
            // ("1..0 # SKIP") as an error of its own ("0 tests run!").
            let _ = writeln!(
                out,
                "1..1\nok 1 snapshots # SKIP {}",
                clean(s.reason.as_deref().unwrap_or("no snapshot"))
            );
        } else {
            let _ = writeln!(out, "1..{calls}");
        }
        return;
    };
    let _ = writeln!(
        out,
        "# aggregated: {calls} snapshot calls (more than {}): one test per invariant with its \
         counts, then the failing calls (each names its snapshot #)",
        super::AGGREGATE_ABOVE
    );
    let _ = writeln!(out, "1..{}", s.invariants.len() + failing_calls);
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

/// A call as test `n` of the file, with its invariants as subtests.
pub fn call(n: usize, r: &CallReport, out: &mut String) {
    out.push_str("    KTAP version 1\n");
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
    let _ = writeln!(out, "{ok} {n} {}", clean(&call_label(r)).replace(' ', "_"));
}
