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

//! Writing ploop1 (PVD) deltas as libploop creates them: an empty delta for a snapshot or a
//! base (`device create --format ploop1`, the new top of `snapshot --format ploop1`), and the
//! check of what the model driver wrote (`testkit ploop1-check`). The format itself, the
//! header's fields and the BAT checks, lives in one place: [`crate::image::ploop1`], which
//! the image reader uses too.

use std::{fs, io::Write as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::image::ploop1::{self as format, field};
pub use crate::image::ploop1::{
    CIF_Empty, Header, PLOOP1_DEF_CLUSTER_LOG as DEFAULT_CLUSTER_LOG, PRL_IMAGE_COMPRESSED,
    SIGNATURE_DISK_IN_USE, Version,
};

const SECTOR: u64 = 512;

/// The header of an empty delta for a device of `bytes` (rounded up to a cluster), as
/// libploop's `generate_pvd_header` makes it.
pub fn empty_header(bytes: u64, cluster_log: u32, version: Version) -> Result<Header> {
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
    let header_bytes = (format::PVD_HEADER_SIZE + 4 * u64::from(clusters)).next_multiple_of(SECTOR);
    let fill = header_bytes.next_multiple_of(blocksize * SECTOR);
    Ok(Header {
        version,
        m_Type: PRL_IMAGE_COMPRESSED,
        m_Heads: heads,
        m_Cylinders: cylinders,
        m_Sectors: blocksize as u32,
        m_Size: clusters,
        m_SizeInSectors: sectors,
        m_DiskInUse: 0,
        m_FirstBlockOffset: (fill / SECTOR) as u32,
        m_Flags: CIF_Empty,
        m_FormatExtensionOffset: 0,
    })
}

/// log2 of the cluster size in sectors: `pctl_cluster_log`.
pub fn cluster_log(h: &Header) -> u32 {
    h.m_Sectors.trailing_zeros()
}

/// Reads the header of the ploop1 delta at `path`; `None` when the file is not ploop1.
pub fn read_header(path: &Path) -> Result<Option<Header>> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut b = [0u8; 64];
    match std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0) {
        Ok(()) if format::is_ploop1(&b) => {}
        _ => return Ok(None),
    }
    let h = Header::parse(&b).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if let Some(p) = h.problems(f.metadata()?.len()).into_iter().find(|p| p.fatal) {
        bail!("{}: byte {}: {}", path.display(), p.offset, p.msg);
    }
    Ok(Some(h))
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

/// Writes an empty delta (header and a zeroed BAT up to the first data cluster) into `f`, a
/// new file at `path` (named in errors).
pub fn write_empty(mut f: fs::File, path: &Path, header: &Header) -> Result<()> {
    // The BAT is written as zeros, not left a hole: libploop writes every cluster of a new
    // delta's header and BAT (do_create_delta), and its check refuses a sparse delta when the
    // client mounts it read-only ("ploop image ... is sparse", check.c fill_hole).
    let h = header.to_bytes();
    f.write_all(&h).with_context(|| format!("writing {}", path.display()))?;
    // In pieces: a large device with small clusters has a BAT of up to a GiB.
    let zeros = vec![0u8; 1 << 20];
    let mut left = (u64::from(header.m_FirstBlockOffset) * SECTOR).saturating_sub(h.len() as u64);
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
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
    /// Everything wrong, each with its byte offset; empty for a good delta.
    pub problems: Vec<String>,
}

