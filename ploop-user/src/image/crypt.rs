//! dm-crypt, read offline: a crypt table as `dmsetup table --showkeys` prints it, and a
//! [`BlockRead`] that decrypts the sectors asked for (aes-xts with plain64 or plain IVs).
//!
//! The table line: `start length crypt cipher key iv_offset device offset [#opts opts...]`.
//! dm-crypt reads the data of crypt sector `s` (512-byte units, relative to the target) at
//! sector `offset + s` of `device`, and decrypts each `sector_size` unit with the IV of
//! sector `s + iv_offset` (divided by `sector_size / 512` with `iv_large_sectors`). plain64
//! is that number as a 64-bit little-endian integer padded to 16 bytes, plain its low 32 bits.
//! XTS takes the first half of the key for the data and the second for the tweak.
//!
//! What is not decrypted here is an [`CryptError::Unsupported`] with its reason (the oracle's
//! X1 is then n/a, not failed): other ciphers, a key held in the kernel keyring (which
//! `--showkeys` cannot show), integrity options, a table of several segments.

use std::fmt;

use aes::{
    Aes128, Aes256,
    cipher::{KeyInit as _, generic_array::GenericArray},
};
use xts_mode::Xts128;

use super::{BlockRead, ErrorKind, ImageError, Result, SECTOR, check_range};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvMode {
    /// The sector number, 64-bit little-endian.
    Plain64,
    /// The sector number's low 32 bits (dm-crypt's "plain", for old tables).
    Plain,
}

/// Why a table was not accepted: a line that is not a crypt table, or one this reader does
/// not decrypt (the oracle's "n/a" reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptError {
    Malformed(String),
    Unsupported(String),
}

impl fmt::Display for CryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptError::Malformed(r) => write!(f, "not a dm-crypt table: {r}"),
            CryptError::Unsupported(r) => write!(f, "dm-crypt table not decryptable here: {r}"),
        }
    }
}

impl std::error::Error for CryptError {}

impl From<CryptError> for ImageError {
    fn from(e: CryptError) -> Self {
        let kind = match e {
            CryptError::Malformed(_) => ErrorKind::Damaged,
            CryptError::Unsupported(_) => ErrorKind::Unsupported,
        };
        ImageError::new(kind, e.to_string())
    }
}

/// One parsed crypt target. The key is kept out of `Debug`.
#[derive(Clone)]
pub struct CryptTable {
    /// The device dm-crypt sits on, as the table names it (`253:1`, `/dev/ploop0p1`).
    pub device: String,
    /// Length in 512-byte sectors.
    pub sectors: u64,
    pub cipher: String,
    pub iv: IvMode,
    pub iv_offset: u64,
    /// Where the encrypted data starts on `device`, in sectors.
    pub offset: u64,
    /// Bytes per encryption unit (`sector_size:N`, default 512).
    pub sector_size: u32,
    pub iv_large_sectors: bool,
    key: Vec<u8>,
}

impl fmt::Debug for CryptTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptTable")
            .field("device", &self.device)
            .field("sectors", &self.sectors)
            .field("cipher", &self.cipher)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("iv_offset", &self.iv_offset)
            .field("offset", &self.offset)
            .field("sector_size", &self.sector_size)
            .field("iv_large_sectors", &self.iv_large_sectors)
            .finish()
    }
}

/// Options that do not change what a read returns.
const HARMLESS_OPTIONS: &[&str] = &[
    "allow_discards",
    "same_cpu_crypt",
    "submit_from_crypt_cpus",
    "no_read_workqueue",
    "no_write_workqueue",
    "high_priority",
];

fn num(tok: Option<&str>, what: &str) -> Result<u64, CryptError> {
    let t = tok.ok_or_else(|| CryptError::Malformed(format!("the line ends before {what}")))?;
    t.parse().map_err(|_| CryptError::Malformed(format!("{what} is {t:?}, not a number")))
}

fn hex_key(s: &str) -> Result<Vec<u8>, CryptError> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CryptError::Malformed(format!(
            "the key ({} characters) is not hex digits in pairs",
            s.len()
        )));
    }
    Ok((0..s.len()).step_by(2).filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect())
}

