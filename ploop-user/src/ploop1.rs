//! The ploop1 (PVD) delta format of `include/ploop1_image.h` (OpenVZ ploop tools): the
//! 64-byte header, the BAT, and an empty delta as libploop creates one for a snapshot.
//! Small and self-contained on purpose: the writer (`device create --format ploop1`, the
//! snapshot deltas), the checker of what the model driver writes (`testkit ploop1-check`), and
//! an image reader can share it.
//!
//! Layout (little endian, packed): `m_Sig[16]`, `m_Type` = 2, `m_Heads`, `m_Cylinders`,
//! `m_Sectors` (cluster size in sectors), `m_Size` (BAT entries), `m_SizeInSectors` (u32 in v1,
//! u64 in v2), `m_DiskInUse`, `m_FirstBlockOffset` (sectors), `m_Flags`,
//! `m_FormatExtensionOffset`. The BAT follows in the first cluster(s), its first 16 u32 slots
//! taken by the header; an entry is 0 (not allocated) or where the cluster lives: in sectors
//! (v1) or in clusters (v2) from the start of the file.

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    os::unix::fs::FileExt as _,
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};

pub const SIG_V1: &[u8; 16] = b"WithoutFreeSpace";
pub const SIG_V2: &[u8; 16] = b"WithouFreSpacExt";
pub const HEADER_SIZE: usize = 64;
pub const PRL_IMAGE_COMPRESSED: u32 = 2;
/// `m_DiskInUse` while a kernel has the delta open as its writable top.
pub const SIGNATURE_DISK_IN_USE: u32 = 0x746F_6E59;
/// `m_Flags`: no data was ever written.
pub const CIF_EMPTY: u32 = 1;
/// BAT slots the header takes.
pub const MAP_OFFSET: u64 = 16;
/// libploop's default: 1 MiB clusters (2048 sectors).
pub const DEFAULT_CLUSTER_LOG: u32 = 11;
const SECTOR: u64 = 512;

/// `PLOOP_FMT_V1`/`PLOOP_FMT_V2` (also what `pstate/fmt_version` says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1 = 1,
    V2 = 2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub heads: u32,
    pub cylinders: u32,
    /// Cluster size in sectors.
    pub sectors: u32,
    /// BAT entries.
    pub size: u32,
    pub size_in_sectors: u64,
    pub disk_in_use: u32,
    /// Where data clusters start, in sectors (the header and the BAT come before).
    pub first_block_offset: u32,
    pub flags: u32,
    pub format_extension_offset: u64,
}

impl Header {
    /// The header of an empty delta for a device of `bytes` (rounded up to a cluster), as
    /// libploop's `generate_pvd_header` makes it.
    pub fn new(bytes: u64, cluster_log: u32, version: Version) -> Result<Self> {
        if !(3..=14).contains(&cluster_log) {
            bail!("cluster log {cluster_log}: want 3 (4 KiB) to 14 (8 MiB)");
        }
        let blocksize = 1u64 << cluster_log;
        let sectors = bytes.div_ceil(SECTOR).div_ceil(blocksize) * blocksize;
        if sectors == 0 {
            bail!("a delta of 0 bytes");
        }
        if version == Version::V1 && sectors > u64::from(u32::MAX) {
            bail!("{bytes} bytes do not fit a v1 header (32-bit sector count)");
        }
        let clusters = u32::try_from(sectors / blocksize).map_err(|_| anyhow!("too large"))?;
        let (heads, cylinders) = chs(sectors);
        let header_bytes = (HEADER_SIZE as u64 + 4 * u64::from(clusters)).next_multiple_of(SECTOR);
        let fill = header_bytes.next_multiple_of(blocksize * SECTOR);
        Ok(Header {
            version,
            heads,
            cylinders,
            sectors: blocksize as u32,
            size: clusters,
            size_in_sectors: sectors,
            disk_in_use: 0,
            first_block_offset: (fill / SECTOR) as u32,
            flags: CIF_EMPTY,
            format_extension_offset: 0,
        })
    }

    pub fn cluster_bytes(&self) -> u64 {
        u64::from(self.sectors) * SECTOR
    }

    /// log2 of the cluster size in sectors (`pctl_cluster_log`).
    pub fn cluster_log(&self) -> u32 {
        self.sectors.trailing_zeros()
    }

