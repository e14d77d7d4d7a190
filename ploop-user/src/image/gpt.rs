//! GPT partitions inside the logical device (a container's image carries one; the filesystem
//! is on `ploopNp1`).
//!
//! Parsed here rather than with the `gpt` crate: that crate opens a device that must also be
//! `Write`, reads through `Read + Seek` (the oracle reads a few sectors through `read_at`),
//! and its behaviour on hostile bytes is not something the reader's never-panic property can
//! lean on. The format is small: a header at LBA 1 (CRC32 over its own bytes), an entry
//! array (CRC32 over all of it), the backup header at the last LBA. Sectors are 512 bytes,
//! the logical block size of a ploop device. Partition `N` is entry `N - 1` of the array,
//! as Linux numbers them (`ploopNp1` is the first entry, whatever lies before it).

use super::{BlockRead, ErrorKind, ImageError, Result, SECTOR};

pub const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Bound on the entry array: 128 entries of 128 bytes is the norm, 1 MiB is generous.
pub const MAX_ENTRY_ARRAY: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as in `ploopNp<number>`.
    pub number: u32,
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: u64,
    /// Inclusive, as GPT stores it.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Partition {
    pub fn start_bytes(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn len_bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: [u8; 16],
    /// The header read: 1 (primary) or the device's last LBA (backup).
    pub header_lba: u64,
    /// Why the primary header was not used, when the backup was.
    pub primary_problem: Option<String>,
    pub first_usable: u64,
    pub last_usable: u64,
    pub partitions: Vec<Partition>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn guid(b: &[u8]) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[..16]);
    g
}

/// A GUID in its usual text form (the first three fields are little-endian on disk).
pub fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}",
        g[3],
        g[2],
        g[1],
        g[0],
        g[5],
        g[4],
        g[7],
        g[6],
        g[8],
        g[9],
        g[10..].iter().map(|b| format!("{b:02X}")).collect::<String>()
    )
}

/// The name of a few partition types ploop images carry.
pub fn type_name(g: &[u8; 16]) -> Option<&'static str> {
    match guid_string(g).as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => Some("Linux filesystem"),
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => Some("Linux LVM"),
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => Some("Linux swap"),
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => Some("EFI system"),
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => Some("Microsoft basic data"),
        _ => None,
    }
}

impl Gpt {
    /// Reads the GPT of `dev`: `Ok(None)` when there is none (no signature at LBA 1 nor at
    /// the last LBA), an error at the offset of the damage when there is one that does not
    /// check out.
    pub fn read(dev: &dyn BlockRead) -> Result<Option<Gpt>> {
        let sectors = dev.size() / SECTOR;
        if sectors < 3 {
            return Ok(None);
        }
        let primary = match Self::read_at_lba(dev, 1, sectors) {
            Ok(Some(g)) => return Ok(Some(g)),
            Ok(None) => None,
            Err(e) if e.kind == ErrorKind::Damaged => Some(e),
            Err(e) => return Err(e),
        };
        // Linux falls back on the backup header too (a damaged primary, e.g. a torn write)
        match (primary, Self::read_at_lba(dev, sectors - 1, sectors)) {
            (p, Ok(Some(mut g))) => {
                g.primary_problem =
                    Some(p.map_or_else(|| "no GPT signature at LBA 1".into(), |e| e.to_string()));
                Ok(Some(g))
            }
            (Some(p), _) => Err(p),
            (None, Ok(None)) => Ok(None),
            // no primary and a backup that does not check out: no GPT, as for Linux
            (None, Err(b)) if b.kind == ErrorKind::Damaged => Ok(None),
            (None, Err(b)) => Err(b),
        }
    }

