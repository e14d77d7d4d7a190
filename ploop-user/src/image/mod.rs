//! Reading ploop images offline: raw and ploop1 deltas, stacks of them, GPT partitions,
//! dm-linear offsets and dm-crypt, and ext4's superblock verdict (the X1 oracle's primitives).
//!
//! Everything is a [`BlockRead`]: a read-only device of a known size read at any offset, so
//! that the oracle reads only the sectors it needs (the ext4 superblock is 1 KiB at 1024,
//! whatever stack of deltas, partition, cipher and offset is underneath). The layers:
//!
//! ```text
//! Stack::open(deltas, bottom first)            the logical ploop device
//!   -> gpt::Gpt::read(&stack)?.partition(N)    ploopNp<N>   (a Slice)
//!   -> crypt::CryptTable::parse(..)?.reader()  dm-crypt     (a CryptReader)
//!   -> Slice::from_sector(.., offset)          dm-linear    (a Slice)
//!   -> ext4::superblock_verdict(..)            X1: clean / needs_recovery / not ext4
//! ```
//!
//! Input is never trusted: every value read from a file is checked before it is used as a
//! size, an index or an offset, and a damaged or truncated file gives an [`ImageError`] naming
//! the file and the byte offset, never a panic (a property test feeds random and mutated bytes).

pub mod cli;
pub mod crypt;
pub mod delta;
pub mod ext4;
pub mod gpt;
pub mod ploop1;
pub mod testimg;

use std::{fmt, io, path::Path, sync::Arc};

pub use delta::{Delta, DeltaFormat, Stack};

/// The sector of every format here (ploop1's `SECTOR_SIZE`, dm's sectors, GPT's LBAs).
pub const SECTOR: u64 = 512;

/// What went wrong, so that callers can tell bad input (exit 2, X1 n/a) from damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be opened or read (permissions, I/O error).
    Io,
    /// The content contradicts its format (bad signature, a field out of range, an entry
    /// pointing outside the file).
    Damaged,
    /// The file ends before data the format says is there.
    Truncated,
    /// A read outside the device (a caller's mistake, or a partition past the end).
    OutOfRange,
    /// Valid input this reader does not handle (a cipher, a key in the kernel keyring).
    Unsupported,
}

/// An error with the file and the byte offset it is about, where there is one.
#[derive(Debug)]
pub struct ImageError {
    pub kind: ErrorKind,
    /// The file (or the layer, e.g. "partition 1") the offset is in.
    pub file: Option<String>,
    /// Byte offset in `file` of the field or data at fault.
    pub offset: Option<u64>,
    pub msg: String,
    /// The I/O error, printed as part of the message (see `source()`).
    pub source: Option<io::Error>,
}

impl ImageError {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Self { kind, file: None, offset: None, msg: msg.into(), source: None }
    }

    pub fn damaged(offset: u64, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Damaged, msg).at(offset)
    }

    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Names the file, unless a lower layer already did (the innermost name is the useful one).
    pub fn in_file(mut self, file: impl fmt::Display) -> Self {
        if self.file.is_none() {
            self.file = Some(file.to_string());
        }
        self
    }

    /// A file that could not be opened (the message is the errno's: "No such file or
    /// directory").
    pub fn open(e: io::Error) -> Self {
        let mut err = Self::new(ErrorKind::Io, "cannot open");
        err.source = Some(e);
        err
    }

    pub fn io(offset: u64, e: io::Error, what: &str) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return Self::new(ErrorKind::Truncated, format!("file ends inside {what}")).at(offset);
        }
        let mut err = Self::new(ErrorKind::Io, format!("cannot read {what}")).at(offset);
        err.source = Some(e);
        err
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if let Some(off) = self.offset {
            write!(f, "at byte {off} ({off:#x}): ")?;
        }
        f.write_str(&self.msg)?;
        if let Some(e) = &self.source {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

/// No `source()`: the I/O error is already in the message, and an error chain (anyhow's
/// `{:#}`) would print it twice.
impl std::error::Error for ImageError {}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// A read-only device read at byte offsets: a delta stack, a partition, a dm target.
///
/// `read_at` fills all of `buf` or fails; a read that does not lie inside `0..size()` is
/// refused with [`ErrorKind::OutOfRange`], never shortened.
pub trait BlockRead {
    /// The device's size in bytes.
    fn size(&self) -> u64;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl<T: BlockRead + ?Sized> BlockRead for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<T: BlockRead + ?Sized> BlockRead for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<T: BlockRead + ?Sized> BlockRead for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
}

/// A byte slice as a device (tests, and superblocks already in memory).
impl BlockRead for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = check_range(self.len() as u64, offset, buf.len())? as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

impl BlockRead for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

/// Refuses a read of `len` bytes at `offset` that does not fit in `size`; returns `offset`.
pub fn check_range(size: u64, offset: u64, len: usize) -> Result<u64> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(offset),
        _ => Err(ImageError::new(
            ErrorKind::OutOfRange,
            format!("read of {len} bytes at {offset} past the end of the device ({size} bytes)"),
        )
        .at(offset)),
    }
}