impl CryptTable {
    /// Parses what `dmsetup table --showkeys NAME` prints (with or without a leading
    /// `NAME: `); exactly one crypt segment, starting at sector 0.
    pub fn parse(text: &str) -> Result<CryptTable, CryptError> {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let line = match lines.as_slice() {
            [one] => *one,
            [] => return Err(CryptError::Malformed("empty table".into())),
            many => {
                return Err(CryptError::Unsupported(format!(
                    "the table has {} lines; one crypt segment is read here",
                    many.len()
                )));
            }
        };
        let mut toks = line.split_whitespace().peekable();
        if toks.peek().is_some_and(|t| t.ends_with(':')) {
            toks.next(); // `dmsetup table` without a name prefixes each line with it
        }
        let start = num(toks.next(), "the start sector")?;
        let sectors = num(toks.next(), "the length")?;
        match toks.next() {
            Some("crypt") => {}
            Some(t) => {
                return Err(CryptError::Malformed(format!("the target is {t:?}, not \"crypt\"")));
            }
            None => return Err(CryptError::Malformed("the line ends before the target".into())),
        }
        if start != 0 {
            return Err(CryptError::Unsupported(format!(
                "the crypt segment starts at sector {start}; only a table of one segment \
                 from sector 0 is read"
            )));
        }
        let cipher = toks
            .next()
            .ok_or_else(|| CryptError::Malformed("the line ends before the cipher".into()))?;
        let iv = match cipher {
            "aes-xts-plain64" | "capi:xts(aes)-plain64" => IvMode::Plain64,
            "aes-xts-plain" | "capi:xts(aes)-plain" => IvMode::Plain,
            c => {
                return Err(CryptError::Unsupported(format!(
                    "cipher {c}: only aes-xts-plain64 and aes-xts-plain are decrypted"
                )));
            }
        };
        let key = match toks.next() {
            None => return Err(CryptError::Malformed("the line ends before the key".into())),
            Some("-") => {
                return Err(CryptError::Unsupported("the table has no key (\"-\")".into()));
            }
            Some(k) if k.starts_with(':') => {
                return Err(CryptError::Unsupported(format!(
                    "the key is in the kernel keyring ({k}), which `dmsetup table --showkeys` \
                     cannot show; give the table with the key in hex"
                )));
            }
            Some(k) => hex_key(k)?,
        };
        if key.len() != 32 && key.len() != 64 {
            return Err(CryptError::Unsupported(format!(
                "an aes-xts key of {} bytes; 32 (AES-128) or 64 (AES-256) are decrypted",
                key.len()
            )));
        }
        let iv_offset = num(toks.next(), "iv_offset")?;
        let device = toks
            .next()
            .ok_or_else(|| CryptError::Malformed("the line ends before the device".into()))?
            .to_string();
        let offset = num(toks.next(), "the offset")?;
        let mut table = CryptTable {
            device,
            sectors,
            cipher: cipher.to_string(),
            iv,
            iv_offset,
            offset,
            sector_size: SECTOR as u32,
            iv_large_sectors: false,
            key,
        };
        if let Some(n) = toks.next() {
            let n: usize = n.parse().map_err(|_| {
                CryptError::Malformed(format!("the option count is {n:?}, not a number"))
            })?;
            let opts: Vec<&str> = toks.by_ref().take(n).collect();
            if opts.len() != n {
                return Err(CryptError::Malformed(format!(
                    "{n} options announced, {} given",
                    opts.len()
                )));
            }
            for o in opts {
                if let Some(v) = o.strip_prefix("sector_size:") {
                    table.sector_size = v
                        .parse()
                        .ok()
                        .filter(|s: &u32| s.is_power_of_two() && (512..=4096).contains(s))
                        .ok_or_else(|| {
                            CryptError::Malformed(format!("{o}: not a power of two in 512..=4096"))
                        })?;
                } else if o == "iv_large_sectors" {
                    table.iv_large_sectors = true;
                } else if !HARMLESS_OPTIONS.contains(&o) {
                    return Err(CryptError::Unsupported(format!("option {o}")));
                }
            }
        }
        if let Some(t) = toks.next() {
            return Err(CryptError::Malformed(format!("unexpected {t:?} after the options")));
        }
        if table.sectors > u64::MAX / SECTOR / 2
            || !(table.sectors * SECTOR).is_multiple_of(u64::from(table.sector_size))
        {
            return Err(CryptError::Malformed(format!(
                "a length of {} sectors is not a whole number of {}-byte units",
                table.sectors, table.sector_size
            )));
        }
        Ok(table)
    }

