//! `testkit fuzz-snapshot` and `testkit snapshot-bench`: PLOOP_IOC_SNAPSHOT under random
//! requests from several threads at once, and its latency.
//!
//! The fuzzer predicts the errno of every request from the contract (CONTRACT.md 1-5: EFAULT,
//! EINVAL for chunk #1, ENOTSUPP or the unpatched EINVAL for the count, ENODEV for a sync fd
//! without a block device) and counts every answer that does not fit. What comes after the
//! contract's checks (the new delta's fd) is driver specific: there it only accepts the
//! errnos a delta can get (EBADF, EINVAL, EBUSY, E2BIG). EBUSY is always accepted while
//! several threads run (C1).

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsRawFd as _, RawFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;

use crate::{
    errno::Errno,
    kit::ploopctl::{self, Fault, GuardedBuf, PloopDev, Support, open_new_delta, open_sync_fd},
    ploop_abi::{self as abi, PLOOP_FLAG_FS_SYNC, PLOOP_FMT_RAW, PloopCtlChunk, Request},
    stats::Distribution,
};

/// Random PLOOP_IOC_SNAPSHOT requests (counts, flags, formats, chunk #1 fields, fds, cut-short
/// and bad buffers) from several threads at once, each answer checked against the contract.
///
/// Run it on a device with a mounted filesystem (through any dm stack) and pass the
/// mountpoint: its fd is one of the sync fds tried, and a writer thread keeps the filesystem
/// busy. Some requests are valid and really snapshot (each takes a new delta file in
/// --workdir, which must not be on the device). Needs the kernel's patched or unpatched
/// answer, found with the `support` probe first. Fails (exit 2) if any errno contradicts the
/// contract or a write to the filesystem stalls.
#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// The ploop device (with a delta).
    #[arg(long, value_name = "DEVICE")]
    pub device: PathBuf,
    /// Requests in all (shared by the threads).
    #[arg(long, default_value_t = 2000)]
    pub iterations: u64,
    /// Seed of the random generator (the same seed, the same requests per thread).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Threads sending snapshots at the same time.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Mountpoint of the filesystem on the device: a sync fd candidate, and written to
    /// meanwhile.
    #[arg(long, value_name = "DIR")]
    pub mountpoint: Option<PathBuf>,
    /// Directory for the fuzzer's delta files: on a filesystem without a block device (tmpfs)
    /// and never on the device itself.
    #[arg(long, value_name = "DIR", default_value = "/tmp")]
    pub workdir: PathBuf,
}

/// Time PLOOP_IOC_SNAPSHOT: COUNT snapshots, each after writing some data to the
/// filesystem; prints min, p50, p90, max and mean of the ioctl alone.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The ploop device (with a delta).
    #[arg(long, value_name = "DEVICE")]
    pub device: PathBuf,
    #[arg(long, default_value_t = 50)]
    pub count: u32,
    /// Pass this mountpoint as the sync fd (pctl_chunks=2); else the autodetection runs.
    #[arg(long, value_name = "MOUNTPOINT")]
    pub sync_fd_from: Option<PathBuf>,
    /// Leave PLOOP_FLAG_FS_SYNC out.
    #[arg(long)]
    pub no_fs_sync: bool,
    /// Before each snapshot, write this many KiB into a file in this directory (a
    /// mountpoint of the filesystem on the device).
    #[arg(long, value_name = "DIR")]
    pub write_to: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub write_kib: u32,
    /// Directory for the new delta files (not on the device).
    #[arg(long, value_name = "DIR", default_value = "/tmp")]
    pub workdir: PathBuf,
    /// A label for the output line.
    #[arg(long, default_value = "snapshot")]
    pub label: String,
    /// Rate mode, for the event-loss benchmark: instead of --count snapshots, send
    /// PLOOP_IOC_SNAPSHOT calls the kernel refuses at once (pctl_chunks=0: -ENOTSUPP, or
    /// -EINVAL unpatched; no delta is made, no freeze) at CALLS per second (0: as fast as
    /// possible) for --seconds. Each is a snapshot call to a watching tool (about four
    /// events), so the achieved rate and what the tool lost show where it stops keeping up.
    #[arg(long, value_name = "CALLS")]
    pub rate: Option<u32>,
    /// How long rate mode runs, in seconds.
    #[arg(long, default_value_t = 2.0, requires = "rate", value_parser = crate::workload::positive)]
    pub seconds: f64,
    /// The new deltas' format: raw or ploop1 (created empty, as libploop does, with the
    /// device's cluster size).
    #[arg(long, default_value = "raw", value_parser = ["raw", "ploop1"])]
    pub format: String,
    /// Snapshots made first and left out of the numbers: the first after a mount pays for
    /// the filesystem's first journal commit (60-90 ms in a TCG guest, against 3 ms after).
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "rate")]
    pub warmup: u32,
    /// Also print every latency (µs, in call order) on a `snapshot-bench-samples LABEL:`
    /// line: `cargo xtask bench` pools them across rounds for its confidence intervals.
    #[arg(long, conflicts_with = "rate")]
    pub samples: bool,
}

