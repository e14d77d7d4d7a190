//! The image reader end to end: a stack of three deltas holding GPT -> dm-crypt -> dm-linear
//! -> ext4 as on the commit's stack, read by the X1 primitives and by `ploop-verify image`;
//! damaged input refused with its offset and never a panic (a property test over random and
//! mutated bytes); and the reader's throughput (`--ignored`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use ploop_user::image::{
    BlockRead, ErrorKind, Locate, Stack,
    cli::copy_device,
    crypt::CryptTable,
    ext4::{self, Verdict},
    gpt::{self, Gpt},
    ploop1::{self, Version},
    testimg::{Ploop1Builder, exercise, seed_images},
};
use proptest::prelude::*;

const KEY: &str = "6d6f64656c2d6b65792d666f722d706c6f6f702d7665726966792d74657374a5\
                   00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";
const DEV: usize = 4 << 20;
/// GPT partition 1: LBAs 2048..=8157 (the last usable LBA of a 4 MiB disk).
const PART: (u64, u64) = (2048, 8157);
/// dm-crypt's data offset on the partition, and the dm-linear offset on the crypt device.
const CRYPT_OFFSET: u64 = 16;
const LINEAR_OFFSET: u64 = 64;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ploop-verify"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn crypt_line() -> String {
    let len = PART.1 - PART.0 + 1 - CRYPT_OFFSET;
    format!("ploop0p1-crypt: 0 {len} crypt aes-xts-plain64 {KEY} 0 /dev/ploop0p1 {CRYPT_OFFSET}\n")
}

/// The logical device: a GPT whose partition 1 holds dm-crypt, whose plaintext holds at the
/// dm-linear offset an ext4 superblock with `incompat`.
fn device(incompat: u32) -> Vec<u8> {
    let mut d = vec![0u8; DEV];
    gpt::write_gpt(&mut d, &[(PART.0, PART.1, "root")]);
    let table = CryptTable::parse(&crypt_line()).unwrap();
    let mut plain = vec![0u8; table.sectors as usize * 512];
    let fs = LINEAR_OFFSET as usize * 512;
    plain[fs + 1024..fs + 2048].copy_from_slice(&ext4::test_superblock(incompat));
    table.encrypt(0, &mut plain).unwrap();
    let at = (PART.0 + CRYPT_OFFSET) as usize * 512;
    d[at..at + plain.len()].copy_from_slice(&plain);
    d
}

/// Where the superblock's bytes lie in the logical device.
const SB_AT: usize = ((PART.0 + CRYPT_OFFSET + LINEAR_OFFSET) * 512 + 1024) as usize;

/// base (raw): the filesystem needing recovery; mid (ploop1 v2, 64 KiB clusters): the cluster
/// of the superblock, clean; top (ploop1 v1, 32 KiB clusters): an unrelated cluster.
fn build_stack(dir: &Path) -> Vec<PathBuf> {
    let base = device(0x2C4);
    let clean = device(0x2C0);
    fs::write(dir.join("root.hdd"), &base).unwrap();
    let c = 64 * 1024;
    let k = SB_AT / c;
    let mid = Ploop1Builder::new(Version::V2, 128, DEV as u64)
        .build(&[(k as u64, &clean[k * c..(k + 1) * c])]);
    fs::write(dir.join("root.hdd.1"), &mid).unwrap();
    let top = Ploop1Builder::new(Version::V1, 64, DEV as u64).build(&[(100, &[0xAB; 32 * 1024])]);
    fs::write(dir.join("root.hdd.2"), &top).unwrap();
    ["root.hdd", "root.hdd.1", "root.hdd.2"].map(|n| dir.join(n)).to_vec()
}

fn locate() -> Locate {
    Locate {
        partition: Some(1),
        crypt: Some(CryptTable::parse(&crypt_line()).unwrap()),
        linear_offset: Some(LINEAR_OFFSET),
    }
}

