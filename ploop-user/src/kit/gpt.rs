//! A GUID partition table, as a container image carries one (`testkit gpt`): a protective
//! MBR, the primary header and entries, the backup entries and header at the end. Written
//! here so guests need no partitioning tool; the kernel's own GPT parser is the judge (the
//! partitions must appear).

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::fs::FileExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// 128 entries of 128 bytes: 32 sectors.
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
/// Partitions start on 1 MiB boundaries, as parted and sgdisk place them.
const ALIGN: u64 = 2048;
/// "Linux filesystem data" 0FC63DAF-8483-4772-8E79-3D69D8477DE4, in GPT byte order.
const LINUX_FS: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];

/// CRC-32 (IEEE 802.3, reflected), as GPT uses it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A version-4-shaped GUID from a seed (test images need unique, not secret, GUIDs).
fn guid(seed: u64, n: u64) -> [u8; 16] {
    let mut x = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut g = [0u8; 16];
    for chunk in g.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// What to write: (LBA, bytes).
pub type Writes = Vec<(u64, Vec<u8>)>;

/// The sectors of a disk of `disk_sectors` with partitions of `sizes` sectors each (`None`:
/// the rest of the disk), as writes; and each partition's (first, last) LBA.
pub fn layout(
    disk_sectors: u64,
    sizes: &[Option<u64>],
    seed: u64,
) -> Result<(Writes, Vec<(u64, u64)>)> {
    if sizes.is_empty() || sizes.len() > 15 {
        bail!("want 1 to 15 partitions (a ploop device has 16 minors)");
    }
    let last_usable = disk_sectors
        .checked_sub(2 + ENTRY_SECTORS)
        .filter(|&l| l > ALIGN)
        .ok_or_else(|| anyhow::anyhow!("a disk of {disk_sectors} sectors is too small"))?;
    let mut parts = Vec::new();
    let mut next = ALIGN;
    for (i, s) in sizes.iter().enumerate() {
        let end = match s {
            Some(n) if *n > 0 => next + n - 1,
            Some(_) => bail!("partition {}: size 0", i + 1),
            None if i + 1 == sizes.len() => last_usable,
            None => bail!("only the last partition may take the rest"),
        };
        if end > last_usable {
            bail!("partition {} does not fit on the disk ({disk_sectors} sectors)", i + 1);
        }
        parts.push((next, end));
        next = (end + 1).next_multiple_of(ALIGN);
    }

    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, &(first, last)) in parts.iter().enumerate() {
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&LINUX_FS);
        e[16..32].copy_from_slice(&guid(seed, i as u64 + 1));
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (k, c) in format!("part{}", i + 1).encode_utf16().enumerate() {
            e[56 + 2 * k..58 + 2 * k].copy_from_slice(&c.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);
    let header = |current: u64, backup: u64, entries_lba: u64| {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&guid(seed, 0));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[0..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let mut mbr = vec![0u8; SECTOR as usize];
    let p = &mut mbr[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    p[4] = 0xee;
    p[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    p[12..16].copy_from_slice(&u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let last = disk_sectors - 1;
    let writes = vec![
        (0, mbr),
        (1, header(1, last, 2)),
        (2, entries.clone()),
        (last - ENTRY_SECTORS, entries),
        (last, header(last, 1, last - ENTRY_SECTORS)),
    ];
    Ok((writes, parts))
}

// `BLKRRPART` of <linux/fs.h>: `_IO(0x12, 95)`.
nix::ioctl_none!(blkrrpart, 0x12, 95);
// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// Writes a GPT with partitions of `sizes` bytes (`None`: the rest) to `device`, has the
/// kernel read it again (BLKRRPART) and waits for the partition nodes; returns them.
pub fn write(device: &Path, sizes: &[Option<u64>]) -> Result<Vec<PathBuf>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .with_context(|| format!("opening {}", device.display()))?;
    let mut bytes = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    unsafe { blkgetsize64(f.as_raw_fd(), &mut bytes) }
        .with_context(|| format!("BLKGETSIZE64 on {}", device.display()))?;
    let sectors: Vec<Option<u64>> = sizes.iter().map(|s| s.map(|b| b.div_ceil(SECTOR))).collect();
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos())
        as u64
        ^ u64::from(std::process::id());
    let (writes, parts) = layout(bytes / SECTOR, &sectors, seed)?;
    for (lba, data) in &writes {
        f.write_all_at(data, lba * SECTOR)
            .with_context(|| format!("writing sector {lba} of {}", device.display()))?;
    }
    f.sync_all()?;
    // SAFETY: BLKRRPART takes no argument.
    unsafe { blkrrpart(f.as_raw_fd()) }
        .with_context(|| format!("BLKRRPART on {} (a partition in use?)", device.display()))?;
    let name = device.display().to_string();
    let nodes: Vec<PathBuf> =
        (1..=parts.len()).map(|i| PathBuf::from(format!("{name}p{i}"))).collect();
    // devtmpfs makes the nodes as the kernel adds the partitions.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !nodes.iter().all(|n| n.exists()) {
        if Instant::now() > deadline {
            bail!("{}: the kernel did not add the partitions {nodes:?}", device.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn layout_of_two_partitions() {
        let disk = 65536; // 32 MiB
        let (w, parts) = layout(disk, &[Some(8192), None], 7).unwrap();
        assert_eq!(parts, vec![(2048, 10239), (10240, disk - 34)]);
        let primary = &w[1].1;
        assert_eq!(&primary[0..8], b"EFI PART");
        let mut h = primary[0..92].to_vec();
        let crc = u32::from_le_bytes(h[16..20].try_into().unwrap());
        h[16..20].fill(0);
        assert_eq!(crc32(&h), crc);
        assert_eq!(w[4].0, disk - 1);
        assert_eq!(u64::from_le_bytes(w[4].1[72..80].try_into().unwrap()), disk - 33);
        assert_eq!(&w[0].1[510..512], &[0x55, 0xaa]);
        assert!(layout(disk, &[None, Some(1)], 7).is_err());
        assert!(layout(disk, &[Some(disk)], 7).is_err());
    }
}
