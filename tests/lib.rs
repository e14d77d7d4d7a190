//! Helpers for the live tests: boot a guest with ploop-verify, read the results and the
//! traces it leaves.

use std::{fmt, fs, path::Path};

use anyhow::{Context as _, Result, anyhow};
use ploop_common::Probe;
use ploop_user::verify::{
    events::{Phase, TraceEvent},
    stack::Stack,
    tracefile::{End, Header, Reader, TraceLine},
};
pub use ploop_user::{errno::Errno, kernel::KDev};
use serde::Deserialize;
use xtask::{
    kernels::Kernel,
    vm::{Output, Vm, guest_script},
};

pub use xtask::vm::{CRYPT_MODULES, ModelBuild, STORAGE_MODULES};

/// Boots Debian kernel `series` (`6.1`, `6.12`) and runs the guest script `tests/guest/NAME`
/// (after `tests/guest/lib.sh` and `env`). The script's own files are in `out.share`.
pub fn run_guest_script(series: &str, name: &str, env: &str) -> Result<Output> {
    let vm =
        Vm::with_ploop_verify(Kernel::resolve(series)?, STORAGE_MODULES, guest_script(name, env)?)?;
    run_logged(series, vm)
}

/// [`run_model_script`] with the real client in the guest (`xtask::client`).
pub fn run_client_script(series: &str, name: &str, env: &str) -> Result<Output> {
    let mut vm = xtask::client::with_model(Kernel::resolve(series)?, guest_script(name, env)?)?;
    vm.timeout = std::time::Duration::from_secs(900);
    run_logged(series, vm)
}

/// Like [`run_guest_script`], with the ploop model driver built for this kernel and loaded,
/// and dm-crypt available.
pub fn run_model_script(series: &str, name: &str, env: &str) -> Result<Output> {
    run_model_build_script(series, ModelBuild::Probed, name, env)
}

/// [`run_model_script`] with the model driver compiled as `build` says.
pub fn run_model_build_script(
    series: &str,
    build: ModelBuild,
    name: &str,
    env: &str,
) -> Result<Output> {
    let mut vm = Vm::with_model_build(Kernel::resolve(series)?, build, guest_script(name, env)?)?;
    vm.timeout = std::time::Duration::from_secs(900);
    run_logged(series, vm)
}

fn run_logged(series: &str, vm: Vm) -> Result<Output> {
    let out = vm.run()?;
    // Failed checks and kernel complaints first: CI views of a long guest log keep its head
    // and tail, and the middle is where a failing check would otherwise be cut away.
    let failed: Vec<&str> =
        out.stdout.lines().filter(|l| l.starts_with("check ") && l.contains(" FAIL")).collect();
    let problems = out.kernel_problems();
    eprintln!(
        "guest {series}: {:.1}s, initramfs {} KiB, {} failed check(s){}{}, kernel problems: {:?}",
        out.elapsed.as_secs_f64(),
        out.initramfs_bytes / 1024,
        failed.len(),
        if failed.is_empty() { "" } else { ":\n  " },
        failed.join("\n  "),
        problems,
    );
    eprintln!("guest {series} output:\n{}", out.stdout);
    Ok(out)
}

/// One line of `/share/results.jsonl`, as `result CASE KIND KEY=...` in `tests/guest/lib.sh`
/// writes it: `{"case": CASE, "kind": KIND, ...fields of KIND}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ResultLine {
    pub case: String,
    #[serde(flatten)]
    pub kind: Kind,
}

/// What a guest script found, by `kind`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Kind {
    /// A pass/fail check (`ok`, `bad`, `expect` in lib.sh); `why` says what failed.
    Check {
        ok: bool,
        #[serde(default)]
        why: Option<String>,
    },
    /// A block device the script made.
    Device { dev: KDev },
    /// The exit status of a command, and what it wrote into the share (`out`: a file or a
    /// directory, e.g. the `--out` of `ploop-verify trace` or `run`), if anything.
    Exit {
        status: i32,
        #[serde(default)]
        out: Option<String>,
    },
    /// `ploop-verify snapshot` in the driver's `mode`: its exit status, and the errno the
    /// kernel answered when it refused. [`Kind::reply`] reads it.
    Answer {
        mode: Mode,
        status: i32,
        #[serde(default)]
        errno: Option<i32>,
    },
    /// `ploop-verify support` in the driver's `mode`.
    Support { mode: Mode, support: Support },
    /// The summary of a `ploop-verify testkit fuzz-snapshot` run and of its writer.
    Fuzz {
        requests: u64,
        threads: u32,
        seed: u64,
        kernel: Mode,
        seconds: f64,
        /// How often each answer came, as the fuzzer prints it (`EINVAL=592 ok=119 ...`).
        answers: String,
        busy_retries: u64,
        writes: u64,
        slowest_ms: u64,
    },
    /// One `ploop-verify testkit snapshot-bench` series: latencies in milliseconds.
    Bench {
        label: String,
        n: u32,
        min_ms: f64,
        p50_ms: f64,
        p90_ms: f64,
        max_ms: f64,
        mean_ms: f64,
    },
    /// X1's independent judge (checker.sh `rebuilt`): the old snapshot of the call whose new
    /// top was `top`, rebuilt in the guest from the lower deltas alone (read-only, the same
    /// dm stack), and whether `dumpe2fs -h` lists `needs_recovery` among its `features`.
    Rebuilt { top: String, needs_recovery: bool, features: String },
    /// A command of the real client (`pl` in `tests/guest/client.sh`): its exit status, the
    /// command line and its last line of output.
    Client { status: i32, command: String, said: String },
    /// One line of the client's `snapshot-list -H -o uuid,parent_uuid,current,fname`
    /// (`current` is `*` on the top).
    Shot { uuid: String, parent: String, current: String, fname: String },
    /// An old snapshot mounted read-only (client.sh `ro_mount`): whether it mounted, and
    /// whether ext4 refused with "recovery required on readonly filesystem".
    RoMount { uuid: String, mounted: bool, recovery_required: bool },
    /// The script got to its end (`finish`).
    Done,
}

