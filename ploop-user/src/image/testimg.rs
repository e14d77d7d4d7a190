//! Builds small images for tests and benchmarks: ploop1 deltas (v1 and v2) with chosen
//! clusters allocated, in memory or straight into a file (bounded memory, for large ones).
//! Real code, not a mock: the reader's tests read what this writes, and `check` must find
//! nothing wrong with it.

use std::{fs::File, io, os::unix::fs::FileExt as _};

use super::{
    SECTOR,
    ploop1::{Header, PRL_IMAGE_COMPRESSED, PVD_HEADER_SIZE, Version},
};

/// A ploop1 delta being laid out: the header, and the BAT as clusters are placed.
#[derive(Debug, Clone)]
pub struct Ploop1Builder {
    pub header: Header,
    pub bat: Vec<u32>,
    /// File clusters placed so far.
    placed: u64,
}

impl Ploop1Builder {
    /// A delta of `size_bytes` (rounded up to the cluster, as libploop does) with clusters of
    /// `cluster_sectors` sectors (a power of two), nothing allocated.
    pub fn new(version: Version, cluster_sectors: u32, size_bytes: u64) -> Self {
        let cluster = u64::from(cluster_sectors) * SECTOR;
        let clusters = size_bytes.div_ceil(cluster);
        let bat_end = PVD_HEADER_SIZE + 4 * clusters;
        let first = bat_end.div_ceil(cluster) * cluster;
        let header = Header {
            version,
            m_Type: PRL_IMAGE_COMPRESSED,
            m_Heads: 16,
            m_Cylinders: (clusters * u64::from(cluster_sectors) / 16 / 63) as u32,
            m_Sectors: cluster_sectors,
            m_Size: clusters as u32,
            m_SizeInSectors: clusters * u64::from(cluster_sectors),
            m_DiskInUse: 0,
            m_FirstBlockOffset: (first / SECTOR) as u32,
            m_Flags: 0,
            m_FormatExtensionOffset: 0,
        };
        Self { header, bat: vec![0; clusters as usize], placed: 0 }
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.header.cluster_bytes()
    }

    /// Gives logical cluster `i` the next file cluster; returns its file offset.
    pub fn place(&mut self, i: u64) -> u64 {
        let off = self.header.data_start() + self.placed * self.cluster_bytes();
        self.placed += 1;
        self.bat[i as usize] = match self.header.version {
            Version::V1 => (off / SECTOR) as u32,
            Version::V2 => (off / self.cluster_bytes()) as u32,
        };
        off
    }

    /// The file's size once every placed cluster is written.
    pub fn file_size(&self) -> u64 {
        self.header.data_start() + self.placed * self.cluster_bytes()
    }

    /// Header and BAT, up to the first data cluster.
    pub fn head(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.header.data_start() as usize];
        b[..64].copy_from_slice(&self.header.to_bytes());
        for (k, e) in self.bat.iter().enumerate() {
            let at = 64 + 4 * k;
            b[at..at + 4].copy_from_slice(&e.to_le_bytes());
        }
        b
    }

    /// The whole delta in memory: `blocks` are (logical cluster, data), data at most a
    /// cluster (the rest of the cluster is zeros).
    pub fn build(mut self, blocks: &[(u64, &[u8])]) -> Vec<u8> {
        let offs: Vec<u64> = blocks.iter().map(|&(i, _)| self.place(i)).collect();
        let mut img = self.head();
        img.resize(self.file_size() as usize, 0);
        for (&(_, data), off) in blocks.iter().zip(offs) {
            img[off as usize..off as usize + data.len()].copy_from_slice(data);
        }
        img
    }

    /// Writes the delta into `file`, asking `fill` for each placed cluster's data (one
    /// cluster in memory at a time).
    pub fn write_to(
        mut self,
        file: &File,
        clusters: impl IntoIterator<Item = u64>,
        mut fill: impl FnMut(u64, &mut [u8]),
    ) -> io::Result<()> {
        let mut buf = vec![0u8; self.cluster_bytes() as usize];
        for i in clusters {
            let off = self.place(i);
            fill(i, &mut buf);
            file.write_all_at(&buf, off)?;
        }
        file.set_len(self.file_size())?;
        file.write_all_at(&self.head(), 0)
    }
}

/// Everything the reader does with `bytes` as one delta file in `dir`: alone as the whole
/// stack, on top of a good raw base, as a device (GPT, ext4, dm-crypt under a key), and as a
/// dm-crypt table line. Errors are the expected outcome for most inputs; a panic is a bug.
/// Shared by the property test (`ploop-user/tests/image.rs`) and the coverage-guided fuzz
/// target (`fuzz/`), so both drive the same entry points.
pub fn exercise(dir: &std::path::Path, bytes: &[u8]) {
    use super::{Locate, Stack, cli::copy_device, crypt::CryptTable, ext4, gpt::Gpt, ploop1};
    let p = dir.join("fuzz.delta");
    if std::fs::write(&p, bytes).is_err() {
        return;
    }
    let base = dir.join("base.img");
    if !base.exists() {
        let _ = std::fs::write(&base, vec![0u8; 128 * 512]);
    }
    let crypt = CryptTable::parse(FUZZ_CRYPT_LINE).ok();
    let stacks = [vec![p.clone()], vec![base, p.clone()]];
    // a vz7 image, and the model driver's stacks (raw deltas above the base too)
    let opened = stacks.iter().flat_map(|s| [Stack::open(s), Stack::open_detected(s)]);
    for s in opened.flatten() {
        let _ = copy_device(&s, &mut io::sink());
        let _ = Gpt::read(&s);
        for crypt in [crypt.clone(), None] {
            let l = Locate { partition: Some(1), crypt, linear_offset: Some(8) };
            let _ = l.open(&s).map(|fs| ext4::superblock_verdict(&fs));
        }
    }
    if let Ok(f) = File::open(&p) {
        let _ = ploop1::check(&f);
    }
    let dev = bytes.to_vec();
    let _ = Gpt::read(&dev);
    let _ = ext4::superblock_verdict(&dev);
    let _ = CryptTable::parse(&String::from_utf8_lossy(bytes));
}

/// A dm-crypt table on partition 1 (what `dmsetup table --showkeys` prints) for [`exercise`].
const FUZZ_CRYPT_LINE: &str = "p1-crypt: 0 58 crypt aes-xts-plain64 \
    000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
    0 /dev/ploop0p1 2\n";

/// Valid inputs to start mutating from: ploop1 v1 and v2 deltas holding a GPT disk (64 KiB
/// device, 4 KiB clusters, every third cluster a hole), and the raw disk itself.
pub fn seed_images() -> Vec<Vec<u8>> {
    let mut d = vec![0u8; 128 * SECTOR as usize];
    super::gpt::write_gpt(&mut d, &[(34, 93, "p")]);
    let blocks: Vec<(u64, &[u8])> =
        (0..16u64).filter(|i| i % 3 != 1).map(|i| (i, &d[i as usize * 4096..][..4096])).collect();
    let mut seeds: Vec<Vec<u8>> = [Version::V1, Version::V2]
        .into_iter()
        .map(|v| Ploop1Builder::new(v, 8, d.len() as u64).build(&blocks))
        .collect();
    seeds.push(d);
    seeds
}
