//! The ploop1 delta format: the 64-byte header and the BAT, parsed and checked.
//!
//! Facts from OpenVZ ploop's `include/ploop1_image.h` (names kept, so that the two can be read
//! side by side); the code is ours. A ploop1 file is a packed little-endian header, then the
//! BAT (one `u32` per logical cluster, 0 = not allocated in this delta) from byte 64 up to
//! `m_FirstBlockOffset`, then data clusters. Seen as an array of `u32`, the BAT's entry for
//! logical cluster `i` is slot `PLOOP_MAP_OFFSET + i`: the header takes the first 16 slots.
//! v1 entries give the cluster's file offset in sectors, v2 entries in clusters.
//!
//! libploop writes `m_FormatExtensionOffset` in sectors (the header's comment says bytes); the
//! extension block is written past the data at close, with `m_DiskInUse =
//! SIGNATURE_DISK_CLOSED_V21`.

// Fields and constants are spelled as in ploop1_image.h, to be read side by side with it.
#![allow(non_upper_case_globals, non_snake_case)]

use std::{fs::File, os::unix::fs::FileExt as _};

use super::{ErrorKind, ImageError, Result, SECTOR};

/// Compressed disk v1 signature: BAT entries in sectors, `m_SizeInSectors` a `u32`.
pub const SIGNATURE_STRUCTURED_DISK_V1: &[u8; 16] = b"WithoutFreeSpace";
/// Compressed disk v2 signature: BAT entries in clusters, `m_SizeInSectors` a `u64`.
pub const SIGNATURE_STRUCTURED_DISK_V2: &[u8; 16] = b"WithouFreSpacExt";
/// `m_Type` of every ploop1 delta.
pub const PRL_IMAGE_COMPRESSED: u32 = 2;
/// `m_DiskInUse` while a delta is open read-write (a crash leaves it there).
pub const SIGNATURE_DISK_IN_USE: u32 = 0x746F_6E59;
/// `m_DiskInUse` of a delta closed by software of specification 2.0.
pub const SIGNATURE_DISK_CLOSED_V20: u32 = 0;
/// `m_DiskInUse` of a delta closed by software of specification 2.1 ("v2.1").
pub const SIGNATURE_DISK_CLOSED_V21: u32 = 0x312e_3276;
/// `m_Flags`: no data was ever written.
pub const CIF_Empty: u32 = 0x1;
/// `m_Flags`: a version conversion is in progress.
pub const CIF_FmtVersionConvert: u32 = 0x2;
pub const CIF_FlagsMask: u32 = CIF_Empty | CIF_FmtVersionConvert;
pub const PLOOP1_SECTOR_LOG: u32 = 9;
/// The default cluster: 2^11 sectors, 1 MiB.
pub const PLOOP1_DEF_CLUSTER_LOG: u32 = 11;
/// `sizeof(struct ploop_pvd_header)`.
pub const PVD_HEADER_SIZE: u64 = 64;
/// BAT slots the header takes (`sizeof(struct ploop_pvd_header) / sizeof(u32)`).
pub const PLOOP_MAP_OFFSET: u64 = PVD_HEADER_SIZE / 4;

/// Byte offsets of the header's fields, for error messages that point at them.
pub mod field {
    pub const m_Sig: u64 = 0;
    pub const m_Type: u64 = 16;
    pub const m_Heads: u64 = 20;
    pub const m_Cylinders: u64 = 24;
    pub const m_Sectors: u64 = 28;
    pub const m_Size: u64 = 32;
    pub const m_SizeInSectors: u64 = 36;
    pub const m_DiskInUse: u64 = 44;
    pub const m_FirstBlockOffset: u64 = 48;
    pub const m_Flags: u64 = 52;
    pub const m_FormatExtensionOffset: u64 = 56;
}

/// The largest cluster accepted: 2^21 sectors (1 GiB). The kernel's default is 1 MiB; a
/// larger value in a header is far more likely damage than a real image.
pub const MAX_CLUSTER_SECTORS: u32 = 1 << 21;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn number(self) -> u32 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }
}

/// `struct ploop_pvd_header`, decoded (the v1/v2 union resolved by the signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub m_Type: u32,
    pub m_Heads: u32,
    pub m_Cylinders: u32,
    /// Cluster size in sectors.
    pub m_Sectors: u32,
    /// BAT entries (logical clusters).
    pub m_Size: u32,
    /// Device size in sectors (`m_SizeInSectors_v1` or `_v2`).
    pub m_SizeInSectors: u64,
    pub m_DiskInUse: u32,
    /// Sectors before the first data cluster (header and BAT, cluster aligned).
    pub m_FirstBlockOffset: u32,
    pub m_Flags: u32,
    pub m_FormatExtensionOffset: u64,
}