#[test]
fn x1_reads_the_superblock_through_partition_crypt_and_linear() {
    let dir = tempfile::tempdir().unwrap();
    let paths = build_stack(dir.path());
    // the old snapshot (the base alone) needs recovery; with the snapshot delta it is clean
    let verdict = |n: usize| {
        let stack = Stack::open(&paths[..n]).unwrap();
        let fs = locate().open(&stack).unwrap();
        ext4::superblock_verdict(&fs).unwrap().verdict
    };
    assert_eq!(verdict(1), Verdict::NeedsRecovery);
    assert_eq!(verdict(2), Verdict::Clean);
    assert_eq!(verdict(3), Verdict::Clean);
    // without the key, or at the wrong place: not ext4, with the reason
    let stack = Stack::open(&paths).unwrap();
    let l = Locate { crypt: None, ..locate() };
    let r = ext4::superblock_verdict(&l.open(&stack).unwrap()).unwrap();
    assert!(matches!(r.verdict, Verdict::NotExt4 { .. }), "{r:?}");
    let l = Locate { linear_offset: None, ..locate() };
    let r = ext4::superblock_verdict(&l.open(&stack).unwrap()).unwrap();
    assert!(matches!(&r.verdict, Verdict::NotExt4 { reason } if reason.contains("all zeros")));
    let l = Locate { partition: Some(2), ..locate() };
    assert!(l.open(&stack).err().unwrap().to_string().contains("no partition 2"));
    let g = Gpt::read(&stack).unwrap().unwrap();
    assert_eq!(g.partition(1).unwrap().first_lba, PART.0);
}

#[test]
fn image_info_check_and_cat() {
    let dir = tempfile::tempdir().unwrap();
    let paths = build_stack(dir.path());
    let table = dir.path().join("crypt.table");
    fs::write(&table, crypt_line()).unwrap();
    let loc = ["--part", "1", "--offset", &LINEAR_OFFSET.to_string()];

    let o = bin()
        .args(["image", "info"])
        .args(loc)
        .arg("--crypt-table")
        .arg(&table)
        .args(&paths)
        .output()
        .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("root.hdd: raw, 4.0 MiB (8192 sectors), base: holds every block"),
        "{out}"
    );
    assert!(out.contains("ploop1 v2, 4.0 MiB (8192 sectors), cluster 64.0 KiB (128 sectors), BAT 64 entries, 1 allocated"), "{out}");
    assert!(out.contains("ploop1 v1"), "{out}");
    assert!(out.contains("1  sectors 2048..=8157 (3.0 MiB)  Linux filesystem  \"root\""), "{out}");
    assert!(
        out.contains("filesystem at partition 1, dm-crypt, offset 64 sectors: ext4 clean"),
        "{out}"
    );
    let o = bin()
        .args(["image", "info"])
        .args(loc)
        .arg("--crypt-table")
        .arg(&table)
        .arg(&paths[0])
        .output()
        .unwrap();
    assert!(text(&o).contains("ext4 needs_recovery"), "{}", text(&o));

    // cat: the filesystem device, its superblock where ext4 has it
    let o = bin()
        .args(["image", "cat"])
        .args(loc)
        .arg("--crypt-table")
        .arg(&table)
        .args(&paths)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let want_len = ((PART.1 - PART.0 + 1 - CRYPT_OFFSET - LINEAR_OFFSET) * 512) as usize;
    assert_eq!(o.stdout.len(), want_len);
    assert_eq!(o.stdout[1024..2048], ext4::test_superblock(0x2C0));
    // the whole logical device: what the stack reads
    let o = bin().args(["image", "cat"]).args(&paths).output().unwrap();
    let stack = Stack::open(&paths).unwrap();
    let mut want = vec![0u8; DEV];
    stack.read_at(0, &mut want).unwrap();
    assert!(o.stdout == want, "cat differs from the stack");
    assert_eq!(o.stdout[..SB_AT], device(0x2C0)[..SB_AT]);

    // check: the ploop1 deltas are fine, the raw base has no header to check
    let o = bin().args(["image", "check"]).args(&paths[1..]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("root.hdd.1: ok"));
    let o = bin().args(["image", "check"]).arg(&paths[0]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("at byte 0 (0x0): no ploop1 signature"), "{}", text(&o));
    assert!(text(&o).contains("a raw delta has no header to check"), "{}", text(&o));
}

