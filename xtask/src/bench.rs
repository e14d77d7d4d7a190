//! `cargo xtask bench`: numbers, not pass/fail. Checker throughput on replay (one core), and
//! the snapshot ioctl latency without and with ploop-verify attached, in one guest run.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build,
    kernels::Kernel,
    vm::{Vm, guest_script},
};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Snapshot calls in the synthetic traces for the replay benchmark (15 events each): one
    /// replay per size, so that memory that grows with the calls shows.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    pub calls: Vec<u64>,
    /// Guest kernel for the latency benchmark (`6.1`, `6.12`, or a kernel directory).
    #[arg(long, default_value = "6.1")]
    pub kernel: String,
    /// Snapshots per round and mode (the model driver keeps at most 32 deltas).
    #[arg(long, default_value_t = 25)]
    pub count: u32,
    /// Rounds; each runs both modes, alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The block stack under ext4 on /dev/ploop0: `linear` is the commit's stack (ext4 on
    /// dm-linear on dm-crypt on ploop), where the slowdown was first measured; `crypt` and
    /// `direct` (ext4 on ploop itself) make fewer and cheaper calls per snapshot.
    #[arg(long, default_value = "linear", value_parser = ["direct", "crypt", "linear"])]
    pub stack: String,
    /// The latency modes, in the order each round runs them (`without` always runs first: it
    /// is the baseline). Reordering them shows whether a mode's cost is its place in the round.
    #[arg(long, value_delimiter = ',', value_parser = MODES, default_values = &MODES[1..])]
    pub modes: Vec<String>,
    /// Only the replay benchmark (no guest).
    #[arg(long)]
    pub replay_only: bool,
    /// The real client instead of the snapshot ioctl alone: the latency of Debian's `ploop
    /// snapshot` (the whole command) on ext4 on ploop0p1 as `ploop init` lays it out, without
    /// and with `ploop-verify run`, in the same guest run (--rounds rounds of --count
    /// snapshots per mode; --stack and --modes do not apply).
    #[arg(long)]
    pub client: bool,
}

/// The guest's mode names (bench.sh), each with the label of its snapshot-bench lines.
const MODES: [&str; 7] = [
    "without",
    "count",
    "run-ringbuf-fentry",
    "run-ringbuf-kprobe",
    "run-perf-fentry",
    "run-perf-kprobe",
    "nice0-ringbuf-fentry",
];

fn label(mode: &str) -> &str {
    match mode {
        "without" => "without-probes",
        "count" => "count-probes",
        m => m,
    }
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let bin = build::ploop_verify_static()?;
    for &calls in &a.calls {
        replay(&bin, calls)?;
    }
    if !a.replay_only {
        if a.client { latency_client(a)? } else { latency(a)? }
    }
    Ok(())
}

