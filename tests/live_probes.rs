//! Live: freeze/thaw probes in Debian guests (6.1: freeze_bdev/thaw_bdev; 6.12:
//! bdev_freeze/bdev_thaw), for every attach method and transport, with two real triggers.

use std::fs;

use ploop_common::Probe;
use ploop_tests::{KDev, Kind, Results, Trace, run_guest_script};
use ploop_user::verify::events::{Phase, TraceEvent};
use serde_json::Value;

const METHODS: [&str; 2] = ["kprobe", "fentry"];
const TRANSPORTS: [&str; 2] = ["ringbuf", "perf"];

/// Checks one trace: exactly one freeze and one thaw of `dev`, entry before return, freeze
/// returned 0 before thaw entered, nothing lost. Returns a description of what is wrong.
fn check_pair(trace: &Trace, dev: KDev) -> Result<(), String> {
    let one = |probe: Probe, phase: Phase| -> Result<&TraceEvent, String> {
        match trace.on(probe, phase, dev).as_slice() {
            [e] => Ok(*e),
            evs => Err(format!(
                "{} {probe:?} {phase:?} events on {dev} (want 1); events: {:?}",
                evs.len(),
                trace.events
            )),
        }
    };
    let fe = one(Probe::FreezeBdev, Phase::Entry)?;
    let fr = one(Probe::FreezeBdev, Phase::Return)?;
    let te = one(Probe::ThawBdev, Phase::Entry)?;
    let tr = one(Probe::ThawBdev, Phase::Return)?;
    if !(fe.ts_ns <= fr.ts_ns && fr.ts_ns <= te.ts_ns && te.ts_ns <= tr.ts_ns) {
        return Err(format!("out of order: {fe:?} {fr:?} {te:?} {tr:?}"));
    }
    if fr.ret != Some(0) || tr.ret != Some(0) {
        return Err(format!("non-zero returns: freeze {:?} thaw {:?}", fr.ret, tr.ret));
    }
    if fe.args.first() != te.args.first() {
        return Err("freeze and thaw saw different block_device pointers".into());
    }
    if trace.end.lost != 0 {
        return Err(format!("lost events: {}", trace.end.lost));
    }
    Ok(())
}

fn live(series: &str, freeze_sym: &str, bd_dev_offset: u64) {
    let out = run_guest_script(series, "probes.sh", "").expect("guest run");
    out.expect_success().expect("guest script");
    assert!(out.kernel_problems().is_empty(), "kernel log: {:?}", out.kernel_problems());
    let share = &out.share;
    let read = |f: &str| fs::read_to_string(share.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let results = Results::read(share).expect("results.jsonl");
    assert!(results.finished(), "{series}: probes.sh did not finish: {:?}", results.0);
    let exit = |case: &str| match results.get(case) {
        Some(Kind::Exit { status, out }) => (*status, out.clone()),
        r => panic!("{series}: {case}: no exit status, got {r:?}"),
    };

    // The CLI's own JSON (doctor --json); not asserted on its exit status, as before.
    let (_, doctor_json) = exit("doctor");
    let doctor: Value = serde_json::from_str(&read(&doctor_json.expect("doctor.json named")))
        .expect("doctor --json");
    assert_eq!(doctor["symbols"]["freeze_bdev"]["name"], freeze_sym);
    assert_eq!(doctor["capabilities"]["bd_dev_offset"], bd_dev_offset, "BTF offset");
    for cap in ["kprobe", "fentry", "ringbuf", "perf"] {
        // Debian's 6.1 and 6.12 have all four: an absence here is a bug, not a skip.
        assert!(
            doctor["capabilities"][cap].get("Ok").is_some(),
            "{cap}: {}",
            doctor["capabilities"][cap]
        );
    }

    let mut failures = Vec::new();
    let mut checked = 0;
    for trigger in ["loop", "dm"] {
        let dev = match results.get(trigger) {
            Some(Kind::Device { dev }) => *dev,
            r => panic!("{series}: no {trigger} device, got {r:?}"),
        };
        for m in METHODS {
            for t in TRANSPORTS {
                let name = format!("{trigger}-{m}-{t}");
                let file = match results.get(&name) {
                    Some(Kind::Exit { status: 0, out: Some(out) }) => out,
                    Some(Kind::Exit { status, .. }) => {
                        failures.push(format!("{name}: trace exited {status}"));
                        continue;
                    }
                    r => panic!("{series}: {name}: no trace result, got {r:?}"),
                };
                let trace = match Trace::read(&share.join(file)) {
                    Ok(t) => t,
                    Err(e) => {
                        failures.push(format!("{name}: {e:#}"));
                        continue;
                    }
                };
                assert_eq!(trace.header.plan["method"], m);
                assert_eq!(trace.header.plan["transport"], t);
                if let Err(e) = check_pair(&trace, dev) {
                    failures.push(format!("{name}: {e}"));
                }
                checked += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{series}: {}", failures.join("\n"));
    assert_eq!(checked, 8);
    assert_eq!(exit("empty").0, 2, "trace with no event must exit 2");
    let (status, err) = exit("no-ploop");
    assert_eq!(status, 2, "run without ploop_snapshot must exit 2");
    let err = read(&err.expect("no-ploop stderr named"));
    assert!(err.contains("no verdict on ploop at all"), "{err}");
    assert_eq!(exit("failing-workload").0, 1, "a failing workload is status 1");
    for check in ["nice-tool", "nice-workload"] {
        assert!(results.passed(check), "{series}: {check}: {:?}", results.get(check));
    }
}

#[test]
fn freeze_thaw_probes_on_debian_6_1() {
    live("6.1", "freeze_bdev", 36);
}

#[test]
fn bdev_freeze_thaw_probes_on_debian_6_12() {
    live("6.12", "bdev_freeze", 52);
}
