//! Live: `ploop-verify run` in a 6.1 guest over the ploop model driver. Correct
//! configurations are clean over hundreds of snapshots; each known bug of the model trips its
//! invariant and only the ones it really breaks; the unpatched kernel is a property, not a
//! violation; and every recorded trace replays to the same verdicts.

use std::{collections::BTreeSet, fs, path::Path, process::Command};

use ploop_tests::{
    Kind, ModelBuild, Results, replay_matches, run_model_build_script, summary, violated,
};
use serde_json::Value;

/// The exit status of `ploop-verify run --out NAME`, as checker.sh recorded it.
fn run_status(results: &Results, name: &str) -> i32 {
    match results.get(name) {
        Some(Kind::Exit { status, out: Some(out) }) if out == name => *status,
        r => panic!("{name}: no exit status of `ploop-verify run`, got {r:?}"),
    }
}

fn tally(s: &Value, id: &str) -> (u64, u64) {
    let i = s["invariants"].as_array().unwrap().iter().find(|i| i["id"] == id).unwrap();
    (i["pass"].as_u64().unwrap(), i["fail"].as_u64().unwrap())
}

/// What each known model bug must trip, on both builds of the model. The switch is seen on
/// the inlined build too: vz7 calls it through the top delta's ops table
/// (`*_complete_snapshot`), so it keeps a symbol whatever the compiler inlines, and
/// `thaw_early` (a thaw before that switch) trips O2 there as on the probed build. Before the
/// switch probe the inlined build caught nothing of it.
const BUG_TABLE: [(&str, &[&str]); 5] = [
    ("leak_freeze", &["O1"]),
    ("thaw_other", &["O1"]),
    ("ignore_sync_fd", &["S1", "S2"]),
    // A thaw before the switch also leaves the filesystem unfrozen during it: S2.
    ("thaw_early", &["O2", "S2"]),
    ("einval", &["E1"]),
];

