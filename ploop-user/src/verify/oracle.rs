//! X1, the oracle: after a successful snapshot with `PLOOP_FLAG_FS_SYNC`, is the image that
//! has just become read-only (the lower deltas, every level below the new top) mountable
//! read-only without a journal replay? Live only: it reads the delta files, read-only, after
//! the ioctl returned, through the layers the call's device stack records (partition,
//! dm-crypt with the user's key, dm-linear), and asks ext4's superblock there.
//!
//! It judges on its own thread ([`Worker`]): a judgement costs milliseconds to hundreds of
//! them (reading deltas, deciphering), and the event loop must not wait for it (T2 is reported
//! from that loop while a call hangs). The checker holds the call until its finding arrives
//! (X1 is [`Verdict::Deferred`](crate::verify::checker::Verdict) meanwhile); the finding is
//! recorded in the trace (`{"record":"oracle",...}`) when it arrives, after the event that
//! completed the call, so the checker's X1 and a replay read the same finding and never the
//! files. (Older traces hold it just before that event; the checker takes either.)
//!
//! Finding the lower deltas: the ploop device lists its deltas in sysfs
//! (`/sys/block/ploopN/pdelta/<level>/image`, vz7 and the model driver). The new top is the
//! file of chunk #0's fd, identified (filesystem and inode number) by the probe in the
//! caller's fd table at the call's entry: by the time user space handles the call, a short
//! snapshot's caller may have exited (measured: `/proc/PID/fd` was gone for every
//! autodetection call of the live test). The levels below the new top are the old snapshot;
//! sealed deltas never change again, so a later snapshot on the device does not disturb them.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    image::{self, Locate, crypt::CryptTable, ext4},
    kernel::KDev,
    verify::checker::Call,
    verify::events::FileId,
    verify::stack::Stack,
};

/// Whether the oracle judges `call`, a completed call, and so whether X1 waits for a finding
/// on it: a successful snapshot with `PLOOP_FLAG_FS_SYNC` (the lower deltas have just become
/// the old snapshot, and the filesystem should have been frozen while they did). The one
/// place this rule lives.
pub fn awaits_finding(call: &Call) -> bool {
    call.request.fs_sync() && call.result() == Some(0)
}

/// What the oracle concluded about one call's old snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OracleVerdict {
    /// ext4 there carries no `needs_recovery`: X1 passes.
    Clean,
    /// ext4 there needs a journal replay: X1 fails.
    NeedsRecovery,
    /// The oracle could not judge (no key for dm-crypt, not ext4, a delta unreadable): X1 n/a.
    #[serde(rename = "n/a")]
    NotApplicable,
}

/// One trace record: the oracle's finding on call `seq` (thread `tid`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    pub seq: u64,
    pub tid: u32,
    pub verdict: OracleVerdict,
    /// Why it could not judge (n/a), else empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
    /// The call's new top delta (chunk #0's file), where it was known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub top: String,
    /// The delta files read, bottom first: every level below `top`.
    #[serde(default)]
    pub deltas: Vec<String>,
    /// Where the filesystem was looked for inside them ("partition 1, dm-crypt, dm-linear
    /// offset 0").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub at: String,
    /// What the judgement cost, from the call's return seen to the verdict (microseconds).
    pub cost_us: u64,
}

/// The live oracle: where it reads, and the key.
pub struct Oracle {
    key: Option<CryptTable>,
    sys: PathBuf,
}