/// `--rate`: refused snapshot calls at a fixed pace; prints the calls made and the rate.
fn rate(a: &BenchArgs, target: u32) -> Result<()> {
    let dev = PloopDev::open(&a.device)?;
    let mut buf = GuardedBuf::new()?;
    let mut req = Request::one(PLOOP_FMT_RAW, 0, -1);
    req.ctl.pctl_chunks = 0;
    req.chunks.clear();
    let start = Instant::now();
    let until = std::time::Duration::from_secs_f64(a.seconds);
    let mut calls: u64 = 0;
    while start.elapsed() < until {
        if target > 0 {
            // Paced against the start, not the previous call: no drift, bursts catch up.
            let due = std::time::Duration::from_secs_f64(calls as f64 / f64::from(target));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        match ploopctl::send_snapshot(&dev, &mut buf, &req, Fault::None) {
            Err(Errno::ENOTSUPP | Errno::EINVAL) => calls += 1,
            Ok(()) => bail!("a snapshot with pctl_chunks=0 succeeded"),
            Err(e) => bail!("snapshot call {calls}: {}", e.numbered()),
        }
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "snapshot-bench {}: calls={calls} seconds={took:.2} achieved={:.0}/s target={target}/s",
        a.label,
        calls as f64 / took
    );
    Ok(())
}

/// splitmix64: small, fast, good enough for choosing test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// What an fd in a request refers to, as far as the oracle needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FdKind {
    /// A writable delta file of the device's size, never used.
    FreshDelta,
    /// A delta file of the right size opened read-only.
    RoDelta,
    /// A regular file of the wrong size.
    WrongSize,
    /// Not a regular file: a directory on tmpfs, /dev/null, the ploop device.
    NotRegular,
    /// The mountpoint of the filesystem on the device (a valid sync fd).
    Mountpoint,
    /// A small regular file on the filesystem on the device (a valid sync fd, a bad delta).
    MountedFile,
    /// Nothing open under this number (closed, negative, huge), but not -1.
    Closed,
    /// -1: "no sync fd" in chunk #1.
    MinusOne,
    /// A number picked at random that may or may not be open.
    Random,
}

impl FdKind {
    /// Does an fd of this kind have a block device under it (for a sync fd)?
    fn has_bdev(self) -> Option<bool> {
        match self {
            FdKind::Mountpoint | FdKind::MountedFile => Some(true),
            FdKind::Random => None,
            // delta files live on tmpfs, /dev/null and the device node on devtmpfs
            _ => Some(false),
        }
    }
}

/// Per-thread pool of open fds.
struct Pool {
    fresh: fs::File,
    fresh_path: PathBuf,
    seq: u64,
    tag: u32,
    size: u64,
    workdir: PathBuf,
    fixed: Vec<(RawFd, FdKind)>,
    _keep: Vec<fs::File>,
}

