//! `junit.xml`: one test suite per snapshot call with one case per invariant; above
//! [`super::AGGREGATE_ABOVE`] calls, one suite of one case per invariant with its counts,
//! then the failing calls' suites. The run's own problems (events lost, nothing verified)
//! are a suite of error cases, which every JUnit consumer counts.

use std::fmt::Write as _;

use super::{Summary, call_label, xml, xml_into};
use crate::verify::checker::{CallReport, INVARIANTS, Verdict};

pub const TAIL: &str = "</testsuites>\n";

/// A verdict written as a skipped case.
pub fn skipped(v: &Verdict) -> bool {
    !matches!(v, Verdict::Pass | Verdict::Fail(_))
}

/// Everything before the per-call suites. `aggregated`: the cases of the failing calls that
/// follow and how many of them are skipped, when the run is aggregated.
///
/// The totals count the cases the file holds, as consumers that count cases do: a violation
/// outside any judged call (a call hung when the run ended) is in summary.json, not a case.
pub fn head(s: &Summary, calls: usize, aggregated: Option<(usize, usize)>, out: &mut String) {
    let skipped: usize = s.invariants.iter().map(|i| i.not_applicable).sum();
    let failures: usize = s.invariants.iter().map(|i| i.fail).sum();
    let errors = s.status.len();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(out, "<!-- ploop-verify report set {} -->", s.report_set.id);
    // "--" may not appear inside an XML comment; probe names and counts have none.
    let _ = writeln!(out, "<!-- probes: {} -->", xml(&super::probes_text(s)));
    let Some((cases_in_failing, skipped_in_failing)) = aggregated else {
        // Every verdict of every ioctl call (a retried request has two).
        let cases: usize = s.invariants.iter().map(|i| i.pass + i.fail + i.not_applicable).sum();
        let _ = writeln!(
            out,
            "<testsuites name=\"ploop-verify\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\">",
            cases + errors
        );
        status(s, out);
        return;
    };
    // Aggregated: the invariants' suite, then every failing call's (which hold the failures).
    let invariants = s.invariants.len();
    let failed_ids = s.invariants.iter().filter(|i| i.fail > 0).count();
    let never_judged = s.invariants.iter().filter(|i| i.pass + i.fail == 0).count();
    let _ = writeln!(
        out,
        "<testsuites name=\"ploop-verify\" tests=\"{}\" failures=\"{}\" errors=\"{errors}\" skipped=\"{}\">",
        invariants + cases_in_failing + errors,
        failed_ids + failures,
        never_judged + skipped_in_failing
    );
    status(s, out);
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

/// The run's problems: one suite, an error case each (absent when there are none).
fn status(s: &Summary, out: &mut String) {
    if s.status.is_empty() {
        return;
    }
    let n = s.status.len();
    let _ = writeln!(
        out,
        "  <testsuite name=\"ploop-verify run status\" tests=\"{n}\" failures=\"0\" errors=\"{n}\" skipped=\"0\">"
    );
    for p in &s.status {
        let text = xml(&p.text);
        let _ = writeln!(
            out,
            "    <testcase classname=\"ploop-verify.run\" name=\"run status: {}\"><error message=\"{text}\" type=\"{}\">{text}</error></testcase>",
            p.kind, p.kind
        );
    }
    out.push_str("  </testsuite>\n");
}

/// One snapshot's suite: each of its ioctl calls' cases (a retried request has two calls).
pub fn call(r: &CallReport, out: &mut String) {
    let fails: usize = r.calls().map(|c| c.failures().count()).sum();
    let verdicts = r.calls().flat_map(|c| &c.verdicts);
    let na = verdicts.clone().filter(|(_, v)| skipped(v)).count();
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\" skipped=\"{na}\">",
        xml(&call_label(r)),
        verdicts.count()
    );
    let _ = writeln!(
        out,
        "    <properties><property name=\"client\" value=\"{}\"/><property name=\"request\" value=\"{}\"/></properties>",
        xml(&r.call.comm),
        xml(&r.request())
    );
    for c in r.calls() {
        cases(c, out);
    }
    out.push_str("  </testsuite>\n");
}

/// One ioctl call's cases.
fn cases(r: &CallReport, out: &mut String) {
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
}
