//! Live: Debian's real `ploop` client (1.15, the one-chunk request with PLOOP_FLAG_FS_SYNC)
//! drives the model driver through a container image's life under `ploop-verify run
//! --oracle` (tests/guest/client.sh), on ext4 on ploop0p1 as `ploop init` lays it out and on
//! the commit's stack over the device `ploop mount` attached. Every client command must
//! succeed, every snapshot the client says it took must be judged, the verdicts must be the
//! contract's (no false positive on ploop0p1; S2 and X1 failing on the commit's stack), and
//! X1's verdict on each old snapshot must agree with what the real read-only mount of that
//! snapshot does.

use std::{collections::BTreeSet, fs, path::Path};

use ploop_tests::{Kind, Results, replay_matches, run_client_script, summary, violated};
use serde_json::Value;

/// Snapshots per layout (client.sh `N`).
const N: usize = 3;

fn tally(s: &Value, id: &str) -> (u64, u64, u64) {
    let Some(i) = s["invariants"].as_array().and_then(|l| l.iter().find(|i| i["id"] == id)) else {
        return (0, 0, 0);
    };
    let n = |k: &str| i[k].as_u64().unwrap_or(0);
    (n("pass"), n("fail"), n("not_applicable"))
}

fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// What one layout's run must show: `violations` the ids failing on every snapshot call (and
/// no other), `rc` the run's exit status.
struct Expect {
    layout: &'static str,
    violations: &'static [&'static str],
    rc: i32,
}