impl Pool {
    fn new(
        tag: u32,
        size: u64,
        workdir: &Path,
        mnt: Option<&Path>,
        dev: &PloopDev,
    ) -> Result<Self> {
        let mut keep = Vec::new();
        let mut fixed = Vec::new();
        let ro_path = workdir.join(format!("fuzz-{}-{tag}-ro.img", std::process::id()));
        let (ro, _) = open_new_delta(&ro_path, size, true, true)?;
        fixed.push((ro.as_raw_fd(), FdKind::RoDelta));
        keep.push(ro);
        let small = workdir.join(format!("fuzz-{}-{tag}-small.img", std::process::id()));
        let (s, created) = open_new_delta(&small, 4096, false, false)?;
        created.keep();
        fixed.push((s.as_raw_fd(), FdKind::WrongSize));
        keep.push(s);
        let dir = open_sync_fd(workdir)?;
        fixed.push((dir.as_raw_fd(), FdKind::NotRegular));
        keep.push(dir);
        let null = fs::File::open("/dev/null").context("opening /dev/null")?;
        fixed.push((null.as_raw_fd(), FdKind::NotRegular));
        keep.push(null);
        fixed.push((dev.file.as_raw_fd(), FdKind::NotRegular));
        if let Some(m) = mnt {
            let f = open_sync_fd(m)?;
            fixed.push((f.as_raw_fd(), FdKind::Mountpoint));
            keep.push(f);
            // A small file on the filesystem on the device: refused as a delta by its size
            // (never a same-size file there: a delta on its own device would deadlock).
            let p = m.join(format!(".fuzz-{tag}-small"));
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .with_context(|| format!("creating {}", p.display()))?;
            f.set_len(4096)?;
            fixed.push((f.as_raw_fd(), FdKind::MountedFile));
            keep.push(f);
        }
        let mut pool = Pool {
            fresh: null_file()?,
            fresh_path: PathBuf::new(),
            seq: 0,
            tag,
            size,
            workdir: workdir.to_path_buf(),
            fixed,
            _keep: keep,
        };
        pool.renew()?;
        Ok(pool)
    }

    /// A new never-used writable delta (after the last one became part of the device).
    fn renew(&mut self) -> Result<()> {
        self.seq += 1;
        // Unique per process: a file that is already a delta of the device gets EBUSY.
        let p =
            self.workdir.join(format!("fuzz-{}-{}-{}.img", std::process::id(), self.tag, self.seq));
        let (f, created) = open_new_delta(&p, self.size, false, true)?;
        created.keep();
        self.fresh = f;
        self.fresh_path = p;
        Ok(())
    }

    /// A delta fd for chunk #0.
    fn chunk0(&self, rng: &mut Rng) -> (RawFd, FdKind) {
        // Fresh deltas are taken for good (the device holds at most so many deltas): the
        // read-only delta goes as far (freeze, quiesce, thaw) without being taken.
        match rng.below(10) {
            0 | 1 => (self.fresh.as_raw_fd(), FdKind::FreshDelta),
            2 | 3 => self.fixed[0],
            4..=7 => self.fixed[rng.below(self.fixed.len() as u64) as usize],
            8 => (rng.pick(&[-5, -1, 9999, i32::MAX, i32::MIN]), FdKind::Closed),
            _ => (rng.below(64) as RawFd, FdKind::Random),
        }
    }

    /// A sync fd for chunk #1.
    fn sync(&self, rng: &mut Rng) -> (RawFd, FdKind) {
        match rng.below(10) {
            0..=2 => {
                let m = self.fixed.iter().find(|(_, k)| *k == FdKind::Mountpoint).copied();
                m.unwrap_or((-1, FdKind::MinusOne))
            }
            3 | 4 => (-1, FdKind::MinusOne),
            5..=7 => self.fixed[rng.below(self.fixed.len() as u64) as usize],
            8 => (rng.pick(&[-2, 4095, 99999, i32::MAX, i32::MIN]), FdKind::Closed),
            _ => (rng.below(64) as RawFd, FdKind::Random),
        }
    }
}

fn null_file() -> Result<fs::File> {
    fs::File::open("/dev/null").context("opening /dev/null")
}

/// What the kernel answers a request: success or an errno.
type Answer = Result<(), Errno>;

/// `ok` or the errno's name.
fn answer_name(a: Answer) -> String {
    match a {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    }
}

/// One random request and what the contract says about it.
struct Case {
    req: Request,
    fault: Fault,
    /// Exactly this answer is due, besides EBUSY from a concurrent snapshot.
    exact: Option<Answer>,
    /// Otherwise one of these.
    allowed: Vec<Answer>,
    fresh_used: bool,
}