/// One finding of [`check`] or of a header's validation: what, and where in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Byte offset in the file of the field or BAT entry at fault.
    pub offset: u64,
    pub msg: String,
    /// The reader cannot map clusters through a header with this problem.
    pub fatal: bool,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Whether `head` starts with a ploop1 signature (how a delta's format is told).
pub fn is_ploop1(head: &[u8]) -> bool {
    head.len() >= 16
        && (&head[..16] == SIGNATURE_STRUCTURED_DISK_V1
            || &head[..16] == SIGNATURE_STRUCTURED_DISK_V2)
}

/// Signature bytes that may differ for a header to count as a damaged ploop1 one: 4 of 16.
/// A raw disk starts with a protective MBR, boot code or zeros; 12 bytes of a signature in
/// place is damage, not chance.
pub const SIGNATURE_DAMAGE_BYTES: usize = 4;

/// Why `head` (a file's first 64 bytes, without a ploop1 signature) looks like a damaged
/// ploop1 header rather than the start of a raw disk, if it does: its signature is within
/// [`SIGNATURE_DAMAGE_BYTES`] bytes of one, or the other fields form a header that a reader
/// could use on a file of `file_size` bytes (`m_Type` 2, a cluster, a BAT that fits).
pub fn damaged_signature(head: &[u8; 64], file_size: u64) -> Option<String> {
    let sig = String::from_utf8_lossy(&head[..16]);
    for (v, want) in [(1, SIGNATURE_STRUCTURED_DISK_V1), (2, SIGNATURE_STRUCTURED_DISK_V2)] {
        let off = head[..16].iter().zip(want).filter(|(a, b)| a != b).count();
        if off <= SIGNATURE_DAMAGE_BYTES {
            return Some(format!(
                "m_Sig is {sig:?}, {off} byte{} from the ploop1 v{v} signature {:?}: a damaged \
                 ploop1 header",
                if off == 1 { "" } else { "s" },
                String::from_utf8_lossy(want)
            ));
        }
    }
    for want in [SIGNATURE_STRUCTURED_DISK_V2, SIGNATURE_STRUCTURED_DISK_V1] {
        let mut b = *head;
        b[..16].copy_from_slice(want);
        let Ok(h) = Header::parse(&b) else { continue };
        if h.m_Type == PRL_IMAGE_COMPRESSED && h.fatal(file_size).is_ok() {
            return Some(format!(
                "m_Sig is {sig:?}, not a ploop1 signature, but the rest is a ploop1 v{} header \
                 (m_Type {}, clusters of {} sectors, m_Size {}, data from sector {}): a damaged \
                 ploop1 header",
                h.version.number(),
                h.m_Type,
                h.m_Sectors,
                h.m_Size,
                h.m_FirstBlockOffset
            ));
        }
    }
    None
}

impl Header {
    /// Decodes the 64 header bytes; only the signature is checked here ([`Header::problems`]
    /// checks the rest, so that `check` can list every problem at once).
    pub fn parse(b: &[u8; 64]) -> Result<Header> {
        let version = if &b[..16] == SIGNATURE_STRUCTURED_DISK_V1 {
            Version::V1
        } else if &b[..16] == SIGNATURE_STRUCTURED_DISK_V2 {
            Version::V2
        } else {
            return Err(ImageError::damaged(
                field::m_Sig,
                format!(
                    "no ploop1 signature (m_Sig is {:?}, expected {:?} or {:?})",
                    String::from_utf8_lossy(&b[..16]),
                    "WithoutFreeSpace",
                    "WithouFreSpacExt"
                ),
            ));
        };
        Ok(Header {
            version,
            m_Type: le32(b, 16),
            m_Heads: le32(b, 20),
            m_Cylinders: le32(b, 24),
            m_Sectors: le32(b, 28),
            m_Size: le32(b, 32),
            m_SizeInSectors: match version {
                Version::V1 => u64::from(le32(b, 36)),
                Version::V2 => le64(b, 36),
            },
            m_DiskInUse: le32(b, 44),
            m_FirstBlockOffset: le32(b, 48),
            m_Flags: le32(b, 52),
            m_FormatExtensionOffset: le64(b, 56),
        })
    }

    /// The 64 header bytes (the inverse of [`Header::parse`]; tests and builders use it).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..16].copy_from_slice(match self.version {
            Version::V1 => SIGNATURE_STRUCTURED_DISK_V1,
            Version::V2 => SIGNATURE_STRUCTURED_DISK_V2,
        });
        b[16..20].copy_from_slice(&self.m_Type.to_le_bytes());
        b[20..24].copy_from_slice(&self.m_Heads.to_le_bytes());
        b[24..28].copy_from_slice(&self.m_Cylinders.to_le_bytes());
        b[28..32].copy_from_slice(&self.m_Sectors.to_le_bytes());
        b[32..36].copy_from_slice(&self.m_Size.to_le_bytes());
        match self.version {
            // v1's m_SizeInSectors is 32 bits, followed by a 32-bit Unused
            Version::V1 => b[36..40].copy_from_slice(&(self.m_SizeInSectors as u32).to_le_bytes()),
            Version::V2 => b[36..44].copy_from_slice(&self.m_SizeInSectors.to_le_bytes()),
        }
        b[44..48].copy_from_slice(&self.m_DiskInUse.to_le_bytes());
        b[48..52].copy_from_slice(&self.m_FirstBlockOffset.to_le_bytes());
        b[52..56].copy_from_slice(&self.m_Flags.to_le_bytes());
        b[56..64].copy_from_slice(&self.m_FormatExtensionOffset.to_le_bytes());
        b
    }

    /// Cluster size in bytes (valid once [`Header::problems`] found nothing fatal).
    pub fn cluster_bytes(&self) -> u64 {
        u64::from(self.m_Sectors) * SECTOR
    }

    /// The logical device's size in bytes (saturating: an absurd value is a fatal problem).
    pub fn device_bytes(&self) -> u64 {
        self.m_SizeInSectors.saturating_mul(SECTOR)
    }

    /// Where the BAT ends: the byte after entry `m_Size - 1`.
    pub fn bat_end(&self) -> u64 {
        PVD_HEADER_SIZE + 4 * u64::from(self.m_Size)
    }

    /// Where data clusters may start (header and BAT lie below).
    pub fn data_start(&self) -> u64 {
        u64::from(self.m_FirstBlockOffset) * SECTOR
    }

    /// The byte offset in the file of the BAT entry of logical cluster `i`.
    pub fn bat_entry_offset(i: u64) -> u64 {
        (PLOOP_MAP_OFFSET + i) * 4
    }

    /// The file offset a non-zero BAT entry names (v1: sectors, v2: clusters).
    pub fn entry_file_offset(&self, entry: u32) -> u64 {
        match self.version {
            Version::V1 => u64::from(entry) * SECTOR,
            Version::V2 => u64::from(entry) * self.cluster_bytes(),
        }
    }

    /// Every problem of the header for a file of `file_size` bytes; the fatal ones stop the
    /// reader (it could not map a cluster safely), the others only `check` reports.
    pub fn problems(&self, file_size: u64) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut add = |offset, fatal, msg: String| p.push(Problem { offset, msg, fatal });
        if self.m_Type != PRL_IMAGE_COMPRESSED {
            add(
                field::m_Type,
                true,
                format!("m_Type is {}, expected {PRL_IMAGE_COMPRESSED}", self.m_Type),
            );
        }
        let cluster_ok = self.m_Sectors != 0
            && self.m_Sectors.is_power_of_two()
            && self.m_Sectors <= MAX_CLUSTER_SECTORS;
        if !cluster_ok {
            add(
                field::m_Sectors,
                true,
                format!(
                    "m_Sectors (cluster size in sectors) is {}: not a power of two in 1..={}",
                    self.m_Sectors, MAX_CLUSTER_SECTORS
                ),
            );
        }
        if self.m_SizeInSectors == 0 {
            add(field::m_SizeInSectors, true, "m_SizeInSectors is 0: an empty device".into());
        } else if self.m_SizeInSectors > u64::MAX / SECTOR / 2 {
            add(
                field::m_SizeInSectors,
                true,
                format!("m_SizeInSectors is {}: larger than any device", self.m_SizeInSectors),
            );
        } else if cluster_ok {
            // libploop's generate_pvd_header makes m_Size exactly the clusters of the device;
            // more would be a BAT larger than the device, which only damage makes (and which
            // would have the reader walk entries no read can reach)
            let clusters = self.m_SizeInSectors.div_ceil(u64::from(self.m_Sectors));
            if u64::from(self.m_Size) != clusters {
                add(
                    field::m_Size,
                    true,
                    format!(
                        "m_Size is {} BAT entries, but the device (m_SizeInSectors {}) is {} \
                         clusters of {} sectors: the BAT is {} than the device it describes",
                        self.m_Size,
                        self.m_SizeInSectors,
                        clusters,
                        self.m_Sectors,
                        if u64::from(self.m_Size) < clusters { "smaller" } else { "larger" }
                    ),
                );
            }
        }
        match self.m_DiskInUse {
            SIGNATURE_DISK_CLOSED_V20 | SIGNATURE_DISK_CLOSED_V21 => {}
            SIGNATURE_DISK_IN_USE => add(
                field::m_DiskInUse,
                false,
                "m_DiskInUse is SIGNATURE_DISK_IN_USE: the delta is open read-write, or was \
                 not closed cleanly"
                    .into(),
            ),
            v => {
                add(field::m_DiskInUse, false, format!("m_DiskInUse is {v:#x}: not a known value"))
            }
        }
        if self.data_start() < self.bat_end() {
            add(
                field::m_FirstBlockOffset,
                true,
                format!(
                    "m_FirstBlockOffset is sector {} (byte {}), inside the BAT, which ends at \
                     byte {}",
                    self.m_FirstBlockOffset,
                    self.data_start(),
                    self.bat_end()
                ),
            );
        } else if cluster_ok && !self.m_FirstBlockOffset.is_multiple_of(self.m_Sectors) {
            add(
                field::m_FirstBlockOffset,
                false,
                format!(
                    "m_FirstBlockOffset is sector {}, not a multiple of the cluster ({} sectors)",
                    self.m_FirstBlockOffset, self.m_Sectors
                ),
            );
        }
        if file_size < self.bat_end() {
            add(
                file_size,
                true,
                format!(
                    "the file ({file_size} bytes) ends inside the BAT: m_Size (byte {}) is {} \
                     entries, which end at byte {}",
                    field::m_Size,
                    self.m_Size,
                    self.bat_end()
                ),
            );
        }
        if self.m_Flags & !CIF_FlagsMask != 0 {
            add(
                field::m_Flags,
                false,
                format!(
                    "m_Flags is {:#x}: unknown bits {:#x}",
                    self.m_Flags,
                    self.m_Flags & !CIF_FlagsMask
                ),
            );
        }
        if self.version == Version::V2 && self.m_FormatExtensionOffset != 0 {
            let at = self.m_FormatExtensionOffset.saturating_mul(SECTOR);
            if at < self.data_start() || at >= file_size {
                add(
                    field::m_FormatExtensionOffset,
                    false,
                    format!(
                        "m_FormatExtensionOffset is sector {} (byte {at}): outside the data \
                         area {}..{file_size}",
                        self.m_FormatExtensionOffset,
                        self.data_start()
                    ),
                );
            }
        }
        p
    }

    /// The first fatal problem as an error (what the reader refuses a file with).
    pub fn fatal(&self, file_size: u64) -> Result<()> {
        match self.problems(file_size).into_iter().find(|p| p.fatal) {
            Some(p) => Err(ImageError::damaged(p.offset, p.msg)),
            None => Ok(()),
        }
    }

    /// Where the cluster of BAT entry `entry` (logical cluster `i`) lies in a file of
    /// `file_size` bytes, or why it cannot be read (the error's offset is the BAT entry's).
    pub fn cluster_at(&self, i: u64, entry: u32, file_size: u64) -> Result<u64> {
        let at = Self::bat_entry_offset(i);
        let off = self.entry_file_offset(entry);
        let cluster = self.cluster_bytes();
        let bad = |msg: String| Err(ImageError::damaged(at, msg));
        if self.version == Version::V1 && u64::from(entry) % u64::from(self.m_Sectors) != 0 {
            return bad(format!(
                "BAT entry {i} is sector {entry}, not a multiple of the cluster ({} sectors)",
                self.m_Sectors
            ));
        }
        if off < self.data_start() {
            return bad(format!(
                "BAT entry {i} points at byte {off}, inside the header and BAT (data starts at \
                 byte {})",
                self.data_start()
            ));
        }
        if off.saturating_add(cluster) > file_size {
            let kind = if off < file_size { ErrorKind::Truncated } else { ErrorKind::Damaged };
            return Err(ImageError::new(
                kind,
                format!(
                    "BAT entry {i} points at bytes {off}..{}, past the end of the file \
                     ({file_size} bytes)",
                    off.saturating_add(cluster)
                ),
            )
            .at(at));
        }
        Ok(off)
    }
}

