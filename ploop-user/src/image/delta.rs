//! Delta files and stacks of them: which delta holds each block, and reading through.
//!
//! A stack is given bottom first; a read takes each block from the highest delta that holds
//! it, else zeros. Which format a delta is ([`Expect`]): on vz7 every delta above the base is
//! ploop1 (snapshot deltas always are), and the base is ploop1 when it carries the signature,
//! raw otherwise, unless its first bytes look like a damaged ploop1 header
//! ([`ploop1::damaged_signature`]): reading those as a raw disk would show the header and BAT
//! as data and a device of the wrong size. The model driver stacks raw deltas too:
//! [`Stack::open_detected`] reads its stacks. What a delta holds:
//! - **ploop1**: the clusters whose BAT entry is not 0.
//! - **raw, at the bottom** (the base): every block of the file (its holes read as zeros,
//!   which is what the device shows there).
//! - **raw, above the bottom**: its allocated extents, as `SEEK_DATA`/`SEEK_HOLE` report them,
//!   rounded out to 4 KiB blocks: the rule of the model driver (`tests/ploop-model`), which
//!   stacks raw deltas; the vz7 driver only ever puts a raw delta at the bottom, where the two
//!   rules agree. Like the model: a file with no block allocated holds nothing; where the
//!   filesystem cannot seek holes, everything; where it calls a sparse file all data, the
//!   blocks that are not all zeros.
//!
//! The stack's size is the top delta's (a resized image grows at the top; a lower delta
//! holds nothing past its own end).

use std::{
    fs::File,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::{
    BlockRead, ErrorKind, ImageError, Result, SECTOR, check_range,
    ploop1::{self, Header},
};

/// The block of the model driver's raw-delta bitmap (`PLOOP_BLK_SIZE`).
pub const RAW_BLOCK: u64 = 4096;

/// What a delta file is taken to be when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// ploop1 when it starts with a ploop1 signature; refused when its first bytes look like a
    /// damaged ploop1 header; raw otherwise.
    Detect,
    /// Raw, whatever its first bytes (the user says so: `--format raw`).
    Raw,
    /// ploop1, anything else refused (every delta above the base on vz7).
    Ploop1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaFormat {
    Raw,
    Ploop1(Header),
}

/// Which blocks of a raw delta are held (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawHeld {
    All,
    /// Sorted, disjoint, 4 KiB aligned byte ranges.
    Extents(Vec<(u64, u64)>),
    /// The blocks that are not all zeros (checked when read).
    NonZero,
}

/// One delta file, opened read-only.
pub struct Delta {
    path: PathBuf,
    file: File,
    file_size: u64,
    format: DeltaFormat,
    /// ploop1: the BAT chunk read last, (first entry, entries): a read needs one entry per
    /// cluster, and holding the whole BAT would make memory follow m_Size, not the file.
    bat: Mutex<Option<(u64, Vec<u32>)>>,
    held: RawHeld,
}

/// What a delta says about a logical offset: held at a file offset, or not, and for how many
/// bytes from there the answer stays the same (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    Held { file_offset: u64, run: u64 },
    Absent { run: u64 },
}