#[test]
fn damaged_input_is_refused_with_its_offset_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let paths = build_stack(dir.path());
    let mid = fs::read(&paths[1]).unwrap();
    let bad = dir.path().join("bad.delta");
    let k = (SB_AT / (64 * 1024)) as u64;
    let entry = ploop1::Header::bat_entry_offset(k);

    // the superblock's cluster points past the end of the file
    let mut b = mid.clone();
    b[entry as usize..entry as usize + 4].copy_from_slice(&9999u32.to_le_bytes());
    fs::write(&bad, &b).unwrap();
    let o = bin().args(["image", "check"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("at byte {entry} ")), "{}", text(&o));
    let o = bin().args(["image", "cat"]).arg(&paths[0]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.delta: at byte") && err.contains("past the end of the file"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // info on the same: the partition's superblock lies in that cluster; the rest is shown
    let o = bin().args(["image", "info", "--part", "1"]).arg(&paths[0]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("filesystem at partition 1: unreadable: "), "{}", text(&o));
    assert!(text(&o).contains("partitions: GPT"), "{}", text(&o));

    // truncated: the file ends inside the allocated cluster
    fs::write(&bad, &mid[..mid.len() - 4096]).unwrap();
    let o = bin().args(["image", "cat"]).arg(&paths[0]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains(&format!("at byte {entry} ")), "{}", text(&o));
    let o = bin().args(["image", "check"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // a header field out of range: m_Sectors (byte 28)
    let mut b = mid.clone();
    b[28..32].copy_from_slice(&100u32.to_le_bytes());
    fs::write(&bad, &b).unwrap();
    let o = bin().args(["image", "info"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("bad.delta: at byte 28 (0x1c): m_Sectors"), "{}", text(&o));

    // unreadable: exit 2
    let o = bin().args(["image", "check"]).arg(dir.path().join("missing")).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // bad usage
    let o = bin().args(["image", "cat"]).output().unwrap();
    assert_eq!(o.status.code(), Some(64));
    let o = bin().args(["image", "--help"]).output().unwrap();
    assert!(text(&o).contains("bottom first") && text(&o).contains("Examples:"), "{}", text(&o));
}

/// A child's exit status, output and peak memory.
struct Measured {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    max_rss_kib: i64,
}

impl Measured {
    fn text(&self) -> String {
        format!("{}{}", String::from_utf8_lossy(&self.stdout), self.stderr)
    }
}

/// `ploop-verify ARGS`, its peak memory measured by getrusage(RUSAGE_CHILDREN) in a child of
/// this test binary ([`rusage_parent`]) whose only child it is. Not measured from here: an
/// exec records the old address space's peak as the new program's, and a child spawned from
/// this process (which holds test images, and whose tests run in parallel) would start with
/// this process's peak; the parent, a fresh exec of this binary, starts small. With
/// `stdout_limit`, stdout is closed after that many bytes (as `| head -c` would).
fn measured<S: AsRef<std::ffi::OsStr>>(args: &[S], stdout_limit: Option<u64>) -> Measured {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let (result, err) = (dir.path().join("result"), dir.path().join("stderr"));
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_str().unwrap().to_string()).collect();
    // the parent hands its stderr to ploop-verify as stdout: libtest's own lines go to the
    // parent's stdout, discarded
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "rusage_parent", "--ignored", "--test-threads=1", "-q"])
        .env("PLOOP_RUSAGE_ARGS", serde_json::to_string(&args).unwrap())
        .env("PLOOP_RUSAGE_RESULT", &result)
        .env("PLOOP_RUSAGE_STDERR", &err)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = Vec::new();
    let pipe = parent.stderr.take().unwrap();
    match stdout_limit {
        Some(n) => pipe.take(n).read_to_end(&mut stdout).unwrap(),
        None => { pipe }.read_to_end(&mut stdout).unwrap(),
    };
    let st = parent.wait().unwrap();
    let r =
        fs::read_to_string(&result).unwrap_or_else(|e| panic!("{args:?}: no result ({st}): {e}"));
    let v: Vec<i64> = r.split_whitespace().map(|x| x.parse().unwrap()).collect();
    Measured {
        code: (v[0] >= 0).then_some(v[0] as i32),
        stdout,
        stderr: fs::read_to_string(&err).unwrap(),
        max_rss_kib: v[1],
    }
}