    fn cipher(&self) -> Xts {
        let (k1, k2) = self.key.split_at(self.key.len() / 2);
        if self.key.len() == 64 {
            Xts::Aes256(Box::new(Xts128::new(
                Aes256::new(GenericArray::from_slice(k1)),
                Aes256::new(GenericArray::from_slice(k2)),
            )))
        } else {
            Xts::Aes128(Box::new(Xts128::new(
                Aes128::new(GenericArray::from_slice(k1)),
                Aes128::new(GenericArray::from_slice(k2)),
            )))
        }
    }

    /// The XTS tweak of encryption unit `unit` (counted in `sector_size` from the target's
    /// start).
    pub fn tweak(&self, unit: u64) -> [u8; 16] {
        let per_unit = u64::from(self.sector_size) / SECTOR;
        let mut iv_sector = unit.wrapping_mul(per_unit).wrapping_add(self.iv_offset);
        if self.iv_large_sectors {
            iv_sector >>= per_unit.trailing_zeros();
        }
        let mut t = [0u8; 16];
        match self.iv {
            IvMode::Plain64 => t[..8].copy_from_slice(&iv_sector.to_le_bytes()),
            IvMode::Plain => t[..4].copy_from_slice(&(iv_sector as u32).to_le_bytes()),
        }
        t
    }

    /// Encrypts `buf` (whole units) as it would lie at byte `at` of the crypt device: for
    /// building test images, and the inverse the round-trip tests check reading against.
    pub fn encrypt(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        self.each_unit(at, buf, true)
    }

    fn each_unit(&self, at: u64, buf: &mut [u8], encrypt: bool) -> Result<()> {
        let unit = u64::from(self.sector_size);
        if !at.is_multiple_of(unit) || !(buf.len() as u64).is_multiple_of(unit) {
            return Err(ImageError::new(
                ErrorKind::OutOfRange,
                format!("{} bytes at {at}: not whole {unit}-byte units", buf.len()),
            ));
        }
        let xts = self.cipher();
        for (k, chunk) in buf.chunks_exact_mut(unit as usize).enumerate() {
            xts.apply(chunk, self.tweak(at / unit + k as u64), encrypt);
        }
        Ok(())
    }

    /// The decrypted crypt device over `dev` (the device the table names).
    pub fn reader<R: BlockRead>(&self, dev: R) -> Result<CryptReader<R>> {
        let start = self.offset.checked_mul(SECTOR);
        let size = self.sectors.saturating_mul(SECTOR);
        match start.and_then(|s| s.checked_add(size)) {
            Some(end) if end <= dev.size() => Ok(CryptReader {
                dev,
                start: end - size,
                size,
                xts: self.cipher(),
                table: self.clone(),
            }),
            _ => Err(ImageError::new(
                ErrorKind::OutOfRange,
                format!(
                    "the crypt table maps {} sectors from sector {} of its device, past the \
                     device's end ({} bytes)",
                    self.sectors,
                    self.offset,
                    dev.size()
                ),
            )),
        }
    }
}

/// Boxed: the expanded AES-256 keys are 1.4 KiB, and a reader holds one.
enum Xts {
    Aes128(Box<Xts128<Aes128>>),
    Aes256(Box<Xts128<Aes256>>),
}

impl Xts {
    /// `data` is a whole unit (512 to 4096 bytes), never shorter than the 16 bytes XTS needs.
    fn apply(&self, data: &mut [u8], tweak: [u8; 16], encrypt: bool) {
        match (self, encrypt) {
            (Xts::Aes128(x), false) => x.decrypt_sector(data, tweak),
            (Xts::Aes128(x), true) => x.encrypt_sector(data, tweak),
            (Xts::Aes256(x), false) => x.decrypt_sector(data, tweak),
            (Xts::Aes256(x), true) => x.encrypt_sector(data, tweak),
        }
    }
}

/// A crypt device: reads the units a request touches from the device below and decrypts
/// them, nothing else (the oracle asks for the 1 KiB of an ext4 superblock).
pub struct CryptReader<R> {
    dev: R,
    start: u64,
    size: u64,
    xts: Xts,
    table: CryptTable,
}