/// BAT entries read at a time (64 KiB): what the reader and `check` hold of a BAT, whatever
/// its size (a 4 TiB device of 1 MiB clusters has a 16 MiB BAT; m_Size can claim 16 GiB).
pub const BAT_CHUNK: u64 = 16 * 1024;

/// Reads BAT entries `first..first + out.len()` (the header must have no fatal problem, so
/// that the file holds them).
pub fn read_bat_entries(file: &File, first: u64, out: &mut [u32]) -> Result<()> {
    let at = Header::bat_entry_offset(first);
    let mut raw = vec![0u8; out.len() * 4];
    file.read_exact_at(&mut raw, at).map_err(|e| ImageError::io(at, e, "the BAT"))?;
    for (e, c) in out.iter_mut().zip(raw.as_chunks::<4>().0) {
        *e = u32::from_le_bytes(*c);
    }
    Ok(())
}

/// Calls `f(first, entries)` for the whole BAT in order, [`BAT_CHUNK`] entries at a time.
pub fn walk_bat(
    file: &File,
    h: &Header,
    mut f: impl FnMut(u64, &[u32]) -> Result<()>,
) -> Result<()> {
    let n = u64::from(h.m_Size);
    let mut buf = vec![0u32; BAT_CHUNK.min(n) as usize];
    let mut first = 0;
    while first < n {
        let len = BAT_CHUNK.min(n - first) as usize;
        read_bat_entries(file, first, &mut buf[..len])?;
        f(first, &buf[..len])?;
        first += len as u64;
    }
    Ok(())
}