fn replay(bin: &Path, calls: u64) -> Result<()> {
    let dir = crate::build_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let trace = dir.join(format!("synthetic-{calls}.jsonl"));
    let st = Command::new(bin)
        .args(["testkit", "synth-trace", "--calls", &calls.to_string(), "--out"])
        .arg(&trace)
        .status()?;
    if !st.success() {
        bail!("synth-trace failed ({st})");
    }
    let bytes = std::fs::metadata(&trace)?.len();
    let events = calls * 15;
    let mut best = Duration::MAX;
    let mut rss_kib: u64 = 0;
    for _ in 0..3 {
        let t = Instant::now();
        // One core, as the issue asks: the checker is single-threaded anyway.
        let out = Command::new("taskset")
            .args(["-c", "0", "/usr/bin/time", "-f", "max-rss-kib %M"])
            .arg(bin)
            .arg("report")
            .arg(&trace)
            .arg("--out")
            .arg(dir.join("report"))
            .output()
            .context("running taskset (util-linux) and /usr/bin/time (time)")?;
        let took = t.elapsed();
        if !out.status.success() {
            bail!("report failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        best = best.min(took);
        let err = String::from_utf8_lossy(&out.stderr);
        rss_kib = err
            .lines()
            .find_map(|l| l.strip_prefix("max-rss-kib ")?.trim().parse().ok())
            .unwrap_or(0);
    }
    println!(
        "replay: {events} events ({calls} snapshot calls, {:.1} MiB of trace) in {:.3} s on one core \
         (best of 3, reports included): {:.0} events/s, {:.0} calls/s, peak RSS {:.1} MiB",
        bytes as f64 / 1048576.0,
        best.as_secs_f64(),
        events as f64 / best.as_secs_f64(),
        calls as f64 / best.as_secs_f64(),
        rss_kib as f64 / 1024.0
    );
    // A million calls make a 3 GiB trace: keep none of it.
    std::fs::remove_file(&trace)?;
    Ok(())
}

/// One `snapshot-bench-samples LABEL: us us ...` line: (label, latencies in ms).
fn parse_samples(line: &str) -> Option<(String, Vec<f64>)> {
    let (label, v) = line.strip_prefix("snapshot-bench-samples ")?.split_once(": ")?;
    let v: Option<Vec<f64>> =
        v.split_whitespace().map(|x| x.parse::<f64>().ok().map(|us| us / 1e3)).collect();
    Some((label.to_string(), v?))
}

/// Nearest-rank percentile of sorted values: the definition of ploop-user's `stats`, repeated
/// because xtask does not depend on ploop-user.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    nearest_rank(&s, 50.0)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// A ratio of a statistic of `with` to that of `without`, and its 95 % bootstrap interval
/// (both samples resampled with replacement, 2000 times; a fixed seed, so a rerun on the
/// same numbers prints the same interval). The interval is what says whether a ratio is a
/// result or the guest's noise: a 1.05x goal is met only when the whole interval is under it.
fn ratio_ci(with: &[f64], without: &[f64], stat: fn(&[f64]) -> f64) -> (f64, f64, f64) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    };
    let mut ratios: Vec<f64> = (0..2000)
        .map(|_| {
            let a: Vec<f64> = (0..with.len()).map(|_| with[next(with.len())]).collect();
            let b: Vec<f64> = (0..without.len()).map(|_| without[next(without.len())]).collect();
            stat(&a) / stat(&b)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (stat(with) / stat(without), nearest_rank(&ratios, 2.5), nearest_rank(&ratios, 97.5))
}

/// The ratio table from every latency (pooled over the rounds), with 95 % intervals, and an
/// A/A line: the mode without probes against itself (odd rounds against even ones), the
/// size of ratio the guest's noise alone produces.
fn ratio_table(samples: &[(String, Vec<f64>)], modes: &[&str]) {
    let pooled = |label: &str| -> Vec<f64> {
        samples.iter().filter(|s| s.0 == label).flat_map(|s| s.1.iter().copied()).collect()
    };
    let base = pooled("without-probes");
    if base.is_empty() {
        return;
    }
    println!("pooled over the rounds, with 95 % bootstrap intervals (ratio to without-probes):");
    println!(
        "  {:<22} {:>5} {:>8} {:>8}  {:<22} {:<22}",
        "mode", "n", "p50 ms", "mean ms", "p50 x [95 % CI]", "mean x [95 % CI]"
    );
    let row = |label: &str, with: &[f64], without: &[f64]| {
        let (pr, plo, phi) = ratio_ci(with, without, p50);
        let (mr, mlo, mhi) = ratio_ci(with, without, mean);
        println!(
            "  {label:<22} {:>5} {:>8.2} {:>8.2}  {:<22} {:<22}",
            with.len(),
            p50(with),
            mean(with),
            format!("{pr:.3} [{plo:.3}, {phi:.3}]"),
            format!("{mr:.3} [{mlo:.3}, {mhi:.3}]"),
        );
    };
    println!(
        "  {:<22} {:>5} {:>8.2} {:>8.2}",
        "without-probes",
        base.len(),
        p50(&base),
        mean(&base)
    );
    for label in modes {
        let with = pooled(label);
        if !with.is_empty() {
            row(label, &with, &base);
        }
    }
    let rounds: Vec<&Vec<f64>> =
        samples.iter().filter(|s| s.0 == "without-probes").map(|s| &s.1).collect();
    if rounds.len() >= 2 {
        let odd: Vec<f64> = rounds.iter().step_by(2).flat_map(|r| r.iter().copied()).collect();
        let even: Vec<f64> =
            rounds.iter().skip(1).step_by(2).flat_map(|r| r.iter().copied()).collect();
        row("A/A: without vs itself", &even, &odd);
    }
}

fn latency(a: &BenchArgs) -> Result<()> {
    let modes: Vec<&str> = std::iter::once("without")
        .chain(a.modes.iter().map(String::as_str).filter(|m| *m != "without"))
        .collect();
    let env = format!(
        "COUNT={}\nROUNDS={}\nSTACK={}\nMODES='{}'",
        a.count,
        a.rounds,
        a.stack,
        modes.join(" ")
    );
    let mut vm = Vm::with_model(Kernel::resolve(&a.kernel)?, guest_script("bench.sh", &env)?)?;
    vm.timeout = Duration::from_secs(2400);
    let out = vm.run()?;
    out.expect_success()?;
    for line in out.stdout.lines().filter(|l| {
        l.starts_with("snapshot-bench ") && !l.contains(" rate-") || l.contains("profile:")
    }) {
        println!("  {line}");
    }
    println!(
        "snapshot latency on {} (TCG), ext4 on the {} stack with the sync fd, {} rounds of {} \
         snapshots per mode after one warm-up snapshot each, each round in the order {}",
        out_kernel(&a.kernel),
        a.stack,
        a.rounds,
        a.count,
        modes.join(", ")
    );
    let labels: Vec<&str> = modes[1..].iter().map(|m| label(m)).collect();
    let samples: Vec<_> = out.stdout.lines().filter_map(parse_samples).collect();
    if !samples.iter().any(|s| s.0 == "without-probes") {
        bail!("no snapshot-bench samples in the guest output:\n{}", out.stdout);
    }
    ratio_table(&samples, &labels);
    // Detection delay: how long after the event that completed a violation it was printed.
    for t in ["ringbuf", "perf"] {
        let mut d: Vec<f64> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("delay-ms {t} "))?.trim().parse().ok())
            .collect();
        d.sort_by(f64::total_cmp);
        let pct = |p: f64| nearest_rank(&d, p);
        println!(
            "detection delay ({t}): n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            d.len(),
            pct(50.0),
            pct(99.0),
            d.last().copied().unwrap_or(f64::NAN)
        );
    }
    // Event loss at rising rates of refused snapshot calls.
    for t in ["ringbuf", "perf"] {
        let mut best: Option<f64> = None;
        for l in out.stdout.lines().filter(|l| l.starts_with(&format!("rate-result {t} "))) {
            let field =
                |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
            let target = field("target=").unwrap_or_default();
            let achieved = achieved_rate(&out.stdout, t, &target);
            let lost = field("lost=").and_then(|v| v.parse::<u64>().ok());
            println!(
                "rate ({t}): target {}/s, achieved {}/s, calls judged {}, events lost {}",
                if target == "0" { "max".to_string() } else { target.clone() },
                achieved.map_or("?".into(), |a| format!("{a:.0}")),
                field("judged=").unwrap_or_default(),
                lost.map_or("?".into(), |l| l.to_string())
            );
            if lost == Some(0)
                && let Some(a) = achieved
            {
                best = Some(best.map_or(a, |b: f64| b.max(a)));
            }
        }
        println!(
            "zero-loss rate ({t}): {} refused snapshot calls/s",
            best.map_or("none measured".into(), |b| format!("{b:.0}"))
        );
    }
    Ok(())
}