    fn read_at_lba(dev: &dyn BlockRead, lba: u64, sectors: u64) -> Result<Option<Gpt>> {
        let base = lba * SECTOR;
        let mut h = [0u8; SECTOR as usize];
        dev.read_at(base, &mut h)?;
        if &h[..8] != GPT_SIGNATURE {
            return Ok(None);
        }
        let bad = |at: u64, msg: String| Err(ImageError::damaged(base + at, msg));
        let header_size = le32(&h, 12);
        if !(92..=SECTOR as u32).contains(&header_size) {
            return bad(12, format!("GPT header size {header_size} not in 92..=512"));
        }
        let stored = le32(&h, 16);
        let mut copy = h;
        copy[16..20].fill(0);
        let crc = crc32fast::hash(&copy[..header_size as usize]);
        if crc != stored {
            return bad(16, format!("GPT header CRC32 is {stored:#010x}, computed {crc:#010x}"));
        }
        let my_lba = le64(&h, 24);
        if my_lba != lba {
            return bad(24, format!("GPT header at LBA {lba} says it is at LBA {my_lba}"));
        }
        let first_usable = le64(&h, 40);
        let last_usable = le64(&h, 48);
        if first_usable > last_usable || last_usable >= sectors {
            return bad(
                40,
                format!(
                    "GPT usable LBAs {first_usable}..={last_usable} do not fit the device \
                     ({sectors} sectors)"
                ),
            );
        }
        let entries_lba = le64(&h, 72);
        let count = le32(&h, 80);
        let entry_size = le32(&h, 84);
        if entry_size < 128 || !entry_size.is_power_of_two() {
            return bad(84, format!("GPT entry size {entry_size}: not 128 times a power of two"));
        }
        let array = u64::from(count) * u64::from(entry_size);
        if array > MAX_ENTRY_ARRAY {
            return bad(80, format!("GPT entry array of {array} bytes (over {MAX_ENTRY_ARRAY})"));
        }
        let array_at = entries_lba.checked_mul(SECTOR).filter(|a| {
            entries_lba < sectors && a.checked_add(array).is_some_and(|e| e <= dev.size())
        });
        let Some(array_at) = array_at else {
            return bad(
                72,
                format!("GPT entry array at LBA {entries_lba} lies outside the device"),
            );
        };
        let mut entries = vec![0u8; array as usize];
        dev.read_at(array_at, &mut entries)?;
        let stored = le32(&h, 88);
        let crc = crc32fast::hash(&entries);
        if crc != stored {
            return bad(
                88,
                format!("GPT entry array CRC32 is {stored:#010x}, computed {crc:#010x}"),
            );
        }
        let mut partitions = Vec::new();
        for (i, e) in entries.chunks_exact(entry_size as usize).enumerate() {
            let type_guid = guid(&e[0..16]);
            if type_guid == [0; 16] {
                continue;
            }
            let at = array_at + i as u64 * u64::from(entry_size);
            let first_lba = le64(e, 32);
            let last_lba = le64(e, 40);
            if first_lba > last_lba || last_lba >= sectors {
                return Err(ImageError::damaged(
                    at + 32,
                    format!(
                        "GPT partition {} spans LBAs {first_lba}..={last_lba}, outside the \
                         device ({sectors} sectors)",
                        i + 1
                    ),
                ));
            }
            let units: Vec<u16> =
                e[56..128].as_chunks::<2>().0.iter().map(|&c| u16::from_le_bytes(c)).collect();
            let len = units.iter().position(|&u| u == 0).unwrap_or(units.len());
            partitions.push(Partition {
                number: i as u32 + 1,
                type_guid,
                unique_guid: guid(&e[16..32]),
                first_lba,
                last_lba,
                attributes: le64(e, 48),
                name: String::from_utf16_lossy(&units[..len]),
            });
        }
        Ok(Some(Gpt {
            disk_guid: guid(&h[56..72]),
            header_lba: lba,
            primary_problem: None,
            first_usable,
            last_usable,
            partitions,
        }))
    }