/// Units decrypted per read of the device below (bounds the scratch buffer).
const BATCH: u64 = 64 * 1024;

impl<R: BlockRead> BlockRead for CryptReader<R> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.size, offset, buf.len())?;
        let unit = u64::from(self.table.sector_size);
        let end = offset + buf.len() as u64;
        let mut first = offset / unit * unit;
        let mut scratch = vec![0u8; BATCH.min(end.div_ceil(unit) * unit - first) as usize];
        while first < end {
            let n = BATCH.min(end.div_ceil(unit) * unit - first);
            let chunk = &mut scratch[..n as usize];
            self.dev.read_at(self.start + first, chunk)?;
            for (k, u) in chunk.chunks_exact_mut(unit as usize).enumerate() {
                self.xts.apply(u, self.table.tweak(first / unit + k as u64), false);
            }
            // copy the overlap of [first, first+n) and [offset, end)
            let lo = first.max(offset);
            let hi = (first + n).min(end);
            buf[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&chunk[(lo - first) as usize..(hi - first) as usize]);
            first += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IEEE 1619-2007 XTS-AES vector 4 (AES-128, data unit 0) and vector 10 (AES-256, data
    /// unit 0xff): 512-byte units of 00..ff twice. The standard's first 32 ciphertext bytes,
    /// and the CRC32 of all 512 (computed with OpenSSL's XTS, an independent implementation).
    const V4_KEY: &str = "2718281828459045235360287471352631415926535897932384626433832795";
    const V4_CTX32: &str = "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c";
    const V4_CRC: u32 = 0x2bfd_c510;
    const V10_KEY: &str = "27182818284590452353602874713526624977572470936999595749669676273141592653589793238462643383279502884197169399375105820974944592";
    const V10_CTX32: &str = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b";
    const V10_CRC: u32 = 0xff9e_4679;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn ieee_1619_vectors_through_the_table() {
        // vector 4: unit 0 with iv_offset 0
        let t =
            CryptTable::parse(&format!("0 1 crypt aes-xts-plain64 {V4_KEY} 0 253:1 0")).unwrap();
        let mut c = pattern(512);
        t.encrypt(0, &mut c).unwrap();
        assert_eq!(hex(&c[..32]), V4_CTX32);
        assert_eq!(crc32fast::hash(&c), V4_CRC);
        // decrypting through the reader gives the plaintext back
        let r = t.reader(&c[..]).unwrap();
        let mut p = vec![0u8; 512];
        r.read_at(0, &mut p).unwrap();
        assert_eq!(p, pattern(512));

        // vector 10: data unit 0xff = crypt sector 0x0f + iv_offset 0xf0, 8 sectors of offset
        let line =
            format!("ploop0p1-crypt: 0 16 crypt aes-xts-plain64 {V10_KEY} 240 /dev/ploop0p1 8");
        let t = CryptTable::parse(&line).unwrap();
        assert_eq!((t.device.as_str(), t.offset, t.iv_offset), ("/dev/ploop0p1", 8, 240));
        let mut dev = vec![0u8; 24 * 512];
        let mut c = pattern(512);
        t.encrypt(15 * 512, &mut c).unwrap();
        assert_eq!(hex(&c[..32]), V10_CTX32);
        assert_eq!(crc32fast::hash(&c), V10_CRC);
        dev[23 * 512..].copy_from_slice(&c);
        let r = t.reader(&dev).unwrap();
        let mut p = vec![0u8; 100];
        r.read_at(15 * 512 + 200, &mut p).unwrap();
        assert_eq!(p, pattern(512)[200..300]);
    }

    #[test]
    fn large_sectors_and_their_iv() {
        // 4096-byte units; with iv_large_sectors the IV counts units: (8 + 16) >> 3 = 3,
        // without it 512-byte sectors: 24 (CRC32s from OpenSSL's XTS with those tweaks)
        for (opts, crc) in [
            ("2 sector_size:4096 iv_large_sectors", 0xb4e3_47c1u32),
            ("1 sector_size:4096", 0xb278_6bfd),
        ] {
            let t = CryptTable::parse(&format!(
                "0 16 crypt aes-xts-plain64 {V10_KEY} 16 253:1 0 {opts}"
            ))
            .unwrap();
            let mut dev = vec![0u8; 8192];
            let mut c = pattern(4096);
            t.encrypt(4096, &mut c).unwrap();
            assert_eq!(crc32fast::hash(&c), crc, "{opts}");
            dev[4096..].copy_from_slice(&c);
            let r = t.reader(&dev).unwrap();
            let mut p = vec![0u8; 1024];
            r.read_at(4096 + 1024, &mut p).unwrap();
            assert_eq!(p, pattern(4096)[1024..2048]);
        }
    }

    #[test]
    fn a_long_read_round_trips_across_batches() {
        let t = CryptTable::parse(&format!("0 400 crypt aes-xts-plain {V4_KEY} 7 8:0 0")).unwrap();
        let plain: Vec<u8> = (0..400 * 512).map(|i: usize| (i * 7 + i / 512) as u8).collect();
        let mut dev = plain.clone();
        t.encrypt(0, &mut dev).unwrap();
        assert_ne!(dev, plain);
        let r = t.reader(&dev).unwrap();
        let mut p = vec![0u8; plain.len() - 1000];
        r.read_at(333, &mut p).unwrap();
        assert_eq!(p, plain[333..333 + p.len()]);
        assert_eq!(
            r.read_at(400 * 512 - 1, &mut [0u8; 2]).unwrap_err().kind,
            ErrorKind::OutOfRange
        );
    }

    #[test]
    fn unsupported_and_malformed_tables_say_why() {
        let k = V4_KEY;
        let na = |s: &str| match CryptTable::parse(s) {
            Err(CryptError::Unsupported(r)) => r,
            other => panic!("{s}: {other:?}"),
        };
        let bad = |s: &str| match CryptTable::parse(s) {
            Err(CryptError::Malformed(r)) => r,
            other => panic!("{s}: {other:?}"),
        };
        assert!(na(&format!("0 8 crypt aes-cbc-essiv:sha256 {k} 0 8:0 0")).contains("aes-cbc"));
        assert!(
            na("0 8 crypt aes-xts-plain64 :64:logon:cryptsetup:abc-d0 0 8:0 4096")
                .contains("keyring")
        );
        assert!(na("0 8 crypt aes-xts-plain64 - 0 8:0 0").contains("no key"));
        assert!(na("0 8 crypt aes-xts-plain64 0011 0 8:0 0").contains("2 bytes"));
        assert!(na(&format!("8 8 crypt aes-xts-plain64 {k} 0 8:0 0")).contains("sector 8"));
        assert!(
            na(&format!("0 8 crypt aes-xts-plain64 {k} 0 8:0 0 1 integrity:28:aead"))
                .contains("integrity")
        );
        assert!(
            na(&format!("0 8 linear 8:0 0\n8 8 crypt aes-xts-plain64 {k} 0 8:0 0"))
                .contains("2 lines")
        );
        assert!(bad("0 8 linear 8:0 0").contains("linear"));
        assert!(bad("").contains("empty"));
        assert!(bad("0 8 crypt aes-xts-plain64 zz 0 8:0 0").contains("hex"));
        assert!(bad(&format!("0 8 crypt aes-xts-plain64 {k} x 8:0 0")).contains("iv_offset"));
        assert!(bad(&format!("0 8 crypt aes-xts-plain64 {k} 0 8:0")).contains("offset"));
        assert!(
            bad(&format!("0 8 crypt aes-xts-plain64 {k} 0 8:0 0 2 allow_discards"))
                .contains("2 options")
        );
        assert!(
            bad(&format!("0 8 crypt aes-xts-plain64 {k} 0 8:0 0 1 sector_size:1000"))
                .contains("sector_size")
        );
        assert!(
            bad(&format!("0 9 crypt aes-xts-plain64 {k} 0 8:0 0 1 sector_size:4096"))
                .contains("units")
        );
        // the key never shows in Debug
        let t =
            CryptTable::parse(&format!("0 8 crypt aes-xts-plain64 {k} 0 8:0 0 1 allow_discards"))
                .unwrap();
        assert!(!format!("{t:?}").contains(&k[..16]));
        // a table longer than the device
        assert!(t.reader(vec![0u8; 7 * 512]).is_err());
    }
}