/// The ploop model driver's mode (`patched=Y|N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Patched,
    Unpatched,
}

/// What `ploop-verify support` said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Support {
    Patched,
    Unpatched,
    Unknown,
    /// Anything else (the human output has it).
    #[serde(other)]
    Unrecognized,
}

/// The kernel's answer to a snapshot request, from a [`Kind::Answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Refused(Errno),
    /// Neither: `ploop-verify snapshot` failed before the kernel answered, or said nothing.
    Failed {
        status: i32,
    },
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok => f.write_str("ok"),
            Reply::Refused(e) => write!(f, "{e}"),
            Reply::Failed { status } => write!(f, "exit {status}"),
        }
    }
}

impl Kind {
    /// The reply of an [`Kind::Answer`]: exit 0 is success, exit 1 with an errno a refusal.
    pub fn reply(&self) -> Option<(Mode, Reply)> {
        let Kind::Answer { mode, status, errno } = *self else { return None };
        let reply = match (status, errno) {
            (0, None) => Reply::Ok,
            (1, Some(e)) => Reply::Refused(Errno::from_raw(e)),
            (status, _) => Reply::Failed { status },
        };
        Some((mode, reply))
    }
}

/// The results a guest script wrote, in order.
#[derive(Clone, Debug)]
pub struct Results(pub Vec<ResultLine>);

impl Results {
    /// Reads `results.jsonl` in `share`; a line that is not a result is an error naming it.
    pub fn read(share: &Path) -> Result<Self> {
        let path = share.join("results.jsonl");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: not a result: {l}", path.display(), i + 1))
            })
            .collect::<Result<_>>()?;
        Ok(Results(lines))
    }

    /// The result of `case` (the last one, if the script wrote several).
    pub fn get(&self, case: &str) -> Option<&Kind> {
        self.0.iter().rev().find(|r| r.case == case).map(|r| &r.kind)
    }

    /// Every check: (name, passed, why it failed).
    pub fn checks(&self) -> impl Iterator<Item = (&str, bool, Option<&str>)> {
        self.0.iter().filter_map(|r| match &r.kind {
            Kind::Check { ok, why } => Some((r.case.as_str(), *ok, why.as_deref())),
            _ => None,
        })
    }

    /// Did check `name` run and pass?
    pub fn passed(&self, name: &str) -> bool {
        self.checks().any(|(n, ok, _)| n == name && ok)
    }

    /// The script got to its end: its last result is [`Kind::Done`].
    pub fn finished(&self) -> bool {
        self.0.last().is_some_and(|r| r.kind == Kind::Done)
    }
}

/// A trace file written by `ploop-verify trace --out`, read whole by ploop-user's reader.
#[derive(Debug)]
pub struct Trace {
    pub header: Header,
    pub stacks: Vec<Stack>,
    pub events: Vec<TraceEvent>,
    pub end: End,
}

impl Trace {
    pub fn read(path: &Path) -> Result<Self> {
        let mut r = Reader::open(path)?;
        let (mut stacks, mut events) = (Vec::new(), Vec::new());
        while let Some(rec) = r.next_record()? {
            match rec {
                TraceLine::Event(e) => events.push(e.clone()),
                TraceLine::Stack(s) => stacks.push(s.clone()),
                // The reader keeps these: one header, one end record. `trace` writes no
                // oracle findings (only `run --oracle` does).
                TraceLine::Header(_) | TraceLine::End(_) | TraceLine::Oracle(_) => {}
            }
        }
        let end = r.end().cloned().ok_or_else(|| anyhow!("{}: no end record", path.display()))?;
        Ok(Trace { header: r.header, stacks, events, end })
    }