    pub fn device_bytes(&self) -> u64 {
        self.size_in_sectors * SECTOR
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..16].copy_from_slice(if self.version == Version::V2 { SIG_V2 } else { SIG_V1 });
        let mut put = |off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(16, PRL_IMAGE_COMPRESSED);
        put(20, self.heads);
        put(24, self.cylinders);
        put(28, self.sectors);
        put(32, self.size);
        put(44, self.disk_in_use);
        put(48, self.first_block_offset);
        put(52, self.flags);
        match self.version {
            Version::V2 => b[36..44].copy_from_slice(&self.size_in_sectors.to_le_bytes()),
            Version::V1 => b[36..40].copy_from_slice(&(self.size_in_sectors as u32).to_le_bytes()),
        }
        b[56..64].copy_from_slice(&self.format_extension_offset.to_le_bytes());
        b
    }

    /// Reads a header (v1 or v2); anything else is an error saying what is wrong.
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < HEADER_SIZE {
            bail!("{} bytes: shorter than a ploop1 header (64)", b.len());
        }
        let version = match &b[0..16] {
            s if s == SIG_V2 => Version::V2,
            s if s == SIG_V1 => Version::V1,
            s => bail!("signature {:?}: not a ploop1 delta", String::from_utf8_lossy(s)),
        };
        let u32_at = |off: usize| u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
        let u64_at = |off: usize| u64::from_le_bytes(b[off..off + 8].try_into().unwrap());
        if u32_at(16) != PRL_IMAGE_COMPRESSED {
            bail!("m_Type {}: want {PRL_IMAGE_COMPRESSED}", u32_at(16));
        }
        Ok(Header {
            version,
            heads: u32_at(20),
            cylinders: u32_at(24),
            sectors: u32_at(28),
            size: u32_at(32),
            size_in_sectors: match version {
                Version::V2 => u64_at(36),
                Version::V1 => u64::from(u32_at(36)),
            },
            disk_in_use: u32_at(44),
            first_block_offset: u32_at(48),
            flags: u32_at(52),
            format_extension_offset: u64_at(56),
        })
    }

    /// Is the file at `path` a ploop1 delta (by its signature)?
    pub fn sniff(path: &Path) -> bool {
        let mut b = [0u8; 16];
        fs::File::open(path).and_then(|mut f| f.read_exact(&mut b)).is_ok()
            && (&b == SIG_V1 || &b == SIG_V2)
    }
}

/// libploop's ConvertToCHS (heads, cylinders) for a disk of `sectors` sectors.
fn chs(sectors: u64) -> (u32, u32) {
    if sectors > 1_032_192 && sectors < 16_777_216 {
        return (16, (sectors / (63 * 16)) as u32);
    }
    let s = [63u64, 32, 16, 8].into_iter().find(|&d| sectors.is_multiple_of(d));
    let Some(s) = s else { return (1, sectors as u32) };
    let rest = sectors / s;
    match [16u64, 8, 4, 2].into_iter().find(|&d| rest.is_multiple_of(d)) {
        Some(h) => (h as u32, (rest / h) as u32),
        None => (1, sectors as u32),
    }
}