/// Per-layout checks; returns (X1 and the mount agreeing, old snapshots judged by both).
fn layout(
    series: &str,
    share: &Path,
    r: &Results,
    e: &Expect,
    failures: &mut Vec<String>,
) -> (usize, usize) {
    let l = e.layout;
    let mut fail = |m: String| failures.push(format!("{series} {l}: {m}"));
    // Every command of the client succeeded; the snapshots it says it took.
    let mut took = 0;
    for line in r.0.iter().filter(|x| x.case.starts_with(&format!("{l}-"))) {
        // The read-only mount of an old snapshot may fail: the agreement with X1 below
        // judges it. Its clean-up must not.
        let ro = line.case.starts_with(&format!("{l}-ro-")) && !line.case.ends_with("-umount");
        if let Kind::Client { status, command, said } = &line.kind
            && !ro
        {
            if *status != 0 {
                fail(format!("`{command}` exited {status}: {said}"));
            } else if line.case.starts_with(&format!("{l}-snapshot-")) {
                if said.contains("successfully created") {
                    took += 1;
                } else {
                    fail(format!("`{command}` exited 0 saying {said:?}"));
                }
            }
        }
    }
    if took != N {
        fail(format!("the client says it took {took} snapshots of {N}"));
    }
    let rc = match r.get(l) {
        Some(Kind::Exit { status, .. }) => *status,
        k => {
            fail(format!("no exit status of `ploop-verify run`: {k:?}"));
            return (0, 0);
        }
    };
    let dir = share.join(l);
    let s = summary(&dir);
    let calls = s["snapshots"].as_u64().unwrap_or(0) as usize;
    eprintln!(
        "{series} {l}: client took {took} snapshots, run judged {calls} snapshot calls, exit {rc}, \
         violated {:?}, S2 {:?}, X1 {:?} (pass, fail, n/a)",
        violated(&s),
        tally(&s, "S2"),
        tally(&s, "X1")
    );
    if calls != took {
        fail(format!("{calls} snapshot calls judged, the client took {took}"));
    }
    let want: BTreeSet<String> = e.violations.iter().map(|v| v.to_string()).collect();
    if violated(&s) != want || rc != e.rc {
        fail(format!(
            "exit {rc}, violated {:?}, want exit {}, {want:?}",
            s["violation_list"], e.rc
        ));
    }
    for id in ["S2", "X1"] {
        let t = tally(&s, id);
        let expect = if want.contains(id) { (0, calls as u64, 0) } else { (calls as u64, 0, 0) };
        if t != expect {
            fail(format!("{id} (pass, fail, n/a) {t:?}, want {expect:?}"));
        }
    }
    // X1 against the real read-only mount, old snapshot by old snapshot: the finding of the
    // call that made snapshot U is the one whose new top is U's child's delta.
    let trace = fs::read_to_string(dir.join("trace.jsonl")).unwrap_or_default();
    let found: Vec<Value> = trace
        .lines()
        .filter(|t| t.starts_with(r#"{"record":"oracle","#))
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect();
    let shots: Vec<(&str, &str, &str)> = r
        .0
        .iter()
        .filter_map(|x| match &x.kind {
            Kind::Shot { uuid, parent, fname, .. } if x.case.starts_with(&format!("{l}-shot-")) => {
                Some((uuid.as_str(), parent.as_str(), fname.as_str()))
            }
            _ => None,
        })
        .collect();
    if shots.len() != N + 1 {
        fail(format!("snapshot-list listed {} images, want {}: {shots:?}", shots.len(), N + 1));
    }
    let (mut agree, mut judged) = (0, 0);
    for x in &r.0 {
        let Kind::RoMount { uuid, mounted, recovery_required } = &x.kind else { continue };
        if !x.case.starts_with(&format!("{l}-ro-")) {
            continue;
        }
        let Some(child) = shots.iter().find(|s| s.1 == uuid) else {
            fail(format!("old snapshot {uuid}: no child in snapshot-list"));
            continue;
        };
        let Some(f) =
            found.iter().find(|f| f["top"].as_str().map(file_name) == Some(file_name(child.2)))
        else {
            fail(format!(
                "old snapshot {uuid}: no oracle finding for the call with top {}",
                child.2
            ));
            continue;
        };
        judged += 1;
        let x1_failed = f["verdict"] == "needs-recovery";
        let refused = !mounted && *recovery_required;
        if f["verdict"] != "n/a" && x1_failed == refused && (x1_failed || *mounted) {
            agree += 1;
        } else {
            fail(format!(
                "old snapshot {uuid}: X1 {} ({}), read-only mount: mounted {mounted}, \
                 recovery required {recovery_required}",
                f["verdict"], f["why"]
            ));
        }
    }
    if judged != N {
        fail(format!("{judged} old snapshots judged by X1 and the mount, want {N}"));
    }
    // The trace replays to the same verdicts on the host.
    let bin = xtask::build::ploop_verify_static().expect("static ploop-verify");
    if s["exit_code"].as_i64() != Some(i64::from(rc)) {
        fail(format!("summary.json says exit {}, the run exited {rc}", s["exit_code"]));
    }
    if let Err(e) = replay_matches(&bin, &dir) {
        fail(format!("replay: {e}"));
    }
    (agree, judged)
}

fn client_life(series: &str) {
    let out = run_client_script(series, "client.sh", &format!("N={N}")).expect("guest run");
    out.expect_success().expect("guest script");
    let r = Results::read(&out.share).expect("results.jsonl");
    let mut failures: Vec<String> =
        r.checks().filter(|c| !c.1).map(|(n, _, why)| format!("{series} {n}: {why:?}")).collect();
    if !r.finished() {
        failures.push(format!("{series}: client.sh did not finish"));
    }
    if !out.kernel_problems().is_empty() {
        failures.push(format!("{series}: kernel log: {:?}", out.kernel_problems()));
    }
    let layouts = [
        // The autodetection's partition walk freezes ploop0p1, where ext4 is: all clean.
        Expect { layout: "p1", violations: &[], rc: 0 },
        // The commit's stack: the walk freezes dm-crypt and misses ext4 above dm-linear.
        Expect { layout: "linear", violations: &["S2", "X1"], rc: 1 },
    ];
    let (mut agree, mut judged) = (0, 0);
    for e in &layouts {
        let (a, j) = layout(series, &out.share, &r, e, &mut failures);
        agree += a;
        judged += j;
    }
    eprintln!(
        "{series}: X1 and the client's read-only mount agree on {agree} of {judged} old snapshots"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn real_client_life_6_1() {
    client_life("6.1");
}

#[test]
fn real_client_life_6_12() {
    client_life("6.12");
}

/// The README's main job, `cargo xtask demo`, shows what it says: the client's snapshots on
/// the commit's stack fail S2 and X1 and leave an old snapshot that ext4 will not mount
/// read-only; the sync fd's pass both and the old snapshot mounts (demo::run checks it).
#[test]
fn the_demo_shows_the_commits_symptom_6_1() {
    let out = std::env::temp_dir().join(format!("ploop-demo-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    xtask::demo::run("6.1", &out).expect("the demo");
    for case in ["real-client", "sync-fd"] {
        for f in ["summary.md", "junit.xml", "timeline.svg"] {
            assert!(out.join(case).join(f).is_file(), "{case}/{f} copied out");
        }
    }
    fs::remove_dir_all(&out).unwrap();
}
