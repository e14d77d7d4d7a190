//! X1's question to a filesystem image: does ext4's superblock carry `needs_recovery`?
//!
//! The superblock is 1 KiB at byte 1024 of the filesystem, whatever the block size. ext4 sets
//! `EXT4_FEATURE_INCOMPAT_RECOVER` in it while the journal holds transactions not yet
//! written home, and clears it on a clean unmount or a freeze (which commits the journal and
//! writes the superblock): a snapshot taken with the filesystem frozen has it clear, one taken
//! without may not (the symptom of the commit). Only that flag decides the verdict; the other
//! fields are reported for context.

use super::{BlockRead, ErrorKind, ImageError, Result};

pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;
pub const EXT4_SUPER_MAGIC: u16 = 0xEF53;
pub const EXT4_FEATURE_COMPAT_HAS_JOURNAL: u32 = 0x4;
pub const EXT4_FEATURE_INCOMPAT_RECOVER: u32 = 0x4;
pub const EXT4_FEATURE_INCOMPAT_JOURNAL_DEV: u32 = 0x8;
/// `s_state`: cleanly unmounted.
pub const EXT4_VALID_FS: u16 = 0x1;
/// `s_state`: errors detected.
pub const EXT4_ERROR_FS: u16 = 0x2;

/// Byte offsets inside the superblock.
pub mod field {
    pub const S_BLOCKS_COUNT_LO: usize = 0x04;
    pub const S_LOG_BLOCK_SIZE: usize = 0x18;
    pub const S_MAGIC: usize = 0x38;
    pub const S_STATE: usize = 0x3A;
    pub const S_FEATURE_COMPAT: usize = 0x5C;
    pub const S_FEATURE_INCOMPAT: usize = 0x60;
    pub const S_FEATURE_RO_COMPAT: usize = 0x64;
    pub const S_UUID: usize = 0x68;
    pub const S_VOLUME_NAME: usize = 0x78;
}

/// X1's verdict on one filesystem image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// ext2/3/4 without `needs_recovery`: mountable read-only without a journal replay.
    Clean,
    /// `needs_recovery` is set: the journal must be replayed first (X1 fails).
    NeedsRecovery,
    /// No ext filesystem there (X1 cannot judge: n/a, with the reason).
    NotExt4 { reason: String },
}

impl Verdict {
    /// The word reports use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::NeedsRecovery => "needs_recovery",
            Verdict::NotExt4 { .. } => "not_ext4",
        }
    }
}

/// The superblock's fields a report shows next to the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub state: u16,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub label: String,
    /// `1024 << s_log_block_size`, or `None` when that field is out of range.
    pub block_size: Option<u64>,
    pub blocks_count_lo: u32,
}

