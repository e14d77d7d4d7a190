//! The run's own status: what, besides the judged calls, makes its verdicts incomplete. One
//! list every report reads, and each report writes every entry as something its consumer
//! counts (a JUnit error, a KTAP `not ok`, a KCIDB ERROR, a line of summary.md and of the
//! console): a run that lost events must never read green anywhere.
//!
//! A new kind of incompleteness is one variant here with its text; the reports need nothing.

use serde::Serialize;

/// One reason the run's verdicts are incomplete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Neither the ioctl nor `ploop_snapshot` could be probed.
    NotAnchored,
    NoSnapshot,
    FewerThanExpected {
        seen: usize,
        expected: usize,
    },
    /// Every snapshot was refused: only the error paths were judged.
    NoneSucceeded {
        snapshots: usize,
    },
    EventsLost {
        lost: u64,
    },
    /// `report --accept-damaged` read a trace that failed its integrity check.
    DamagedTrace {
        what: String,
    },
}

impl Problem {
    /// A stable name, for test names and ids (`[a-z_]`, fit for KTAP, JUnit and KCIDB).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::NotAnchored => "not_anchored",
            Problem::NoSnapshot => "no_snapshot",
            Problem::FewerThanExpected { .. } => "fewer_than_expected",
            Problem::NoneSucceeded { .. } => "none_succeeded",
            Problem::EventsLost { .. } => "events_lost",
            Problem::DamagedTrace { .. } => "damaged_trace",
        }
    }

    pub fn text(&self) -> String {
        match self {
            Problem::NotAnchored => "neither the ploop ioctl nor ploop_snapshot is probed on this \
                                     kernel: no verdict on ploop at all"
                .into(),
            Problem::NoSnapshot => "no ploop_snapshot call was observed".into(),
            Problem::FewerThanExpected { seen, expected } => {
                format!("{} observed, {expected} expected", calls(*seen))
            }
            Problem::NoneSucceeded { snapshots } => format!(
                "{}, none succeeded: only the error paths were judged; the freeze, switch and \
                 sync-fd invariants were never exercised (--expect-refusals when refusals are \
                 what the workload expects)",
                calls(*snapshots)
            ),
            Problem::EventsLost { lost } => {
                format!("{lost} events were lost: the verdicts are incomplete")
            }
            Problem::DamagedTrace { what } => format!("{what}: the verdicts are not trusted"),
        }
    }
}

fn calls(n: usize) -> String {
    super::svg::axis::plural(n as u64, "snapshot call", "snapshot calls")
}

/// A problem as the reports write it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusEntry {
    pub kind: &'static str,
    pub text: String,
}

impl From<&Problem> for StatusEntry {
    fn from(p: &Problem) -> Self {
        StatusEntry { kind: p.kind(), text: p.text() }
    }
}

/// What the run needs to know to say what it could not verify.
pub struct Observed {
    pub anchored: bool,
    /// Snapshots, a retried request counted once.
    pub snapshots: usize,
    pub succeeded: usize,
    pub expected: usize,
    /// `--expect-refusals`: the workload is meant to be refused.
    pub refusals_expected: bool,
    pub lost: u64,
}

/// Every problem of the run, the most fundamental first.
pub fn problems(o: &Observed) -> Vec<Problem> {
    let mut out = Vec::new();
    if !o.anchored {
        out.push(Problem::NotAnchored);
    } else if o.snapshots == 0 {
        out.push(Problem::NoSnapshot);
    } else if o.snapshots < o.expected {
        out.push(Problem::FewerThanExpected { seen: o.snapshots, expected: o.expected });
    }
    if o.snapshots > 0 && o.succeeded == 0 && !o.refusals_expected {
        out.push(Problem::NoneSucceeded { snapshots: o.snapshots });
    }
    if o.lost > 0 {
        out.push(Problem::EventsLost { lost: o.lost });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs() -> Observed {
        Observed {
            anchored: true,
            snapshots: 3,
            succeeded: 3,
            expected: 1,
            refusals_expected: false,
            lost: 0,
        }
    }

    #[test]
    fn a_complete_run_has_no_problem() {
        assert_eq!(problems(&obs()), []);
    }

    #[test]
    fn every_snapshot_refused_is_a_problem_unless_expected() {
        let o = Observed { succeeded: 0, ..obs() };
        assert_eq!(problems(&o), [Problem::NoneSucceeded { snapshots: 3 }]);
        assert!(problems(&o)[0].text().starts_with("3 snapshot calls, none succeeded: only"));
        assert_eq!(problems(&Observed { refusals_expected: true, ..o }), []);
    }

    #[test]
    fn lost_events_are_a_problem_beside_any_other() {
        let o = Observed { snapshots: 0, succeeded: 0, lost: 3, ..obs() };
        assert_eq!(problems(&o), [Problem::NoSnapshot, Problem::EventsLost { lost: 3 }]);
        assert_eq!(problems(&Observed { lost: 3, ..obs() }), [Problem::EventsLost { lost: 3 }]);
    }
}
