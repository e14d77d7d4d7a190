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