impl Superblock {
    pub fn has_journal(&self) -> bool {
        self.feature_compat & EXT4_FEATURE_COMPAT_HAS_JOURNAL != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub verdict: Verdict,
    /// Present when the magic matched.
    pub superblock: Option<Superblock>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Judges the superblock of the filesystem that starts at byte 0 of `dev`; reads 1 KiB.
/// `Err` only when the device cannot be read (an I/O error, a damaged delta under it).
pub fn superblock_verdict(dev: &dyn BlockRead) -> Result<Report> {
    let need = SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64;
    if dev.size() < need {
        return Ok(Report {
            verdict: Verdict::NotExt4 {
                reason: format!(
                    "the device is {} bytes, too small for a superblock at byte {SUPERBLOCK_OFFSET}",
                    dev.size()
                ),
            },
            superblock: None,
        });
    }
    let mut b = [0u8; SUPERBLOCK_SIZE];
    dev.read_at(SUPERBLOCK_OFFSET, &mut b)?;
    Ok(judge(&b))
}

/// The verdict on the 1024 superblock bytes.
pub fn judge(b: &[u8; SUPERBLOCK_SIZE]) -> Report {
    let not = |reason: String| Report { verdict: Verdict::NotExt4 { reason }, superblock: None };
    let magic = le16(b, field::S_MAGIC);
    if magic != EXT4_SUPER_MAGIC {
        let hint = if b.iter().all(|&x| x == 0) {
            " (the superblock area is all zeros: nothing written there yet, or the filesystem \
             lies elsewhere: another partition, a dm-linear offset, an encrypted layer)"
        } else {
            ""
        };
        return not(format!(
            "no ext2/3/4 magic at byte {}: found {magic:#06x}, expected {EXT4_SUPER_MAGIC:#06x}{hint}",
            SUPERBLOCK_OFFSET + field::S_MAGIC as u64
        ));
    }
    let log = le32(b, field::S_LOG_BLOCK_SIZE);
    let sb = Superblock {
        state: le16(b, field::S_STATE),
        feature_compat: le32(b, field::S_FEATURE_COMPAT),
        feature_incompat: le32(b, field::S_FEATURE_INCOMPAT),
        feature_ro_compat: le32(b, field::S_FEATURE_RO_COMPAT),
        uuid: b[field::S_UUID..field::S_UUID + 16].try_into().unwrap_or([0; 16]),
        label: {
            let raw = &b[field::S_VOLUME_NAME..field::S_VOLUME_NAME + 16];
            let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        },
        block_size: (log <= 6).then(|| 1024u64 << log),
        blocks_count_lo: le32(b, field::S_BLOCKS_COUNT_LO),
    };
    if sb.feature_incompat & EXT4_FEATURE_INCOMPAT_JOURNAL_DEV != 0 {
        return not("an external ext4 journal device, not a filesystem".into());
    }
    let verdict = if sb.feature_incompat & EXT4_FEATURE_INCOMPAT_RECOVER != 0 {
        Verdict::NeedsRecovery
    } else {
        Verdict::Clean
    };
    Report { verdict, superblock: Some(sb) }
}

/// A minimal superblock for tests: magic, a journal, 4 KiB blocks, and `incompat`.
pub fn test_superblock(incompat: u32) -> [u8; SUPERBLOCK_SIZE] {
    let mut b = [0u8; SUPERBLOCK_SIZE];
    b[field::S_BLOCKS_COUNT_LO..field::S_BLOCKS_COUNT_LO + 4]
        .copy_from_slice(&1024u32.to_le_bytes());
    b[field::S_LOG_BLOCK_SIZE..field::S_LOG_BLOCK_SIZE + 4].copy_from_slice(&2u32.to_le_bytes());
    b[field::S_MAGIC..field::S_MAGIC + 2].copy_from_slice(&EXT4_SUPER_MAGIC.to_le_bytes());
    b[field::S_STATE..field::S_STATE + 2].copy_from_slice(&EXT4_VALID_FS.to_le_bytes());
    b[field::S_FEATURE_COMPAT..field::S_FEATURE_COMPAT + 4]
        .copy_from_slice(&EXT4_FEATURE_COMPAT_HAS_JOURNAL.to_le_bytes());
    b[field::S_FEATURE_INCOMPAT..field::S_FEATURE_INCOMPAT + 4]
        .copy_from_slice(&incompat.to_le_bytes());
    b[field::S_VOLUME_NAME..field::S_VOLUME_NAME + 4].copy_from_slice(b"root");
    b
}

/// The verdict as an error for callers that need ext4 there (`image info` does not).
pub fn require_ext4(r: &Report) -> Result<()> {
    match &r.verdict {
        Verdict::NotExt4 { reason } => Err(ImageError::new(ErrorKind::Unsupported, reason.clone())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_with(sb: &[u8; SUPERBLOCK_SIZE]) -> Vec<u8> {
        let mut d = vec![0u8; 8192];
        d[1024..2048].copy_from_slice(sb);
        d
    }

    #[test]
    fn recover_flag_decides() {
        // 0x2C0 = extents | 64bit | flex_bg, as mkfs.ext4 sets them
        let r = superblock_verdict(&dev_with(&test_superblock(0x2C0))).unwrap();
        assert_eq!(r.verdict, Verdict::Clean);
        let sb = r.superblock.unwrap();
        assert!(sb.has_journal());
        assert_eq!((sb.label.as_str(), sb.block_size), ("root", Some(4096)));
        let r = superblock_verdict(&dev_with(&test_superblock(0x2C4))).unwrap();
        assert_eq!(r.verdict, Verdict::NeedsRecovery);
        assert_eq!(r.verdict.as_str(), "needs_recovery");
    }

    #[test]
    fn not_ext4_says_why() {
        let r = superblock_verdict(&vec![0u8; 8192]).unwrap();
        let Verdict::NotExt4 { reason } = &r.verdict else { panic!("{r:?}") };
        assert!(reason.contains("all zeros") && reason.contains("byte 1080"), "{reason}");
        assert!(require_ext4(&r).is_err());
        let mut sb = test_superblock(0);
        sb[field::S_MAGIC] = 0x54;
        let r = superblock_verdict(&dev_with(&sb)).unwrap();
        let Verdict::NotExt4 { reason } = &r.verdict else { panic!("{r:?}") };
        assert!(reason.contains("0xef54") && !reason.contains("zeros"), "{reason}");
        let r = superblock_verdict(&dev_with(&test_superblock(EXT4_FEATURE_INCOMPAT_JOURNAL_DEV)));
        assert!(matches!(r.unwrap().verdict, Verdict::NotExt4 { .. }));
        let r = superblock_verdict(&vec![0u8; 2047]).unwrap();
        assert!(matches!(r.verdict, Verdict::NotExt4 { reason } if reason.contains("too small")));
    }
}
