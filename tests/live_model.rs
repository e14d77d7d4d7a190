//! Live: the ploop model driver (`tests/ploop-model`) and `ploop-verify device|snapshot|support`
//! in Debian 6.1 and 6.12 guests. Two boots per kernel:
//! - stacks (`guest/model-stacks.sh`): ext4 on ploop, on dm-crypt on ploop, and on dm-linear on
//!   dm-crypt on ploop, on the whole disk with raw deltas and on ploop0p1 of a GPT with ploop1
//!   deltas (and ext4 on ploop0p1 with libploop's node sync fd); data across snapshots, lower
//!   deltas unchanged, fresh devices from the lower deltas, the ploop1 header/BAT check,
//!   which filesystem is frozen during the switch (also the partition walk), the hang of a
//!   ploop1 switch on a frozen filesystem and its release; the latency with raw and ploop1
//!   tops.
//! - errors (`guest/model-errors.sh`): the errno of every malformed request in the patched and
//!   the unpatched mode (the contract's table, below; a device-node sync fd in both
//!   sync_fd_resolve modes), then the fuzzer.
//!
//! Every boot also fails on a kernel log line that means the kernel went wrong (BUG, WARNING,
//! Oops, hung task). Both scripts write their results to `/share/results.jsonl` (see
//! `tests/guest/lib.sh`), read here as [`ploop_tests::Results`].

use std::collections::BTreeMap;

use ploop_tests::{Errno, Kind, Mode, Reply, Results, Support};

const OK: Reply = Reply::Ok;
const fn no(e: Errno) -> Reply {
    Reply::Refused(e)
}
const ENOENT: Reply = no(Errno::ENOENT);
const EFAULT: Reply = no(Errno::EFAULT);
const EINVAL: Reply = no(Errno::EINVAL);
const ENOTSUPP: Reply = no(Errno::ENOTSUPP);
const ENODEV: Reply = no(Errno::ENODEV);
const EBADF: Reply = no(Errno::EBADF);
const EBUSY: Reply = no(Errno::EBUSY);

/// The expected answer to every case of `model-errors.sh`: (case, patched, unpatched).
/// Contract ids in comments.
const ERROR_TABLE: &[(&str, Reply, Reply)] = &[
    ("enoent", ENOENT, ENOENT),     // 1: no delta on the device
    ("efault-ctl", EFAULT, EFAULT), // 2: ploop_ctl straddles an unmapped page
    ("efault-null", EFAULT, EFAULT),
    ("efault-kernel", EFAULT, EFAULT),
    ("efault-chunk0", EFAULT, EFAULT),      // chunk #0 unmapped
    ("efault-chunk1", EFAULT, EINVAL),      // chunk #1 unmapped; unpatched stops at the count
    ("einval-chunk1-type", EINVAL, EINVAL), // E2 (unpatched: count 2, E1)
    ("einval-chunk1-flags", EINVAL, EINVAL),
    ("einval-chunk1-offset", EINVAL, EINVAL),
    ("einval-chunk1-start", EINVAL, EINVAL),
    ("einval-chunk1-len", EINVAL, EINVAL),
    ("enotsupp-chunks-0", ENOTSUPP, EINVAL), // E1
    ("enotsupp-chunks-3", ENOTSUPP, EINVAL),
    ("enotsupp-chunks-255", ENOTSUPP, EINVAL),
    ("enodev-sync-fd-tmpfs", ENODEV, EINVAL), // S3
    ("enodev-sync-fd-closed", ENODEV, EINVAL),
    ("nofssync-sync-fd-closed", OK, EINVAL), // O3: without FS_SYNC the fd is not used
    ("einval-format", EINVAL, EINVAL),       // driver: PLOOP1 with a raw file: no header
    ("einval-format-unknown", EINVAL, EINVAL), // neither RAW nor PLOOP1
    ("einval-cluster-log", EINVAL, EINVAL),  // vz7 init_delta: not the device's cluster log
    ("einval-io-type", EINVAL, EINVAL),      // chunk #0 pctl_type 3 (PLOOP_IO_RESERVED)
    ("ok-io-type-kaio", OK, OK),             // PLOOP_IO_KAIO, as libploop may send
    ("enodev-sync-fd-node-seed", ENODEV, EINVAL), // S4: the seed resolves devtmpfs
    ("ok-sync-fd-node-bdev", OK, EINVAL),    // sync_fd_resolve=bdev (kernel-patch/0002)
    ("enodev-sync-fd-tmpfs-bdev", ENODEV, EINVAL), // bdev: other fds as the seed (S3)
    ("ebadf-delta-fd", EBADF, EBADF),        // driver: chunk #0 fd not open
    ("ebadf-delta-readonly", EBADF, EBADF),  // driver: refused after freeze + quiesce
    ("ebadf-delta-readonly-sync-fd", EBADF, EINVAL),
    ("einval-delta-size", EINVAL, EINVAL), // driver: delta of the wrong size
    ("ok-autodetect", OK, OK),
    ("ok-sync-fd", OK, EINVAL),
    ("ok-no-fs-sync", OK, OK),
    ("ebusy-concurrent", EBUSY, EBUSY), // C1 (window held open by snapshot_hold_ms)
    ("ebusy-first", OK, OK),
];