impl Oracle {
    /// `key`: a file holding the dm-crypt table as `dmsetup table --showkeys` prints it.
    pub fn new(key: Option<&Path>) -> anyhow::Result<Oracle> {
        use anyhow::Context as _;
        let key = match key {
            None => None,
            Some(p) => {
                let text = fs::read_to_string(p)
                    .with_context(|| format!("reading the oracle key {}", p.display()))?;
                // The first crypt line: a dmsetup dump of a whole stack may come in.
                let line = text
                    .lines()
                    .find(|l| l.split_whitespace().nth(2) == Some("crypt"))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: no dm-crypt table line (`dmsetup table --showkeys NAME`)",
                            p.display()
                        )
                    })?;
                Some(CryptTable::parse(line).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)
            }
        };
        Ok(Oracle { key, sys: PathBuf::from("/sys") })
    }

    /// The finding on `call`, a completed call that [`awaits_finding`].
    pub fn judge(&self, call: &Call) -> Finding {
        let t0 = Instant::now();
        let mut f = Finding {
            seq: call.seq,
            tid: call.tid,
            verdict: OracleVerdict::NotApplicable,
            why: String::new(),
            top: String::new(),
            deltas: Vec::new(),
            at: String::new(),
            cost_us: 0,
        };
        if let Err(why) = self.look(call, &mut f) {
            f.verdict = OracleVerdict::NotApplicable;
            f.why = why;
        }
        f.cost_us = t0.elapsed().as_micros() as u64;
        f
    }

    /// Fills `f`'s deltas, place and verdict; `Err` is the n/a reason.
    fn look(&self, call: &Call, f: &mut Finding) -> Result<(), String> {
        let top = call.request.delta.ok_or(
            "the new delta (chunk #0's file) was not identified by the probe at the call's entry",
        )?;
        let dev = call.ploop_dev.ok_or("the ploop device number was not read")?;
        let stack = call.stack.as_deref().ok_or("no device stack was recorded")?;
        let levels = self.levels(dev)?;
        let at = levels.iter().position(|p| same_file(p, top)).ok_or_else(|| {
            format!(
                "the new delta (inode {} on {}) is not among the device's deltas ({})",
                top.ino,
                top.dev,
                if levels.is_empty() { "none listed".to_string() } else { levels.join(", ") }
            )
        })?;
        f.top = levels[at].clone();
        if at == 0 {
            return Err(format!("the new delta {} is the base: no delta below it", f.top));
        }
        f.deltas = levels[..at].to_vec();
        let (locate, place) = self.locate(stack)?;
        f.at = place;
        let image = image::Stack::open_detected(&f.deltas)
            .map_err(|e| format!("reading the deltas: {e}"))?;
        let fs = locate.open(&image).map_err(|e| format!("locating the filesystem: {e}"))?;
        let report =
            ext4::superblock_verdict(&*fs).map_err(|e| format!("reading the superblock: {e}"))?;
        f.verdict = match report.verdict {
            ext4::Verdict::Clean => OracleVerdict::Clean,
            ext4::Verdict::NeedsRecovery => OracleVerdict::NeedsRecovery,
            ext4::Verdict::NotExt4 { reason } => return Err(reason),
        };
        Ok(())
    }

    /// The device's delta files by level, bottom first (`pdelta/<level>/image`).
    fn levels(&self, dev: KDev) -> Result<Vec<String>, String> {
        let disk = self.sys.join("dev/block").join(dev.to_string());
        let pdelta = disk.join("pdelta");
        let rd = fs::read_dir(&pdelta).map_err(|e| {
            format!("{} is not listed ({e}): the driver has no per-delta sysfs", pdelta.display())
        })?;
        let mut levels: Vec<(u32, String)> = Vec::new();
        for ent in rd.flatten() {
            let Some(level) = ent.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // A level removed meanwhile (the device cleared) has no image any more.
            if let Ok(image) = fs::read_to_string(ent.path().join("image")) {
                levels.push((level, image.trim_end_matches('\n').to_string()));
            }
        }
        levels.sort();
        // Levels are dense from 0; a gap means the listing raced a change.
        if levels.iter().enumerate().any(|(i, (l, _))| *l as usize != i) {
            return Err(format!("{}: levels are not 0..N: the device changed", pdelta.display()));
        }
        Ok(levels.into_iter().map(|(_, p)| p).collect())
    }

    /// The layers from the ploop disk to the mounted filesystem, as the stack records them.
    fn locate(&self, stack: &Stack) -> Result<(Locate, String), String> {
        let path = path_to_filesystem(stack)?;
        let mut loc = Locate::default();
        let mut place = Vec::new();
        for pair in path.windows(2) {
            let (below, above) = (pair[0], pair[1]);
            let lower = stack.device(below).ok_or("a device left the stack")?;
            let upper = stack.device(above).ok_or("a device left the stack")?;
            if lower.partitions.contains(&above) {
                let n = self.partition_number(&upper.name)?;
                if loc.partition.is_some() || loc.crypt.is_some() || loc.linear_offset.is_some() {
                    return Err(format!("{} is a partition above another layer", upper.name));
                }
                loc.partition = Some(n);
                place.push(format!("partition {n}"));
                continue;
            }
            let table = dm_table(&self.sys, &upper.name)?;
            let [t] = table.as_slice() else {
                return Err(format!("{}: a table of {} targets", upper.name, table.len()));
            };
            match t.kind.as_str() {
                "crypt" if loc.crypt.is_none() && loc.linear_offset.is_none() => {
                    let key = self.key.clone().ok_or_else(|| {
                        format!("{} is dm-crypt and no --oracle-key was given", upper.name)
                    })?;
                    place.push(format!("dm-crypt {} ({})", upper.name, key.cipher));
                    loc.crypt = Some(key);
                }
                "linear" if loc.linear_offset.is_none() && t.start == 0 => {
                    let off = t
                        .params
                        .split_whitespace()
                        .nth(1)
                        .and_then(|o| o.parse::<u64>().ok())
                        .ok_or_else(|| format!("{}: linear params {:?}", upper.name, t.params))?;
                    place.push(format!("dm-linear {} offset {off}", upper.name));
                    loc.linear_offset = Some(off);
                }
                kind => {
                    return Err(format!(
                        "{} is dm {kind} at this place in the stack: not read here",
                        upper.name
                    ));
                }
            }
        }
        let place = if place.is_empty() { "the whole device".into() } else { place.join(", ") };
        Ok((loc, place))
    }

    fn partition_number(&self, name: &str) -> Result<u32, String> {
        let p = self.sys.join("class/block").join(name).join("partition");
        fs::read_to_string(&p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("{}: no partition number", p.display()))
    }
}