/// Not a test: the measuring parent of [`measured`], run as a child of this binary. It runs
/// `ploop-verify` with the arguments of PLOOP_RUSAGE_ARGS (stdout: this process's stderr;
/// stderr: the file PLOOP_RUSAGE_STDERR), waits for it, and writes its exit code (-1 for a
/// signal) and getrusage(RUSAGE_CHILDREN)'s ru_maxrss in KiB to PLOOP_RUSAGE_RESULT.
#[test]
#[ignore = "a helper that `measured` runs in a child process, not a test"]
fn rusage_parent() {
    use std::os::fd::AsFd as _;
    let Ok(result) = std::env::var("PLOOP_RUSAGE_RESULT") else { return };
    let args: Vec<String> =
        serde_json::from_str(&std::env::var("PLOOP_RUSAGE_ARGS").unwrap()).unwrap();
    let out = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
    let err = fs::File::create(std::env::var("PLOOP_RUSAGE_STDERR").unwrap()).unwrap();
    let st = bin().args(&args).stdout(out).stderr(err).status().unwrap();
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) }, 0);
    fs::write(result, format!("{} {}", st.code().unwrap_or(-1), ru.ru_maxrss)).unwrap();
}

/// What every image case must stay under: 64 MiB of resident memory.
const MEMORY_LIMIT_KIB: i64 = 64 * 1024;

/// A ploop1 v2 delta written sparsely: the header as given, `entries` set in its BAT
/// ((logical cluster, entry)), and `file_size` bytes long; nothing else written.
fn sparse_delta(path: &Path, h: &ploop1::Header, entries: &[(u64, u32)], file_size: u64) {
    use std::os::unix::fs::FileExt as _;
    let f = fs::File::create(path).unwrap();
    f.set_len(file_size).unwrap();
    f.write_all_at(&h.to_bytes(), 0).unwrap();
    for &(i, e) in entries {
        f.write_all_at(&e.to_le_bytes(), ploop1::Header::bat_entry_offset(i)).unwrap();
    }
}

/// A v2 header of `clusters` clusters of 8 sectors, the BAT's end rounded up to a cluster.
fn v2_header(clusters: u64) -> ploop1::Header {
    let mut h = Ploop1Builder::new(Version::V2, 8, 4096).header;
    h.m_Size = clusters as u32;
    h.m_SizeInSectors = clusters * 8;
    h.m_FirstBlockOffset = (h.bat_end().div_ceil(4096) * 8) as u32;
    h
}