/// The oracle's trace records (X1's findings) of `dir/trace.jsonl`.
fn findings(dir: &Path) -> Vec<Value> {
    let trace = fs::read_to_string(dir.join("trace.jsonl")).expect("trace.jsonl");
    trace
        .lines()
        .filter(|l| l.starts_with(r#"{"record":"oracle","#))
        .map(|l| serde_json::from_str(l).expect("an oracle record is JSON"))
        .collect()
}

/// The independent judge: dumpe2fs on each old snapshot `CASE-rebuilt-1..=n` rebuilt in the
/// guest from its lower deltas, against the oracle's finding on the call whose new top it was.
/// Returns (agreeing, judged by both).
fn against_dumpe2fs(
    share: &Path,
    results: &Results,
    cases: &[&str],
    n: usize,
    failures: &mut Vec<String>,
) -> (usize, usize) {
    let (mut agree, mut judged) = (0, 0);
    for case in cases {
        let found = findings(&share.join(case));
        for i in 1..=n {
            let name = format!("{case}-rebuilt-{i}");
            let Some(Kind::Rebuilt { top, needs_recovery, features }) = results.get(&name) else {
                failures.push(format!("{name}: not rebuilt: {:?}", results.get(&name)));
                continue;
            };
            let Some(f) = found.iter().find(|f| f["top"] == top.as_str()) else {
                failures.push(format!("{name}: no oracle finding for the call with top {top}"));
                continue;
            };
            judged += 1;
            let oracle = f["verdict"] == "needs-recovery";
            if oracle == *needs_recovery && f["verdict"] != "n/a" {
                agree += 1;
            } else {
                failures.push(format!(
                    "{name}: the oracle says {} ({}) on {} at {}, dumpe2fs lists features \
                     [{features}]",
                    f["verdict"], f["why"], f["deltas"], f["at"]
                ));
            }
        }
    }
    (agree, judged)
}

/// Every successful PLOOP_FLAG_FS_SYNC call of `case` (all its calls: the workloads make no
/// other) has exactly one finding, and X1 tallies them all.
/// A case that must exit 0 with each of `ids` passing on `n` calls and failing on none.
fn expect_passing(
    share: &Path,
    case: &str,
    rc: i32,
    ids: &[&str],
    n: u64,
    failures: &mut Vec<String>,
) {
    let s = summary(&share.join(case));
    let got: Vec<(&str, (u64, u64))> = ids.iter().map(|id| (*id, tally(&s, id))).collect();
    if rc != 0 || got.iter().any(|(_, t)| *t != (n, 0)) {
        failures
            .push(format!("{case}: exit {rc}, (pass, fail) {got:?}, {:?}", s["violation_list"]));
    }
}

fn a_finding_per_call(share: &Path, case: &str, failures: &mut Vec<String>) -> Vec<Value> {
    let dir = share.join(case);
    let s = summary(&dir);
    let found = findings(&dir);
    let calls = s["snapshots"].as_u64().unwrap_or(0) as usize;
    let seqs: BTreeSet<u64> = found.iter().filter_map(|f| f["seq"].as_u64()).collect();
    if calls == 0 || found.len() != calls || seqs.len() != calls {
        failures.push(format!(
            "{case}: {calls} snapshot calls, {} findings on {} calls",
            found.len(),
            seqs.len()
        ));
    }
    let x1 = s["invariants"].as_array().unwrap().iter().find(|i| i["id"] == "X1").unwrap();
    let tallied = ["pass", "fail", "not_applicable"].map(|k| x1[k].as_u64().unwrap() as usize);
    if tallied.iter().sum::<usize>() != calls {
        failures.push(format!("{case}: X1 tallies {tallied:?} over {calls} calls"));
    }
    found
}

/// checker.sh `oracle_p1_cases`: X1 beyond the commit's stack, on a container's layout (a GPT,
/// ploop1 tops over a raw base with 1 MiB clusters), each case with the sync fd then the
/// autodetection: ext4 on ploop0p1 (clean both ways), dm-crypt on it with the key (clean both
/// ways) and without (n/a with the reason, never judged), dm-linear on dm-crypt on it (the
/// autodetection misses ext4: X1 fails with S2). dumpe2fs on each rebuilt old snapshot agrees.
fn oracle_p1_verdicts(series: &str, out: &xtask::vm::Output, results: &Results) -> Vec<String> {
    let share = &out.share;
    let mut failures = Vec::new();
    let keyed = ["x1-p1", "x1-p1-crypt", "x1-p1-linear"];
    for case in keyed.iter().chain(&["x1-p1-nokey"]) {
        let found = a_finding_per_call(share, case, &mut failures);
        if *case == "x1-p1-nokey" {
            for f in &found {
                let why = f["why"].as_str().unwrap_or("");
                if f["verdict"] != "n/a" || !why.contains("no --oracle-key") {
                    failures.push(format!("{case}: a finding without the key: {f}"));
                }
            }
        } else if let Some(f) = found.iter().find(|f| f["verdict"] == "n/a") {
            failures.push(format!("{case}: the oracle could not judge: {f}"));
        }
    }
    let expect = |case: &str, x1: (u64, u64), violated: &[&str], rc: i32, failures: &mut Vec<_>| {
        let s = summary(&share.join(case));
        let want: BTreeSet<String> = violated.iter().map(|s| s.to_string()).collect();
        let status = match results.get(case) {
            Some(Kind::Exit { status, .. }) => *status,
            _ => -1,
        };
        if tally(&s, "X1") != x1 || self::violated(&s) != want || status != rc {
            failures.push(format!(
                "{case}: exit {status}, violated {:?}, X1 {:?}, want exit {rc}, {want:?}, {x1:?}",
                self::violated(&s),
                tally(&s, "X1")
            ));
        }
    };
    expect("x1-p1", (2, 0), &[], 0, &mut failures);
    expect("x1-p1-crypt", (2, 0), &[], 0, &mut failures);
    expect("x1-p1-nokey", (0, 0), &[], 0, &mut failures);
    expect("x1-p1-linear", (1, 1), &["S2", "X1"], 1, &mut failures);
    // The reason in the summary, and in the per-call report on every call: n/a is said, never
    // silent.
    let nokey = summary(&share.join("x1-p1-nokey"));
    let u = &nokey["oracle_unjudged"];
    if u["calls"] != 2 || !u["why"].as_str().unwrap_or("").contains("no --oracle-key") {
        failures.push(format!("x1-p1-nokey: summary.json oracle_unjudged {u}"));
    }
    let md = fs::read_to_string(share.join("x1-p1-nokey/summary.md")).unwrap_or_default();
    if !md.contains("X1 n/a on 2 snapshot calls the oracle was to judge: ") {
        failures.push("x1-p1-nokey: summary.md does not say why X1 is n/a".into());
    }
    let ktap = fs::read_to_string(share.join("x1-p1-nokey/results.ktap")).unwrap_or_default();
    let said = ktap.lines().filter(|l| l.contains("X1 # SKIP the oracle could not judge")).count();
    if said != 2 || !ktap.contains("no --oracle-key") {
        failures.push(format!("x1-p1-nokey: results.ktap gives X1's reason on {said} of 2 calls"));
    }
    let (agree, judged) = against_dumpe2fs(share, results, &keyed, 2, &mut failures);
    eprintln!("X1 vs dumpe2fs {series}, beyond the commit's stack: {agree}/{judged} agree");
    if judged != 6 {
        failures.push(format!("only {judged} of 6 old snapshots judged by both"));
    }
    let bin = xtask::build::ploop_verify_static().expect("static ploop-verify");
    for case in keyed.iter().chain(&["x1-p1-nokey"]) {
        if let Err(e) = replay_matches(&bin, &share.join(case)) {
            failures.push(format!("replay {case}: {e}"));
        }
    }
    failures
}

/// checker.sh `oracle_cases`: ext4 on dm-linear on dm-crypt on ploop, three snapshots with the
/// sync fd (S2 and X1 pass) and three with the autodetection (S2 and X1 fail together), each
/// old snapshot rebuilt in the guest from its lower deltas and judged by dumpe2fs, which must
/// agree with the oracle on every one. Returns what failed.
fn oracle_verdicts(series: &str, out: &xtask::vm::Output, results: &Results) -> Vec<String> {
    let share = &out.share;
    let mut failures = Vec::new();
    let rc = |name: &str| run_status(results, name);
    let both: BTreeSet<String> = ["S2", "X1"].iter().map(|s| s.to_string()).collect();
    let auto = summary(&share.join("s2-auto"));
    if violated(&auto) != both || rc("s2-auto") != 1 || tally(&auto, "X1") != (0, 3) {
        failures.push(format!(
            "s2-auto: exit {}, violated {:?}, X1 {:?}",
            rc("s2-auto"),
            violated(&auto),
            tally(&auto, "X1")
        ));
    }
    let md = fs::read_to_string(share.join("s2-auto/summary.md")).unwrap_or_default();
    if !md.contains("S2 failed, and the snapshot it left needs a journal replay (X1)") {
        failures.push("s2-auto: summary.md does not tie X1 to S2".into());
    }
    expect_passing(share, "s2-sync", rc("s2-sync"), &["S2", "X1"], 3, &mut failures);
    for case in ["s2-auto", "s2-sync"] {
        a_finding_per_call(share, case, &mut failures);
    }
    let (agree, judged) =
        against_dumpe2fs(share, results, &["s2-auto", "s2-sync"], 3, &mut failures);
    eprintln!("X1 vs dumpe2fs {series}: {agree}/{judged} snapshots agree");
    if judged != 6 {
        failures.push(format!("only {judged} of 6 old snapshots judged by both"));
    }
    match out.stdout.lines().find(|l| l.contains("ploop-verify: oracle: ")) {
        Some(l) => eprintln!("{series}: {l}"),
        None => failures.push("the oracle's cost per snapshot was not printed".into()),
    }
    let bin = xtask::build::ploop_verify_static().expect("static ploop-verify");
    for case in ["s2-auto", "s2-sync"] {
        if let Err(e) = replay_matches(&bin, &share.join(case)) {
            failures.push(format!("replay {case}: {e}"));
        }
    }
    failures
}

/// X1 live, alone (checker.sh ONLY=oracle): the oracle on the commit's stack and on a
/// container's layout (partition, ploop1, with and without the key), and its agreement with
/// dumpe2fs on the same old snapshots rebuilt in the guest.
fn oracle_on_the_commits_stack(series: &str) {
    let out = run_model_build_script(series, ModelBuild::Probed, "checker.sh", "ONLY=oracle")
        .expect("guest run");
    out.expect_success().expect("guest script");
    assert!(out.kernel_problems().is_empty(), "kernel log: {:?}", out.kernel_problems());
    let results = Results::read(&out.share).expect("results.jsonl");
    assert!(results.finished(), "checker.sh did not finish: {:?}", results.0);
    let mut failures: Vec<String> =
        results.checks().filter(|c| !c.1).map(|(n, _, why)| format!("{n}: {why:?}")).collect();
    failures.extend(oracle_verdicts(series, &out, &results));
    failures.extend(oracle_p1_verdicts(series, &out, &results));
    for l in out.stdout.lines().filter(|l| l.contains("ploop-verify: oracle: ")) {
        eprintln!("{series}: {l}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn oracle_on_the_commits_stack_6_1() {
    oracle_on_the_commits_stack("6.1");
}

#[test]
fn oracle_on_the_commits_stack_6_12() {
    oracle_on_the_commits_stack("6.12");
}

/// `clean_snapshots`: how many snapshot calls the correct configurations must be clean over.
fn checker_verdicts(series: &str, build: ModelBuild, clean_snapshots: u64) {
    let out = run_model_build_script(
        series,
        build,
        "checker.sh",
        &format!("CLEAN_SNAPSHOTS={clean_snapshots}"),
    )
    .expect("guest run");
    out.expect_success().expect("guest script");
    assert!(out.kernel_problems().is_empty(), "kernel log: {:?}", out.kernel_problems());
    let share = &out.share;
    let results = Results::read(share).expect("results.jsonl");
    assert!(results.finished(), "checker.sh did not finish: {:?}", results.0);
    let rc = |name: &str| run_status(&results, name);
    let mut failures = Vec::new();

    // Correct configurations: clean, every invariant exercised.
    let clean = summary(&share.join("clean"));
    if rc("clean") != 0 || clean["violations"] != 0 {
        failures.push(format!(
            "clean run: exit {}, violations {:?}",
            rc("clean"),
            clean["violation_list"]
        ));
    }
    // Progress in a log (the guest's ttyS1, TERM=dumb): whole lines, and the summary on a
    // line of its own, never glued to a progress line.
    let progress = out.stdout.lines().filter(|l| l.starts_with("ploop-verify: snapshots ")).count();
    if progress == 0 {
        failures.push("clean run: no progress line in the log".into());
    }
    let ours =
        |l: &&str| l.contains("ploop-verify: snapshots ") || l.contains("ploop-verify: clean:");
    for l in out.stdout.lines().filter(ours) {
        if !l.starts_with("ploop-verify: ") || l.matches("ploop-verify: ").count() > 1 {
            failures.push(format!("a message glued to other output: {l:?}"));
        }
    }
    let n = clean["snapshots"].as_u64().unwrap();
    assert!(n >= clean_snapshots, "only {n} snapshot calls judged");
    assert_eq!(clean["kernel_patch"]["state"], "patched");
    assert_eq!(clean["lost"], 0);
    let share_of = |f: f64| (clean_snapshots as f64 * f) as u64;
    // E3 needs ploop_snapshot's return: where it is inlined E3 is n/a on every call, with the
    // reason, never passed or failed. O2 has the format's complete_snapshot on both builds.
    let inlined = build == ModelBuild::Inlined;
    for (id, min) in [
        ("O1", share_of(0.95)),
        ("O2", share_of(0.7)),
        ("S1", share_of(0.5)),
        ("S2", share_of(0.7)),
        ("S3", 2),
        ("E1", 3),
        ("E2", 2),
        ("E3", if inlined { 0 } else { share_of(0.95) }),
    ] {
        let (pass, _) = tally(&clean, id);
        if pass < min {
            failures.push(format!("clean run: {id} passed {pass} times, want at least {min}"));
        }
    }
    if inlined {
        if tally(&clean, "E3") != (0, 0) {
            failures.push(format!(
                "clean run: E3 judged {:?} without ploop_snapshot's return",
                tally(&clean, "E3")
            ));
        }
        // Attached and silent is not absent: the report must tell the two apart.
        let state = |probe: &str| {
            clean["probes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["probe"] == probe)
                .map(|p| p["state"].clone())
        };
        for (probe, want) in [
            ("ploop_snapshot", "absent"),
            ("find_and_freeze_bdev", "absent"),
            ("get_bdev_from_fd", "absent"),
            ("ploop_quiesce", "never-fired"),
            ("ploop_relax", "never-fired"),
            ("complete_snapshot", "fired"),
            ("sys_enter_ioctl", "fired"),
        ] {
            if state(probe) != Some(Value::from(want)) {
                failures
                    .push(format!("clean run: probe {probe} is {:?}, want {want}", state(probe)));
            }
        }
    }

    // C1 at the ioctl dispatch: the second snapshot meets -EBUSY before ploop_snapshot runs.
    let c1 = summary(&share.join("ebusy"));
    if rc("ebusy") != 0 || tally(&c1, "C1").0 < 1 || c1["violations"] != 0 {
        failures.push(format!(
            "ebusy: exit {}, C1 {:?}, {:?}",
            rc("ebusy"),
            tally(&c1, "C1"),
            c1["violation_list"]
        ));
    }
    assert!(
        clean["outside_snapshot_events"].as_u64().unwrap() >= 4,
        "PLOOP_IOC_FREEZE/THAW seen outside"
    );

    // The stack of the commit message: autodetection misses the filesystem, the sync fd not;
    // and the oracle sees what that did to the old snapshot (X1).
    failures.extend(oracle_verdicts(series, &out, &results));

    // T2 live: a call holding the filesystem frozen past --hang-after is reported while it
    // hangs, with its thread's kernel stack, promptly (the tick is 10 ms).
    let hung = summary(&share.join("hung-held"));
    if violated(&hung) != BTreeSet::from(["T2".to_string()]) || rc("hung-held") != 1 {
        failures.push(format!(
            "hung-held: exit {}, violated {:?}",
            rc("hung-held"),
            violated(&hung)
        ));
    }
    match out.stdout.lines().find(|l| l.contains("VIOLATION T2")) {
        None => failures.push("hung-held: T2 was not printed while the call hung".into()),
        Some(l) => {
            let after = l
                .rsplit_once("[found ")
                .and_then(|(_, r)| r.split_once(" ms"))
                .and_then(|(ms, _)| ms.parse::<f64>().ok());
            eprintln!("T2 detection delay {series} {}: {after:?} ms", build.name());
            if !after.is_some_and(|ms| ms < 100.0) {
                failures.push(format!("hung-held: T2 noticed late or unmeasured: {l}"));
            }
        }
    }
    if !out.stdout.contains("ploop-verify: kernel stack of tid") {
        failures.push("hung-held: no kernel stack printed for the hung thread".into());
    }

    // S4: the seed reads libploop's device-node fd through devtmpfs and refuses it with
    // -ENODEV while ext4 is mounted on that very device: a violation, and no other.
    let s4 = summary(&share.join("s4-seed"));
    if violated(&s4) != BTreeSet::from(["S4".to_string()]) || rc("s4-seed") != 1 {
        failures.push(format!("s4-seed: exit {}, {:?}", rc("s4-seed"), s4["violation_list"]));
    }

    // libploop's request on a partitioned image, in the three kernels it meets.
    let lp = summary(&share.join("lp-seed"));
    if violated(&lp) != BTreeSet::from(["S4".to_string()]) || rc("lp-seed") != 1 {
        failures.push(format!("lp-seed: exit {}, {:?}", rc("lp-seed"), lp["violation_list"]));
    }
    expect_passing(share, "lp-bdev", rc("lp-bdev"), &["S4", "S2"], 1, &mut failures);
    // S4 where /dev is on a disk filesystem: the seed freezes the filesystem holding the node
    // (ext4 on ploop1) and ploop0p1's stays unfrozen; 0002's reading freezes ploop0p1.
    let dd = summary(&share.join("s4-devdisk-seed"));
    let s4_why = dd["violation_list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["id"] == "S4"))
        .and_then(|v| v["why"].as_str())
        .unwrap_or_default()
        .to_string();
    if violated(&dd) != BTreeSet::from(["S2".to_string(), "S4".to_string()])
        || rc("s4-devdisk-seed") != 1
        || !s4_why.contains("ploop1 (")
    {
        failures.push(format!(
            "s4-devdisk-seed: exit {}, {:?}",
            rc("s4-devdisk-seed"),
            dd["violation_list"]
        ));
    }
    let bdev = "s4-devdisk-bdev";
    expect_passing(share, bdev, rc(bdev), &["S4", "S2"], 1, &mut failures);
    let lp = summary(&share.join("lp-unpatched"));
    if rc("lp-unpatched") != 0
        || lp["fallbacks"]["count"] != 1
        || lp["kernel_patch"]["state"] != "unpatched"
    {
        failures.push(format!(
            "lp-unpatched: exit {}, fallbacks {}, kernel {}",
            rc("lp-unpatched"),
            lp["fallbacks"],
            lp["kernel_patch"]
        ));
    }

    // Each known bug: its own invariant, plus only what it really breaks besides (a thaw before
    // the switch, or the wrong device frozen, also leaves the filesystem unfrozen: S2).
    for (bug, want) in BUG_TABLE {
        let name = format!("bug-{bug}");
        let got = violated(&summary(&share.join(&name)));
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let want_rc = if want.is_empty() { 0 } else { 1 };
        eprintln!("table {series} {}: {bug} -> {got:?}", build.name());
        if got != want || rc(&name) != want_rc {
            failures.push(format!("{name}: exit {}, violated {got:?}, want {want:?}", rc(&name)));
        }
    }

    // Unpatched: a property of the kernel, no violation.
    let u = summary(&share.join("unpatched"));
    if rc("unpatched") != 0 || u["kernel_patch"]["state"] != "unpatched" {
        failures.push(format!(
            "unpatched: exit {}, {} {:?}",
            rc("unpatched"),
            u["kernel_patch"],
            u["violation_list"]
        ));
    }

    // Every trace replays to the same verdicts, on the host.
    let bin = xtask::build::ploop_verify_static().expect("static ploop-verify");
    let runs = ["clean", "bug-leak_freeze", "bug-thaw_other", "bug-ignore_sync_fd"];
    for name in runs.iter().copied().chain([
        "bug-thaw_early",
        "bug-einval",
        "unpatched",
        "ebusy",
        "hung-held",
    ]) {
        if let Err(e) = replay_matches(&bin, &share.join(name)) {
            failures.push(format!("replay {name}: {e}"));
        }
    }
    // A damaged trace: a clear error naming the line, exit 65 (refused), no report written.
    let trace = fs::read_to_string(share.join("clean/trace.jsonl")).unwrap();
    let cut: Vec<&str> = trace.lines().collect();
    let broken = share.join("broken.jsonl");
    fs::write(
        &broken,
        format!("{}\n{}\n", cut[..cut.len() / 2].join("\n"), &cut[cut.len() / 2][..10]),
    )
    .unwrap();
    let out_dir = share.join("broken-report");
    let o =
        Command::new(&bin).arg("report").arg(&broken).arg("--out").arg(&out_dir).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let line = cut.len() / 2 + 1;
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(err.contains(&format!("broken.jsonl:{line}: not a trace record")), "{err}");
    assert!(!out_dir.exists(), "nothing written for a broken trace");

    for f in ["junit.xml", "results.ktap", "summary.md", "timeline.svg", "trace.jsonl"] {
        assert!(share.join("clean").join(f).is_file(), "clean/{f} written");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn checker_verdicts_on_the_model_driver_6_1() {
    checker_verdicts("6.1", ModelBuild::Probed, 210);
}

/// 6.12: bdev_freeze/bdev_thaw and other struct offsets.
#[test]
fn checker_verdicts_on_the_model_driver_6_12() {
    checker_verdicts("6.12", ModelBuild::Probed, 210);
}

/// A kernel whose compiler inlined the snapshot's helpers: judged from the ioctl anchor,
/// freeze and thaw alone, with no verdict from a missing event.
#[test]
fn checker_verdicts_on_the_inlined_model_driver_6_1() {
    checker_verdicts("6.1", ModelBuild::Inlined, 210);
}

#[test]
fn checker_verdicts_on_the_inlined_model_driver_6_12() {
    checker_verdicts("6.12", ModelBuild::Inlined, 210);
}

/// T2 from its realistic cause (CONTRACT.md, as deployed): the sync fd names the filesystem
/// that holds the image's delta files. The switch waits for writes stuck on that frozen
/// filesystem; the tool must report the hang while it lasts, with the thread's kernel stack;
/// the emergency thaw (sysrq j) releases it and leaves nothing frozen.
fn hung_snapshot(series: &str) {
    let out = run_model_build_script(series, ModelBuild::Probed, "hang.sh", "").expect("guest run");
    out.expect_success().expect("guest script");
    let results = Results::read(&out.share).expect("results.jsonl");
    assert!(results.finished(), "hang.sh did not finish: {:?}", results.0);
    for (name, ok, why) in results.checks() {
        assert!(ok, "{name}: {why:?}");
    }
    let rc = match results.get("hang") {
        Some(Kind::Exit { status, .. }) => *status,
        r => panic!("no exit status of `ploop-verify run`: {r:?}"),
    };
    let s = summary(&out.share.join("hang"));
    let got = violated(&s);
    assert_eq!(rc, 1, "{:?}", s["violation_list"]);
    // T2 for the hang; S2 because ploop0's own filesystem was not the one frozen.
    assert_eq!(
        got,
        BTreeSet::from(["S2".to_string(), "T2".to_string()]),
        "{:?}",
        s["violation_list"]
    );
    // The frozen filesystem is outside ploop0's stack, and still named: ploop1 (a dynamic
    // major; its minors start at 16, 16 per device as vz7).
    let t2 = s["violation_list"].as_array().unwrap().iter().find(|v| v["id"] == "T2").unwrap();
    let why = t2["why"].as_str().unwrap();
    assert!(
        why.starts_with("ploop1 (") && why.contains(":16) has been frozen"),
        "T2 names the device outside the stack: {t2}"
    );
    // Reported while it hung: before the emergency thaw, not when the call returned.
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at = |p: &str| lines.iter().position(|l| l.contains(p));
    let (t2, sysrq) = (at("VIOLATION T2"), at("release: "));
    assert!(t2.is_some() && sysrq.is_some() && t2 < sysrq, "T2 at {t2:?}, sysrq at {sysrq:?}");
    let stack =
        at("kernel stack of tid").map(|i| lines[i..].iter().take(12).copied().collect::<Vec<_>>());
    eprintln!("hung thread's stack ({series}): {stack:#?}");
    assert!(
        stack.as_ref().is_some_and(|s| s.iter().any(|l| l.contains("ploop_quiesce"))),
        "the stack shows the switch waiting in ploop_quiesce"
    );
    let bin = xtask::build::ploop_verify_static().expect("static ploop-verify");
    replay_matches(&bin, &out.share.join("hang")).expect("replay");
}

#[test]
fn hung_snapshot_with_its_deltas_on_the_frozen_filesystem_6_1() {
    hung_snapshot("6.1");
}

#[test]
fn hung_snapshot_with_its_deltas_on_the_frozen_filesystem_6_12() {
    hung_snapshot("6.12");
}