fn random_case(rng: &mut Rng, pool: &Pool, patched: bool) -> Case {
    let chunks: u16 = match rng.below(20) {
        0..=6 => 1,
        7..=13 => 2,
        14 => 0,
        15 => 3,
        16 => 255,
        17 => u16::MAX,
        _ => rng.below(65536) as u16,
    };
    let format = match rng.below(10) {
        0..=6 => PLOOP_FMT_RAW,
        7 => 0,
        8 => abi::PLOOP_FMT_PLOOP1,
        _ => rng.next() as u32,
    };
    let flags = match rng.below(10) {
        0..=5 => PLOOP_FLAG_FS_SYNC,
        6 | 7 => 0,
        8 => PLOOP_FLAG_FS_SYNC | (rng.next() as u32 & 0x0fff_ffff),
        _ => rng.next() as u32,
    };
    let fault = match rng.below(20) {
        0 => Fault::Ctl,
        1 => Fault::Chunk0,
        2 => Fault::Chunk1,
        3 => Fault::Null,
        4 => Fault::Kernel,
        _ => Fault::None,
    };
    let (fd0, kind0) = pool.chunk0(rng);
    let (fd1, kind1) = pool.sync(rng);
    let mut c1 = PloopCtlChunk { pctl_fd: fd1, ..Default::default() };
    if rng.chance(25) {
        match rng.below(5) {
            0 => c1.pctl_type = 1 + rng.below(u32::MAX as u64) as u32,
            1 => c1.pctl_flags = 1 + rng.below(u32::MAX as u64) as u32,
            2 => c1.pctl_offset = 1 + rng.below(u32::MAX as u64) as u32,
            3 => c1.pctl_start = 1 + rng.below(u64::MAX),
            _ => c1.pctl_len = 1 + rng.below(u64::MAX),
        }
    }
    let mut c0 = PloopCtlChunk { pctl_fd: fd0, ..Default::default() };
    if rng.chance(10) {
        // chunk #0's other fields are not checked by the contract
        c0.pctl_start = rng.next();
        c0.pctl_len = rng.next();
        c0.pctl_type = rng.next() as u32;
    }
    let mut req = Request::one(format, flags, fd0);
    req.ctl.pctl_chunks = chunks;
    req.ctl.pctl_cluster_log = if rng.chance(10) { rng.next() as u32 } else { 0 };
    req.ctl.pctl_level = if rng.chance(10) { rng.next() as u8 } else { 0 };
    req.chunks = vec![c0, c1];

    // The contract's checks, in the kernel's order.
    let c1_nonzero = c1.pctl_type != 0
        || c1.pctl_flags != 0
        || c1.pctl_offset != 0
        || c1.pctl_start != 0
        || c1.pctl_len != 0;
    let ctl_fault = matches!(fault, Fault::Ctl | Fault::Null | Fault::Kernel);
    let mut exact = None;
    let mut allowed = Vec::new();
    let mut fresh_used = false;
    // The ctl, or (patched, two chunks) chunk #1, cannot be read.
    if ctl_fault || (patched && chunks == 2 && matches!(fault, Fault::Chunk0 | Fault::Chunk1)) {
        exact = Some(Err(Errno::EFAULT));
    } else if patched && chunks == 2 && c1_nonzero {
        exact = Some(Err(Errno::EINVAL));
    } else if chunks != 1 && !(patched && chunks == 2) {
        exact = Some(Err(if patched { Errno::ENOTSUPP } else { Errno::EINVAL }));
    } else if fault == Fault::Chunk0 {
        exact = Some(Err(Errno::EFAULT));
    } else if format != 0 && format != PLOOP_FMT_RAW && format != abi::PLOOP_FMT_PLOOP1 {
        exact = Some(Err(Errno::EINVAL));
    } else if req.ctl.pctl_cluster_log != 0
        || ![abi::PLOOP_IO_AUTO, abi::PLOOP_IO_DIRECT, abi::PLOOP_IO_KAIO].contains(&c0.pctl_type)
    {
        // the device's cluster log is 0 (a raw base attached without one); chunk #0's I/O
        // engine must be one vz7 has for a local file
        exact = Some(Err(Errno::EINVAL));
    } else if format == abi::PLOOP_FMT_PLOOP1 {
        // every delta in the pool is raw: no ploop1 header (and cluster log 0 is no ploop1
        // cluster size), refused at open, before anything is frozen
        match kind0 {
            FdKind::Closed | FdKind::MinusOne => exact = Some(Err(Errno::EBADF)),
            FdKind::NotRegular | FdKind::Mountpoint => exact = Some(Err(Errno::EINVAL)),
            // a regular file on a device full of deltas: E2BIG first
            _ => allowed = vec![Err(Errno::EBADF), Err(Errno::EINVAL), Err(Errno::E2BIG)],
        }
    } else {
        // Driver territory: the delta fd, then the freeze, then the switch.
        let sync = if patched && chunks == 2 { kind1 } else { FdKind::MinusOne };
        let fs_sync = flags & PLOOP_FLAG_FS_SYNC != 0;
        let nodev = fs_sync && sync != FdKind::MinusOne && sync.has_bdev() == Some(false);
        let maybe_nodev = fs_sync && sync.has_bdev().is_none();
        match kind0 {
            FdKind::FreshDelta => {
                exact = Some(if nodev { Err(Errno::ENODEV) } else { Ok(()) });
                fresh_used = true;
            }
            FdKind::RoDelta => exact = Some(Err(if nodev { Errno::ENODEV } else { Errno::EBADF })),
            FdKind::WrongSize | FdKind::MountedFile | FdKind::NotRegular | FdKind::Mountpoint => {
                exact = Some(Err(Errno::EINVAL))
            }
            FdKind::Closed | FdKind::MinusOne => exact = Some(Err(Errno::EBADF)),
            FdKind::Random => {
                allowed = vec![Ok(()), Err(Errno::EBADF), Err(Errno::EINVAL), Err(Errno::ENODEV)]
            }
        }
        if maybe_nodev && let Some(e) = exact.take() {
            allowed = vec![e, Err(Errno::ENODEV)];
        }
        // A device with the maximum number of deltas refuses any regular file with E2BIG
        // before the size check and the freeze. (A file on the filesystem above the device
        // gets that far too when a dm device sits in between: the driver only recognises its
        // own disk as the file's device.)
        if matches!(
            kind0,
            FdKind::FreshDelta
                | FdKind::RoDelta
                | FdKind::WrongSize
                | FdKind::MountedFile
                | FdKind::Random
        ) {
            allowed.extend(exact.take());
            allowed.push(Err(Errno::E2BIG));
        }
    }
    Case { req, fault, exact, allowed, fresh_used }
}