    /// Events of `probe` at `phase` on device `dev`.
    pub fn on(&self, probe: Probe, phase: Phase, dev: KDev) -> Vec<&TraceEvent> {
        self.events
            .iter()
            .filter(|e| e.func == probe && e.phase == phase && e.dev == Some(dev))
            .collect()
    }
}

/// `dir/summary.json` of a report set, parsed.
pub fn summary(dir: &Path) -> serde_json::Value {
    let p = dir.join("summary.json");
    serde_json::from_str(&fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .expect("summary.json is JSON")
}

/// The ids a summary lists as violated.
pub fn violated(s: &serde_json::Value) -> std::collections::BTreeSet<String> {
    s["violation_list"]
        .as_array()
        .expect("summary.json has a violation_list")
        .iter()
        .map(|v| v["id"].as_str().expect("a violation has an id").to_string())
        .collect()
}

/// Replays `dir/trace.jsonl` with `bin` (`ploop-verify report`) on the host and compares the
/// verdicts and the exit status with the live run's summary in `dir`.
pub fn replay_matches(bin: &Path, dir: &Path) -> Result<(), String> {
    let out = dir.join("replay");
    let st = std::process::Command::new(bin)
        .arg("report")
        .arg(dir.join("trace.jsonl"))
        .arg("--out")
        .arg(&out)
        .status()
        .map_err(|e| e.to_string())?;
    let live = summary(dir);
    let again = summary(&out);
    for key in ["verdict", "violation_list", "invariants", "snapshots", "kernel_patch"] {
        if live[key] != again[key] {
            return Err(format!("{key}: live {} vs replay {}", live[key], again[key]));
        }
    }
    if Some(st.code().unwrap_or(-1) as i64) != live["exit_code"].as_i64() {
        return Err(format!("replay exit {st} vs live {}", live["exit_code"]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` after `tests/guest/lib.sh` in busybox sh, as a guest would, with the
    /// results going to a fresh directory; returns that directory.
    fn sh(name: &str, script: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ploop-results-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let lib = xtask::root().join("tests/guest/lib.sh");
        let st = std::process::Command::new(xtask::initramfs::BUSYBOX)
            .args([
                "sh",
                "-c",
                &format!(". {}\nRESULTS={}/results.jsonl\n{script}", lib.display(), dir.display()),
            ])
            .status()
            .expect("busybox (apt-get install busybox-static)");
        assert!(st.success(), "{script}: {st}");
        dir
    }

    /// What lib.sh writes, the reader reads: strings escaped, numbers typed.
    #[test]
    fn guest_results_round_trip() {
        let dir = sh(
            "ok",
            r#"ok first
bad "we\"ird \\ name" "got 'a\"b\\c
d	e' want ''"
result loop device dev=7:0
result x answer mode=unpatched status:=1 errno:=524
result y answer mode=patched status:=2
result b bench label=sync-fd n:=50 min_ms:=0.04 p50_ms:=9.82 p90_ms:=12 max_ms:=68.14 mean_ms:=1
finish"#,
        );
        let r = Results::read(&dir).unwrap();
        let line = |case: &str, kind| ResultLine { case: case.into(), kind };
        assert_eq!(
            r.0,
            [
                line("first", Kind::Check { ok: true, why: None }),
                line(
                    r#"we"ird \ name"#,
                    Kind::Check { ok: false, why: Some(r#"got 'a"b\c d e' want ''"#.into()) }
                ),
                line("loop", Kind::Device { dev: "7:0".parse().unwrap() }),
                line("x", Kind::Answer { mode: Mode::Unpatched, status: 1, errno: Some(524) }),
                line("y", Kind::Answer { mode: Mode::Patched, status: 2, errno: None }),
                line(
                    "b",
                    Kind::Bench {
                        label: "sync-fd".into(),
                        n: 50,
                        min_ms: 0.04,
                        p50_ms: 9.82,
                        p90_ms: 12.0,
                        max_ms: 68.14,
                        mean_ms: 1.0
                    }
                ),
                line("script", Kind::Done),
            ]
        );
        assert!(r.finished());
        assert!(r.passed("first") && !r.passed(r#"we"ird \ name"#));
        assert_eq!(r.0[3].kind.reply(), Some((Mode::Unpatched, Reply::Refused(Errno::ENOTSUPP))));
        assert_eq!(r.0[3].kind.reply().unwrap().1.to_string(), "ENOTSUPP");
        assert_eq!(r.0[4].kind.reply(), Some((Mode::Patched, Reply::Failed { status: 2 })));
        fs::remove_dir_all(dir).unwrap();
    }

    /// A value that is not JSON where JSON was asked for is refused by the reader, by line.
    #[test]
    fn bad_values_are_refused_with_their_line() {
        let dir = sh("bad", "ok first\nresult x answer mode=patched status:=007\n");
        let e = format!("{:#}", Results::read(&dir).unwrap_err());
        assert!(e.contains("results.jsonl:2: not a result"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }
}
