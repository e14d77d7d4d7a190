//! The golden-trace tier: traces recorded from live runs in guests (each kernel, each model
//! bug, each stack) are replayed on the host with `ploop-verify report`, and what the checker
//! concludes must equal the recorded expectation. A checker change that alters a verdict fails
//! here in seconds, without booting anything.
//!
//! Each `tests/traces/NAME.jsonl` has `NAME.expected.json`: the replay's `summary.json` as it
//! was reviewed when the trace was added (all of it but the tool's version), and the exit
//! status. After a change that is meant to alter a verdict, `GOLDEN_UPDATE=1 cargo test
//! --test golden` rewrites the expectations; the diff then shows every verdict that moved,
//! and the commit says why.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/traces")
}

/// What a replay concludes (summary.json without the tool's version, and the exit status).
fn replay(trace: &Path, out: &Path) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_ploop-verify"))
        .arg("report")
        .arg(trace)
        .arg("--out")
        .arg(out)
        .output()
        .expect("running ploop-verify report");
    let summary = out.join("summary.json");
    let text = fs::read_to_string(&summary).unwrap_or_else(|e| {
        panic!(
            "{}: no summary ({e}); stderr:\n{}",
            trace.display(),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let mut v: Value = serde_json::from_str(&text).expect("summary.json is JSON");
    let map = v.as_object_mut().expect("summary is an object");
    map.remove("tool");
    map.insert("exit_status".into(), o.status.code().into());
    for f in ["junit.xml", "results.ktap", "summary.md", "timeline.svg"] {
        assert!(out.join(f).is_file(), "{}: {f} not written", trace.display());
    }
    v
}

/// The first place two JSON values differ, as a path into them.
fn first_difference(path: &str, want: &Value, got: &Value) -> Option<String> {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))).find_map(|k| {
                let none = Value::Null;
                let (x, y) = (a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none));
                first_difference(&format!("{path}.{k}"), x, y)
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(&format!("{path}[{i}]"), x, y)),
        _ if want == got => None,
        _ => Some(format!("{path}: expected {want}, the replay gives {got}")),
    }
}

