//! Live: the ploop model driver (`tests/ploop-model`) and `ploop-verify device|snapshot|support`
//! in Debian 6.1 and 6.12 guests. Two boots per kernel:
//! - stacks (`guest/model-stacks.sh`): ext4 on ploop, on dm-crypt on ploop, and on dm-linear on
//!   dm-crypt on ploop; data across snapshots, lower deltas unchanged, fresh devices from the
//!   lower deltas, which filesystem is frozen during the switch; the snapshot latency.
//! - errors (`guest/model-errors.sh`): the errno of every malformed request in the patched and
//!   the unpatched mode (the contract's table, below), then the fuzzer.
//!
//! Every boot also fails on a kernel log line that means the kernel went wrong (BUG, WARNING,
//! Oops, hung task).

use std::collections::BTreeMap;

use xtask::vm::Output;

/// The expected result of every case of `model-errors.sh`: (case, patched, unpatched).
/// `ok` is success; otherwise the errno name (524 is ENOTSUPP). Contract ids in comments.
const ERROR_TABLE: &[(&str, &str, &str)] = &[
    ("enoent", "ENOENT", "ENOENT"),     // 1: no delta on the device
    ("efault-ctl", "EFAULT", "EFAULT"), // 2: ploop_ctl straddles an unmapped page
    ("efault-null", "EFAULT", "EFAULT"),
    ("efault-kernel", "EFAULT", "EFAULT"),
    ("efault-chunk0", "EFAULT", "EFAULT"), // chunk #0 unmapped
    ("efault-chunk1", "EFAULT", "EINVAL"), // chunk #1 unmapped; unpatched stops at the count
    ("einval-chunk1-type", "EINVAL", "EINVAL"), // E2 (unpatched: count 2, E1)
    ("einval-chunk1-flags", "EINVAL", "EINVAL"),
    ("einval-chunk1-offset", "EINVAL", "EINVAL"),
    ("einval-chunk1-start", "EINVAL", "EINVAL"),
    ("einval-chunk1-len", "EINVAL", "EINVAL"),
    ("enotsupp-chunks-0", "ENOTSUPP", "EINVAL"), // E1
    ("enotsupp-chunks-3", "ENOTSUPP", "EINVAL"),
    ("enotsupp-chunks-255", "ENOTSUPP", "EINVAL"),
    ("enodev-sync-fd-tmpfs", "ENODEV", "EINVAL"), // S3
    ("enodev-sync-fd-closed", "ENODEV", "EINVAL"),
    ("nofssync-sync-fd-closed", "ok", "EINVAL"), // O3: without FS_SYNC the fd is not used
    ("einval-format", "EINVAL", "EINVAL"),       // driver: pctl_format must be 0 or RAW
    ("ebadf-delta-fd", "EBADF", "EBADF"),        // driver: chunk #0 fd not open
    ("ebadf-delta-readonly", "EBADF", "EBADF"),  // driver: refused after freeze + quiesce
    ("ebadf-delta-readonly-sync-fd", "EBADF", "EINVAL"),
    ("einval-delta-size", "EINVAL", "EINVAL"), // driver: delta of the wrong size
    ("ok-autodetect", "ok", "ok"),
    ("ok-sync-fd", "ok", "EINVAL"),
    ("ok-no-fs-sync", "ok", "ok"),
    ("ebusy-concurrent", "EBUSY", "EBUSY"), // C1 (window held open by snapshot_hold_ms)
    ("ebusy-first", "ok", "ok"),
    ("support", "patched", "unpatched"),
];

fn run_model_script(series: &str, script: &str, env: &str) -> Output {
    // The shared runner: tests/guest/lib.sh prepended, the model built (under a lock) for
    // this kernel, storage and dm-crypt modules loaded.
    let out = ploop_tests::run_model_script(series, script, env).expect("guest run");
    out.expect_success().expect("guest script");
    assert!(out.stdout.contains("\ndone\n"), "{script} did not finish");
    assert!(out.kernel_problems().is_empty(), "kernel log: {:?}", out.kernel_problems());
    out
}

/// Every `check NAME ...` line must say ok; returns how many there were.
fn assert_checks(out: &Output, series: &str) -> usize {
    let checks: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("check ")).collect();
    let failed: Vec<&&str> = checks.iter().filter(|l| !l.ends_with(" ok")).collect();
    assert!(failed.is_empty(), "{series}: failed checks:\n{failed:#?}");
    checks.len()
}

fn stacks(series: &str) {
    let out = run_model_script(series, "model-stacks.sh", "");
    let n = assert_checks(&out, series);
    // support, 2 x 3 raw I/O, 3 stacks x 14, 4 frozen-during-switch, 2 after the bench.
    assert!(n >= 55, "{series}: only {n} checks ran");
    for raw in ["tmpfs", "9p"] {
        let want = format!("check rawio-{raw}-reattached ok");
        assert!(out.stdout.contains(&want), "{series}: missing `{want}`");
    }
    for stack in ["direct", "crypt", "linear"] {
        for what in ["from-base-clean-journal", "from-s1-b", "s1-unchanged-at-end"] {
            let want = format!("check {stack}-{what} ok");
            assert!(out.stdout.contains(&want), "{series}: missing `{want}`");
        }
    }
    let bench: Vec<&str> =
        out.stdout.lines().filter(|l| l.starts_with("snapshot-bench ")).collect();
    assert_eq!(bench.len(), 2, "{series}: latency lines: {bench:?}");
    for b in bench {
        println!("{series}: {b}");
    }
}

fn errors(series: &str, seed: u64) {
    let out = run_model_script(series, "model-errors.sh", &format!("SEED={seed}"));
    assert_checks(&out, series);
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for l in out.stdout.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let ["case", mode, name, result] = f.as_slice() {
            seen.insert((mode.to_string(), name.to_string()), result.to_string());
        }
    }
    let mut wrong = Vec::new();
    println!("{series}: {:<30} {:<10} {:<10}", "case", "patched", "unpatched");
    for (name, patched, unpatched) in ERROR_TABLE {
        let get = |mode: &str| {
            seen.get(&(mode.to_string(), name.to_string())).cloned().unwrap_or("-".into())
        };
        let (p, u) = (get("patched"), get("unpatched"));
        println!("{series}: {name:<30} {p:<10} {u:<10}");
        if p != *patched {
            wrong.push(format!("patched {name}: got {p}, want {patched}"));
        }
        if u != *unpatched {
            wrong.push(format!("unpatched {name}: got {u}, want {unpatched}"));
        }
    }
    assert_eq!(seen.len(), 2 * ERROR_TABLE.len(), "{series}: cases seen: {seen:?}");
    assert!(wrong.is_empty(), "{series}: wrong errnos:\n{}", wrong.join("\n"));
    let fuzz: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("fuzz-snapshot: ")).collect();
    assert!(fuzz.len() >= 6, "{series}: fuzzer output: {fuzz:?}");
    for f in fuzz {
        println!("{series}: {f}");
    }
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