/// Boots `series` with the model driver, runs `script`, and reads its results.
fn run_model_script(series: &str, script: &str, env: &str) -> Results {
    // The shared runner: tests/guest/lib.sh prepended, the model built (under a lock) for
    // this kernel, storage and dm-crypt modules loaded.
    let out = ploop_tests::run_model_script(series, script, env).expect("guest run");
    out.expect_success().expect("guest script");
    let results = Results::read(&out.share).expect("results.jsonl");
    assert!(results.finished(), "{script} did not finish");
    assert!(out.kernel_problems().is_empty(), "kernel log: {:?}", out.kernel_problems());
    results
}

/// Every check must have passed; returns how many there were.
fn assert_checks(results: &Results, series: &str) -> usize {
    let failed: Vec<String> = results
        .checks()
        .filter(|(_, ok, _)| !ok)
        .map(|(name, _, why)| format!("{name}: {}", why.unwrap_or("")))
        .collect();
    assert!(failed.is_empty(), "{series}: failed checks:\n{failed:#?}");
    results.checks().count()
}

fn stacks(series: &str) {
    let results = run_model_script(series, "model-stacks.sh", "");
    let n = assert_checks(&results, series);
    // support, 2 x 3 raw I/O, 7 stacks x 14 (+ 5 ploop1 checks on 3 of them), 4
    // frozen-during-switch, the partition walk, the hang, 2 after the bench.
    assert!(n >= 130, "{series}: only {n} checks ran");
    for raw in ["tmpfs", "9p"] {
        let want = format!("rawio-{raw}-reattached");
        assert!(results.passed(&want), "{series}: missing check `{want}`");
    }
    let stacks = ["direct", "crypt", "linear", "direct-p1"];
    let ploop1 = ["direct-p1-ploop1", "crypt-p1-ploop1", "linear-p1-ploop1"];
    for stack in stacks.iter().chain(&ploop1) {
        for what in ["from-base-clean-journal", "from-s1-b", "s1-unchanged-at-end"] {
            let want = format!("{stack}-{what}");
            assert!(results.passed(&want), "{series}: missing check `{want}`");
        }
    }
    for stack in ploop1 {
        for what in ["s1-in-use", "s1-closed", "s2-in-use", "s2-closed-at-detach"] {
            let want = format!("{stack}-{what}");
            assert!(results.passed(&want), "{series}: missing check `{want}`");
        }
    }
    for want in [
        "frozen-during-switch-walk-p2-auto",
        "frozen-during-switch-p2-node-bdev",
        "p2-node-seed-enodev",
        "hang-ploop1-old-top-blocks",
        "hang-stack-in-header-write",
        "hang-released",
        "hang-vz-writable-after",
    ] {
        assert!(results.passed(want), "{series}: missing check `{want}`");
    }
    let bench: Vec<&Kind> =
        results.0.iter().map(|r| &r.kind).filter(|k| matches!(k, Kind::Bench { .. })).collect();
    assert_eq!(bench.len(), 3, "{series}: latency series: {bench:?}");
    for b in bench {
        if let Kind::Bench { label, n, min_ms, p50_ms, p90_ms, max_ms, mean_ms } = b {
            println!(
                "{series}: snapshot-bench {label}: n={n} min={min_ms:.2}ms p50={p50_ms:.2}ms \
                 p90={p90_ms:.2}ms max={max_ms:.2}ms mean={mean_ms:.2}ms"
            );
        }
    }
}