/// The allocated (non-zero) entries of the BAT.
pub fn count_allocated(file: &File, h: &Header) -> Result<u64> {
    let mut n = 0;
    walk_bat(file, h, |_, chunk| {
        n += chunk.iter().filter(|&&e| e != 0).count() as u64;
        Ok(())
    })?;
    Ok(n)
}

/// What `image check` found in a ploop1 file.
#[derive(Debug)]
pub struct CheckReport {
    pub header: Header,
    pub file_size: u64,
    /// Allocated BAT entries.
    pub allocated: u64,
    /// Problems, in file order, at most [`MAX_PROBLEMS`] of them.
    pub problems: Vec<Problem>,
    /// Problems beyond [`MAX_PROBLEMS`], counted only (a BAT of random bytes would list
    /// millions).
    pub more: u64,
}

impl CheckReport {
    /// Every problem found, listed or counted.
    pub fn total(&self) -> u64 {
        self.problems.len() as u64 + self.more
    }
}

pub const MAX_PROBLEMS: usize = 1000;

/// Problems in the order found (which is file order): the first [`MAX_PROBLEMS`] kept, the
/// rest counted, so that `check` holds what it prints and no more.
struct Kept {
    problems: Vec<Problem>,
    more: u64,
}

impl Kept {
    /// Keeps `p` if there is room; returns its index when kept.
    fn push(&mut self, p: Problem) -> Option<usize> {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
            Some(self.problems.len() - 1)
        } else {
            self.more += 1;
            None
        }
    }
}