impl Delta {
    /// Opens a delta as `expect` says; `bottom` tells a raw base (holds everything) from a
    /// raw upper delta.
    pub fn open(path: &Path, bottom: bool, expect: Expect) -> Result<Delta> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| ImageError::open(e).in_file(&name))?;
        Self::from_file(path, file, bottom, expect)
    }

    /// A delta from a file already open (e.g. a dup of the fd `ADD_DELTA` or a snapshot
    /// request carried); `path` names it in messages. The reader only ever `pread`s it.
    pub fn from_file(path: &Path, file: File, bottom: bool, expect: Expect) -> Result<Delta> {
        Self::from_open_file(path, file, bottom, expect).map_err(|e| e.in_file(path.display()))
    }

    fn from_open_file(path: &Path, file: File, bottom: bool, expect: Expect) -> Result<Delta> {
        let meta = file.metadata().map_err(|e| ImageError::io(0, e, "the file's size"))?;
        if !meta.is_file() {
            return Err(ImageError::new(ErrorKind::Io, "not a regular file"));
        }
        let file_size = meta.len();
        let mut head = [0u8; 64];
        let n = read_upto(&file, 0, &mut head)?;
        let signed = ploop1::is_ploop1(&head[..n]);
        if expect == Expect::Ploop1 || (expect == Expect::Detect && signed) {
            if n < head.len() {
                return Err(ImageError::new(
                    ErrorKind::Truncated,
                    format!("the file ({file_size} bytes) ends inside the ploop1 header"),
                )
                .at(file_size));
            }
            let h = Header::parse(&head).map_err(|mut e| {
                if expect == Expect::Ploop1 {
                    e.msg.push_str(if bottom {
                        ": the base was given as ploop1"
                    } else {
                        ": every delta above the base is ploop1 (snapshot deltas always are)"
                    });
                }
                e
            })?;
            h.fatal(file_size)?;
            return Ok(Delta {
                path: path.to_owned(),
                file,
                file_size,
                format: DeltaFormat::Ploop1(h),
                bat: Mutex::new(None),
                held: RawHeld::All,
            });
        }
        if expect == Expect::Detect
            && n == head.len()
            && let Some(why) = ploop1::damaged_signature(&head, file_size)
        {
            return Err(ImageError::damaged(ploop1::field::m_Sig, why));
        }
        if file_size == 0 || file_size % SECTOR != 0 {
            return Err(ImageError::new(
                ErrorKind::Damaged,
                format!(
                    "a raw delta must be a non-empty multiple of {SECTOR} bytes; this one is \
                     {file_size} bytes (and has no ploop1 signature)"
                ),
            )
            .at(file_size));
        }
        let held = if bottom { RawHeld::All } else { raw_held(&file, file_size, meta.blocks())? };
        Ok(Delta {
            path: path.to_owned(),
            file,
            file_size,
            format: DeltaFormat::Raw,
            bat: Mutex::new(None),
            held,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> &DeltaFormat {
        &self.format
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    pub fn raw_held(&self) -> &RawHeld {
        &self.held
    }

    /// The logical size this delta describes.
    pub fn size(&self) -> u64 {
        match &self.format {
            DeltaFormat::Raw => self.file_size,
            DeltaFormat::Ploop1(h) => h.device_bytes(),
        }
    }

    /// ploop1: the allocated BAT entries (a walk of the whole BAT, a chunk at a time).
    pub fn allocated_clusters(&self) -> Result<Option<u64>> {
        match &self.format {
            DeltaFormat::Ploop1(h) => ploop1::count_allocated(&self.file, h)
                .map(Some)
                .map_err(|e| e.in_file(self.path.display())),
            DeltaFormat::Raw => Ok(None),
        }
    }

    /// Bytes in clusters (ploop1) or in 4 KiB blocks (raw upper delta) this delta holds.
    pub fn allocated_bytes(&self) -> Result<Option<u64>> {
        Ok(match (&self.format, &self.held) {
            (DeltaFormat::Ploop1(h), _) => {
                self.allocated_clusters()?.map(|n| n.saturating_mul(h.cluster_bytes()))
            }
            (DeltaFormat::Raw, RawHeld::Extents(x)) => Some(x.iter().map(|(s, e)| e - s).sum()),
            (DeltaFormat::Raw, _) => None,
        })
    }

    /// ploop1: BAT entry `i` (0 past the BAT), through the chunk read last.
    fn bat_entry(&self, h: &Header, i: u64) -> Result<u32> {
        let n = u64::from(h.m_Size);
        if i >= n {
            return Ok(0);
        }
        // a panic elsewhere cannot leave the chunk half written: it is replaced whole
        let mut cached = self.bat.lock().unwrap_or_else(|e| e.into_inner());
        let first = i / ploop1::BAT_CHUNK * ploop1::BAT_CHUNK;
        if !matches!(&*cached, Some((f, _)) if *f == first) {
            let mut chunk = vec![0u32; ploop1::BAT_CHUNK.min(n - first) as usize];
            ploop1::read_bat_entries(&self.file, first, &mut chunk)?;
            *cached = Some((first, chunk));
        }
        Ok(cached.as_ref().map_or(0, |(_, c)| c[(i - first) as usize]))
    }

    /// What this delta holds at logical byte `off`.
    pub fn map(&self, off: u64) -> Result<Mapping> {
        let size = self.size();
        if off >= size {
            return Ok(Mapping::Absent { run: u64::MAX });
        }
        match &self.format {
            DeltaFormat::Ploop1(h) => {
                let cluster = h.cluster_bytes();
                let i = off / cluster;
                let within = off % cluster;
                let run = (cluster - within).min(size - off);
                match self.bat_entry(h, i)? {
                    0 => Ok(Mapping::Absent { run }),
                    e => {
                        let at = h.cluster_at(i, e, self.file_size)?;
                        Ok(Mapping::Held { file_offset: at + within, run })
                    }
                }
            }
            DeltaFormat::Raw => match &self.held {
                RawHeld::All => Ok(Mapping::Held { file_offset: off, run: size - off }),
                RawHeld::Extents(x) => {
                    // the first extent that ends after `off`
                    let k = x.partition_point(|&(_, e)| e <= off);
                    match x.get(k) {
                        Some(&(s, e)) if s <= off => {
                            Ok(Mapping::Held { file_offset: off, run: e.min(size) - off })
                        }
                        Some(&(s, _)) => Ok(Mapping::Absent { run: s - off }),
                        None => Ok(Mapping::Absent { run: size - off }),
                    }
                }
                RawHeld::NonZero => {
                    let block = off / RAW_BLOCK * RAW_BLOCK;
                    let len = RAW_BLOCK.min(size - block);
                    let mut b = [0u8; RAW_BLOCK as usize];
                    self.read_file(block, &mut b[..len as usize])?;
                    let run = block + len - off;
                    if b[..len as usize].iter().all(|&x| x == 0) {
                        Ok(Mapping::Absent { run })
                    } else {
                        Ok(Mapping::Held { file_offset: off, run })
                    }
                }
            },
        }
    }

    /// Reads `buf.len()` bytes of the file at `offset`; a short file is an error at `offset`.
    pub fn read_file(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| ImageError::io(offset, e, "data").in_file(self.path.display()))
    }
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_upto(file: &File, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::io(offset + n as u64, e, "the file")),
        }
    }
    Ok(n)
}

