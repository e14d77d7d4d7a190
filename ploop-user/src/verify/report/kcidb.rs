//! `--kcidb FILE`: the run as KernelCI's KCIDB I/O JSON (schema v5.3, what
//! `kcidb_io.schema.LATEST` validates), for a kernel CI that already collects results.
//!
//! - one checkout: the kernel tree and the patch series, `patchset_hash` as KCIDB defines it
//!   (sha256 over the newline-terminated sha256 of each patch, in order). The series is the one
//!   `build-kernel`'s manifest says it applied, else the kernel-patch/ series embedded in this
//!   binary (the patch whose contract it verifies; then not known to be applied);
//! - one build: from the manifest (`--kcidb-manifest`), else the running kernel as found;
//! - tests: `ploop_verify` (the run: PASS clean, FAIL violations, ERROR nothing verified),
//!   one `ploop_verify.<ID>` per snapshot call and invariant (PASS, FAIL, SKIP for n/a), and
//!   MISS per invariant for calls expected (`--expect-snapshots`) and not seen or never
//!   completed, and `ploop_verify.run_status` ERROR for each of the run's own problems
//!   (events lost, nothing verified: see `super::status`). Above [`super::AGGREGATE_ABOVE`] calls, one test per invariant with its counts
//!   plus the failing calls' tests, like JUnit and KTAP.
//!
//! Ids are `ORIGIN:RUN.…`, RUN a hash of the trace header and the first judged call, so a
//! live run and the replay of its trace name their tests alike, and two runs never collide.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::{RunVerdict, Summary, call_label};
use crate::verify::{
    checker::{CallReport, INVARIANTS, Verdict},
    tracefile::{Header, WallClock},
};

mod series {
    include!(concat!(env!("OUT_DIR"), "/kernel_patch.rs"));
}

/// The schema version written; kcidb-io's LATEST (v5.3) validates exactly this.
pub const SCHEMA: (u32, u32) = (5, 3);

/// KCIDB's log_excerpt limit.
const EXCERPT_MAX: usize = 16384;

/// `--kcidb-origin`: KCIDB allows `[a-z0-9_]+` (the schema's `origin_pattern`).
pub fn origin(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a KCIDB origin: use lower-case letters, digits and '_' (e.g. my_ci)"
        ))
    }
}

/// What the user asked for with the `--kcidb*` options.
#[derive(Clone, Debug)]
pub struct Options {
    pub path: PathBuf,
    pub origin: String,
    pub manifest: Option<PathBuf>,
    pub tree: Option<String>,
    /// `--expect-snapshots`: calls short of it are MISS.
    pub expected: usize,
}

/// The parts of `build-kernel`'s manifest.json the report uses. Read here by field name
/// rather than through xtask's type: the manifest's format is its documented JSON, and
/// ploop-verify runs where xtask does not exist.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    built_at_unix: u64,
    cc: String,
    config: ManifestConfig,
    kernel_version: String,
    kernelrelease: String,
    mode: String,
    patches: Vec<ManifestPatch>,
    src: PathBuf,
    timings_s: BTreeMap<String, f64>,
    tool: String,
}

#[derive(Clone, Debug, Deserialize)]
struct ManifestConfig {
    from: Option<PathBuf>,
    sha256: String,
}

#[derive(Clone, Debug, Deserialize)]
struct ManifestPatch {
    name: String,
    sha256: String,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a build-kernel manifest", path.display()))?;
        if m.tool != "cargo xtask build-kernel" {
            bail!("{}: written by {:?}, not cargo xtask build-kernel", path.display(), m.tool);
        }
        Ok(m)
    }
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in Sha256::digest(data) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// KCIDB's `patchset_hash` from each patch's sha256 in order: the schema's own definition,
/// `sha256sum *.patch | cut -c-64 | sha256sum | cut -c-64`; empty for no patches.
pub fn patchset_hash<'a>(patch_sha256s: impl IntoIterator<Item = &'a str>) -> String {
    let lines: String = patch_sha256s.into_iter().map(|h| format!("{h}\n")).collect();
    if lines.is_empty() { String::new() } else { sha256_hex(lines.as_bytes()) }
}

/// The embedded kernel-patch/ series: (file name, sha256).
pub fn embedded_series() -> Vec<(&'static str, String)> {
    series::SERIES.iter().map(|(name, data)| (*name, sha256_hex(data))).collect()
}

