//! The image reader under coverage-guided fuzzing (cargo-fuzz, libFuzzer) for a bounded time:
//! `fuzz/fuzz_targets/image_reader.rs` feeds every entry point of `ploop-verify image` and the
//! X1 oracle, starting from valid ploop1 v1/v2 deltas and a GPT disk. The property test in
//! `ploop-user/tests/image.rs` mutates blindly; this one follows coverage into the header,
//! BAT, GPT and dm-crypt paths.
//!
//! Needs what scripts/setup.sh installs: cargo-fuzz and the pinned nightly (`ebpf-toolchain`).
//! `PLOOP_FUZZ_SECONDS` sets the time (90). The corpus grows in `target/ploop/fuzz/corpus`
//! across local runs; a crash is left in `target/ploop/fuzz/artifacts`.

use std::{
    fs,
    process::{Command, Output},
};

use ploop_user::image::testimg::seed_images;
use xtask::root;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `cargo +NIGHTLY fuzz SUB ...` with the flags every call shares: no sanitizer (the reader
/// is safe Rust: a panic is what there is to find) and debug assertions (overflow panics).
fn cargo_fuzz(sub: &str) -> Command {
    let root = root();
    let nightly = fs::read_to_string(root.join("ebpf-toolchain")).unwrap();
    let mut c = Command::new("cargo");
    c.current_dir(&root)
        .arg(format!("+{}", nightly.trim()))
        .args(["fuzz", sub, "--fuzz-dir", "fuzz", "--sanitizer", "none", "--debug-assertions"])
        .arg("--target-dir")
        .arg(root.join("target/fuzz"));
    c
}

#[test]
fn image_reader_survives_coverage_guided_fuzzing() {
    let root = root();
    let seconds: u64 =
        std::env::var("PLOOP_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(90);
    let work = root.join("target/ploop/fuzz");
    let corpus = work.join("corpus");
    let artifacts = work.join("artifacts");
    fs::create_dir_all(&corpus).unwrap();
    fs::create_dir_all(&artifacts).unwrap();
    for (i, seed) in seed_images().iter().enumerate() {
        fs::write(corpus.join(format!("seed-{i}")), seed).unwrap();
    }

    let o = cargo_fuzz("build")
        .arg("image_reader")
        .output()
        .expect("cargo fuzz (scripts/setup.sh installs it)");
    assert!(o.status.success(), "cargo fuzz build:\n{}", text(&o));

    // The harness must be able to fail: a planted crash is found and reported as one.
    let canary = work.join("canary");
    fs::write(&canary, b"ploop-fuzz-canary").unwrap();
    let bin = root.join("target/fuzz/x86_64-unknown-linux-gnu/release/image_reader");
    let o = Command::new(&bin).arg(&canary).env("PLOOP_FUZZ_CANARY", "1").output().unwrap();
    assert!(
        !o.status.success() && text(&o).contains("canary input reached the target"),
        "the planted crash was not reported ({}):\n{}",
        o.status,
        text(&o)
    );

    let o = cargo_fuzz("run")
        .arg("image_reader")
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .output()
        .unwrap();
    let out = text(&o);
    assert!(
        o.status.success(),
        "the fuzzer found a crash ({}); reproduce with `cargo +nightly fuzz run --fuzz-dir fuzz \
         -s none -a image_reader ARTIFACT`:\n{}",
        o.status,
        out.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // libFuzzer's own numbers: runs, speed, coverage reached, corpus kept.
    let stat = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| "?".into())
    };
    let last_status = out.lines().rfind(|l| l.contains(" cov: ")).unwrap_or("").trim();
    let runs: u64 = stat("number_of_executed_units").parse().unwrap_or(0);
    println!(
        "fuzz image_reader: {runs} inputs in {seconds} s ({} exec/s), peak RSS {} MB, corpus {} \
         files; last status: {last_status}",
        stat("average_exec_per_sec"),
        stat("peak_rss_mb"),
        fs::read_dir(&corpus).unwrap().count(),
    );
    assert!(runs > 1000, "libFuzzer ran only {runs} inputs in {seconds} s:\n{out}");
}