/// The oracle on a thread of its own: calls go in, findings come out in the same order.
pub struct Worker {
    calls: Option<mpsc::Sender<Call>>,
    findings: mpsc::Receiver<Finding>,
    /// Calls sent whose finding has not come back.
    pending: usize,
}

impl Worker {
    pub fn start(oracle: Oracle) -> anyhow::Result<Worker> {
        let (calls, todo) = mpsc::channel::<Call>();
        let (done, findings) = mpsc::channel();
        std::thread::Builder::new().name("oracle".into()).spawn(move || {
            for call in todo {
                if done.send(oracle.judge(&call)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Worker { calls: Some(calls), findings, pending: 0 })
    }

    /// Queues `call` for judgement; never waits.
    pub fn judge(&mut self, call: Call) {
        // A send fails only if the thread died (a panic): its calls then stay n/a.
        if self.calls.as_ref().is_some_and(|c| c.send(call).is_ok()) {
            self.pending += 1;
        }
    }

    /// The findings ready now; never waits.
    pub fn ready(&mut self) -> Vec<Finding> {
        let out: Vec<Finding> = self.findings.try_iter().collect();
        self.pending -= out.len();
        out
    }

    /// At the end of the run: the findings still to come, waited for at most `wait` in all
    /// (a judgement stuck in I/O must not keep the run from ending; its call's X1 is n/a).
    pub fn finish(mut self, wait: Duration) -> Vec<Finding> {
        self.calls = None;
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while self.pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.findings.recv_timeout(left) {
                Ok(f) => {
                    self.pending -= 1;
                    out.push(f);
                }
                Err(_) => break,
            }
        }
        out
    }
}

/// Whether `path` is the file `id` (a path the driver printed, the file it holds).
fn same_file(path: &str, id: FileId) -> bool {
    fs::metadata(path).is_ok_and(|m| m.ino() == id.ino && KDev::from_user(m.dev()) == id.dev)
}

/// The chain of devices from the ploop disk up to the nearest mounted filesystem.
fn path_to_filesystem(stack: &Stack) -> Result<Vec<KDev>, String> {
    let fs =
        stack.filesystems_on(stack.ploop_dev).first().map(|d| d.dev).ok_or_else(|| {
            format!("no filesystem mounted above {}", stack.name(stack.ploop_dev))
        })?;
    // Breadth first with parents: the stack is a small tree.
    let mut parent: HashMap<KDev, KDev> = HashMap::new();
    let mut todo = std::collections::VecDeque::from([stack.ploop_dev]);
    while let Some(d) = todo.pop_front() {
        if d == fs {
            break;
        }
        let Some(sd) = stack.device(d) else { continue };
        for &up in sd.partitions.iter().chain(&sd.holders) {
            if up != stack.ploop_dev && !parent.contains_key(&up) {
                parent.insert(up, d);
                todo.push_back(up);
            }
        }
    }
    let mut path = vec![fs];
    while let Some(&p) = parent.get(path.last().expect("never empty")) {
        path.push(p);
    }
    path.reverse();
    if path[0] != stack.ploop_dev {
        return Err("the filesystem is not stacked on the ploop device".into());
    }
    Ok(path)
}

/// The table of dm device `name` (`dm-N`), by its dm name in sysfs.
fn dm_table(sys: &Path, name: &str) -> Result<Vec<crate::kit::dm::Target>, String> {
    let p = sys.join("class/block").join(name).join("dm/name");
    let dm_name = fs::read_to_string(&p)
        .map_err(|e| format!("{name} is neither a partition nor a dm device ({e})"))?;
    crate::kit::dm::table(dm_name.trim()).map_err(|e| format!("{name}: {e:#}"))
}

/// min / median / max of the costs, in ms, for the run's closing lines.
pub fn cost_line(costs: &[u64]) -> Option<String> {
    if costs.is_empty() {
        return None;
    }
    // The tool's one percentile definition, so this median agrees with every other figure.
    let mut d = crate::stats::Distribution::default();
    costs.iter().for_each(|&c| d.record(c));
    let ms = |us: u64| us as f64 / 1e3;
    Some(format!(
        "oracle: {} snapshot(s) judged, cost per snapshot: min {:.2} ms, median {:.2} ms, max \
         {:.2} ms",
        d.count(),
        ms(d.percentile(0.0)),
        ms(d.percentile(50.0)),
        ms(d.max())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::stack::StackDev;

    fn dev(s: &str) -> KDev {
        s.parse().unwrap()
    }

    fn sd(d: &str, name: &str, holders: &[&str], parts: &[&str], mounted: bool) -> StackDev {
        StackDev {
            dev: dev(d),
            name: name.into(),
            holders: holders.iter().map(|h| dev(h)).collect(),
            partitions: parts.iter().map(|h| dev(h)).collect(),
            mounts: if mounted { vec!["/mnt".into()] } else { vec![] },
            fstype: mounted.then(|| "ext4".into()),
        }
    }

    /// ploop0 -> ploop0p1 -> dm-0 (crypt) -> dm-1 (linear) -> ext4: the path the oracle reads
    /// through, bottom first; another branch (ploop0p2, unmounted) is not on it.
    #[test]
    fn the_path_runs_from_the_disk_to_the_mounted_filesystem() {
        let s = Stack {
            ploop_dev: dev("253:0"),
            devices: vec![
                sd("253:0", "ploop0", &[], &["253:1", "253:2"], false),
                sd("253:2", "ploop0p2", &[], &[], false),
                sd("253:1", "ploop0p1", &["254:0"], &[], false),
                sd("254:0", "dm-0", &["254:1"], &[], false),
                sd("254:1", "dm-1", &[], &[], true),
            ],
            others: vec![],
        };
        let p = path_to_filesystem(&s).unwrap();
        assert_eq!(p, [dev("253:0"), dev("253:1"), dev("254:0"), dev("254:1")]);
        let none =
            Stack { ploop_dev: dev("253:0"), devices: vec![s.devices[0].clone()], others: vec![] };
        assert!(path_to_filesystem(&none).unwrap_err().contains("no filesystem mounted"));
    }

    #[test]
    fn findings_round_trip_as_trace_records() {
        let f = Finding {
            seq: 3,
            tid: 9,
            verdict: OracleVerdict::NotApplicable,
            why: "no key".into(),
            top: String::new(),
            deltas: vec!["/tmp/a".into()],
            at: String::new(),
            cost_us: 1200,
        };
        let line = crate::verify::tracefile::TraceLine::Oracle(f.clone());
        let text = serde_json::to_string(&line).unwrap();
        assert!(
            text.starts_with(r#"{"record":"oracle","seq":3,"tid":9,"verdict":"n/a""#),
            "{text}"
        );
        match serde_json::from_str(&text).unwrap() {
            crate::verify::tracefile::TraceLine::Oracle(g) => assert_eq!(g, f),
            other => panic!("{other:?}"),
        }
        assert_eq!(cost_line(&[]), None);
        assert!(cost_line(&[3000, 1000, 2000]).unwrap().contains("median 2.00 ms"));
        // Nearest rank: of four, the median is the second.
        let four = cost_line(&[4000, 1000, 3000, 2000]).unwrap();
        assert!(four.contains("min 1.00 ms, median 2.00 ms, max 4.00 ms"), "{four}");
    }
}