/// The damaged images (items 6 and 7), each through `info`, `cat` and `check`: the
/// documented exit and message, and under [`MEMORY_LIMIT_KIB`] of memory, measured.
#[test]
fn memory_follows_the_file_not_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let paths = build_stack(d);
    let mid = fs::read(&paths[1]).unwrap();
    let mut peaks: Vec<(String, i64)> = Vec::new();
    let mut run = |case: &str, args: Vec<std::ffi::OsString>, limit: Option<u64>| {
        let m = measured(&args, limit);
        assert!(
            m.max_rss_kib < MEMORY_LIMIT_KIB,
            "{case}: peak {} KiB: {}",
            m.max_rss_kib,
            m.text()
        );
        assert!(!m.text().contains("panicked"), "{case}: {}", m.text());
        peaks.push((case.to_string(), m.max_rss_kib));
        m
    };
    let args = |cmd: &str, files: &[&Path]| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec!["image".into(), cmd.into()];
        v.extend(files.iter().map(|f| f.as_os_str().to_owned()));
        v
    };

    // item 6: a snapshot delta with one signature byte damaged is an error at byte 0 for
    // every command, as for check
    let bad = d.join("bad.delta");
    let mut b = mid.clone();
    b[3] ^= 0x01;
    fs::write(&bad, &b).unwrap();
    for cmd in ["info", "cat"] {
        let m = run(
            &format!("{cmd}, damaged signature above the base"),
            args(cmd, &[&paths[0], &bad]),
            None,
        );
        assert_eq!(m.code, Some(2), "{cmd}: {}", m.text());
        assert!(m.stdout.is_empty() || cmd == "info", "{cmd} wrote data");
        assert!(
            m.stderr.contains("bad.delta: at byte 0 (0x0): no ploop1 signature")
                && m.stderr.contains("every delta above the base is ploop1"),
            "{cmd}: {}",
            m.text()
        );
    }
    let m = run("check, damaged signature", args("check", &[&bad]), None);
    assert_eq!(m.code, Some(1), "{}", m.text());
    assert!(m.text().contains("1 byte from the ploop1 v2 signature"), "{}", m.text());
    assert!(m.text().contains("bad.delta: 1 problem\n"), "{}", m.text());
    // the same delta as the base: a damaged ploop1 header, not a raw disk of its size
    for cmd in ["info", "cat"] {
        let m = run(&format!("{cmd}, damaged signature at the base"), args(cmd, &[&bad]), None);
        assert_eq!(m.code, Some(2), "{cmd}: {}", m.text());
        assert!(
            m.stderr.contains("bad.delta: at byte 0 (0x0): m_Sig is")
                && m.stderr.contains("a damaged ploop1 header")
                && m.stderr.contains("--format raw"),
            "{cmd}: {}",
            m.text()
        );
    }
    let mut raw_args = args("cat", &[&bad]);
    raw_args.insert(2, "--format=raw".into());
    let m = run("cat --format raw", raw_args, None);
    assert_eq!(m.code, Some(0), "{}", m.text());
    assert!(m.stdout == b, "--format raw reads the file as it is");

    // item 7: a BAT of 2^32-1 entries on a small file, at m_Size (byte 32)
    let mut b = mid.clone();
    b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&bad, &b).unwrap();
    for (cmd, code) in [("info", 2), ("cat", 2), ("check", 1)] {
        let m = run(&format!("{cmd}, m_Size 2^32-1"), args(cmd, &[&bad]), None);
        assert_eq!(m.code, Some(code), "{cmd}: {}", m.text());
        assert!(
            m.text().contains("bad.delta: at byte 32 (0x20): m_Size is 4294967295 BAT entries")
                && m.text().contains("the BAT is larger than the device it describes"),
            "{cmd}: {}",
            m.text()
        );
    }
    // ... and with a device of 2^32-1 clusters to match: the file cannot hold that BAT
    let h = v2_header(u64::from(u32::MAX));
    sparse_delta(&bad, &h, &[], 1 << 20);
    for (cmd, code) in [("info", 2), ("cat", 2), ("check", 1)] {
        let m = run(&format!("{cmd}, 2^32-1 clusters in 1 MiB"), args(cmd, &[&bad]), None);
        assert_eq!(m.code, Some(code), "{cmd}: {}", m.text());
        assert!(
            m.text().contains("at byte 1048576 (0x100000): the file (1048576 bytes) ends inside the BAT: m_Size (byte 32) is 4294967295 entries"),
            "{cmd}: {}",
            m.text()
        );
    }

    // m_Size 2^28 on a sparse 1 GiB file, for a device of 64 MiB: refused at m_Size
    let mut h = v2_header(1 << 28);
    h.m_SizeInSectors = (64 << 20) / 512;
    sparse_delta(&bad, &h, &[], h.data_start() + (1 << 20));
    let m = run("info, m_Size 2^28 for 64 MiB", args("info", &[&bad]), None);
    assert_eq!(m.code, Some(2), "{}", m.text());
    assert!(
        m.text().contains("at byte 32 (0x20): m_Size is 268435456 BAT entries"),
        "{}",
        m.text()
    );
    // ... and for the 1 TiB device it describes: a valid 1 GiB BAT (two clusters allocated,
    // the first and the last), read and walked a chunk at a time
    let h = v2_header(1 << 28);
    let first = (h.data_start() / 4096) as u32;
    let size = h.data_start() + 2 * 4096;
    sparse_delta(&bad, &h, &[(0, first), ((1 << 28) - 1, first + 1)], size);
    {
        use std::os::unix::fs::FileExt as _;
        fs::OpenOptions::new()
            .write(true)
            .open(&bad)
            .unwrap()
            .write_all_at(&[0xAB; 4096], h.data_start())
            .unwrap();
    }
    let m = run("info, a 1 GiB BAT", args("info", &[&bad]), None);
    assert_eq!(m.code, Some(0), "{}", m.text());
    assert!(m.text().contains("BAT 268435456 entries, 2 allocated"), "{}", m.text());
    let m = run("check, a 1 GiB BAT", args("check", &[&bad]), None);
    assert_eq!(m.code, Some(0), "{}", m.text());
    assert!(m.text().contains("bad.delta: ok"), "{}", m.text());
    let m = run("cat, a 1 GiB BAT, first 8 MiB", args("cat", &[&bad]), Some(8 << 20));
    assert_eq!(m.code, Some(0), "a closed pipe is no error: {}", m.text());
    assert_eq!(m.stdout.len(), 8 << 20);
    assert!(
        m.stdout[..4096].iter().all(|&x| x == 0xAB) && m.stdout[4096..].iter().all(|&x| x == 0)
    );

    // check on a random BAT of 2^22 entries: the first 1000 problems listed in file order,
    // the rest counted, each overlap naming the entry that claimed the cluster first
    let n = 1u64 << 22;
    let h = v2_header(n);
    let data = 64u64; // clusters of data in the file
    let ds = (h.data_start() / 4096) as u32;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let bat: Vec<u32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 8 {
                0 => 0,
                1 => ds + (x >> 32) as u32 % data as u32, // inside the file: overlaps follow
                _ => (x >> 32) as u32,
            }
        })
        .collect();
    let mut img = vec![0u8; (h.data_start() + data * 4096) as usize];
    img[..64].copy_from_slice(&h.to_bytes());
    for (i, e) in bat.iter().enumerate() {
        img[64 + 4 * i..68 + 4 * i].copy_from_slice(&e.to_le_bytes());
    }
    fs::write(&bad, &img).unwrap();
    drop(img);
    // the rule, independently: an entry outside the data area is one problem; an entry in it
    // is one if an earlier entry claimed the same cluster
    let mut owner = std::collections::HashMap::new();
    let mut want: Vec<(u64, Option<u64>)> = Vec::new(); // (offset, first claimant)
    let mut total = 0u64;
    for (i, &e) in bat.iter().enumerate() {
        let i = i as u64;
        if e == 0 {
            continue;
        }
        let inside = e >= ds && u64::from(e - ds) < data;
        let problem = if inside {
            match owner.get(&e) {
                Some(&j) => Some(Some(j)),
                None => {
                    owner.insert(e, i);
                    None
                }
            }
        } else {
            Some(None)
        };
        if let Some(j) = problem {
            total += 1;
            if want.len() < 1000 {
                want.push((ploop1::Header::bat_entry_offset(i), j));
            }
        }
    }
    let m = run("check, a random BAT of 2^22 entries", args("check", &[&bad]), None);
    assert_eq!(m.code, Some(1), "{}", m.stderr);
    let out = String::from_utf8_lossy(&m.stdout);
    let listed: Vec<&str> = out.lines().filter(|l| l.contains(": at byte ")).collect();
    assert_eq!(listed.len(), 1000);
    for (line, (off, j)) in listed.iter().zip(&want) {
        assert!(line.contains(&format!(": at byte {off} ")), "{line} vs {off}");
        if let Some(j) = j {
            assert!(line.ends_with(&format!("overlapping the cluster of BAT entry {j}")), "{line}");
        }
    }
    assert!(want.iter().any(|(_, j)| j.is_some()), "the seed lists no overlap");
    assert!(out.contains(&format!("... and {} more (counted, not listed)", total - 1000)), "{out}");
    assert!(
        out.ends_with(&format!("bad.delta: {total} problems\n")),
        "{}",
        &out[out.len() - 200..]
    );

    // a missing image: one errno, no BPF hint
    let m = run("info, a missing file", args("info", &[&d.join("missing")]), None);
    assert_eq!(m.code, Some(2));
    assert_eq!(m.stderr.matches("No such file or directory").count(), 1, "{}", m.stderr);
    assert!(m.stderr.contains("missing: cannot open: No such file"), "{}", m.stderr);
    assert!(!m.stderr.contains("hint"), "{}", m.stderr);

    // the floor: the binary printing its version, under the same parent
    let floor = run("--version", vec!["--version".into()], None);
    let (worst, kib) = peaks.iter().max_by_key(|(_, k)| *k).unwrap();
    println!(
        "peak memory of the worst image case ({worst}): {kib} KiB; `--version`: {} KiB",
        floor.max_rss_kib
    );
}