/// RFC 3339 UTC time of a Unix timestamp (KCIDB's `date-time`), without a date crate.
fn rfc3339(unix: u64) -> String {
    let (days, secs) = ((unix / 86400) as i64, unix % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00", secs / 3600, secs / 60 % 60, secs % 60)
}

/// RFC 3339 in UTC with microseconds, from ns since the epoch.
fn rfc3339_us(unix_ns: u64) -> String {
    let secs = rfc3339(unix_ns / 1_000_000_000);
    let (date_time, zone) = secs.split_at(secs.len() - "+00:00".len());
    format!("{date_time}.{:06}{zone}", unix_ns % 1_000_000_000 / 1000)
}

fn excerpt(s: &str) -> String {
    if s.len() <= EXCERPT_MAX {
        return s.to_string();
    }
    let mut end = EXCERPT_MAX - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The KCIDB writer of one run, fed call by call like the other per-call reports.
pub struct Kcidb {
    pub opts: Options,
    manifest: Option<Manifest>,
    header: String,
    release: String,
    run: Option<String>,
    /// From the trace's header: when each test started (absent in traces without it).
    clock: Option<WallClock>,
}

impl Kcidb {
    /// Reads the manifest now, so that a wrong one fails before a long run, not after it.
    pub fn new(opts: Options, header: &Header) -> Result<Self> {
        let manifest = opts.manifest.as_deref().map(Manifest::read).transpose()?;
        let release =
            header.kernel.get("release").and_then(Value::as_str).unwrap_or("unknown").to_string();
        if let Some(m) = &manifest
            && m.kernelrelease != release
            && release != "unknown"
        {
            bail!(
                "--kcidb-manifest is the build of {}, but the kernel traced is {release}",
                m.kernelrelease
            );
        }
        Ok(Kcidb {
            opts,
            manifest,
            header: serde_json::to_string(header)?,
            release,
            run: None,
            clock: header.clock,
        })
    }

    /// The run's id: fixed by the first judged call (or, without one, at the end).
    pub fn run_id(&mut self, first: Option<&CallReport>) -> String {
        if let Some(r) = &self.run {
            return r.clone();
        }
        let mut seed = self.header.clone();
        if let Some(r) = first {
            let _ = write!(seed, "\n{} {} {}", r.call.start_ns, r.call.tid, r.call.seq);
        }
        let id = sha256_hex(seed.as_bytes())[..16].to_string();
        self.run = Some(id.clone());
        id
    }

    /// KCIDB's start_time of something that began at the monotonic instant `mono_ns`.
    fn start_time(&self, mono_ns: u64) -> Option<Value> {
        self.clock.map(|c| json!(rfc3339_us(c.realtime_of(mono_ns))))
    }

    /// The run's start: when its trace began.
    fn run_start_time(&self) -> Option<Value> {
        self.clock.map(|c| json!(rfc3339_us(c.realtime_ns)))
    }

    fn id(&self, what: &str) -> String {
        format!("{}:{}", self.opts.origin, what)
    }

    fn build_id(&self) -> String {
        match &self.manifest {
            Some(m) => self.id(&format!(
                "build-{}",
                &sha256_hex(
                    format!(
                        "{}\n{}\n{}\n{}",
                        m.kernelrelease,
                        m.config.sha256,
                        m.built_at_unix,
                        m.src.display()
                    )
                    .as_bytes()
                )[..16]
            )),
            None => self.id(&format!("kernel-{}", &sha256_hex(self.release.as_bytes())[..16])),
        }
    }

    fn environment(&self) -> Value {
        json!({"comment": format!("kernel {}", self.release)})
    }

    /// One call's tests, each as `,\n{...}` (the head ends with the run's own test).
    /// `run`: [`Kcidb::run_id`] of the first call.
    pub fn call(&self, run: &str, r: &CallReport, out: &mut String) {
        let c = &r.call;
        let duration = c.end_ns.map(|e| e.saturating_sub(c.start_ns) as f64 / 1e9);
        let label = call_label(r);
        for (inv, (id, v)) in INVARIANTS.iter().zip(&r.verdicts) {
            let (status, why) = match v {
                Verdict::Pass => ("PASS", None),
                Verdict::Fail(why) => ("FAIL", Some(why.as_str())),
                Verdict::NotApplicable(why) => ("SKIP", Some(why.as_ref())),
                Verdict::Deferred => ("SKIP", Some("undecided")),
            };
            let mut t = json!({
                "build_id": self.build_id(),
                "id": self.id(&format!("{run}.{}.{id}", c.seq)),
                "origin": self.opts.origin,
                "path": format!("ploop_verify.{id}"),
                "status": status,
                "comment": format!("{id} {}: {}", label, inv.title),
                "environment": self.environment(),
                "misc": {
                    "snapshot": c.seq, "pid": c.pid, "tid": c.tid, "comm": c.comm,
                    "device": c.device_name(), "ret": c.result(), "request": c.request_shape(),
                },
            });
            if let Some(why) = why {
                t["log_excerpt"] = json!(excerpt(why));
            }
            if let Some(d) = duration {
                t["duration"] = json!(d);
            }
            if let Some(st) = self.start_time(c.start_ns) {
                t["start_time"] = st;
            }
            let _ = write!(out, ",\n{t}");
        }
    }

    /// Everything before the per-call tests: version, checkout, build, the run's test and,
    /// aggregated, one test per invariant; then MISS tests. `failing`: the number of failing
    /// calls that follow, when aggregated.
    pub fn head(&mut self, s: &Summary, calls: usize, aggregated: Option<usize>) -> String {
        let run = self.run_id(None);
        let (patches, patches_from, valid) = match &self.manifest {
            Some(m) => (
                m.patches.iter().map(|p| (p.name.clone(), p.sha256.clone())).collect::<Vec<_>>(),
                "the build-kernel manifest (applied)",
                Some(true),
            ),
            None => (
                embedded_series().into_iter().map(|(n, h)| (n.to_string(), h)).collect(),
                "ploop-verify's kernel-patch/ series, the patch it verifies (not known to be \
                 applied to this kernel: no --kcidb-manifest)",
                None,
            ),
        };
        let hash = patchset_hash(patches.iter().map(|(_, h)| h.as_str()));
        let tree_key = match &self.manifest {
            Some(m) => format!("{}\n{}", m.src.display(), m.kernel_version),
            None => self.release.clone(),
        };
        let checkout_id = self.id(&format!(
            "checkout-{}",
            &sha256_hex(format!("{tree_key}\n{hash}").as_bytes())[..16]
        ));
        let mut checkout = json!({
            "id": checkout_id,
            "origin": self.opts.origin,
            "patchset_hash": hash,
            "comment": match &self.manifest {
                Some(m) => format!("kernel {} from {} with {} patch(es)", m.kernel_version, m.src.display(), patches.len()),
                None => format!("kernel {} (as running) and the ploop patch series", self.release),
            },
            "misc": {
                "patches": patches.iter().map(|(n, h)| json!({"name": n, "sha256": h})).collect::<Vec<_>>(),
                "patches_from": patches_from,
                "kernel_patch_observed": super::patch_text(&s.kernel_patch),
            },
        });
        if let Some(t) = &self.opts.tree {
            checkout["tree_name"] = json!(t);
        }
        if let Some(v) = valid {
            checkout["valid"] = json!(v);
        }
        let build = match &self.manifest {
            Some(m) => {
                let mut b = json!({
                    "id": self.build_id(),
                    "checkout_id": checkout_id,
                    "origin": self.opts.origin,
                    "architecture": std::env::consts::ARCH,
                    "compiler": m.cc,
                    "start_time": rfc3339(m.built_at_unix),
                    "status": "PASS",
                    "comment": format!("cargo xtask build-kernel ({}) of {}: {}", m.mode, m.src.display(), m.kernelrelease),
                    "config_name": m.config.from.as_ref().and_then(|p| p.file_name()).map_or_else(|| ".config of the tree".to_string(), |n| n.to_string_lossy().into_owned()),
                    "misc": {"kernelrelease": m.kernelrelease, "mode": m.mode, "config_sha256": m.config.sha256},
                });
                if let Some(t) = m.timings_s.get("total") {
                    b["duration"] = json!(t);
                }
                b
            }
            None => json!({
                "id": self.build_id(),
                "checkout_id": checkout_id,
                "origin": self.opts.origin,
                "architecture": std::env::consts::ARCH,
                "comment": format!("the running kernel {}, not built by build-kernel (no --kcidb-manifest)", self.release),
                "misc": {"kernelrelease": self.release},
            }),
        };
        let status = match s.verdict {
            RunVerdict::Clean => "PASS",
            RunVerdict::Violations => "FAIL",
            RunVerdict::NothingVerified => "ERROR",
        };
        let mut root = json!({
            "build_id": self.build_id(),
            "id": self.id(&run),
            "origin": self.opts.origin,
            "path": "ploop_verify",
            "status": status,
            "comment": format!(
                "ploop-verify {}: {} snapshot calls, {} violations, {} events, {} lost",
                s.verdict, s.snapshots, s.violations, s.events, s.lost
            ),
            "environment": self.environment(),
            "misc": {
                "tool": s.tool, "snapshots": s.snapshots, "violations": s.violations,
                "incomplete": s.incomplete, "events": s.events, "lost": s.lost,
                "aggregated": aggregated.is_some(),
                "probes": super::probes_text(s),
                "report_set": s.report_set.id, "clients": s.clients, "succeeded": s.succeeded,
            },
        });
        if let Some(r) = &s.reason {
            root["log_excerpt"] = json!(excerpt(r));
        }
        let run_start = self.run_start_time();
        if let Some(st) = &run_start {
            root["start_time"] = st.clone();
        }
        let mut out = format!(
            "{{\"version\": {{\"major\": {}, \"minor\": {}}},\n\"checkouts\": [{checkout}],\n\"builds\": [{build}],\n\"tests\": [\n{root}",
            SCHEMA.0, SCHEMA.1
        );
        let mut test = |id: String, path: String, status: &str, comment: String, misc: Value| {
            let mut t = json!({
                "build_id": self.build_id(), "id": self.id(&id), "origin": self.opts.origin,
                "path": path, "status": status, "comment": comment,
                "environment": self.environment(), "misc": misc,
            });
            if let Some(st) = &run_start {
                t["start_time"] = st.clone();
            }
            let _ = write!(out, ",\n{t}");
        };
        if aggregated.is_some() {
            for i in &s.invariants {
                let status = match (i.fail, i.pass) {
                    (0, 0) => "SKIP",
                    (0, _) => "PASS",
                    _ => "FAIL",
                };
                test(
                    format!("{run}.all.{}", i.id),
                    format!("ploop_verify.{}", i.id),
                    status,
                    format!(
                        "{}: {} (aggregated over {calls} snapshot calls: pass {}, fail {}, n/a {}; \
                         each failing call has its own tests)",
                        i.id, i.title, i.pass, i.fail, i.not_applicable
                    ),
                    json!({"aggregated": true, "calls": calls, "pass": i.pass, "fail": i.fail, "not_applicable": i.not_applicable}),
                );
            }
        }
        for p in &s.status {
            test(
                format!("{run}.status.{}", p.kind),
                "ploop_verify.run_status".into(),
                "ERROR",
                format!("the run's status: {}", p.text),
                json!({"kind": p.kind}),
            );
        }
        // Calls expected and not seen, and calls seen that never completed: their verdicts
        // are unknown because the observation fell short.
        let expected = self.opts.expected.max(1);
        let unseen = expected.saturating_sub(s.snapshots);
        if unseen + s.incomplete > 0 {
            for inv in INVARIANTS {
                test(
                    format!("{run}.missing.{}", inv.id),
                    format!("ploop_verify.{}", inv.id),
                    "MISS",
                    format!(
                        "{}: {} (not judged: {unseen} of {expected} expected snapshot calls not \
                         seen, {} seen and never completed)",
                        inv.id, inv.title, s.incomplete
                    ),
                    json!({"expected": expected, "unseen": unseen, "incomplete": s.incomplete}),
                );
            }
        }
        out
    }

    pub const TAIL: &'static str = "\n]}\n";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_charset_is_kcidbs() {
        assert!(origin("my_ci2").is_ok());
        for bad in ["", "My_CI", "my-ci", "a:b", "ci ci"] {
            assert!(origin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patchset_hash_is_the_schema_pipeline() {
        // printf 'a\nb\n' is what `sha256sum *.patch | cut -c-64` prints for hashes a, b.
        let (a, b) = (sha256_hex(b"one"), sha256_hex(b"two"));
        assert_eq!(
            patchset_hash([a.as_str(), b.as_str()]),
            sha256_hex(format!("{a}\n{b}\n").as_bytes())
        );
        assert_eq!(patchset_hash([]), "");
        assert!(!embedded_series().is_empty(), "kernel-patch/series is embedded");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20+00:00");
        assert_eq!(rfc3339(951_825_600), "2000-02-29T12:00:00+00:00");
        assert_eq!(rfc3339_us(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456+00:00");
        assert_eq!(rfc3339_us(5_000), "1970-01-01T00:00:00.000005+00:00");
    }

    #[test]
    fn excerpts_fit_kcidbs_limit() {
        let long = "é".repeat(EXCERPT_MAX);
        let e = excerpt(&long);
        assert!(e.len() <= EXCERPT_MAX && e.ends_with("..."));
        assert_eq!(excerpt("short"), "short");
    }
}
