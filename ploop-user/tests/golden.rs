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

/// What a replay concludes (summary.json without the tool's version and its word on the
/// trace, checked apart: see [`trace_status`]; and the exit status).
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
    let status = map.remove("trace").map(|t| t["status"].clone());
    assert_eq!(status, Some(trace_status(trace).into()), "{}", trace.display());
    let console = String::from_utf8_lossy(&o.stderr);
    let said = match trace_status(trace) {
        "unchecked" => "old trace, integrity not checkable",
        _ => "trace intact: ",
    };
    assert!(console.contains(said), "{}: {console}", trace.display());
    map.insert("exit_status".into(), o.status.code().into());
    for f in ["junit.xml", "results.ktap", "summary.md", "timeline.svg"] {
        assert!(out.join(f).is_file(), "{}: {f} not written", trace.display());
    }
    v
}

/// What a replay must say of a trace it read whole: a trace with integrity fields (its
/// header has `rec`) is intact, an older one unchecked.
fn trace_status(trace: &Path) -> &'static str {
    let text = fs::read_to_string(trace).unwrap();
    if text.starts_with(r#"{"record":"header","rec":0,"#) { "intact" } else { "unchecked" }
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
    // Live on the model built to inline ploop_snapshot and its helpers (ModelBuild::Inlined),
    // recorded before the switch probe: clean stays clean, ignore_sync_fd is still caught,
    // thaw_early cannot be seen.
    for kernel in ["6.1", "6.12"] {
        for (case, want) in
            [("clean", &[][..]), ("bug-ignore_sync_fd", &["S1", "S2"]), ("bug-thaw_early", &[])]
        {
            let name = format!("{kernel}-build-inlined-{case}");
            assert_eq!(ids(&name), want, "{name}");
        }
        // The same build live with the switch probe on the format's complete_snapshot (called
        // through the ops table, so never inlined): thaw_early is caught, by O2 and S2.
        for (case, want) in [("clean", &[][..]), ("bug-thaw_early", &["O2", "S2"])] {
            let name = format!("{kernel}-build-inlined-switch-{case}");
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
    // Written by the current writer (rec and crc on every record): 6 synthetic calls on
    // ploop -> dm-crypt -> dm-linear -> ext4, every third freezing dm-crypt instead of the
    // sync fd's dm-linear, with the oracle's findings.
    assert_eq!(ids("synth-integrity"), ["S1", "S2", "X1"]);
    let x1 = x1("synth-integrity");
    assert_eq!((&x1["pass"], &x1["fail"]), (&Value::from(4), &Value::from(2)));
}

// Issue 22: a trace that proves nothing was lost, added, moved or changed on its way to the
// file, and says so; damage refused with its line (exit 65), or read anyway as "nothing
// verified" (exit 2).

use ploop_user::verify::{
    synth,
    tracefile::{Reader, TraceLine, Writer},
};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ploop-golden-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// `from` as the current writer writes it: every record numbered and checksummed. The end
/// record counts the events written (the edited golden traces left some counts as recorded).
fn rewrite(from: &Path, to: &Path, mut edit: impl FnMut(&mut TraceLine)) {
    let mut r = Reader::open(from).unwrap();
    let mut w = Writer::create(to).unwrap();
    let mut header = TraceLine::Header(Box::new(r.header.clone()));
    edit(&mut header);
    w.line(&header).unwrap();
    let mut events = 0;
    while let Some(rec) = r.next_record().unwrap() {
        let mut rec = rec.clone();
        edit(&mut rec);
        events += u64::from(matches!(rec, TraceLine::Event(_)));
        w.line(&rec).unwrap();
    }
    let mut end = r.end().unwrap().clone();
    end.events = events;
    let mut end = TraceLine::End(end);
    edit(&mut end);
    w.line(&end).unwrap();
    w.finish().unwrap();
}

/// Every golden trace, written again by the current writer, replays to its reviewed
/// verdicts, and the replay calls it intact.
#[test]
fn golden_traces_rewritten_with_integrity_fields_keep_their_verdicts() {
    let dir = scratch("rewritten");
    let mut failures = Vec::new();
    let mut n = 0;
    for entry in fs::read_dir(traces_dir()).unwrap() {
        let trace = entry.unwrap().path();
        if trace.extension().is_none_or(|x| x != "jsonl") {
            continue;
        }
        let name = trace.file_stem().unwrap().to_string_lossy().into_owned();
        let new = dir.join(format!("{name}.jsonl"));
        rewrite(&trace, &new, |_| {});
        assert_eq!(trace_status(&new), "intact");
        let got = replay(&new, &dir.join(&name));
        let want: Value = serde_json::from_str(
            &fs::read_to_string(trace.with_extension("expected.json")).unwrap(),
        )
        .unwrap();
        if let Some(d) = first_difference("", &want, &got) {
            failures.push(format!("{name}: {d}"));
        }
        n += 1;
    }
    assert!(n >= 40, "{n}");
    let _ = fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "verdicts moved:\n{}", failures.join("\n"));
}

fn report(trace: &Path, out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ploop-verify"))
        .arg("report")
        .arg(trace)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn lines_of(p: &Path) -> Vec<String> {
    fs::read_to_string(p).unwrap().lines().map(String::from).collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    fs::write(p, lines.join("\n") + "\n").unwrap();
}

/// The damaged inputs of issue 22, each with its exit status and message; nothing written
/// for a refused trace.
#[test]
fn damaged_traces_get_the_documented_exit_and_message() {
    let dir = scratch("damaged");
    let base = dir.join("base.jsonl");
    rewrite(&traces_dir().join("6.1-oracle-late-s2-auto.jsonl"), &base, |_| {});
    let lines = lines_of(&base);
    let event = |n: usize| lines[n].starts_with(r#"{"record":"event""#);
    // A plain event in the middle, and the one after it.
    let mid = (lines.len() / 2..).find(|&i| event(i) && event(i + 1)).unwrap();
    let mut cases: Vec<(&str, PathBuf, String)> = Vec::new();
    let mut case = |name: &'static str, lines: Vec<String>, want: String| {
        let p = dir.join(format!("{name}.jsonl"));
        write_lines(&p, &lines);
        cases.push((name, p, want));
    };
    let mut deleted = lines.clone();
    deleted.remove(mid);
    let (m, n) = (mid + 1, mid);
    case("deleted", deleted, format!(":{m}: record {m} where {n} was due: record {n} is missing"));
    let mut duplicated = lines.clone();
    duplicated.insert(mid + 1, lines[mid].clone());
    case(
        "duplicated",
        duplicated,
        format!(":{}: record {mid} where {m} was due: it came", mid + 2),
    );
    let mut swapped = lines.clone();
    swapped.swap(mid, mid + 1);
    case("swapped", swapped, format!(":{m}: record {m} where {n} was due"));
    let mut shifted = lines.clone();
    let ts = |l: &str| -> u64 {
        let v: Value = serde_json::from_str(l).unwrap();
        v["ts_ns"].as_u64().unwrap()
    };
    let t = ts(&lines[mid]);
    shifted[mid] = lines[mid].replacen(&t.to_string(), &(t + 11_000_000_000).to_string(), 1);
    case("shifted-in-place", shifted, format!(":{m}: its checksum is "));
    let mut duv = lines.clone();
    let with_dev = lines.iter().position(|l| l.contains(r#""dev":"#)).unwrap();
    duv[with_dev] = duv[with_dev].replacen(r#""dev":"#, r#""duv":"#, 1);
    case("duv", duv, format!(":{}: not a trace record: unknown field `duv`", with_dev + 1));
    // An old trace: the same key refused, without any integrity field to help.
    let mut old_duv = lines_of(&traces_dir().join("6.1-clean.jsonl"));
    let with_dev = old_duv.iter().position(|l| l.contains(r#""dev":"#)).unwrap();
    old_duv[with_dev] = old_duv[with_dev].replacen(r#""dev":"#, r#""duv":"#, 1);
    case("old-duv", old_duv, format!(":{}: not a trace record: unknown field `duv`", with_dev + 1));
    // Damage that keeps every checksum: what a writer (or the transport) got wrong.
    let written = |name: &str, edit: &mut dyn FnMut(&mut TraceLine)| {
        let p = dir.join(format!("{name}.jsonl"));
        rewrite(&base, &p, edit);
        p
    };
    let mut k = 0;
    let jump = written("jump", &mut |l| {
        k += 1;
        if let (true, TraceLine::Event(e)) = (k == mid + 1, l) {
            e.ts_ns += 11_000_000_000;
        }
    });
    cases.push(("jump", jump, format!(":{}: time goes back 1", mid + 2)));
    for (name, flag, value) in [
        ("hang-after-0", "--hang-after", 0.0),
        ("hang-after-minus-1", "--hang-after", -1.0),
        ("max-freeze-ms-0", "--max-freeze-ms", 0.0),
        ("max-freeze-ms-minus-1", "--max-freeze-ms", -1.0),
    ] {
        let p = written(name, &mut |l| {
            if let TraceLine::Header(h) = l {
                let policy = h.policy.as_mut().unwrap();
                match flag {
                    "--hang-after" => policy.hang_after = value,
                    _ => policy.max_freeze_ms = value,
                }
            }
        });
        // The command line's own message for the same value.
        let (code, cli) = report(&base, &dir.join("cli"), &[&format!("{flag}={value}")]);
        assert_eq!(code, Some(64), "{cli}");
        let cli = cli.lines().next().unwrap().strip_prefix("error: ").unwrap().to_string();
        cases.push((name, p, format!(":1: the header's limits: {cli}")));
    }
    for (name, len) in [("comm-17", 17), ("comm-1mib", 1 << 20)] {
        let p = written(name, &mut |l| {
            if let TraceLine::Event(e) = l {
                e.comm = "c".repeat(len).into();
            }
        });
        cases.push((name, p, format!(":3: not a trace record: a comm of {len} bytes")));
    }
    let orphan = written("orphan", &mut |l| {
        if let TraceLine::Oracle(f) = l {
            f.seq += 1000;
        }
    });
    cases.push(("orphan", orphan, "an oracle finding on snapshot #100".into()));
    for (name, trace, want) in &cases {
        let out = dir.join(format!("{name}-report"));
        let (code, err) = report(trace, &out, &[]);
        assert_eq!(code, Some(65), "{name}: {err}");
        assert!(err.contains(want.as_str()), "{name}: want {want:?} in:\n{err}");
        assert!(err.contains("trace refused, no report written"), "{name}: {err}");
        assert!(!out.exists(), "{name}: a report written for a refused trace");
    }
    // Read anyway: the reports say so, and nothing is verified.
    let deleted = &cases[0].1;
    let out = dir.join("deleted-anyway");
    let (code, err) = report(deleted, &out, &["--accept-damaged"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("damaged trace read anyway: 2 integrity problems ("), "{err}");
    // Said once on the console, with what it costs the verdicts.
    assert_eq!(err.matches("damaged trace read anyway").count(), 1, "{err}");
    assert!(err.contains("): the verdicts are not trusted"), "{err}");
    assert!(err.contains("the end record counts 42 events, the trace holds 41"), "{err}");
    let s: Value =
        serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!((&s["verdict"], &s["exit_code"]), (&"nothing-verified".into(), &2.into()));
    assert_eq!(s["trace"]["status"], "damaged");
    assert_eq!(s["trace"]["problems"], 2);
    assert!(s["reason"].as_str().unwrap().contains("the verdicts are not trusted"), "{s}");
    // Each damage kind read anyway: never exit 0.
    for (name, trace, _) in &cases {
        let (code, err) = report(trace, &dir.join(format!("{name}-anyway")), &["--accept-damaged"]);
        assert!(matches!(code, Some(2 | 65)), "{name}: {code:?} {err}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// The trace `testkit synth-trace` writes through the current writer, kept as a golden trace
/// (`tests/traces/synth-integrity.jsonl`): the writer's format cannot change unnoticed.
#[test]
fn the_committed_integrity_trace_is_what_the_writer_writes() {
    let dir = scratch("synth");
    let p = dir.join("synth.jsonl");
    synth::write(&p, 6, 3, true).unwrap();
    let committed = fs::read_to_string(traces_dir().join("synth-integrity.jsonl")).unwrap();
    let fresh = fs::read_to_string(&p).unwrap();
    assert!(
        committed == fresh,
        "the writer's format moved: regenerate with `ploop-verify testkit synth-trace --calls 6 --wrong-freeze-every 3 --oracle` and say why"
    );
    let _ = fs::remove_dir_all(&dir);
}

mod mutated {
    use proptest::prelude::*;

    use super::*;

    /// The traces mutated, each with its lines and its judgement: synthetic calls with
    /// findings, and a live run written again. Made once for every case.
    fn bases() -> &'static [(Vec<String>, Value)] {
        static BASES: std::sync::OnceLock<Vec<(Vec<String>, Value)>> = std::sync::OnceLock::new();
        BASES.get_or_init(|| {
            let dir = scratch("prop-bases");
            let synth_trace = dir.join("synth.jsonl");
            synth::write(&synth_trace, 4, 3, true).unwrap();
            let live = dir.join("live.jsonl");
            rewrite(&traces_dir().join("6.1-oracle-late-s2-auto.jsonl"), &live, |_| {});
            let bases = [synth_trace, live]
                .into_iter()
                .map(|t| (lines_of(&t), super::replay(&t, &t.with_extension("report"))))
                .collect();
            let _ = fs::remove_dir_all(&dir);
            bases
        })
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Drop(usize),
        Duplicate(usize),
        Swap(usize, usize),
        /// An event's time moved by this many ns, in place.
        Shift(usize, i64),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            any::<usize>().prop_map(Mutation::Drop),
            any::<usize>().prop_map(Mutation::Duplicate),
            (any::<usize>(), 1..8usize).prop_map(|(i, d)| Mutation::Swap(i, d)),
            (any::<usize>(), prop_oneof![-20_000_000_000..-1i64, 1..20_000_000_000i64])
                .prop_map(|(i, d)| Mutation::Shift(i, d)),
        ]
    }

    fn apply(lines: &[String], m: &Mutation) -> Vec<String> {
        let mut out = lines.to_vec();
        let n = lines.len();
        match *m {
            Mutation::Drop(i) => drop(out.remove(i % n)),
            Mutation::Duplicate(i) => out.insert(i % n, lines[i % n].clone()),
            Mutation::Swap(i, d) => out.swap(i % n, (i + d) % n),
            Mutation::Shift(i, d) => {
                let events: Vec<usize> =
                    (0..n).filter(|&k| lines[k].starts_with(r#"{"record":"event""#)).collect();
                let k = events[i % events.len()];
                let at = lines[k].find(r#""ts_ns":"#).unwrap() + 8;
                let len = lines[k][at..].find(',').unwrap();
                let ts: u64 = lines[k][at..at + len].parse().unwrap();
                let moved = ts.saturating_add_signed(d).to_string();
                out[k] = format!("{}{moved}{}", &lines[k][..at], &lines[k][at + len..]);
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A trace with integrity fields, dropped, duplicated, swapped or shifted: refused, or
        /// judged exactly as before (a swap of a line with itself); read anyway, never clean.
        #[test]
        fn a_mutated_trace_is_refused_or_judged_as_the_original(
            which in 0..2usize,
            m in mutation(),
        ) {
            let dir = scratch("prop");
            let (lines, judged) = &bases()[which];
            let mutated = apply(lines, &m);
            let p = dir.join("mutated.jsonl");
            write_lines(&p, &mutated);
            let out = dir.join("mutated-report");
            let (code, err) = report(&p, &out, &[]);
            if mutated == *lines {
                prop_assert_eq!(&super::replay(&p, &dir.join("again")), judged);
            } else {
                prop_assert_eq!(code, Some(65), "{:?}: {}", m, err);
                prop_assert!(!out.exists());
                let (code, err) = report(&p, &dir.join("anyway"), &["--accept-damaged"]);
                prop_assert!(matches!(code, Some(2 | 65)), "{:?}: {:?} {}", m, code, err);
            }
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