/// A window `start..start+len` of a device: a partition, or what a dm-linear target maps.
pub struct Slice<R> {
    inner: R,
    start: u64,
    len: u64,
    name: String,
}

impl<R: BlockRead> Slice<R> {
    /// Bytes `start..start+len` of `inner`; refused if they do not lie inside it.
    pub fn new(inner: R, start: u64, len: u64, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        match start.checked_add(len) {
            Some(end) if end <= inner.size() => Ok(Self { inner, start, len, name }),
            _ => Err(ImageError::new(
                ErrorKind::OutOfRange,
                format!(
                    "{name}: bytes {start}..{} lie past the end of the device ({} bytes)",
                    start.saturating_add(len),
                    inner.size()
                ),
            )
            .at(start)),
        }
    }

    /// What a dm-linear target with offset `sectors` maps: from there to the end.
    pub fn from_sector(inner: R, sectors: u64) -> Result<Self> {
        let start = sectors.saturating_mul(SECTOR);
        let len = inner.size().saturating_sub(start);
        Self::new(inner, start, len, format!("offset {sectors} sectors"))
    }

    pub fn start(&self) -> u64 {
        self.start
    }
}

impl<R: BlockRead> BlockRead for Slice<R> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.len, offset, buf.len()).map_err(|e| e.in_file(&self.name))?;
        self.inner.read_at(self.start + offset, buf)
    }
}

/// Where the filesystem lives inside the logical device: the layers of the trace's stack.
#[derive(Debug, Clone, Default)]
pub struct Locate {
    /// GPT partition number (1 = `ploopNp1`), or the whole device.
    pub partition: Option<u32>,
    /// A dm-crypt table as `dmsetup table --showkeys` prints it, applied on the partition.
    pub crypt: Option<crypt::CryptTable>,
    /// A dm-linear offset in sectors, applied last (on the crypt device if there is one).
    pub linear_offset: Option<u64>,
}

impl Locate {
    /// The device the filesystem sits on, read through every layer from `dev`.
    pub fn open<'a, R: BlockRead + 'a>(&self, dev: R) -> Result<Box<dyn BlockRead + 'a>> {
        let mut cur: Box<dyn BlockRead + 'a> = Box::new(dev);
        if let Some(n) = self.partition {
            let table = gpt::Gpt::read(&cur)?.ok_or_else(|| {
                ImageError::new(
                    ErrorKind::Damaged,
                    format!("partition {n} asked for, but the device has no GPT"),
                )
                .at(SECTOR)
            })?;
            let (start, len) = table.partition_range(n)?;
            cur = Box::new(Slice::new(cur, start, len, format!("partition {n}"))?);
        }
        if let Some(t) = &self.crypt {
            cur = Box::new(t.reader(cur)?);
        }
        if let Some(off) = self.linear_offset {
            cur = Box::new(Slice::from_sector(cur, off)?);
        }
        Ok(cur)
    }
}

/// Opens the delta files (bottom first) as one logical device.
pub fn open_stack<P: AsRef<Path>>(paths: &[P]) -> Result<Stack> {
    Stack::open(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_refuse_reads_and_windows_outside() {
        let dev: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let s = Slice::new(&dev, 1024, 1024, "p").unwrap();
        let mut b = [0u8; 4];
        s.read_at(1020, &mut b).unwrap();
        assert_eq!(b, [252, 253, 254, 255]);
        assert_eq!(s.read_at(1021, &mut b).unwrap_err().kind, ErrorKind::OutOfRange);
        assert_eq!(s.read_at(u64::MAX, &mut b).unwrap_err().kind, ErrorKind::OutOfRange);
        assert!(Slice::new(&dev, 4000, 97, "p").is_err());
        assert!(Slice::new(&dev, u64::MAX, 2, "p").is_err());
        assert!(Slice::from_sector(&dev, u64::MAX / 2).is_err());
        assert_eq!(Slice::from_sector(&dev, 8).unwrap().size(), 0);
    }

    #[test]
    fn errors_name_file_and_offset() {
        let e = ImageError::damaged(44, "m_DiskInUse is 0x1").in_file("top.delta").in_file("x");
        assert_eq!(e.to_string(), "top.delta: at byte 44 (0x2c): m_DiskInUse is 0x1");
    }
}