struct Shared {
    next: AtomicU64,
    results: Mutex<BTreeMap<String, u64>>,
    mismatches: Mutex<Vec<String>>,
    successes: AtomicU64,
    busy_retries: AtomicU64,
}

fn fuzz_thread(tag: u32, args: &FuzzArgs, patched: bool, size: u64, shared: &Shared) -> Result<()> {
    let dev = PloopDev::open(&args.device)?;
    let mut pool = Pool::new(tag, size, &args.workdir, args.mountpoint.as_deref(), &dev)?;
    let mut rng = Rng(args.seed ^ (u64::from(tag) << 32) ^ 0x5eed);
    let mut buf = GuardedBuf::new()?;
    let concurrent = args.threads > 1;
    while shared.next.fetch_add(1, Ordering::Relaxed) < args.iterations {
        let case = random_case(&mut rng, &pool, patched);
        // EBUSY (another thread's snapshot is in its maintenance window) comes back in
        // microseconds while a freeze takes milliseconds: retry the same request for a while,
        // so that every request gets its own answer checked, not just EBUSY.
        let mut busy = 0;
        let got = loop {
            match ploopctl::send_snapshot(&dev, &mut buf, &case.req, case.fault) {
                Err(Errno::EBUSY) if concurrent && busy < 200 => {
                    busy += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                answer => break answer,
            }
        };
        if busy > 0 {
            shared.busy_retries.fetch_add(busy, Ordering::Relaxed);
        }
        let name = answer_name(got);
        *shared.results.lock().unwrap().entry(name.clone()).or_default() += 1;
        let fits = case.exact == Some(got)
            || case.allowed.contains(&got)
            || (got == Err(Errno::EBUSY) && concurrent);
        if !fits {
            let want = match case.exact {
                Some(a) => answer_name(a),
                None => case.allowed.iter().map(|&a| answer_name(a)).collect::<Vec<_>>().join("|"),
            };
            shared.mismatches.lock().unwrap().push(format!(
                "thread {tag}: got {name}, want {want}: {:?} chunks {:?} fault {:?}",
                case.req.ctl, case.req.chunks, case.fault
            ));
        }
        if got.is_ok() {
            shared.successes.fetch_add(1, Ordering::Relaxed);
        }
        // After a success the fresh delta (or what a random fd named: maybe another thread's
        // fresh delta, which that thread then sees as EBUSY) is part of the device.
        if got.is_ok() || (case.fresh_used && got == Err(Errno::EBUSY)) {
            pool.renew()?;
        }
    }
    Ok(())
}

/// Writes to the filesystem until told to stop; returns (writes, slowest write).
fn writer(dir: &Path, stop: &AtomicBool) -> Result<(u64, Duration)> {
    use std::io::Write as _;
    let p = dir.join(".fuzz-writer");
    let data = vec![0x5au8; 64 << 10];
    let (mut n, mut worst) = (0, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let mut f = fs::File::create(&p).with_context(|| format!("writing {}", p.display()))?;
        f.write_all(&data)?;
        f.sync_all()?;
        worst = worst.max(t.elapsed());
        n += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = fs::remove_file(&p);
    Ok((n, worst))
}

pub fn fuzz(args: FuzzArgs) -> Result<()> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let dev = PloopDev::open(&args.device)?;
    let size = dev.size()?;
    if size == 0 {
        bail!("{} has no delta: attach one first", args.device.display());
    }
    check_workdir(&args.workdir)?;
    let (support, seen) = ploopctl::probe_support(&dev);
    let patched = match support {
        Support::Patched => true,
        Support::Unpatched => false,
        Support::Unknown => bail!(
            "the support probe gave {:?}: cannot tell what the kernel should answer",
            seen.err().map(|e| e.to_string())
        ),
    };
    if let Ok(bug) = fs::read_to_string("/sys/module/ploop/parameters/bug")
        && bug.trim() != "none"
    {
        bail!(
            "the model driver has bug={} injected: the oracle expects a correct driver",
            bug.trim()
        );
    }
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        results: Mutex::new(BTreeMap::new()),
        mismatches: Mutex::new(Vec::new()),
        successes: AtomicU64::new(0),
        busy_retries: AtomicU64::new(0),
    });
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (thread_results, writes) = std::thread::scope(|s| {
        let w = args.mountpoint.as_deref().map(|m| s.spawn(|| writer(m, &stop)));
        let hs: Vec<_> = (0..args.threads)
            .map(|t| {
                let (args, shared) = (&args, &shared);
                s.spawn(move || fuzz_thread(t, args, patched, size, shared))
            })
            .collect();
        let r: Vec<Result<()>> =
            hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("panic")))).collect();
        stop.store(true, Ordering::Relaxed);
        let w = w.map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("writer panicked"))));
        (r, w)
    });
    let elapsed = start.elapsed();
    for r in thread_results {
        r?;
    }
    let results = shared.results.lock().unwrap();
    let summary: Vec<String> = results.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "fuzz-snapshot: {} requests, {} threads, seed {}, {} kernel, {:.1} s: {} \
         (EBUSY from a concurrent snapshot, retried: {})",
        args.iterations,
        args.threads,
        args.seed,
        if patched { "patched" } else { "unpatched" },
        elapsed.as_secs_f64(),
        summary.join(" "),
        shared.busy_retries.load(Ordering::Relaxed)
    );
    if let Some(w) = writes {
        let (n, worst) = w?;
        println!(
            "fuzz-snapshot: writer: {n} writes+fsync, slowest {:.0} ms",
            worst.as_secs_f64() * 1e3
        );
        if worst > Duration::from_secs(20) {
            bail!("a write to the filesystem took {worst:?}: a freeze was held too long");
        }
    }
    let mism = shared.mismatches.lock().unwrap();
    for m in mism.iter().take(20) {
        println!("fuzz-snapshot: MISMATCH {m}");
    }
    if !mism.is_empty() {
        bail!("{} of {} answers contradict the contract", mism.len(), args.iterations);
    }
    Ok(())
}

