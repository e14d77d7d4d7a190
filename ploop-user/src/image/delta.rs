//! Delta files and stacks of them: which delta holds each block, and reading through.
//!
//! A stack is given bottom first; a read takes each block from the highest delta that holds
//! it, else zeros. What a delta holds:
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
};

use super::{
    BlockRead, ErrorKind, ImageError, Result, SECTOR, check_range,
    ploop1::{self, Header},
};

/// The block of the model driver's raw-delta bitmap (`PLOOP_BLK_SIZE`).
pub const RAW_BLOCK: u64 = 4096;

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
    /// The ploop1 BAT (empty for raw).
    bat: Vec<u32>,
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
    /// Opens a delta; `bottom` tells a raw base (holds everything) from a raw upper delta.
    pub fn open(path: &Path, bottom: bool) -> Result<Delta> {
        let name = path.display().to_string();
        let file = File::open(path)
            .map_err(|e| ImageError::io(0, e, "the delta file").in_file(&name))?;
        Self::from_file(path, file, bottom).map_err(|e| e.in_file(&name))
    }

    fn from_file(path: &Path, file: File, bottom: bool) -> Result<Delta> {
        let meta = file.metadata().map_err(|e| ImageError::io(0, e, "the file's size"))?;
        if !meta.is_file() {
            return Err(ImageError::new(ErrorKind::Io, "not a regular file"));
        }
        let file_size = meta.len();
        let mut head = [0u8; 64];
        let n = read_upto(&file, 0, &mut head)?;
        if ploop1::is_ploop1(&head[..n]) {
            if n < head.len() {
                return Err(ImageError::new(
                    ErrorKind::Truncated,
                    format!("the file ({file_size} bytes) ends inside the ploop1 header"),
                )
                .at(file_size));
            }
            let h = Header::parse(&head)?;
            h.fatal(file_size)?;
            let bat = ploop1::read_bat(&file, &h)?;
            return Ok(Delta {
                path: path.to_owned(),
                file,
                file_size,
                format: DeltaFormat::Ploop1(h),
                bat,
                held: RawHeld::All,
            });
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
            bat: Vec::new(),
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

    /// ploop1: the BAT entries, logical cluster order (0 = not allocated).
    pub fn bat(&self) -> &[u32] {
        &self.bat
    }

    /// Clusters (ploop1) or bytes in 4 KiB blocks (raw upper delta) this delta holds.
    pub fn allocated_bytes(&self) -> Option<u64> {
        match (&self.format, &self.held) {
            (DeltaFormat::Ploop1(h), _) => {
                Some(self.bat.iter().filter(|&&e| e != 0).count() as u64 * h.cluster_bytes())
            }
            (DeltaFormat::Raw, RawHeld::Extents(x)) => Some(x.iter().map(|(s, e)| e - s).sum()),
            (DeltaFormat::Raw, _) => None,
        }
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
                match self.bat.get(i as usize).copied().unwrap_or(0) {
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
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Stack> {
        if paths.is_empty() {
            return Err(ImageError::new(ErrorKind::OutOfRange, "no delta given"));
        }
        let deltas = paths
            .iter()
            .enumerate()
            .map(|(i, p)| Delta::open(p.as_ref(), i == 0))
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
                match d.map(off)? {
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