/// The image reader's check of a delta file (header, BAT), with `m_DiskInUse` as `in_use`
/// says when given (the reader calls an open delta a problem: the model's open top is one
/// on purpose), and `CIF_Empty` only while nothing is allocated (the model clears it at its
/// first allocation, as the kernel does).
pub fn check(path: &Path, in_use: Option<bool>) -> Result<Report> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let r = format::check(&f).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let h = &r.header;
    let mut problems: Vec<String> = r
        .problems
        .iter()
        // An open delta is what the reader reports at this offset; any other value stays.
        .filter(|p| !(p.offset == field::m_DiskInUse && h.m_DiskInUse == SIGNATURE_DISK_IN_USE))
        .map(|p| format!("byte {}: {}", p.offset, p.msg))
        .collect();
    if r.more > 0 {
        let more =
            crate::verify::report::svg::axis::plural(r.more, "more problem", "more problems");
        problems.push(format!("and {more}"));
    }
    if r.allocated > 0 && h.m_Flags & CIF_Empty != 0 && h.m_DiskInUse == 0 {
        problems.push(format!(
            "byte {}: CIF_Empty set with {} clusters allocated",
            field::m_Flags,
            r.allocated
        ));
    }
    let open = h.m_DiskInUse == SIGNATURE_DISK_IN_USE;
    if let Some(want) = in_use
        && want != open
    {
        problems.push(format!(
            "byte {}: m_DiskInUse {:#x}: want {}",
            field::m_DiskInUse,
            h.m_DiskInUse,
            if want { "0x746f6e59 (in use)" } else { "closed" }
        ));
    }
    Ok(Report { header: r.header, file_bytes: r.file_size, allocated: r.allocated, problems })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt as _;

    /// libploop refuses a sparse delta at a read-only mount: every byte of the header and BAT
    /// is on disk, and the file ends where the first data cluster would start.
    #[test]
    fn an_empty_delta_has_no_hole() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.hds");
        let h = empty_header(64 << 20, 11, Version::V2).unwrap();
        write_empty(fs::File::create(&path).unwrap(), &path, &h).unwrap();
        let m = fs::metadata(&path).unwrap();
        assert_eq!(m.len(), u64::from(h.m_FirstBlockOffset) * SECTOR);
        assert!(m.blocks() * 512 >= m.len(), "{} bytes allocated of {}", m.blocks() * 512, m.len());
        assert!(check(&path, Some(false)).unwrap().problems.is_empty());
    }

    #[test]
    fn an_empty_header_is_libploops_and_reads_back() {
        let h = empty_header(32 << 20, 11, Version::V2).unwrap();
        assert_eq!(h.m_Sectors, 2048);
        assert_eq!(h.m_Size, 32);
        assert_eq!(h.m_SizeInSectors, 65536);
        // 64 + 32 * 4 bytes round up to one 1 MiB cluster
        assert_eq!(h.m_FirstBlockOffset, 2048);
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
        assert!(h.problems(2048 * 512).is_empty(), "{:?}", h.problems(2048 * 512));
        let v1 = empty_header(32 << 20, 9, Version::V1).unwrap();
        assert_eq!(Header::parse(&v1.to_bytes()).unwrap(), v1);
        assert_eq!(cluster_log(&v1), 9);
        assert!(empty_header(1 << 20, 2, Version::V2).is_err());
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
        let h = empty_header(8 << 20, 3, Version::V2).unwrap();
        write_empty(fs::File::create_new(&p).unwrap(), &p, &h).unwrap();
        let r = check(&p, Some(false)).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.allocated, 0);
        assert_eq!(read_header(&p).unwrap(), Some(h.clone()));
        // one cluster allocated at the end of the file, BAT[5] pointing at it (v2: clusters)
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        let map = format::PLOOP_MAP_OFFSET;
        let first = u64::from(h.m_FirstBlockOffset) / 8;
        f.set_len((first + 1) * 4096).unwrap();
        f.write_all_at(&(first as u32).to_le_bytes(), (map + 5) * 4).unwrap();
        let r = check(&p, Some(false)).unwrap();
        assert_eq!(r.allocated, 1);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems); // CIF_Empty still set
        // the same cluster twice, and one past the end
        f.write_all_at(&(first as u32).to_le_bytes(), (map + 6) * 4).unwrap();
        f.write_all_at(&((first + 9) as u32).to_le_bytes(), (map + 7) * 4).unwrap();
        let r = check(&p, Some(true)).unwrap();
        let all = r.problems.join("\n");
        assert!(all.contains("m_DiskInUse 0x0"), "{all}");
        assert!(r.problems.len() >= 4, "{all}");
        // an open delta is not a problem when it is meant to be open
        let mut open = h.clone();
        open.m_DiskInUse = SIGNATURE_DISK_IN_USE;
        let q = dir.path().join("open.hds");
        write_empty(fs::File::create_new(&q).unwrap(), &q, &open).unwrap();
        assert!(check(&q, Some(true)).unwrap().problems.is_empty());
        assert_eq!(check(&q, Some(false)).unwrap().problems.len(), 1);
    }
}