/// The delta files must be on a filesystem without a block device (tmpfs: major 0): the
/// oracle counts on a sync fd of such a file giving ENODEV, and a delta on a real disk could
/// be the one being frozen.
fn check_workdir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(dir).with_context(|| format!("--workdir {}", dir.display()))?;
    if !m.is_dir() {
        bail!("--workdir {} is not a directory", dir.display());
    }
    let dev = crate::kernel::KDev::from_user(m.dev());
    if dev.major() != 0 {
        bail!("--workdir {} is on a block device ({dev}): use a tmpfs directory", dir.display());
    }
    Ok(())
}

pub fn bench(a: BenchArgs) -> Result<()> {
    use std::io::Write as _;
    if let Some(target) = a.rate {
        return rate(&a, target);
    }
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let dev = PloopDev::open(&a.device)?;
    let size = dev.size()?;
    if size == 0 {
        bail!("{} has no delta: attach one first", a.device.display());
    }
    let sync = a.sync_fd_from.as_deref().map(open_sync_fd).transpose()?;
    let mut buf = GuardedBuf::new()?;
    let data = vec![0xa5u8; a.write_kib as usize * 1024];
    // Latencies in ns: the tool's one percentile definition (nearest rank, within 0.1 %).
    let mut took_ns = Distribution::default();
    let (mut min, mut sum) = (u64::MAX, 0u64);
    let mut samples_us = Vec::new();
    for i in 0..a.warmup + a.count {
        if let Some(d) = &a.write_to {
            let p = d.join(format!(".bench-{}", i % 4));
            let mut f = fs::File::create(&p).with_context(|| format!("writing {}", p.display()))?;
            f.write_all(&data)?;
        }
        let path = a.workdir.join(format!("bench-{}-{i}.img", std::process::id()));
        let cluster_log = dev.cluster_log().unwrap_or(0);
        let (format, (f, created)) = if a.format == "ploop1" {
            let v = dev.ploop1_version();
            (abi::PLOOP_FMT_PLOOP1, ploopctl::open_new_ploop1(&path, size, cluster_log, v, false)?)
        } else {
            (PLOOP_FMT_RAW, open_new_delta(&path, size, false, true)?)
        };
        let flags = if a.no_fs_sync { 0 } else { PLOOP_FLAG_FS_SYNC };
        let mut req = Request::one(format, flags, f.as_raw_fd());
        req.ctl.pctl_cluster_log = cluster_log;
        if let Some(s) = &sync {
            req.ctl.pctl_chunks = 2;
            req.chunks.push(PloopCtlChunk { pctl_fd: s.as_raw_fd(), ..Default::default() });
        }
        let t = Instant::now();
        let r = ploopctl::send_snapshot(&dev, &mut buf, &req, Fault::None);
        let took = t.elapsed();
        if let Err(e) = r {
            bail!("snapshot {i} of {}: {}", a.count, e.numbered());
        }
        created.keep();
        if i < a.warmup {
            continue;
        }
        let ns = took.as_nanos() as u64;
        took_ns.record(ns);
        samples_us.push(ns / 1000);
        (min, sum) = (min.min(ns), sum + ns);
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "snapshot-bench {}: n={} min={:.2}ms p50={:.2}ms p90={:.2}ms max={:.2}ms mean={:.2}ms",
        a.label,
        took_ns.count(),
        ms(min),
        ms(took_ns.percentile(50.0)),
        ms(took_ns.percentile(90.0)),
        ms(took_ns.max()),
        ms(sum) / took_ns.count() as f64
    );
    if a.samples {
        let v: Vec<String> = samples_us.iter().map(u64::to_string).collect();
        println!("snapshot-bench-samples {}: {}", a.label, v.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        for _ in 0..100 {
            assert_eq!(a.next(), b.next());
        }
        assert!(Rng(1).below(10) < 10);
    }
}
