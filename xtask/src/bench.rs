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
    /// Only the replay benchmark (no guest).
    #[arg(long)]
    pub replay_only: bool,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let bin = build::ploop_verify_static()?;
    for &calls in &a.calls {
        replay(&bin, calls)?;
    }
    if !a.replay_only {
        latency(a)?;
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

/// One line of `testkit snapshot-bench`: (label, n, p50 ms, mean ms).
fn parse(line: &str) -> Option<(String, f64, f64, f64)> {
    let rest = line.strip_prefix("snapshot-bench ")?;
    let (label, kv) = rest.split_once(": ")?;
    let get = |k: &str| {
        kv.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(|v| v.trim_end_matches("ms").parse::<f64>().ok())?
    };
    Some((label.to_string(), get("n=")?, get("p50=")?, get("mean=")?))
}

fn latency(a: &BenchArgs) -> Result<()> {
    let env = format!("COUNT={}\nROUNDS={}", a.count, a.rounds);
    let mut vm = Vm::with_model(Kernel::resolve(&a.kernel)?, guest_script("bench.sh", &env)?)?;
    vm.timeout = Duration::from_secs(2400);
    let out = vm.run()?;
    out.expect_success()?;
    let rows: Vec<_> = out.stdout.lines().filter_map(parse).collect();
    let agg = |label: &str| {
        let r: Vec<_> = rows.iter().filter(|r| r.0 == label).collect();
        let n: f64 = r.iter().map(|r| r.1).sum();
        let mean = r.iter().map(|r| r.1 * r.3).sum::<f64>() / n.max(1.0);
        let mut p50: Vec<f64> = r.iter().map(|r| r.2).collect();
        p50.sort_by(f64::total_cmp);
        (n, p50.get(p50.len() / 2).copied().unwrap_or(0.0), mean)
    };
    let (n0, p0, m0) = agg("without-probes");
    if n0 == 0.0 {
        bail!("no snapshot-bench results in the guest output:\n{}", out.stdout);
    }
    for line in out.stdout.lines().filter(|l| {
        l.starts_with("snapshot-bench ") && !l.contains(" rate-") || l.contains("profile:")
    }) {
        println!("  {line}");
    }
    println!(
        "snapshot latency on {} (TCG), {} rounds of {} snapshots per mode, alternating \
         (p50 of the rounds' p50s; mean over all calls):",
        out_kernel(&a.kernel),
        a.rounds,
        a.count
    );
    println!(
        "  {:<22} {:>5} {:>9} {:>9} {:>9} {:>10}",
        "mode", "n", "p50 ms", "mean ms", "p50 x", "mean x"
    );
    for label in [
        "without-probes",
        "count-probes",
        "run-ringbuf-fentry",
        "run-ringbuf-kprobe",
        "run-perf-fentry",
        "run-perf-kprobe",
    ] {
        let (n, p, m) = agg(label);
        if n == 0.0 {
            continue;
        }
        println!("  {label:<22} {n:>5} {p:>9.2} {m:>9.2} {:>9.3} {:>10.3}", p / p0, m / m0);
    }
    // Detection delay: how long after the event that completed a violation it was printed.
    for t in ["ringbuf", "perf"] {
        let mut d: Vec<f64> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("delay-ms {t} "))?.trim().parse().ok())
            .collect();
        d.sort_by(f64::total_cmp);
        // Nearest rank, as the tool's own percentiles.
        let pct = |p: f64| {
            let rank = ((p / 100.0) * d.len() as f64).ceil().max(1.0) as usize;
            d.get(rank - 1).copied().unwrap_or(f64::NAN)
        };
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
            let achieved = out
                .stdout
                .lines()
                .find(|b| b.starts_with(&format!("snapshot-bench rate-{t}-{target}:")))
                .and_then(|b| b.split_whitespace().find_map(|w| w.strip_prefix("achieved=")))
                .and_then(|v| v.trim_end_matches("/s").parse::<f64>().ok());
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

fn out_kernel(spec: &str) -> String {
    Kernel::resolve(spec).map(|k| k.release).unwrap_or_else(|_| spec.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_a_snapshot_bench_line() {
        let l = "snapshot-bench with-probes: n=25 min=3.10ms p50=4.25ms p90=6.00ms max=9.10ms mean=4.80ms";
        assert_eq!(super::parse(l), Some(("with-probes".into(), 25.0, 4.25, 4.80)));
        assert_eq!(super::parse("other"), None);
    }
}