/// One bit per cluster of the file, set when a BAT entry claims it, in 8 KiB pages allocated
/// on first touch: at most a bit per cluster the file holds (1/4096 of its size with 512-byte
/// clusters, less for a sparse BAT), however many entries point there.
struct Claimed {
    pages: Vec<Option<Box<[u64; 1024]>>>,
}

impl Claimed {
    const PAGE_BITS: u64 = 1024 * 64;

    fn new(clusters: u64) -> Self {
        Self { pages: (0..clusters.div_ceil(Self::PAGE_BITS)).map(|_| None).collect() }
    }

    /// Claims cluster `c` (below `clusters`); false if it was claimed already.
    fn claim(&mut self, c: u64) -> bool {
        let page =
            self.pages[(c / Self::PAGE_BITS) as usize].get_or_insert_with(|| Box::new([0; 1024]));
        let bit = c % Self::PAGE_BITS;
        let (w, m) = ((bit / 64) as usize, 1u64 << (bit % 64));
        let fresh = page[w] & m == 0;
        page[w] |= m;
        fresh
    }
}

/// Validates a ploop1 file: the header's fields, then every BAT entry (inside the file,
/// past the header and BAT, cluster aligned, no two overlapping, clear of the format
/// extension). `Err` only when the file cannot be read at all or is not ploop1. Memory is
/// bounded by the file, not by what its header claims: the BAT is read [`BAT_CHUNK`] entries
/// at a time, clusters are claimed in a bitmap ([`Claimed`]), and only the problems printed
/// are kept.
pub fn check(file: &File) -> Result<CheckReport> {
    let file_size = file.metadata().map_err(|e| ImageError::io(0, e, "the file's size"))?.len();
    let mut head = [0u8; 64];
    file.read_exact_at(&mut head, 0).map_err(|e| ImageError::io(0, e, "the ploop1 header"))?;
    let header = Header::parse(&head).map_err(|mut e| {
        match damaged_signature(&head, file_size) {
            Some(why) => e.msg = why,
            None => e.msg.push_str(" (a raw delta has no header to check)"),
        }
        e
    })?;
    let mut header_problems = header.problems(file_size);
    header_problems.sort_by_key(|p| p.offset);
    let walk = !header_problems.iter().any(|p| p.fatal);
    let mut kept = Kept { problems: Vec::new(), more: 0 };
    for p in header_problems {
        kept.push(p);
    }
    let mut report = CheckReport { header, file_size, allocated: 0, problems: Vec::new(), more: 0 };
    // The BAT is walked when its size and the cluster are sane and the file holds it. Every
    // header problem left lies in the header (bytes 16..64), every BAT problem at its entry:
    // found in entry order, they are in file order.
    if walk {
        let h = &report.header;
        let cluster = h.cluster_bytes();
        let ext = (h.version == Version::V2 && h.m_FormatExtensionOffset != 0)
            .then(|| h.m_FormatExtensionOffset.saturating_mul(SECTOR));
        // a u32 entry reaches 2^32 clusters (v2) or sectors (v1), whatever the file's size
        let reach = match h.version {
            Version::V1 => (1u64 << 32) / u64::from(h.m_Sectors),
            Version::V2 => 1 << 32,
        };
        let mut claimed = Claimed::new(file_size.div_ceil(cluster).min(reach));
        // kept overlap problems: (index in kept, file cluster), named once their first
        // claimant is known
        let mut overlaps: Vec<(usize, u64)> = Vec::new();
        let mut allocated = 0u64;
        walk_bat(file, h, |first, chunk| {
            for (k, &e) in chunk.iter().enumerate() {
                if e == 0 {
                    continue;
                }
                allocated += 1;
                let i = first + k as u64;
                let at = Header::bat_entry_offset(i);
                match h.cluster_at(i, e, file_size) {
                    Ok(off) => {
                        let end = off + cluster;
                        if let Some(x) = ext.filter(|&x| off <= x && x < end) {
                            kept.push(Problem {
                                offset: at,
                                msg: format!(
                                    "BAT entry {i} points at bytes {off}..{end}, which hold the \
                                     format extension (byte {x})"
                                ),
                                fatal: false,
                            });
                        }
                        // cluster_at's checks make `off` a multiple of the cluster
                        if !claimed.claim(off / cluster) {
                            let p = Problem {
                                offset: at,
                                msg: format!("BAT entry {i} points at bytes {off}..{end}"),
                                fatal: false,
                            };
                            if let Some(idx) = kept.push(p) {
                                overlaps.push((idx, off / cluster));
                            }
                        }
                    }
                    Err(err) => {
                        kept.push(Problem { offset: at, msg: err.msg, fatal: false });
                    }
                }
            }
            Ok(())
        })?;
        report.allocated = allocated;
        if !overlaps.is_empty() {
            name_first_claimants(file, h, file_size, &mut kept.problems, &overlaps)?;
        }
    }
    report.problems = kept.problems;
    report.more = kept.more;
    Ok(report)
}