/// `--client`: tests/guest/bench-client.sh, then the ratio table of its two modes.
fn latency_client(a: &BenchArgs) -> Result<()> {
    let env = format!("COUNT={}\nROUNDS={}", a.count, a.rounds);
    let kernel = Kernel::resolve(&a.kernel)?;
    let mut vm = crate::client::with_model(kernel, guest_script("bench-client.sh", &env)?)?;
    vm.timeout = Duration::from_secs(2400);
    let out = vm.run()?;
    out.expect_success()?;
    for line in out.stdout.lines().filter(|l| l.contains("failed") || l.starts_with("run round")) {
        println!("  {line}");
    }
    println!(
        "`ploop snapshot` latency (Debian's client, the whole command) on {} (TCG), ext4 on \
         ploop0p1 with two writers, {} rounds of {} snapshots per mode",
        out_kernel(&a.kernel),
        a.rounds,
        a.count
    );
    let samples: Vec<_> = out.stdout.lines().filter_map(parse_samples).collect();
    if !samples.iter().any(|s| s.0 == "without-probes")
        || !samples.iter().any(|s| s.0 == "run-client")
    {
        bail!("no `ploop snapshot` samples of both modes in the guest output:\n{}", out.stdout);
    }
    ratio_table(&samples, &["run-client"]);
    Ok(())
}