/// The held blocks of a raw upper delta, by the model driver's rule (module doc).
fn raw_held(file: &File, size: u64, st_blocks: u64) -> Result<RawHeld> {
    use std::os::fd::AsRawFd as _;
    if st_blocks == 0 {
        return Ok(RawHeld::Extents(Vec::new()));
    }
    let fd = file.as_raw_fd();
    let seek = |off: u64, whence| -> std::io::Result<Option<u64>> {
        let off = i64::try_from(off).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: lseek on a file descriptor we own; it only moves the file offset, which
        // this reader never uses (every read is a pread).
        let r = unsafe { libc::lseek(fd, off, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) }
    };
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut off = 0;
    while off < size {
        let data = match seek(off, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            // the filesystem cannot tell holes: everything is held
            Err(_) => return Ok(RawHeld::All),
        };
        if data >= size {
            break;
        }
        let hole = match seek(data, libc::SEEK_HOLE) {
            Ok(Some(h)) if h > data => h.min(size),
            _ => size,
        };
        let first = data / RAW_BLOCK * RAW_BLOCK;
        let last = hole.div_ceil(RAW_BLOCK).saturating_mul(RAW_BLOCK).min(size);
        match extents.last_mut() {
            Some(prev) if prev.1 >= first => prev.1 = prev.1.max(last),
            _ => extents.push((first, last)),
        }
        off = hole;
    }
    let all = matches!(extents.as_slice(), [(0, e)] if *e >= size);
    if all && st_blocks.saturating_mul(SECTOR) < size {
        // "all data" for a sparse file: SEEK_DATA/SEEK_HOLE are not telling (9p, old NFS)
        return Ok(RawHeld::NonZero);
    }
    Ok(if all { RawHeld::All } else { RawHeld::Extents(extents) })
}

/// Delta files stacked bottom first, read as the logical ploop device.
pub struct Stack {
    deltas: Vec<Delta>,
    size: u64,
}