#[test]
fn every_image_command_and_trace_say_their_exit_status_with_an_example() {
    for cmd in [&["image", "info"][..], &["image", "cat"], &["image", "check"], &["trace"]] {
        let o = bin().args(cmd).arg("--help").output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{cmd:?}: {t}");
        assert!(t.contains("Exit status: 0 ") && t.contains("Example"), "{cmd:?}: {t}");
    }
}

proptest! {
    // bounded: about a second in a debug build
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
        let dir = tempfile::tempdir().unwrap();
        exercise(dir.path(), &bytes);
        // with a ploop1 signature in front, the header and BAT parsers see random fields
        let mut sig = b"WithouFreSpacExt".to_vec();
        sig.extend_from_slice(&bytes);
        exercise(dir.path(), &sig);
    }

    #[test]
    fn mutated_images_never_panic(
        v1 in any::<bool>(),
        flips in proptest::collection::vec((0usize..20_000, any::<u8>()), 1..12),
        words in proptest::collection::vec((0usize..40, any::<u32>()), 0..4),
        cut in proptest::option::of(0usize..90_000),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut img = seed_images().swap_remove(if v1 { 0 } else { 1 });
        let len = img.len();
        for (at, x) in flips {
            img[at % len] ^= x;
        }
        // whole header fields and BAT entries set to arbitrary values
        for (slot, w) in words {
            img[slot * 4..slot * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        if let Some(c) = cut {
            img.truncate(c % (len + 1));
        }
        exercise(dir.path(), &img);
    }
}

#[test]
fn the_seed_images_are_valid() {
    // the mutation test starts from images the reader accepts, or it would test nothing
    for (v, seed) in [Version::V1, Version::V2].into_iter().zip(seed_images()) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        fs::write(&p, &seed).unwrap();
        assert_eq!(ploop1::Header::parse(seed[..64].try_into().unwrap()).unwrap().version, v);
        let r = ploop1::check(&fs::File::open(&p).unwrap()).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let s = Stack::open(&[&p]).unwrap();
        let g = Gpt::read(&s).unwrap().unwrap();
        assert_eq!(g.partitions.len(), 1);
        // a partition read on a ploop1 delta with holes: clusters 1, 4, ... read as zeros
        let mut b = vec![0u8; 4096];
        s.read_at(4096, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }
    let e = Stack::open(&[Path::new("/nonexistent/delta")]).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Io);
}