    pub fn partition(&self, n: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == n)
    }

    /// Byte range of partition `n` (start, length), or an error listing those that exist.
    pub fn partition_range(&self, n: u32) -> Result<(u64, u64)> {
        match self.partition(n) {
            Some(p) => Ok((p.start_bytes(), p.len_bytes())),
            None => Err(ImageError::new(
                ErrorKind::OutOfRange,
                format!(
                    "no partition {n} in the GPT (partitions: {})",
                    if self.partitions.is_empty() {
                        "none".to_string()
                    } else {
                        self.partitions
                            .iter()
                            .map(|p| p.number.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            )),
        }
    }
}

/// Writes a GPT (protective MBR, primary and backup headers and arrays) with `parts` as
/// `(first_lba, last_lba, name)` Linux-filesystem partitions into `disk` (its length a
/// multiple of 512, at least 68 sectors). For tests and for building sample images.
pub fn write_gpt(disk: &mut [u8], parts: &[(u64, u64, &str)]) {
    let s = SECTOR as usize;
    let sectors = (disk.len() / s) as u64;
    let linux: [u8; 16] = [
        0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D,
        0xE4,
    ];
    let mut array = vec![0u8; 128 * 128];
    for (i, &(first, last, name)) in parts.iter().enumerate() {
        let e = &mut array[i * 128..(i + 1) * 128];
        e[..16].copy_from_slice(&linux);
        e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (k, u) in name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
        }
    }
    let array_crc = crc32fast::hash(&array);
    // protective MBR: one partition of type 0xEE over the disk
    disk[446 + 4] = 0xEE;
    disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    disk[446 + 12..446 + 16]
        .copy_from_slice(&(sectors - 1).min(u64::from(u32::MAX)).to_le_bytes()[..4]);
    disk[510] = 0x55;
    disk[511] = 0xAA;
    let header = |my: u64, alt: u64, arr: u64| {
        let mut h = [0u8; 92];
        h[..8].copy_from_slice(GPT_SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[56..72].copy_from_slice(&[0x5A; 16]);
        h[72..80].copy_from_slice(&arr.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let last = sectors - 1;
    disk[s..s + 92].copy_from_slice(&header(1, last, 2));
    disk[2 * s..2 * s + array.len()].copy_from_slice(&array);
    let backup_array = (last - 32) as usize * s;
    disk[backup_array..backup_array + array.len()].copy_from_slice(&array);
    disk[last as usize * s..last as usize * s + 92].copy_from_slice(&header(last, 1, last - 32));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> Vec<u8> {
        let mut d = vec![0u8; 200 * 512];
        write_gpt(&mut d, &[(40, 99, "root"), (100, 165, "data")]);
        d
    }

    #[test]
    fn reads_partitions_numbered_as_linux() {
        let g = Gpt::read(&disk()).unwrap().unwrap();
        assert_eq!(g.header_lba, 1);
        assert_eq!(g.partitions.len(), 2);
        assert_eq!((g.partitions[0].number, g.partitions[0].first_lba), (1, 40));
        assert_eq!(g.partitions[1].name, "data");
        assert_eq!(type_name(&g.partitions[0].type_guid), Some("Linux filesystem"));
        assert_eq!(g.partition_range(2).unwrap(), (100 * 512, 66 * 512));
        assert!(g.partition_range(3).unwrap_err().to_string().contains("partitions: 1, 2"));
        assert_eq!(Gpt::read(&vec![0u8; 200 * 512]).unwrap(), None);
    }

    #[test]
    fn damaged_primary_falls_back_on_backup_else_error_at_offset() {
        let mut d = disk();
        d[512 + 30] ^= 1; // my_lba, under the header CRC
        let g = Gpt::read(&d).unwrap().unwrap();
        assert_eq!(g.header_lba, 199);
        assert!(g.primary_problem.unwrap().contains("CRC32"));
        let last = 199 * 512;
        d[last + 16] ^= 1;
        let e = Gpt::read(&d).unwrap_err();
        assert_eq!(e.offset, Some(512 + 16), "{e}");
        // entry array damage: at the array CRC field
        let mut d = disk();
        d[2 * 512 + 40] ^= 1;
        d[(199 - 32) * 512 + 40] ^= 1;
        assert_eq!(Gpt::read(&d).unwrap_err().offset, Some(512 + 88));
    }
}