/// The rate `snapshot-bench rate-T-TARGET` reached, from the guest's output. Searched for
/// inside lines: above the zero-loss rate the eBPF log's "ring buffer full" warnings share
/// the console and may come first on the same line.
fn achieved_rate(stdout: &str, transport: &str, target: &str) -> Option<f64> {
    stdout
        .lines()
        .find_map(|l| l.split_once(&format!("snapshot-bench rate-{transport}-{target}:")))
        .and_then(|(_, l)| l.split_whitespace().find_map(|w| w.strip_prefix("achieved=")))
        .and_then(|v| v.trim_end_matches("/s").parse().ok())
}

fn out_kernel(spec: &str) -> String {
    Kernel::resolve(spec).map(|k| k.release).unwrap_or_else(|_| spec.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_achieved_rate_behind_an_ebpf_warning() {
        let out = "ebpf WARNsnapshot-bench rate-ringbuf-10000: calls=19795 seconds=2.00 \
                   achieved=9897/s target=10000/s\nsnapshot-bench rate-perf-10000: achieved=9999/s";
        assert_eq!(super::achieved_rate(out, "ringbuf", "10000"), Some(9897.0));
        assert_eq!(super::achieved_rate(out, "perf", "10000"), Some(9999.0));
        assert_eq!(super::achieved_rate(out, "ringbuf", "1000"), None);
    }

    #[test]
    fn parses_a_samples_line() {
        assert_eq!(super::parse_samples("other"), None);
        let (label, v) = super::parse_samples("snapshot-bench-samples run-x: 1500 2250").unwrap();
        assert_eq!((label.as_str(), v), ("run-x", vec![1.5, 2.25]));
    }

    #[test]
    fn the_interval_holds_the_ratio_and_narrows_with_the_noise() {
        let without: Vec<f64> = (0..200).map(|i| 3.0 + (i % 10) as f64 * 0.1).collect();
        let with: Vec<f64> = without.iter().map(|x| x * 1.2).collect();
        let (r, lo, hi) = super::ratio_ci(&with, &without, super::mean);
        assert!((r - 1.2).abs() < 1e-9 && lo <= r && r <= hi, "{r} [{lo}, {hi}]");
        assert!(hi - lo < 0.05, "a steady sample gives a narrow interval: [{lo}, {hi}]");
        let noisy: Vec<f64> = (0..200).map(|i| if i % 5 == 0 { 60.0 } else { 3.0 }).collect();
        let (_, lo2, hi2) = super::ratio_ci(&noisy, &without, super::mean);
        assert!(hi2 - lo2 > hi - lo, "outliers widen it: [{lo2}, {hi2}]");
    }
}