/// Completes the kept overlap problems with the entry that claimed their cluster first (a
/// second walk of the BAT, holding only the clusters of the problems kept).
fn name_first_claimants(
    file: &File,
    h: &Header,
    file_size: u64,
    problems: &mut [Problem],
    overlaps: &[(usize, u64)],
) -> Result<()> {
    let mut first: std::collections::HashMap<u64, Option<u64>> =
        overlaps.iter().map(|&(_, c)| (c, None)).collect();
    let cluster = h.cluster_bytes();
    walk_bat(file, h, |start, chunk| {
        for (k, &e) in chunk.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let i = start + k as u64;
            if let Ok(off) = h.cluster_at(i, e, file_size)
                && let Some(slot) = first.get_mut(&(off / cluster))
                && slot.is_none()
            {
                *slot = Some(i);
            }
        }
        Ok(())
    })?;
    for &(idx, c) in overlaps {
        if let Some(Some(j)) = first.get(&c) {
            problems[idx].msg.push_str(&format!(", overlapping the cluster of BAT entry {j}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Header {
        Header {
            version: Version::V2,
            m_Type: PRL_IMAGE_COMPRESSED,
            m_Heads: 16,
            m_Cylinders: 2,
            m_Sectors: 8,
            m_Size: 4,
            m_SizeInSectors: 32,
            m_DiskInUse: 0,
            m_FirstBlockOffset: 8,
            m_Flags: 0,
            m_FormatExtensionOffset: 0,
        }
    }

    #[test]
    fn header_round_trips_both_versions() {
        let h = v2();
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
        let h1 = Header { version: Version::V1, m_FormatExtensionOffset: 0, ..v2() };
        let b = h1.to_bytes();
        assert_eq!(&b[..16], b"WithoutFreeSpace");
        assert_eq!(Header::parse(&b).unwrap(), h1);
        assert!(h.problems(8 * 512).is_empty(), "{:?}", h.problems(8 * 512));
    }

    #[test]
    fn v1_size_is_32_bits_and_v2_is_64() {
        let mut h = v2();
        h.m_SizeInSectors = 1 << 33;
        let b = h.to_bytes();
        assert_eq!(Header::parse(&b).unwrap().m_SizeInSectors, 1 << 33);
        let mut b1 = b;
        b1[..16].copy_from_slice(SIGNATURE_STRUCTURED_DISK_V1);
        // the high half of the u64 is v1's Unused field: ignored
        assert_eq!(Header::parse(&b1).unwrap().m_SizeInSectors, 0);
    }

    #[test]
    fn every_field_out_of_range_is_named_with_its_offset() {
        type Case = (fn(&mut Header), u64, bool); // mutation, offset named, fatal
        let cases: Vec<Case> = vec![
            (|h| h.m_Type = 1, field::m_Type, true),
            (|h| h.m_Sectors = 0, field::m_Sectors, true),
            (|h| h.m_Sectors = 6, field::m_Sectors, true),
            (|h| h.m_Sectors = MAX_CLUSTER_SECTORS * 2, field::m_Sectors, true),
            (|h| h.m_Size = 3, field::m_Size, true),
            // a BAT larger than the device: walking it would read entries no read reaches
            (|h| h.m_Size = 5, field::m_Size, true),
            (|h| h.m_SizeInSectors = 0, field::m_SizeInSectors, true),
            (|h| h.m_SizeInSectors = u64::MAX, field::m_SizeInSectors, true),
            (|h| h.m_DiskInUse = SIGNATURE_DISK_IN_USE, field::m_DiskInUse, false),
            (|h| h.m_DiskInUse = 7, field::m_DiskInUse, false),
            (|h| h.m_FirstBlockOffset = 0, field::m_FirstBlockOffset, true),
            (|h| h.m_FirstBlockOffset = 9, field::m_FirstBlockOffset, false),
            (|h| h.m_Flags = 0x10, field::m_Flags, false),
            (|h| h.m_FormatExtensionOffset = 1, field::m_FormatExtensionOffset, false),
            (|h| h.m_FormatExtensionOffset = 1 << 40, field::m_FormatExtensionOffset, false),
        ];
        for (i, (mutate, offset, fatal)) in cases.into_iter().enumerate() {
            let mut h = v2();
            mutate(&mut h);
            let p = h.problems(8 * 512 * 3);
            assert_eq!(p.len(), 1, "case {i}: {p:?}");
            assert_eq!((p[0].offset, p[0].fatal), (offset, fatal), "case {i}: {p:?}");
        }
        // a BAT of 2^32-1 entries on a small file: refused at m_Size, first
        let mut h = v2();
        h.m_Size = u32::MAX;
        let e = h.fatal(8 * 512 * 3).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(field::m_Size)), "{e}");
        assert!(e.msg.contains("larger than the device"), "{e}");
        // the same with a device to match: the file cannot hold the BAT, named at its end
        h.m_SizeInSectors = u64::from(u32::MAX) * 8;
        h.m_FirstBlockOffset = (h.bat_end().div_ceil(4096) * 8) as u32;
        let e = h.fatal(8 * 512 * 3).unwrap_err();
        assert_eq!(e.offset, Some(8 * 512 * 3), "{e}");
        assert!(e.msg.contains("m_Size (byte 32) is 4294967295 entries"), "{e}");
        // the file too short for the BAT: named at the file's end
        let mut h = v2();
        h.m_Size = 1000;
        h.m_SizeInSectors = 8000;
        h.m_FirstBlockOffset = 8 * 2;
        let p = h.problems(2048);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].offset, p[0].fatal), (2048, true));
        let e = Header::parse(&[b'x'; 64]).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(0)));
    }

    #[test]
    fn bat_entries_map_by_version() {
        let h = v2();
        assert_eq!(h.cluster_at(0, 1, 8192).unwrap(), 4096);
        let h1 = Header { version: Version::V1, ..v2() };
        assert_eq!(h1.cluster_at(0, 8, 8192).unwrap(), 4096);
        // v1 entry not cluster aligned, in the header area, past the end
        assert_eq!(h1.cluster_at(2, 9, 1 << 20).unwrap_err().offset, Some(72));
        assert_eq!(h.cluster_at(1, 0, 1 << 20).unwrap_err().offset, Some(68));
        let e = h.cluster_at(3, 2, 8192).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(76)));
        let e = h.cluster_at(3, 1, 6000).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Truncated, Some(76)));
        assert!(h.cluster_at(3, u32::MAX, 1 << 40).is_err());
    }

    fn check_bytes(b: &[u8]) -> Result<CheckReport> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::write(&p, b).unwrap();
        check(&File::open(&p).unwrap())
    }

    fn offsets(r: &CheckReport) -> Vec<u64> {
        r.problems.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn check_finds_every_bat_problem_at_its_entry() {
        use crate::image::testimg::Ploop1Builder;
        let d = [7u8; 4096];
        for v in [Version::V1, Version::V2] {
            let good = Ploop1Builder::new(v, 8, 64 * 1024).build(&[(1, &d), (2, &d), (3, &d)]);
            let r = check_bytes(&good).unwrap();
            assert!(r.problems.is_empty(), "{v:?}: {:?}", r.problems);
            assert_eq!(r.allocated, 3);
            let entry = |i: usize| 64 + 4 * i;
            let put = |b: &mut Vec<u8>, i: usize, val: u32| {
                b[entry(i)..entry(i) + 4].copy_from_slice(&val.to_le_bytes())
            };
            let unit = |clusters: u32| match v {
                Version::V1 => clusters * 8,
                Version::V2 => clusters,
            };
            // entry 3 overlaps entry 1; entry 5 past the end; v1: entry 6 misaligned
            let mut bad = good.clone();
            put(&mut bad, 3, unit(1));
            put(&mut bad, 5, unit(40));
            if v == Version::V1 {
                put(&mut bad, 6, 9);
            }
            let r = check_bytes(&bad).unwrap();
            let mut want = vec![entry(3) as u64, entry(5) as u64];
            if v == Version::V1 {
                want.push(entry(6) as u64);
            }
            assert_eq!(offsets(&r), want, "{v:?}: {:?}", r.problems);
            assert!(r.problems[0].msg.contains("overlapping the cluster of BAT entry 1"));
            // the file truncated inside its last cluster
            let r = check_bytes(&good[..good.len() - 1]).unwrap();
            assert_eq!(offsets(&r), vec![entry(3) as u64], "{v:?}");
        }
    }

    #[test]
    fn check_lists_header_problems_and_refuses_what_is_not_ploop1() {
        use crate::image::testimg::Ploop1Builder;
        let mut b = Ploop1Builder::new(Version::V2, 8, 64 * 1024).build(&[]);
        b[44..48].copy_from_slice(&SIGNATURE_DISK_IN_USE.to_le_bytes());
        b[52..56].copy_from_slice(&0x80u32.to_le_bytes());
        b[16..20].copy_from_slice(&5u32.to_le_bytes());
        let r = check_bytes(&b).unwrap();
        assert_eq!(offsets(&r), vec![16, 44, 52], "{:?}", r.problems);
        let e = check_bytes(b"not a ploop1 image at all, just bytes...........................")
            .unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Damaged, Some(0)));
        let e = check_bytes(&b[..63]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Truncated);
    }
}
