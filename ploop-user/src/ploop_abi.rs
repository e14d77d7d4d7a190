//! The ploop ioctl ABI for user space: the layout and flags come from `ploop_common::ploop_if`
//! (shared with the eBPF programs); this adds the request numbers, encoded by nix's ioctl
//! macros, and a builder for whole requests.

pub use ploop_common::ploop_if::*;

// The request numbers in the type libc's `ioctl()` takes on this target (`c_ulong` on glibc,
// `c_int` on musl), from ploop-common's one encoding; they shadow its `u64`s of the glob above.
use ploop_common::ploop_if as common;
/// Add a delta.
pub const PLOOP_IOC_ADD_DELTA: libc::Ioctl = common::PLOOP_IOC_ADD_DELTA as libc::Ioctl;
/// A snapshot (new top delta).
pub const PLOOP_IOC_SNAPSHOT: libc::Ioctl = common::PLOOP_IOC_SNAPSHOT as libc::Ioctl;
/// Drop every delta (the device goes back to size 0).
pub const PLOOP_IOC_CLEAR: libc::Ioctl = common::PLOOP_IOC_CLEAR as libc::Ioctl;
/// Freeze the filesystem on the ploop device itself.
pub const PLOOP_IOC_FREEZE: libc::Ioctl = common::PLOOP_IOC_FREEZE as libc::Ioctl;
/// Thaw it.
pub const PLOOP_IOC_THAW: libc::Ioctl = common::PLOOP_IOC_THAW as libc::Ioctl;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unnecessary_cast, reason = "libc::Ioctl is u64 on glibc, i32 on musl")]
    fn request_numbers_match_ploop_if_h() {
        assert_eq!(PLOOP_IOC_ADD_DELTA as u64, 0x4018_5000);
        assert_eq!(PLOOP_IOC_SNAPSHOT as u64, 0x4018_5004);
        assert_eq!(PLOOP_IOC_CLEAR as u64, 0x5001);
        assert_eq!(PLOOP_IOC_FREEZE as u64, 0x5020);
        assert_eq!(PLOOP_IOC_THAW as u64, 0x5021);
        // nix's encoding of the same requests (the one libc users write) agrees.
        assert_eq!(PLOOP_IOC_SNAPSHOT, nix::request_code_write!(PLOOPCTLTYPE, 4, CTL_SIZE));
        assert_eq!(PLOOP_IOC_CLEAR, nix::request_code_none!(PLOOPCTLTYPE, 1));
        assert_eq!(
            common::PLOOP_IOC_BALLOON as libc::Ioctl,
            nix::request_code_write!(PLOOPCTLTYPE, 19, std::mem::size_of::<PloopBalloonCtl>())
        );
        assert_eq!(common::PLOOP_IOC_GETDEVICE, 0x4008_5016);
        assert_eq!(common::PLOOP_IOC_TRACK_INIT, 0x8010_5006);
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
}