fn errors(series: &str, seed: u64) {
    let results = run_model_script(series, "model-errors.sh", &format!("SEED={seed}"));
    assert_checks(&results, series);
    let mut seen: BTreeMap<(Mode, &str), Reply> = BTreeMap::new();
    let mut support: BTreeMap<Mode, Support> = BTreeMap::new();
    for r in &results.0 {
        if let Some((mode, reply)) = r.kind.reply() {
            seen.insert((mode, &r.case), reply);
        } else if let Kind::Support { mode, support: s } = r.kind {
            support.insert(mode, s);
        }
    }
    let mut wrong = Vec::new();
    println!("{series}: {:<30} {:<10} {:<10}", "case", "patched", "unpatched");
    for &(name, patched, unpatched) in ERROR_TABLE {
        let get = |mode| seen.get(&(mode, name)).map_or("-".into(), |r| r.to_string());
        let (p, u) = (get(Mode::Patched), get(Mode::Unpatched));
        println!("{series}: {name:<30} {p:<10} {u:<10}");
        if seen.get(&(Mode::Patched, name)) != Some(&patched) {
            wrong.push(format!("patched {name}: got {p}, want {patched}"));
        }
        if seen.get(&(Mode::Unpatched, name)) != Some(&unpatched) {
            wrong.push(format!("unpatched {name}: got {u}, want {unpatched}"));
        }
    }
    let get = |mode| support.get(&mode).map_or("-".into(), |s| format!("{s:?}"));
    println!("{series}: {:<30} {:<10} {:<10}", "support", get(Mode::Patched), get(Mode::Unpatched));
    let want =
        BTreeMap::from([(Mode::Patched, Support::Patched), (Mode::Unpatched, Support::Unpatched)]);
    if support != want {
        wrong.push(format!("support: got {support:?}, want {want:?}"));
    }
    assert_eq!(seen.len(), 2 * ERROR_TABLE.len(), "{series}: cases seen: {seen:?}");
    assert!(wrong.is_empty(), "{series}: wrong errnos:\n{}", wrong.join("\n"));
    // Each run's summary and its writer's (the check that it passed is above).
    let mut fuzz = 0;
    for r in &results.0 {
        if let Kind::Fuzz {
            requests,
            threads,
            seed,
            kernel,
            seconds,
            answers,
            busy_retries,
            writes,
            slowest_ms,
        } = &r.kind
        {
            fuzz += 1;
            println!(
                "{series}: {}: {requests} requests, {threads} threads, seed {seed}, {kernel:?}, \
                 {seconds:.1} s: {answers} (EBUSY retried: {busy_retries}); writer: {writes} \
                 writes+fsync, slowest {slowest_ms} ms",
                r.case
            );
        }
    }
    assert_eq!(fuzz, 3, "{series}: fuzzer summaries: {:?}", results.0);
}

#[test]
fn model_stacks_on_debian_6_1() {
    stacks("6.1");
}

#[test]
fn model_stacks_on_debian_6_12() {
    stacks("6.12");
}

#[test]
fn model_error_codes_and_fuzz_on_debian_6_1() {
    errors("6.1", 61);
}

#[test]
fn model_error_codes_and_fuzz_on_debian_6_12() {
    errors("6.12", 612);
}