#[test]
fn golden_traces_replay_to_their_recorded_verdicts() {
    let update = std::env::var_os("GOLDEN_UPDATE").is_some();
    let mut traces: Vec<PathBuf> = fs::read_dir(traces_dir())
        .expect("tests/traces")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    traces.sort();
    assert!(traces.len() >= 40, "only {} golden traces in tests/traces", traces.len());
    let scratch = std::env::temp_dir().join(format!("ploop-golden-{}", std::process::id()));
    let mut failures = Vec::new();
    for trace in &traces {
        let name = trace.file_stem().unwrap().to_string_lossy().into_owned();
        let got = replay(trace, &scratch.join(&name));
        let expected_path = trace.with_extension("expected.json");
        if update {
            fs::write(&expected_path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
            continue;
        }
        let want: Value = match fs::read_to_string(&expected_path) {
            Ok(t) => serde_json::from_str(&t).expect("expected.json is JSON"),
            Err(e) => {
                failures.push(format!("{name}: {} ({e})", expected_path.display()));
                continue;
            }
        };
        if let Some(d) = first_difference("", &want, &got) {
            failures.push(format!("{name}: {d}"));
        }
    }
    let _ = fs::remove_dir_all(&scratch);
    assert!(failures.is_empty(), "verdicts moved:\n{}", failures.join("\n"));
}

/// The expectations themselves agree with what the live tests demand of each case, so that
/// an update cannot quietly bless a wrong verdict.
#[test]
fn golden_expectations_say_what_each_case_is_for() {
    let read = |name: &str| -> Value {
        let p = traces_dir().join(format!("{name}.expected.json"));
        serde_json::from_str(&fs::read_to_string(&p).expect("expected.json")).expect("JSON")
    };
    // X1's tally in a case's expectation.
    let x1 = |name: &str| {
        let v = read(name);
        v["invariants"].as_array().unwrap().iter().find(|i| i["id"] == "X1").unwrap().clone()
    };
    let ids = |name: &str| -> Vec<String> {
        let v = read(name);
        let mut ids: Vec<String> = v["violation_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    for kernel in ["6.1", "6.12"] {
        for (case, want) in [
            ("clean", &[][..]),
            ("s2-sync", &[]),
            ("unpatched", &[]),
            ("s2-auto", &["S2"]),
            ("bug-leak_freeze", &["O1"]),
            ("bug-thaw_other", &["O1"]),
            ("bug-ignore_sync_fd", &["S1", "S2"]),
            ("bug-thaw_early", &["O2", "S2"]),
            ("bug-einval", &["E1"]),
        ] {
            let name = format!("{kernel}-{case}");
            assert_eq!(ids(&name), want, "{name}");
        }
    }
    // 6.1 runs with every ploop_quiesce/ploop_relax event taken out, as a kernel that inlines
    // their call sites would show them: no verdict from absence. The autodetection still
    // fails S2 (the filesystem was never frozen); thaw_early can no longer be seen by any id.
    for (case, want) in [("clean", &[][..]), ("s2-auto", &["S2"]), ("bug-thaw_early", &[])] {
        let name = format!("6.1-switch-inlined-{case}");
        assert_eq!(ids(&name), want, "{name}");
    }
    // Calls anchored at the ioctl (sys_enter_ioctl), live on 6.1; then the same traces with
    // ploop_snapshot and every helper taken out, as a kernel that inlines them all: each bug
    // is still caught by the ids that can see it, except thaw_early (the switch is gone).
    for (case, full, inlined) in [
        ("clean", &[][..], &[][..]),
        ("unpatched", &[], &[]),
        ("s2-auto", &["S2"], &["S2"]),
        ("bug-leak_freeze", &["O1"], &["O1"]),
        ("bug-thaw_other", &["O1"], &["O1"]),
        ("bug-ignore_sync_fd", &["S1", "S2"], &["S1", "S2"]),
        ("bug-thaw_early", &["O2", "S2"], &[]),
        ("bug-einval", &["E1"], &["E1"]),
    ] {
        assert_eq!(ids(&format!("6.1-ioctl-{case}")), full, "6.1-ioctl-{case}");
        assert_eq!(ids(&format!("6.1-ioctl-inlined-{case}")), inlined, "6.1-ioctl-inlined-{case}");
    }
    assert_eq!(ids("6.1-ioctl-s2-sync"), [] as [&str; 0]);
    // The s2-sync run with its last call made to hang 11 s past its freeze (the default hang
    // limit is 10 s): once returning late, once still hanging when the run ended.
    assert_eq!(ids("6.1-hung-returned"), ["T1", "T2"]);
    assert_eq!(ids("6.1-hung-at-end"), ["T2"]);
    // Live on the model built to inline ploop_snapshot and its helpers (ModelBuild::Inlined):
    // clean stays clean, ignore_sync_fd is still caught, thaw_early cannot be seen.
    for kernel in ["6.1", "6.12"] {
        for (case, want) in
            [("clean", &[][..]), ("bug-ignore_sync_fd", &["S1", "S2"]), ("bug-thaw_early", &[])]
        {
            let name = format!("{kernel}-build-inlined-{case}");
            assert_eq!(ids(&name), want, "{name}");
        }
    }
    // libploop's device-node sync fd read the seed's way (devtmpfs: -ENODEV): S4 alone.
    assert_eq!(ids("6.1-ioctl-s4-seed"), ["S4"]);
    // libploop's own request on a partitioned image (ext4 on ploop0p1): the seed refuses its
    // node (S4); 0002's reading is clean; an unpatched kernel takes the one-chunk retry.
    assert_eq!(ids("6.1-ioctl-lp-seed"), ["S4"]);
    assert_eq!(ids("6.1-ioctl-lp-bdev"), [] as [&str; 0]);
    assert_eq!(ids("6.1-ioctl-lp-unpatched"), [] as [&str; 0]);
    // The node of ploop0p1 on a disk filesystem (ext4 on ploop1), as where /dev is not
    // devtmpfs: the seed freezes the filesystem holding the node (S4, and S2 with it: ploop0p1's
    // stays unfrozen); 0002's reading freezes ploop0p1.
    assert_eq!(ids("6.1-ioctl-s4-devdisk-seed"), ["S2", "S4"]);
    assert_eq!(ids("6.1-ioctl-s4-devdisk-bdev"), [] as [&str; 0]);
    // A second snapshot refused at the ioctl dispatch while the first holds maintenance.
    assert_eq!(ids("6.1-ioctl-ebusy"), [] as [&str; 0]);
    // Runs with --hang-after 1.5 and 3 s recorded in the header: a replay judges with them.
    assert_eq!(ids("6.1-ioctl-hung-held"), ["T2"]);
    assert_eq!(ids("6.1-hang-deltas-on-frozen-fs"), ["S2", "T2"]);
    // `run --oracle` on the commit's stack (ext4 on dm-linear on dm-crypt on ploop), X1 from
    // the oracle records in the trace: the autodetection leaves every old snapshot needing a
    // journal replay (S2 and X1 together), the sync fd leaves them clean (X1 passes on all 3).
    for kernel in ["6.1", "6.12"] {
        assert_eq!(ids(&format!("{kernel}-oracle-s2-auto")), ["S2", "X1"]);
        assert_eq!(ids(&format!("{kernel}-oracle-s2-sync")), [] as [&str; 0]);
        let name = format!("{kernel}-oracle-s2-sync");
        let x1 = x1(&name);
        assert_eq!((&x1["pass"], &x1["fail"]), (&Value::from(3), &Value::from(0)), "{name}");
    }
    // The oracle on its own thread: each finding recorded when it arrived, after the event
    // that completed its call (the first one after the next call began). The checker holds
    // the call until then: the same verdicts as the trace that held them before the event.
    assert_eq!(ids("6.1-oracle-late-s2-auto"), ["S2", "X1"]);
    // (Two traces, so two report sets: their ids differ, and nothing else.)
    let without_set = |name: &str| {
        let mut v = read(name);
        v.as_object_mut().unwrap().remove("report_set");
        v
    };
    assert_eq!(without_set("6.1-oracle-late-s2-auto"), without_set("6.1-oracle-s2-auto"));
    // Live since then, beyond the commit's stack: dm-linear on dm-crypt on ploop0p1 with ploop1
    // tops (the sync fd passes X1, the autodetection fails it with S2), and dm-crypt on
    // ploop0p1 without the key: X1 n/a on both calls, never judged.
    for kernel in ["6.1", "6.12"] {
        assert_eq!(ids(&format!("{kernel}-oracle-p1-linear")), ["S2", "X1"]);
    }
    assert_eq!(ids("6.1-oracle-p1-nokey"), [] as [&str; 0]);
    let na = x1("6.1-oracle-p1-nokey");
    assert_eq!(
        (&na["pass"], &na["fail"], &na["not_applicable"]),
        (&0.into(), &0.into(), &2.into())
    );
    // The summary says why, once for the run.
    let unjudged = &read("6.1-oracle-p1-nokey")["oracle_unjudged"];
    assert_eq!(unjudged["calls"], 2);
    assert!(unjudged["why"].as_str().unwrap().contains("no --oracle-key"), "{unjudged}");
    assert!(read("6.1-oracle-p1-linear").get("oracle_unjudged").is_none());
}