impl Stack {
    /// A vz7 image: the base detected, every delta above it ploop1.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Stack> {
        Self::open_with(paths, Expect::Detect)
    }

    /// A vz7 image whose base is `base` (`Expect::Raw`: the user's `--format raw`), every delta
    /// above it ploop1.
    pub fn open_with<P: AsRef<Path>>(paths: &[P], base: Expect) -> Result<Stack> {
        Self::open_each(paths, |i| if i == 0 { base } else { Expect::Ploop1 })
    }

    /// Every delta's format detected, as on the model driver, which stacks raw deltas as well
    /// as ploop1 ones (what the X1 oracle reads live).
    pub fn open_detected<P: AsRef<Path>>(paths: &[P]) -> Result<Stack> {
        Self::open_each(paths, |_| Expect::Detect)
    }

    fn open_each<P: AsRef<Path>>(paths: &[P], expect: impl Fn(usize) -> Expect) -> Result<Stack> {
        if paths.is_empty() {
            return Err(ImageError::new(ErrorKind::OutOfRange, "no delta given"));
        }
        let deltas = paths
            .iter()
            .enumerate()
            .map(|(i, p)| Delta::open(p.as_ref(), i == 0, expect(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_deltas(deltas))
    }

    pub fn from_deltas(deltas: Vec<Delta>) -> Stack {
        let size = deltas.last().map_or(0, Delta::size);
        Stack { deltas, size }
    }

    pub fn deltas(&self) -> &[Delta] {
        &self.deltas
    }
}

impl BlockRead for Stack {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.size, offset, buf.len())?;
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let mut limit = (buf.len() - pos) as u64;
            let mut source = None;
            for d in self.deltas.iter().rev() {
                match d.map(off).map_err(|e| e.in_file(d.path.display()))? {
                    Mapping::Held { file_offset, run } => {
                        limit = limit.min(run);
                        source = Some((d, file_offset));
                        break;
                    }
                    // a lower delta may hold only part of what this one lacks
                    Mapping::Absent { run } => limit = limit.min(run),
                }
            }
            let chunk = &mut buf[pos..pos + limit as usize];
            match source {
                Some((d, at)) => d.read_file(at, chunk)?,
                None => chunk.fill(0),
            }
            pos += limit as usize;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::image::{ploop1::Version, testimg::Ploop1Builder};

    const MIB: u64 = 1 << 20;

    fn fill(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| tag ^ (i as u8).wrapping_mul(31) ^ (i >> 9) as u8).collect()
    }

    fn read_all(s: &Stack) -> Vec<u8> {
        let mut b = vec![0u8; s.size() as usize];
        s.read_at(0, &mut b).unwrap();
        b
    }

    #[test]
    fn raw_base_and_ploop1_tops_override_block_by_block() {
        let dir = tempfile::tempdir().unwrap();
        // 4 MiB device; v1 with 64 KiB clusters, v2 with 256 KiB clusters
        let base = fill(1, 4 * MIB as usize);
        fs::write(dir.path().join("base"), &base).unwrap();
        let c1 = 64 * 1024usize;
        let a = fill(2, c1);
        let b = fill(3, c1 / 2); // half a cluster written: the rest of the cluster is zeros
        let mid = Ploop1Builder::new(Version::V1, 128, 4 * MIB).build(&[(5, &a), (20, &b)]);
        fs::write(dir.path().join("mid"), &mid).unwrap();
        let c2 = 256 * 1024usize;
        let t = fill(4, c2);
        let top = Ploop1Builder::new(Version::V2, 512, 4 * MIB).build(&[(0, &t)]);
        fs::write(dir.path().join("top"), &top).unwrap();

        let mut want = base.clone();
        want[5 * c1..6 * c1].copy_from_slice(&a);
        want[20 * c1..21 * c1].fill(0);
        want[20 * c1..20 * c1 + c1 / 2].copy_from_slice(&b);
        want[..c2].copy_from_slice(&t);
        let names = ["base", "mid", "top"].map(|n| dir.path().join(n));
        let s = Stack::open(&names).unwrap();
        assert_eq!(s.size(), 4 * MIB);
        assert_eq!(read_all(&s), want);
        // reads that straddle every boundary agree with the whole
        for (off, len) in [(5 * c1 - 3, 7), (c2 - 1, 2), (20 * c1 + c1 / 2 - 5, 10), (0, 1)] {
            let mut buf = vec![0u8; len];
            s.read_at(off as u64, &mut buf).unwrap();
            assert_eq!(buf, want[off..off + len], "at {off}");
        }
        assert_eq!(s.deltas()[1].allocated_bytes().unwrap(), Some(2 * c1 as u64));
        assert!(s.read_at(4 * MIB - 1, &mut [0u8; 2]).is_err());
    }

    #[test]
    fn a_ploop1_base_reads_zeros_where_nothing_is_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let c = 4096usize;
        let d = fill(9, c);
        let img = Ploop1Builder::new(Version::V2, 8, 64 * 1024).build(&[(3, &d), (15, &d)]);
        let p = dir.path().join("b");
        fs::write(&p, &img).unwrap();
        let s = Stack::open(&[&p]).unwrap();
        let mut want = vec![0u8; 64 * 1024];
        want[3 * c..4 * c].copy_from_slice(&d);
        want[15 * c..].copy_from_slice(&d);
        assert_eq!(read_all(&s), want);
    }

    #[test]
    fn a_damaged_ploop1_header_is_refused_not_read_as_raw() {
        let dir = tempfile::tempdir().unwrap();
        let d = fill(3, 4096);
        let good = Ploop1Builder::new(Version::V2, 8, 1 << 20).build(&[(0, &d)]);
        let p = dir.path().join("base");
        let top = dir.path().join("top");
        fs::write(&top, Ploop1Builder::new(Version::V2, 8, 1 << 20).build(&[])).unwrap();
        // one byte of the signature flipped; then the whole signature zeroed (the other
        // fields still a ploop1 header's)
        let mut flipped = good.clone();
        flipped[15] ^= 0x20;
        let mut zeroed = good.clone();
        zeroed[..16].fill(0);
        for (bad, why) in
            [(&flipped, "1 byte from the ploop1 v2"), (&zeroed, "the rest is a ploop1 v2")]
        {
            fs::write(&p, bad).unwrap();
            let e = Stack::open(&[&p]).err().unwrap();
            assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(0)), "{e}");
            assert!(e.msg.contains(why) && e.msg.contains("a damaged ploop1 header"), "{e}");
            assert!(Stack::open_detected(&[&p]).is_err());
            // the user says it is raw: read as raw, header bytes and all
            let s = Stack::open_with(&[&p], Expect::Raw).unwrap();
            assert_eq!(s.size(), bad.len() as u64);
            assert_eq!(read_all(&s), *bad);
            // above a good base: not ploop1, refused
            fs::write(&p, &good).unwrap();
            fs::write(&top, bad).unwrap();
            let e = Stack::open(&[&p, &top]).err().unwrap();
            assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(0)), "{e}");
            assert!(e.msg.contains("every delta above the base is ploop1"), "{e}");
        }
        // a raw disk (a GPT's protective MBR first) and zeros stay raw
        for raw in [crate::image::testimg::seed_images().pop().unwrap(), vec![0u8; 1 << 20]] {
            fs::write(&p, &raw).unwrap();
            assert_eq!(Stack::open(&[&p]).unwrap().deltas()[0].format(), &DeltaFormat::Raw);
        }
        // --format ploop1 on a raw base: refused
        let e = Stack::open_with(&[&p], Expect::Ploop1).err().unwrap();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(0)), "{e}");
        assert!(e.msg.ends_with("the base was given as ploop1"), "{e}");
    }

    #[test]
    fn the_bat_is_read_a_chunk_at_a_time_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let n = ploop1::BAT_CHUNK * 2 + 5;
        let (a, b, c) = (fill(1, 4096), fill(2, 4096), fill(3, 4096));
        let last = n - 1;
        let far = ploop1::BAT_CHUNK + 7;
        let img =
            Ploop1Builder::new(Version::V2, 8, n * 4096).build(&[(last, &a), (3, &b), (far, &c)]);
        let p = dir.path().join("d");
        fs::write(&p, &img).unwrap();
        let s = Stack::open(&[&p]).unwrap();
        assert_eq!(s.size(), n * 4096);
        // back and forth between the chunks
        for (i, want) in [(far, &c), (3, &b), (last, &a), (far, &c), (4, &vec![0u8; 4096])] {
            let mut buf = vec![0u8; 4096];
            s.read_at(i * 4096, &mut buf).unwrap();
            assert!(buf == *want, "cluster {i}");
        }
        assert_eq!(s.deltas()[0].allocated_clusters().unwrap(), Some(3));
    }

    #[test]
    fn raw_upper_deltas_hold_their_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1024 * 1024u64;
        let base = fill(1, size as usize);
        fs::write(dir.path().join("base"), &base).unwrap();
        // an upper raw delta with data at 256 KiB (4 KiB) and a zero-filled block written at
        // 512 KiB: written zeros are data, the model holds them
        let f = File::create(dir.path().join("up")).unwrap();
        f.set_len(size).unwrap();
        let blk = fill(7, 4096);
        f.write_all_at(&blk, 256 * 1024).unwrap();
        f.write_all_at(&[0u8; 4096], 512 * 1024).unwrap();
        f.sync_all().unwrap();
        // and a fresh sparse delta on top: holds nothing
        File::create(dir.path().join("fresh")).unwrap().set_len(size).unwrap();
        let names = ["base", "up", "fresh"].map(|n| dir.path().join(n));
        // a vz7 image has no raw delta above the base: refused, naming the first
        let e = Stack::open(&names).err().unwrap();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(0)), "{e}");
        assert!(e.to_string().starts_with(&names[1].display().to_string()), "{e}");
        assert!(e.msg.contains("every delta above the base is ploop1"), "{e}");
        let s = Stack::open_detected(&names).unwrap();
        assert_eq!(s.deltas()[2].raw_held(), &RawHeld::Extents(vec![]));
        let mut want = base.clone();
        match s.deltas()[1].raw_held() {
            // a filesystem that reports holes (ext4, tmpfs, xfs, btrfs)
            RawHeld::Extents(x) => {
                assert!(x.iter().any(|&(a, b)| a <= 256 * 1024 && b >= 260 * 1024), "{x:?}");
                for &(a, b) in x {
                    want[a as usize..b as usize].fill(0);
                }
                want[256 * 1024..260 * 1024].copy_from_slice(&blk);
            }
            other => panic!("this test needs SEEK_HOLE from the temp dir's filesystem: {other:?}"),
        }
        assert_eq!(read_all(&s), want);
    }

    #[test]
    fn damaged_and_truncated_deltas_are_refused_with_their_offset() {
        let dir = tempfile::tempdir().unwrap();
        let c = 4096usize;
        let d = fill(5, c);
        let good = Ploop1Builder::new(Version::V2, 8, 64 * 1024).build(&[(2, &d), (9, &d)]);
        let p = dir.path().join("d");
        let open = |bytes: &[u8]| {
            fs::write(&p, bytes).unwrap();
            Stack::open(&[&p]).and_then(|s| {
                let mut b = vec![0u8; s.size() as usize];
                s.read_at(0, &mut b)
            })
        };
        open(&good).unwrap();
        // the last cluster cut short: truncated, at BAT entry 9 (byte 64 + 36)
        let e = open(&good[..good.len() - 100]).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Truncated, Some(100)), "{e}");
        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
        // a BAT entry past the end of the file
        let mut bad = good.clone();
        bad[64 + 8..64 + 12].copy_from_slice(&1000u32.to_le_bytes());
        let e = open(&bad).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(72)), "{e}");
        // a BAT entry into the BAT: a BAT of 1100 entries takes two 4 KiB clusters
        let big = Ploop1Builder::new(Version::V2, 8, 1100 * 4096).build(&[(1050, &d)]);
        open(&big).unwrap();
        let mut bad = big.clone();
        let at = 64 + 4 * 1050;
        bad[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
        let e = open(&bad).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(at as u64)), "{e}");
        assert!(e.msg.contains("inside the header and BAT"), "{e}");
        // a header cut short, and a header field out of range
        let e = open(&good[..40]).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Truncated, Some(40)), "{e}");
        let mut t = good.clone();
        t[28..32].copy_from_slice(&3u32.to_le_bytes());
        let e = open(&t).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(28)), "{e}");
        // a raw file that is not whole sectors
        let e = open(&[1u8; 1000]).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(1000)), "{e}");
        assert_eq!(Stack::open::<&Path>(&[]).err().map(|e| e.kind), Some(ErrorKind::OutOfRange));
    }
}