/// Writes an empty delta (header and a zeroed BAT up to the first data cluster) to `path`,
/// which must not exist unless `force`.
pub fn create(path: &Path, header: &Header, force: bool) -> Result<()> {
    let mut o = fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let mut f = o.open(path).map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            anyhow!("{} exists (use --force to replace it)", path.display())
        } else {
            anyhow!("creating {}: {e}", path.display())
        }
    })?;
    f.write_all(&header.to_bytes()).with_context(|| format!("writing {}", path.display()))?;
    f.set_len(u64::from(header.first_block_offset) * SECTOR)
        .with_context(|| format!("sizing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// What [`check`] found in a delta file.
#[derive(Debug)]
pub struct Report {
    pub header: Header,
    pub file_bytes: u64,
    /// Allocated BAT entries.
    pub allocated: u64,
    /// Everything wrong, in words; empty for a good delta.
    pub problems: Vec<String>,
}

/// Checks a delta file's header and BAT: the signature and type, the geometry (cluster a
/// power of two, the BAT covering the device and fitting before the first data cluster, the
/// file a whole number of clusters), every BAT entry inside the file's data area, on a
/// cluster boundary and used once, `CIF_Empty` only while nothing is allocated, and
/// `m_DiskInUse` as `in_use` says (when given).
pub fn check(path: &Path, in_use: Option<bool>) -> Result<Report> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_bytes = f.metadata()?.len();
    let mut hb = [0u8; HEADER_SIZE];
    f.read_exact_at(&mut hb, 0).with_context(|| format!("reading {}", path.display()))?;
    let header = Header::parse(&hb).with_context(|| path.display().to_string())?;
    let mut problems = Vec::new();
    let h = &header;
    if !h.sectors.is_power_of_two() {
        problems.push(format!("m_Sectors {} is not a power of two", h.sectors));
    }
    let cluster = h.cluster_bytes().max(SECTOR);
    if file_bytes % cluster != 0 {
        problems.push(format!("file size {file_bytes} is not a whole number of clusters"));
    }
    let need = h.size_in_sectors.div_ceil(u64::from(h.sectors.max(1)));
    if u64::from(h.size) < need {
        problems.push(format!("m_Size {} BAT entries cover less than the device ({need})", h.size));
    }
    let first = u64::from(h.first_block_offset) * SECTOR;
    if (MAP_OFFSET + u64::from(h.size)) * 4 > first {
        problems.push(format!("the BAT does not fit before m_FirstBlockOffset ({first} bytes)"));
    }
    if !first.is_multiple_of(cluster) {
        problems
            .push(format!("m_FirstBlockOffset {} is not cluster aligned", h.first_block_offset));
    }
    let mut bat = vec![0u8; h.size as usize * 4];
    f.read_exact_at(&mut bat, MAP_OFFSET * 4).context("reading the BAT")?;
    let mut seen = std::collections::BTreeSet::new();
    let mut allocated = 0;
    for (i, e) in bat.as_chunks::<4>().0.iter().enumerate() {
        let e = u64::from(u32::from_le_bytes(*e));
        if e == 0 {
            continue;
        }
        allocated += 1;
        let off = match h.version {
            Version::V2 => e * cluster,
            Version::V1 => e * SECTOR,
        };
        if off % cluster != 0 || off < first || off + cluster > file_bytes {
            problems.push(format!("BAT[{i}] = {e}: byte {off} is not a data cluster of the file"));
        } else if !seen.insert(off) {
            problems.push(format!("BAT[{i}] = {e}: cluster at byte {off} used twice"));
        }
    }
    if allocated > 0 && h.flags & CIF_EMPTY != 0 && h.disk_in_use == 0 {
        problems.push(format!("CIF_Empty set with {allocated} clusters allocated"));
    }
    match (in_use, h.disk_in_use) {
        (Some(true), SIGNATURE_DISK_IN_USE) | (Some(false), 0) | (None, _) => {}
        (Some(want), got) => problems.push(format!(
            "m_DiskInUse {got:#x}: want {}",
            if want { "0x746f6e59 (in use)" } else { "0 (closed)" }
        )),
    }
    Ok(Report { header, file_bytes, allocated, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let h = Header::new(32 << 20, 11, Version::V2).unwrap();
        assert_eq!(h.sectors, 2048);
        assert_eq!(h.size, 32);
        assert_eq!(h.size_in_sectors, 65536);
        // 64 + 32 * 4 bytes round up to one 1 MiB cluster
        assert_eq!(h.first_block_offset, 2048);
        let b = h.to_bytes();
        assert_eq!(&b[0..16], SIG_V2);
        assert_eq!(u32::from_le_bytes(b[28..32].try_into().unwrap()), 2048);
        assert_eq!(u64::from_le_bytes(b[36..44].try_into().unwrap()), 65536);
        assert_eq!(Header::parse(&b).unwrap(), h);
        let v1 = Header::new(32 << 20, 9, Version::V1).unwrap();
        assert_eq!(Header::parse(&v1.to_bytes()).unwrap(), v1);
        assert_eq!(v1.cluster_log(), 9);
        assert!(Header::parse(&[0u8; 64]).is_err());
        assert!(Header::new(1 << 20, 2, Version::V2).is_err());
    }

    #[test]
    fn libploop_geometry() {
        // 4 GiB: between 1032192 and 16777216 sectors -> 16 heads, 63 sectors a track
        assert_eq!(chs(8_388_608), (16, 8_388_608 / (63 * 16)));
        assert_eq!(chs(65536), (16, 65536 / 32 / 16));
    }

    #[test]
    fn checker_finds_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.hds");
        let h = Header::new(8 << 20, 3, Version::V2).unwrap();
        create(&p, &h, false).unwrap();
        let r = check(&p, Some(false)).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.allocated, 0);
        assert!(create(&p, &h, false).is_err());
        // one cluster allocated at the end of the file, BAT[5] pointing at it (v2: clusters)
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        let first = u64::from(h.first_block_offset) / 8;
        f.set_len((first + 1) * 4096).unwrap();
        f.write_all_at(&(first as u32).to_le_bytes(), (MAP_OFFSET + 5) * 4).unwrap();
        let r = check(&p, Some(false)).unwrap();
        assert_eq!(r.allocated, 1);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems); // CIF_Empty still set
        // the same cluster twice, and one past the end
        f.write_all_at(&(first as u32).to_le_bytes(), (MAP_OFFSET + 6) * 4).unwrap();
        f.write_all_at(&((first + 9) as u32).to_le_bytes(), (MAP_OFFSET + 7) * 4).unwrap();
        let r = check(&p, Some(true)).unwrap();
        let all = r.problems.join("\n");
        assert!(all.contains("used twice") && all.contains("not a data cluster"), "{all}");
        assert!(all.contains("m_DiskInUse 0x0"), "{all}");
    }
}
