//! `junit.xml`: one test suite per snapshot call with one case per invariant; above
//! [`super::AGGREGATE_ABOVE`] calls, one suite of one case per invariant with its counts,
//! then the failing calls' suites.

use std::fmt::Write as _;

use super::{Summary, call_label, xml, xml_into};
use crate::verify::checker::{CallReport, INVARIANTS, Verdict};

pub const TAIL: &str = "</testsuites>\n";

/// A verdict written as a skipped case.
pub fn skipped(v: &Verdict) -> bool {
    !matches!(v, Verdict::Pass | Verdict::Fail(_))
}

/// Everything before the per-call suites. `aggregated`: the number of failing calls that
/// follow and their skipped cases, when the run is aggregated.
///
/// The totals count the cases the file holds, as consumers that count cases do: a violation
/// outside any judged call (a call hung when the run ended) is in summary.json, not a case.
pub fn head(s: &Summary, calls: usize, aggregated: Option<(usize, usize)>, out: &mut String) {
    let skipped: usize = s.invariants.iter().map(|i| i.not_applicable).sum();
    let failures: usize = s.invariants.iter().map(|i| i.fail).sum();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    // "--" may not appear inside an XML comment; probe names and counts have none.
    let _ = writeln!(out, "<!-- probes: {} -->", xml(&super::probes_text(s)));
    let Some((failing_calls, skipped_in_failing)) = aggregated else {
        // No call: the one skipped case below.
        let (tests, skipped) =
            if calls == 0 { (1, 1) } else { (calls * INVARIANTS.len(), skipped) };
        let _ = writeln!(
            out,
            "<testsuites name=\"ploop-verify\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\">"
        );
        if calls == 0 {
            out.push_str(
                "  <testsuite name=\"ploop-verify\" tests=\"1\" failures=\"0\" skipped=\"1\">\n",
            );
            let _ = writeln!(
                out,
                "    <testcase classname=\"ploop-verify\" name=\"snapshots\"><skipped message=\"{}\"/></testcase>",
                xml(s.reason.as_deref().unwrap_or("no snapshot"))
            );
            out.push_str("  </testsuite>\n");
        }
        return;
    };
    // Aggregated: the invariants' suite, then every failing call's (which hold the failures).
    let invariants = s.invariants.len();
    let failed_ids = s.invariants.iter().filter(|i| i.fail > 0).count();
    let never_judged = s.invariants.iter().filter(|i| i.pass + i.fail == 0).count();
    let _ = writeln!(
        out,
        "<testsuites name=\"ploop-verify\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
        invariants + failing_calls * INVARIANTS.len(),
        failed_ids + failures,
        never_judged + skipped_in_failing
    );
    let _ = writeln!(
        out,
        "  <!-- aggregated: {calls} snapshot calls (more than {}): one case per invariant with its \
         counts, then one suite per failing call; summary.json has every count -->",
        super::AGGREGATE_ABOVE
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"invariants over {calls} snapshot calls\" tests=\"{invariants}\" failures=\"{failed_ids}\" skipped=\"{never_judged}\">"
    );
    for i in &s.invariants {
        let counts = format!("pass {}, fail {}, n/a {}", i.pass, i.fail, i.not_applicable);
        let name = xml(&format!("{}: {} ({counts})", i.id, i.title));
        let _ = write!(out, "    <testcase classname=\"ploop-verify.{}\" name=\"{name}\"", i.id);
        if i.fail > 0 {
            let why = format!("{} of {calls} snapshot calls failed {}", i.fail, i.id);
            let _ = writeln!(
                out,
                "><failure message=\"{why}\" type=\"{}\">{why}</failure></testcase>",
                i.id
            );
        } else if i.pass == 0 {
            let _ = writeln!(out, "><skipped message=\"not applicable to any call\"/></testcase>");
        } else {
            out.push_str("/>\n");
        }
    }
    out.push_str("  </testsuite>\n");
}

/// One call's suite.
pub fn call(r: &CallReport, out: &mut String) {
    let fails = r.failures().count();
    let na = r.verdicts.iter().filter(|(_, v)| skipped(v)).count();
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\" skipped=\"{na}\">",
        xml(&call_label(r)),
        r.verdicts.len()
    );
    for (inv, (id, v)) in INVARIANTS.iter().zip(&r.verdicts) {
        // Written straight into `out`: this runs for every call, live (issue 15).
        let _ = write!(
            out,
            "    <testcase classname=\"ploop-verify.{id}\" name=\"{id} snapshot #{}: ",
            r.call.seq
        );
        xml_into(out, inv.title);
        out.push('"');
        match v {
            Verdict::Pass => out.push_str("/>\n"),
            Verdict::Fail(why) => {
                out.push_str("><failure message=\"");
                xml_into(out, why);
                let _ = write!(out, "\" type=\"{id}\">");
                xml_into(out, why);
                out.push_str("</failure></testcase>\n");
            }
            Verdict::NotApplicable(why) => {
                out.push_str("><skipped message=\"");
                xml_into(out, why);
                out.push_str("\"/></testcase>\n");
            }
            Verdict::Deferred => out.push_str("><skipped message=\"undecided\"/></testcase>\n"),
        }
    }
    out.push_str("  </testsuite>\n");
}
