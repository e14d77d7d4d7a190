//! The reports as their real consumers read them: `results.ktap` through the kernel's own KTAP
//! parser (`tools/testing/kunit/kunit.py parse`, from Debian's linux-source-6.1), `junit.xml`
//! through junitparser, and `--kcidb` output through KCIDB's reference validator
//! (`kcidb_io.schema.LATEST`). Each consumer's counts must equal the ones the run's summary
//! gives; a report its consumer misreads, or a KCIDB file the validator rejects, fails here.
//! On golden traces (clean and failing), on damaged runs (events lost, every snapshot
//! refused: each consumer must count the run's status as an error or a failure, never read
//! it green), and on an aggregated replay of 100 k calls, whose files must stay at a few MB.
//!
//! Needs what scripts/setup.sh installs: the venv target/ploop/venv (kcidb-io, junitparser).
//! The KTAP parser is unpacked from the linux-source .deb alone, without a kernel build.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use xtask::kernels::Kernel;

/// pass, fail, skip.
type Counts = [u64; 3];

fn python() -> PathBuf {
    let p = xtask::build_dir().join("venv/bin/python");
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

fn ploop_verify() -> PathBuf {
    xtask::build::ploop_verify_static().expect("the static ploop-verify")
}

fn kunit() -> PathBuf {
    let kernel = Kernel::resolve("6.1").expect("the 6.1 guest kernel (scripts/setup.sh)");
    let version = xtask::linux_source::image_version(&kernel).unwrap();
    xtask::linux_source::kunit(&version).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = xtask::build_dir().join("consumers-test").join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// `ploop-verify report TRACE --kcidb` into `dir`; returns summary.json and the exit status.
fn replay(trace: &Path, dir: &Path, extra: &[&str]) -> (Value, i32) {
    let out = Command::new(ploop_verify())
        .arg("report")
        .arg(trace)
        .arg("--out")
        .arg(dir)
        .arg("--kcidb")
        .arg(dir.join("kcidb.json"))
        .args(["--kcidb-origin", "ploop_verify_ci"])
        .args(extra)
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    assert!(code <= 2, "report: {code}: {}", String::from_utf8_lossy(&out.stderr));
    let s = serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    (s, code)
}

/// What the summary says the per-call reports hold, when not aggregated: every call's
/// verdict on every invariant.
fn summary_counts(s: &Value) -> Counts {
    let inv = s["invariants"].as_array().unwrap();
    let sum = |k: &str| inv.iter().map(|i| i[k].as_u64().unwrap()).sum::<u64>();
    [sum("pass"), sum("fail"), sum("not_applicable")]
}

/// The kernel's KTAP parser's "Ran N tests: passed: .., failed: .., skipped: .." line.
fn ktap_counts(file: &Path) -> Counts {
    let out = Command::new("python3")
        .arg(kunit().join("kunit.py"))
        .arg("parse")
        .arg(file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("Testing complete. ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| panic!("kunit.py parse printed no summary:\n{stdout}"));
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let (ran, rest) = line.split_once(" tests:").unwrap();
    let total: u64 = ran.trim_start_matches("Ran ").parse().unwrap();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once(": ").unwrap();
        got.insert(k.to_string(), v.trim().parse().unwrap());
    }
    for bad in ["crashed", "errors"] {
        assert_eq!(
            got.get(bad),
            None,
            "kunit.py parse found {bad} in {}:\n{stdout}",
            file.display()
        );
    }
    assert!(!stdout.contains("[ERROR]"), "{stdout}");
    let c = [
        got.get("passed").copied().unwrap_or(0),
        got.get("failed").copied().unwrap_or(0),
        got.get("skipped").copied().unwrap_or(0),
    ];
    assert_eq!(c.iter().sum::<u64>(), total, "{line}");
    c
}

const JUNIT: &str = r#"
import json, sys
from junitparser import JUnitXml, Failure, Error, Skipped
x = JUnitXml.fromfile(sys.argv[1])
counted = {"pass": 0, "fail": 0, "skip": 0, "error": 0}
for suite in x:
    for case in suite:
        kinds = {type(r) for r in case.result}
        key = "fail" if Failure in kinds else "error" if Error in kinds else "skip" if Skipped in kinds else "pass"
        counted[key] += 1
declared = {"tests": x.tests, "failures": x.failures, "skipped": x.skipped, "errors": x.errors}
x.update_statistics()
recounted = {"tests": x.tests, "failures": x.failures, "skipped": x.skipped, "errors": x.errors}
print(json.dumps({"counted": counted, "declared": declared, "recounted": recounted}))
"#;

/// junitparser's reading of junit.xml: counted case by case, and the totals the file declares
/// (which some CI viewers show instead) must agree. `errors`: the error cases the run's
/// status must give (one per problem of the run).
fn junit_counts(file: &Path, errors: u64) -> Counts {
    let out = Command::new(python()).args(["-c", JUNIT]).arg(file).output().unwrap();
    assert!(out.status.success(), "junitparser: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v["counted"];
    assert_eq!(c["error"], errors, "{v}");
    assert_eq!(v["declared"]["errors"], errors, "{v}");
    let counts =
        [c["pass"].as_u64().unwrap(), c["fail"].as_u64().unwrap(), c["skip"].as_u64().unwrap()];
    assert_eq!(v["declared"], v["recounted"], "junit.xml's totals differ from its cases: {v}");
    assert_eq!(
        v["declared"]["tests"].as_u64().unwrap(),
        counts.iter().sum::<u64>() + errors,
        "{v}"
    );
    counts
}

/// The run's own problems (summary.json's `status`): each an error in JUnit and KCIDB, a
/// failed test in KTAP.
fn problems(s: &Value) -> u64 {
    s["status"].as_array().unwrap().len() as u64
}

/// What kunit.py must count: the calls' verdicts, and each problem of the run as failed.
fn with_problems(c: Counts, s: &Value) -> Counts {
    [c[0], c[1] + problems(s), c[2]]
}

const KCIDB: &str = r#"
import json, sys, kcidb_io
data = json.load(open(sys.argv[1]))
latest = kcidb_io.schema.LATEST
kcidb_io.schema.LATEST.validate(data)
latest.validate_exactly(data)
assert (data["version"]["major"], data["version"]["minor"]) == (latest.major, latest.minor), data["version"]
print(json.dumps({"version": f"{latest.major}.{latest.minor}"}))
"#;

/// KCIDB's validator on the file (exactly the latest schema); returns the document.
fn kcidb_valid(file: &Path) -> Value {
    let out = Command::new(python()).args(["-c", KCIDB]).arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "kcidb_io rejected {}:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "kcidb_io: {} valid, schema {}",
        file.display(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap()
}

/// The per-invariant tests of a KCIDB document by status (the run's own test, its status
/// tests and MISS apart).
fn kcidb_counts(doc: &Value) -> Counts {
    let mut c = [0; 3];
    for t in doc["tests"].as_array().unwrap() {
        if t["path"] == "ploop_verify" || t["status"] == "MISS" {
            continue;
        }
        if t["path"] == "ploop_verify.run_status" {
            assert_eq!(t["status"], "ERROR", "{t}");
            continue;
        }
        match t["status"].as_str().unwrap() {
            "PASS" => c[0] += 1,
            "FAIL" => c[1] += 1,
            "SKIP" => c[2] += 1,
            other => panic!("status {other} for {t}"),
        }
    }
    c
}

/// The KCIDB tests of the run's problems, each an ERROR.
fn kcidb_errors(doc: &Value) -> u64 {
    let tests = doc["tests"].as_array().unwrap();
    tests
        .iter()
        .filter(|t| t["path"] == "ploop_verify.run_status" && t["status"] == "ERROR")
        .count() as u64
}

/// The KCIDB root test: the run's status.
fn kcidb_run_status(doc: &Value) -> &str {
    let roots: Vec<&Value> =
        doc["tests"].as_array().unwrap().iter().filter(|t| t["path"] == "ploop_verify").collect();
    assert_eq!(roots.len(), 1);
    roots[0]["status"].as_str().unwrap()
}

/// `sha256sum $(cat series) | cut -c-64 | sha256sum | cut -c-64` in kernel-patch/: KCIDB's
/// own recipe for patchset_hash.
fn series_patchset_hash() -> String {
    let dir = xtask::root().join("kernel-patch");
    let out = Command::new("sh")
        .current_dir(&dir)
        .args(["-euc", "sha256sum $(grep -v '^#' series) | cut -c-64 | sha256sum | cut -c-64"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn golden(name: &str) -> PathBuf {
    xtask::root().join("tests/traces").join(format!("{name}.jsonl"))
}

#[test]
fn golden_traces_read_alike_by_kunit_junitparser_and_kcidb() {
    // Clean; with violations; a hang; nothing to verify (no call at all: ERROR, MISS).
    for (name, verdict, kcidb_status) in [
        ("6.1-clean", 0, "PASS"),
        ("6.12-clean", 0, "PASS"),
        ("6.1-ioctl-s2-auto", 1, "FAIL"),
        ("6.1-bug-leak_freeze", 1, "FAIL"),
        ("6.1-hung-at-end", 1, "FAIL"),
    ] {
        let dir = scratch(name);
        let (s, code) = replay(&golden(name), &dir, &[]);
        assert_eq!(code, verdict, "{name}");
        let want = summary_counts(&s);
        assert_eq!(
            ktap_counts(&dir.join("results.ktap")),
            with_problems(want, &s),
            "{name}: KTAP as kunit.py reads it"
        );
        assert_eq!(
            junit_counts(&dir.join("junit.xml"), problems(&s)),
            want,
            "{name}: JUnit as junitparser reads it"
        );
        let doc = kcidb_valid(&dir.join("kcidb.json"));
        assert_eq!(kcidb_counts(&doc), want, "{name}: KCIDB tests");
        assert_eq!(kcidb_errors(&doc), problems(&s), "{name}: KCIDB errors");
        assert_eq!(kcidb_run_status(&doc), kcidb_status, "{name}");
        let checkout = &doc["checkouts"][0];
        assert_eq!(checkout["patchset_hash"], series_patchset_hash().as_str(), "{name}");
        assert_eq!(doc["builds"][0]["checkout_id"], checkout["id"]);
        assert!(
            doc["tests"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["build_id"] == doc["builds"][0]["id"])
        );
        // Unique test ids, as KCIDB requires within an origin.
        let ids: std::collections::BTreeSet<&str> =
            doc["tests"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), doc["tests"].as_array().unwrap().len(), "{name}: duplicate test ids");
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn nothing_observed_is_error_and_expected_calls_not_seen_are_miss() {
    // Fewer calls than expected: nothing verified (exit 2), ERROR, and MISS per invariant.
    let dir = scratch("expected");
    let (s, code) = replay(&golden("6.1-ioctl-clean"), &dir, &["--expect-snapshots", "10000"]);
    assert_eq!((code, s["verdict"].as_str()), (2, Some("nothing-verified")));
    let doc = kcidb_valid(&dir.join("kcidb.json"));
    assert_eq!(kcidb_run_status(&doc), "ERROR");
    let miss: Vec<&Value> =
        doc["tests"].as_array().unwrap().iter().filter(|t| t["status"] == "MISS").collect();
    assert_eq!(miss.len(), s["invariants"].as_array().unwrap().len(), "one MISS per invariant");
    let unseen = 10000 - s["snapshots"].as_u64().unwrap();
    assert!(miss.iter().all(|t| t["misc"]["unseen"] == unseen), "{:?}", miss[0]);
    // The judged calls are still there, read alike, and the shortfall is an error in each.
    assert_eq!(problems(&s), 1, "{}", s["status"]);
    assert_eq!(kcidb_counts(&doc), summary_counts(&s));
    assert_eq!(kcidb_errors(&doc), 1);
    assert_eq!(ktap_counts(&dir.join("results.ktap")), with_problems(summary_counts(&s), &s));
    assert_eq!(junit_counts(&dir.join("junit.xml"), 1), summary_counts(&s));

    // No call at all: an error saying why in JUnit, a failed test in KTAP, ERROR and MISS in
    // KCIDB.
    let trace = dir.join("none.jsonl");
    let st = Command::new(ploop_verify())
        .args(["testkit", "synth-trace", "--calls", "0", "--out"])
        .arg(&trace)
        .status()
        .unwrap();
    assert!(st.success());
    let (s, code) = replay(&trace, &dir.join("none"), &[]);
    assert_eq!((code, s["snapshots"].as_u64()), (2, Some(0)));
    assert_eq!(ktap_counts(&dir.join("none/results.ktap")), [0, 1, 0]);
    assert_eq!(junit_counts(&dir.join("none/junit.xml"), 1), [0, 0, 0]);
    let doc = kcidb_valid(&dir.join("none/kcidb.json"));
    assert_eq!(kcidb_run_status(&doc), "ERROR");
    assert_eq!(kcidb_counts(&doc), [0, 0, 0]);
    assert_eq!(kcidb_errors(&doc), 1);
    fs::remove_dir_all(&dir).unwrap();
}

/// Issue 22 item 8: a run that lost events read green in kunit.py and junitparser. Now each
/// consumer counts the run's status: a failed KTAP test, a JUnit error, a KCIDB ERROR; and a
/// run whose every snapshot was refused (issue 20) likewise, unless refusals were expected.
#[test]
fn a_damaged_or_refused_run_is_never_green_in_any_consumer() {
    let dir = scratch("damaged");
    let synth = |name: &str, args: &[&str]| {
        let trace = dir.join(format!("{name}.jsonl"));
        let st = Command::new(ploop_verify())
            .args(["testkit", "synth-trace"])
            .args(args)
            .arg("--out")
            .arg(&trace)
            .status()
            .unwrap();
        assert!(st.success());
        trace
    };
    // (name, synth-trace's arguments, report's, exit status, KCIDB run status, problems)
    for (name, args, extra, code, status, n) in [
        ("lost", &["--calls", "5", "--lost", "3"][..], &[][..], 2, "ERROR", 1),
        (
            "lost-failing",
            &["--calls", "4", "--lost", "1", "--wrong-freeze-every", "2"],
            &[],
            1,
            "FAIL",
            1,
        ),
        ("refused", &["--calls", "3", "--refused"], &[], 2, "ERROR", 1),
        ("refused-expected", &["--calls", "3", "--refused"], &["--expect-refusals"], 0, "PASS", 0),
    ] {
        let trace = synth(name, args);
        let out = dir.join(name);
        let (s, got) = replay(&trace, &out, extra);
        assert_eq!(got, code, "{name}");
        assert_eq!(problems(&s), n, "{name}: {}", s["status"]);
        let ktap = ktap_counts(&out.join("results.ktap"));
        assert_eq!(ktap, with_problems(summary_counts(&s), &s), "{name}: KTAP");
        if code != 0 {
            assert!(ktap[1] > 0, "{name}: kunit.py must count a failure");
        }
        assert_eq!(junit_counts(&out.join("junit.xml"), n), summary_counts(&s), "{name}: JUnit");
        let doc = kcidb_valid(&out.join("kcidb.json"));
        assert_eq!((kcidb_errors(&doc), kcidb_run_status(&doc)), (n, status), "{name}: KCIDB");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_build_kernel_manifest_is_the_kcidb_build_and_its_patches_the_patchset() {
    use xtask::build_kernel::manifest::{Artifacts, KernelConfig, Manifest, Mode, PatchEntry};
    let dir = scratch("manifest");
    let trace = golden("6.1-ioctl-clean");
    let release = {
        let first = fs::read_to_string(&trace).unwrap();
        let h: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        h["kernel"]["release"].as_str().unwrap().to_string()
    };
    let patches: Vec<PatchEntry> = ["a", "b"]
        .iter()
        .map(|n| PatchEntry {
            from: None,
            name: format!("000{n}.patch"),
            sha256: xtask::build_kernel::sha256_hex(n.as_bytes()),
            status: xtask::build_kernel::PatchStatus::Applied,
            subject: None,
        })
        .collect();
    let manifest = Manifest {
        artifacts: Artifacts {
            build_log: "/b/build.log".into(),
            bz_image: Some("/b/bzImage".into()),
            modules: vec![],
            modules_dir: None,
            vmlinux: None,
            vmlinux_btf: None,
            vmlinux_btf_note: None,
        },
        built_at_unix: 1_700_000_000,
        cc: "gcc-12".into(),
        config: KernelConfig {
            from: Some("/boot/config-x".into()),
            path: "/b/.config".into(),
            sha256: "0".repeat(64),
        },
        jobs: 2,
        kernel_version: "6.1.0".into(),
        kernelrelease: release.clone(),
        mode: Mode::Full,
        patches: patches.clone(),
        src: "/src/linux".into(),
        timings_s: [("total".to_string(), 12.5)].into(),
        tool: xtask::build_kernel::manifest::TOOL.into(),
    };
    let m = dir.join("manifest.json");
    manifest.write(&m).unwrap();
    let (_, code) = replay(
        &trace,
        &dir,
        &["--kcidb-manifest", m.to_str().unwrap(), "--kcidb-tree", "vzkernel"],
    );
    assert_eq!(code, 0);
    let doc = kcidb_valid(&dir.join("kcidb.json"));
    let lines: String = patches.iter().map(|p| format!("{}\n", p.sha256)).collect();
    assert_eq!(
        doc["checkouts"][0]["patchset_hash"],
        xtask::build_kernel::sha256_hex(lines.as_bytes())
    );
    assert_eq!(doc["checkouts"][0]["tree_name"], "vzkernel");
    let b = &doc["builds"][0];
    assert_eq!((b["compiler"].as_str(), b["duration"].as_f64()), (Some("gcc-12"), Some(12.5)));
    assert_eq!(b["start_time"], "2023-11-14T22:13:20+00:00");
    assert_eq!(b["misc"]["kernelrelease"], release.as_str());
    // The manifest of another kernel is refused: bad input, nothing written.
    let other = Manifest { kernelrelease: "3.10.0-other".into(), ..manifest };
    other.write(&m).unwrap();
    let out = Command::new(ploop_verify())
        .args(["report"])
        .arg(&trace)
        .arg("--out")
        .arg(dir.join("other"))
        .args(["--kcidb", "/dev/null/x", "--kcidb-origin", "ci", "--kcidb-manifest"])
        .arg(&m)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3.10.0-other"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_aggregated_100k_call_replay_is_read_alike_and_stays_small() {
    const CALLS: u64 = 100_000;
    const EVERY: u64 = 1000;
    let dir = scratch("100k");
    let trace = dir.join("trace.jsonl");
    let st = Command::new(ploop_verify())
        .args([
            "testkit",
            "synth-trace",
            "--calls",
            &CALLS.to_string(),
            "--wrong-freeze-every",
            &EVERY.to_string(),
            "--out",
        ])
        .arg(&trace)
        .status()
        .unwrap();
    assert!(st.success());
    let (s, code) = replay(&trace, &dir.join("report"), &[]);
    fs::remove_file(&trace).unwrap();
    let report = dir.join("report");
    assert_eq!(code, 1);
    assert_eq!(s["snapshots"], CALLS);

    // What the aggregated files hold, from the summary: one case per invariant, then every
    // failing call's cases. The failing calls are all alike (synth), and every call has one
    // verdict per invariant, so an invariant's count is a*(N-F) + b*F with a, b in {0, 1}:
    // b (the failing calls' verdict) is 1 exactly when the count is F or N.
    let violations = s["violation_list"].as_array().unwrap();
    let failing: std::collections::BTreeSet<u64> =
        violations.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    let f = failing.len() as u64;
    assert_eq!(f, CALLS / EVERY);
    let mut want = [0u64; 3];
    for i in s["invariants"].as_array().unwrap() {
        let [p, fl, na] = ["pass", "fail", "not_applicable"].map(|k| i[k].as_u64().unwrap());
        assert_eq!(p + fl + na, CALLS);
        // The invariant's own case.
        let k = if fl > 0 {
            1
        } else if p > 0 {
            0
        } else {
            2
        };
        want[k] += 1;
        // Its verdict in each failing call.
        for (slot, n) in [p, fl, na].into_iter().enumerate() {
            if n == f || n == CALLS {
                want[slot] += f;
            }
        }
    }
    let invariants = s["invariants"].as_array().unwrap().len() as u64;
    assert_eq!(
        want.iter().sum::<u64>(),
        invariants * (1 + f),
        "one verdict per invariant and failing call"
    );
    assert_eq!(want[1], 2 + s["violations"].as_u64().unwrap(), "S1 and S2 fail, and each call's");

    assert_eq!(
        ktap_counts(&report.join("results.ktap")),
        want,
        "aggregated KTAP as kunit.py reads it"
    );
    assert_eq!(
        junit_counts(&report.join("junit.xml"), 0),
        want,
        "aggregated JUnit as junitparser reads it"
    );
    let doc = kcidb_valid(&report.join("kcidb.json"));
    assert_eq!(kcidb_counts(&doc), want, "aggregated KCIDB");
    assert_eq!(doc["tests"][0]["misc"]["aggregated"], true);
    // synth-trace's header puts the boot at 2026-01-01 00:00 UTC: the run's test starts then,
    // and each call's test when its call did, in the same order.
    let tests = doc["tests"].as_array().unwrap();
    assert_eq!(tests[0]["start_time"], "2026-01-01T00:00:00.000000+00:00");
    let times: Vec<&str> = tests.iter().map(|t| t["start_time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "start times in call order");
    assert!(times.last().unwrap() > &times[0], "calls start after the run");
    for (file, says) in [("results.ktap", "# aggregated: "), ("junit.xml", "<!-- aggregated: ")] {
        let text = fs::read_to_string(report.join(file)).unwrap();
        assert!(text.contains(says), "{file} says it is aggregated");
    }
    // A few MB at most (unaggregated, 100 k calls made a 185 MB junit.xml).
    for file in ["results.ktap", "junit.xml", "kcidb.json", "summary.json", "timeline.svg"] {
        let len = fs::metadata(report.join(file)).unwrap().len();
        eprintln!("100k calls: {file} {len} bytes");
        assert!(len < 4 << 20, "{file} is {len} bytes");
    }
    fs::remove_dir_all(&dir).unwrap();
}