/// `cargo test --release --test image -- --ignored --nocapture bench`: the reader's
/// throughput on a stack of three ploop1 deltas (1 MiB clusters; the base fully allocated,
/// the middle every second cluster, the top every third), read whole as `image cat` does.
/// Files just written: this is the reader's own cost over the page cache, not the disk's.
/// PLOOP_BENCH_MIB sets the device size (256).
#[test]
#[ignore]
fn bench_cat_throughput() {
    let mib: u64 =
        std::env::var("PLOOP_BENCH_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    let dir = tempfile::tempdir().unwrap();
    let size = mib << 20;
    let clusters = size >> 20;
    let mut paths = Vec::new();
    for (k, every) in [1u64, 2, 3].into_iter().enumerate() {
        let p = dir.path().join(format!("d{k}"));
        let f = fs::File::create(&p).unwrap();
        Ploop1Builder::new(Version::V2, 2048, size)
            .write_to(&f, (0..clusters).filter(|i| i % every == 0), |i, b| {
                b.fill((i as u8) ^ (k as u8));
            })
            .unwrap();
        paths.push(p);
    }
    let stack = Stack::open(&paths).unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let n = copy_device(&stack, &mut std::io::sink()).unwrap();
        assert_eq!(n, size);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "image reader: {mib} MiB through 3 ploop1 deltas in {best:.3} s (best of 3): {:.0} MB/s",
        size as f64 / best / 1e6
    );
    let t = Instant::now();
    let o = bin()
        .args(["image", "cat"])
        .args(&paths)
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.stdout.len() as u64, size);
    println!(
        "ploop-verify image cat | (pipe): {:.0} MB/s",
        size as f64 / t.elapsed().as_secs_f64() / 1e6
    );
}
