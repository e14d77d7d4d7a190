//! The ploop ioctl ABI (x86-64), exactly as CONTRACT.md and `include/ploop_if.h` of the
//! OpenVZ ploop tools define it. Everything that knows the layout of `struct ploop_ctl`, the
//! request numbers or the flag values lives here and nowhere else.

/// `PLOOPCTLTYPE`: the ioctl type byte of every ploop request.
pub const PLOOPCTLTYPE: u8 = b'P';

/// `pctl_format`: raw delta (a sparse image of the device size).
pub const PLOOP_FMT_RAW: u32 = 1;
/// `pctl_format`: the ploop1 image format (not supported by the model driver).
pub const PLOOP_FMT_PLOOP1: u32 = 2;
/// `pctl_flags` of `PLOOP_IOC_ADD_DELTA`: a read-only (lower) delta.
pub const PLOOP_FMT_RDONLY: u32 = 1;
/// `pctl_flags` of `PLOOP_IOC_SNAPSHOT`: freeze the filesystem around the delta switch.
pub const PLOOP_FLAG_FS_SYNC: u32 = 0x1000_0000;
/// `maintenance_type` while a snapshot has the device frozen (the model driver shows it in
/// `pstate/maintenance`).
#[allow(dead_code)]
pub const PLOOP_MNTN_SNAPSHOT: u32 = 3;

/// Kernel-internal `ENOTSUPP`: user space sees errno 524, which has no libc name.
pub const ENOTSUPP: i32 = 524;

/// `struct ploop_ctl_chunk` (32 bytes, aligned 8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopCtlChunk {
    pub pctl_fd: i32,
    pub pctl_type: u32,
    pub pctl_flags: u32,
    pub pctl_offset: u32,
    pub pctl_start: u64,
    pub pctl_len: u64,
}

/// `struct ploop_ctl` (24 bytes, aligned 8 because of the trailing `chunks[0]`). The chunks
/// follow it in memory: see [`Request`].
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PloopCtl {
    pub pctl_format: u32,
    pub pctl_flags: u32,
    pub pctl_cluster_log: u32,
    pub pctl_size: u32,
    pub pctl_chunks: u16,
    pub pctl_level: u8,
    pub mbz1: u8,
    pub mbz2: u32,
}

const _: () = assert!(std::mem::size_of::<PloopCtl>() == 24);
const _: () = assert!(std::mem::align_of::<PloopCtl>() == 8);
const _: () = assert!(std::mem::size_of::<PloopCtlChunk>() == 32);
const _: () = assert!(std::mem::align_of::<PloopCtlChunk>() == 8);

pub const CTL_SIZE: usize = std::mem::size_of::<PloopCtl>();
pub const CHUNK_SIZE: usize = std::mem::size_of::<PloopCtlChunk>();

const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;

const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | ((PLOOPCTLTYPE as u64) << 8) | nr
}

/// `_IOW('P', 0, struct ploop_ctl)`
pub const PLOOP_IOC_ADD_DELTA: u64 = ioc(IOC_WRITE, 0, CTL_SIZE as u64);
/// `_IOW('P', 4, struct ploop_ctl)`
pub const PLOOP_IOC_SNAPSHOT: u64 = ioc(IOC_WRITE, 4, CTL_SIZE as u64);
/// `_IO('P', 6)`: drop every delta (the device goes back to size 0).
pub const PLOOP_IOC_CLEAR: u64 = ioc(IOC_NONE, 6, 0);
/// `_IO('P', 32)`
pub const PLOOP_IOC_FREEZE: u64 = ioc(IOC_NONE, 32, 0);
/// `_IO('P', 33)`
pub const PLOOP_IOC_THAW: u64 = ioc(IOC_NONE, 33, 0);

/// A request number as the libc `ioctl()` of this target wants it (`c_ulong` on glibc,
/// `c_int` on musl). Every ploop number fits in 31 bits, so the cast is lossless.
pub fn req(nr: u64) -> libc::Ioctl {
    nr as libc::Ioctl
}

/// A `ploop_ctl` followed by its chunks, laid out in an 8-aligned buffer exactly as the kernel
/// reads it. The number of chunks in the buffer is independent of `ctl.pctl_chunks`, so a
/// malformed request can be built on purpose.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub ctl: PloopCtl,
    pub chunks: Vec<PloopCtlChunk>,
}

impl Request {
    /// One chunk carrying `fd`, `pctl_chunks == 1`.
    pub fn one(format: u32, flags: u32, fd: i32) -> Self {
        Request {
            ctl: PloopCtl {
                pctl_format: format,
                pctl_flags: flags,
                pctl_chunks: 1,
                ..Default::default()
            },
            chunks: vec![PloopCtlChunk { pctl_fd: fd, ..Default::default() }],
        }
    }

    /// The bytes the kernel copies: the ctl, then every chunk.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CTL_SIZE + CHUNK_SIZE * self.chunks.len());
        out.extend_from_slice(as_bytes(&self.ctl));
        for c in &self.chunks {
            out.extend_from_slice(as_bytes(c));
        }
        out
    }
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: `PloopCtl` and `PloopCtlChunk` are `repr(C)` with no padding holes (the size
    // asserts above), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// The symbolic name of an errno, with 524 as `ENOTSUPP` (the kernel's name; libc has none).
pub fn errno_name(errno: i32) -> String {
    if errno == ENOTSUPP {
        return "ENOTSUPP".into();
    }
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => format!("E{errno}"),
        e => format!("{e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_ploop_if_h() {
        assert_eq!(PLOOP_IOC_ADD_DELTA, 0x4018_5000);
        assert_eq!(PLOOP_IOC_SNAPSHOT, 0x4018_5004);
        assert_eq!(PLOOP_IOC_CLEAR, 0x5006);
        assert_eq!(PLOOP_IOC_FREEZE, 0x5020);
        assert_eq!(PLOOP_IOC_THAW, 0x5021);
    }

    #[test]
    fn layout_is_the_kernels() {
        let r = Request {
            ctl: PloopCtl {
                pctl_format: 1,
                pctl_flags: PLOOP_FLAG_FS_SYNC,
                pctl_cluster_log: 3,
                pctl_size: 4,
                pctl_chunks: 0x0102,
                pctl_level: 5,
                mbz1: 6,
                mbz2: 7,
            },
            chunks: vec![
                PloopCtlChunk::default(),
                PloopCtlChunk {
                    pctl_fd: -1,
                    pctl_type: 8,
                    pctl_flags: 9,
                    pctl_offset: 10,
                    pctl_start: 11,
                    pctl_len: 12,
                },
            ],
        };
        let b = r.to_bytes();
        assert_eq!(b.len(), 24 + 64);
        assert_eq!(&b[0..4], &1u32.to_le_bytes());
        assert_eq!(&b[4..8], &0x1000_0000u32.to_le_bytes());
        assert_eq!(&b[16..18], &0x0102u16.to_le_bytes());
        assert_eq!(b[18], 5);
        assert_eq!(b[19], 6);
        assert_eq!(&b[20..24], &7u32.to_le_bytes());
        let c1 = &b[24 + 32..];
        assert_eq!(&c1[0..4], &(-1i32).to_le_bytes());
        assert_eq!(&c1[4..8], &8u32.to_le_bytes());
        assert_eq!(&c1[12..16], &10u32.to_le_bytes());
        assert_eq!(&c1[16..24], &11u64.to_le_bytes());
        assert_eq!(&c1[24..32], &12u64.to_le_bytes());
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(524), "ENOTSUPP");
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(libc::ENODEV), "ENODEV");
    }
}
