//! The reports of a replay, on synthetic traces around the aggregation threshold: per call
//! below it, one case per invariant above it, and the same verdict either way; and a damaged
//! trace leaves no report behind.

use std::{fs, path::Path, process::Command};

use ploop_user::verify::report::AGGREGATE_ABOVE;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ploop-verify"))
}

/// Writes a synthetic trace of `calls` snapshot calls and replays it into `dir/report`.
fn replay(dir: &Path, calls: usize) -> serde_json::Value {
    let trace = dir.join("trace.jsonl");
    let st = bin()
        .args(["testkit", "synth-trace", "--calls", &calls.to_string(), "--out"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let out =
        bin().arg("report").arg(&trace).arg("--out").arg(dir.join("report")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&fs::read_to_string(dir.join("report/summary.json")).unwrap()).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ploop-reports-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn per_call_cases_up_to_the_threshold_then_aggregated() {
    for (calls, aggregated) in [(AGGREGATE_ABOVE, false), (AGGREGATE_ABOVE + 1, true)] {
        let dir = scratch(&calls.to_string());
        let s = replay(&dir, calls);
        assert_eq!(
            (s["snapshots"].as_u64(), s["verdict"].as_str()),
            (Some(calls as u64), Some("clean"))
        );
        let junit = fs::read_to_string(dir.join("report/junit.xml")).unwrap();
        let ktap = fs::read_to_string(dir.join("report/results.ktap")).unwrap();
        let suites = junit.matches("<testsuite ").count();
        let invariants = s["invariants"].as_array().unwrap().len();
        if aggregated {
            assert!(junit.contains("<!-- aggregated: "), "{}", &junit[..400]);
            assert_eq!(suites, 1, "one suite of invariants, no failing call");
            assert_eq!(junit.matches("<testcase ").count(), invariants);
            assert!(ktap.contains(&format!("\n1..{invariants}\n")), "{}", &ktap[..300]);
        } else {
            assert!(!junit.contains("aggregated"));
            assert_eq!(suites, calls);
            assert_eq!(junit.matches("<testcase ").count(), calls * invariants);
            assert!(ktap.contains(&format!("\n1..{calls}\n")));
        }
        // Well-formed: every suite closed, the document closed once.
        assert_eq!(junit.matches("</testsuite>").count(), suites);
        assert!(junit.ends_with("</testsuites>\n"));
        // The timeline draws its first 300 calls, says how many more there are, and keeps
        // the histogram of every freeze window.
        let svg = fs::read_to_string(dir.join("report/timeline.svg")).unwrap();
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("fill=\"#eee\"").count(), 300, "one row per drawn call");
        assert!(svg.contains(&format!("... {} more calls in summary.json", calls - 300)));
        let windows = s["freeze_window"]["count"].as_u64().unwrap();
        assert!(svg.contains(&format!("freeze windows: {windows} (")), "histogram over all");
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_damaged_trace_leaves_no_report() {
    let dir = scratch("damaged");
    let trace = dir.join("trace.jsonl");
    let st = bin().args(["testkit", "synth-trace", "--calls", "50", "--out"]).arg(&trace).status();
    assert!(st.unwrap().success());
    let text = fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len() / 2;
    fs::write(&trace, format!("{}\n{}\n", lines[..cut].join("\n"), &lines[cut][..20])).unwrap();
    let out_dir = dir.join("report");
    let out = bin().arg("report").arg(&trace).arg("--out").arg(&out_dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("trace.jsonl:{}: not a trace record", cut + 1)), "{err}");
    assert!(!out_dir.exists(), "nothing written for a damaged trace");
    fs::remove_dir_all(&dir).unwrap();
}
