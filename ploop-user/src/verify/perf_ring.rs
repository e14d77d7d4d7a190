//! The perf transport's per-CPU buffers, opened here rather than through aya's
//! `PerfEventArrayBuffer`, which asks for a wake-up after every event (`wakeup_events = 1`).
//! A wake-up is an irq_work raised inside the probed call (a self-IPI): the consumer never
//! waits on these buffers, it drains them on its tick, so every one was paid for nothing.
//! Measured in a 6.1 TCG guest (`cargo xtask bench`), the perf transport cost 1.05-1.07x at
//! p50 against the ring buffer's 0.98-1.00x (whose programs commit with BPF_RB_NO_WAKEUP).
//! Opened with a watermark of half the buffer, the kernel wakes nobody until then.
//!
//! The layout read here is the kernel's ABI (`struct perf_event_mmap_page`,
//! `PERF_RECORD_SAMPLE` with `PERF_SAMPLE_RAW`, `PERF_RECORD_LOST`), unchanged since 3.x.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, FromRawFd as _, OwnedFd},
    ptr,
    sync::atomic::{AtomicU64, Ordering},
};

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_BPF_OUTPUT: u64 = 10;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
/// `perf_event_attr.watermark`: wake at `wakeup_watermark` bytes, not every N events.
const ATTR_FLAG_WATERMARK: u64 = 1 << 14;
/// PERF_ATTR_SIZE_VER0: every field set here is in it, and every kernel accepts it.
const ATTR_SIZE: usize = 64;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_SAMPLE: u32 = 9;
/// Offsets of `data_head` and `data_tail` in `struct perf_event_mmap_page`.
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;

/// One record of a perf buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum PerfRecord<'a> {
    /// A `bpf_perf_event_output` payload.
    Sample(&'a [u8]),
    /// Records the kernel dropped because the buffer was full.
    Lost(u64),
}

/// A CPU's perf buffer, mapped: one metadata page, then `pages` pages of data.
pub struct PerfRing {
    fd: OwnedFd,
    base: *mut u8,
    map_len: usize,
    data_size: u64,
    /// A record that wraps around the end, copied whole.
    scratch: Vec<u8>,
}

// SAFETY: the mapping belongs to this value alone; the kernel writes only in [tail, head)'s
// complement and the header's data_head, which is read atomically.
unsafe impl Send for PerfRing {}

impl PerfRing {
    /// Opens `cpu`'s buffer of `pages` data pages (a power of two), waking readers only
    /// when half of it is full.
    pub fn open(cpu: u32, pages: usize) -> io::Result<PerfRing> {
        assert!(pages.is_power_of_two(), "perf buffers are a power of two pages");
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let data_size = page * pages;
        let mut attr = [0u8; ATTR_SIZE];
        let mut put = |at: usize, v: &[u8]| attr[at..at + v.len()].copy_from_slice(v);
        put(0, &PERF_TYPE_SOFTWARE.to_ne_bytes()); // type
        put(4, &(ATTR_SIZE as u32).to_ne_bytes()); // size
        put(8, &PERF_COUNT_SW_BPF_OUTPUT.to_ne_bytes()); // config
        put(16, &1u64.to_ne_bytes()); // sample_period
        put(24, &PERF_SAMPLE_RAW.to_ne_bytes()); // sample_type
        put(40, &ATTR_FLAG_WATERMARK.to_ne_bytes()); // flags: enabled, watermark
        put(48, &((data_size / 2) as u32).to_ne_bytes()); // wakeup_watermark
        // SAFETY: attr outlives the call and is a valid VER0 perf_event_attr.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                -1 as libc::pid_t,
                cpu as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: perf_event_open returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let map_len = page + data_size;
        // SAFETY: a new shared mapping of the perf fd; unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(PerfRing {
            fd,
            base: base.cast(),
            map_len,
            data_size: data_size as u64,
            scratch: Vec::new(),
        })
    }

    /// Hands every record written since the last drain to `f`, then frees their space.
    pub fn drain(&mut self, mut f: impl FnMut(PerfRecord)) -> usize {
        // SAFETY: both words lie in the mapped metadata page; data_head is written by the
        // kernel (read with acquire, as perf's own readers do), data_tail only by us.
        let (head, tail) = unsafe {
            let head = (*self.base.add(DATA_HEAD).cast::<AtomicU64>()).load(Ordering::Acquire);
            (head, ptr::read_volatile(self.base.add(DATA_TAIL).cast::<u64>()))
        };
        // SAFETY: the data area is the `data_size` bytes after the metadata page; the
        // kernel does not write in [tail, head) until data_tail moves past it.
        let data = unsafe { self.base.add(self.map_len - self.data_size as usize) };
        let copy = |off: u64, dst: &mut [u8]| unsafe {
            ptr::copy_nonoverlapping(data.add(off as usize), dst.as_mut_ptr(), dst.len())
        };
        let n = records(self.data_size, tail, head, copy, &mut self.scratch, &mut f);
        // SAFETY: as above; release so the kernel sees our reads done before the space.
        unsafe { (*self.base.add(DATA_TAIL).cast::<AtomicU64>()).store(head, Ordering::Release) };
        n
    }
}

impl AsFd for PerfRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for PerfRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in open, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

/// The records in [tail, head) of a ring of `size` bytes (a power of two), read through
/// `copy(offset, dst)` so that a record wrapping around the end comes out whole.
fn records(
    size: u64,
    mut tail: u64,
    head: u64,
    copy: impl Fn(u64, &mut [u8]),
    scratch: &mut Vec<u8>,
    f: &mut impl FnMut(PerfRecord),
) -> usize {
    let mut n = 0;
    let read = |at: u64, dst: &mut [u8]| {
        let off = at % size;
        let first = (size - off).min(dst.len() as u64) as usize;
        copy(off, &mut dst[..first]);
        if first < dst.len() {
            copy(0, &mut dst[first..]);
        }
    };
    while head.saturating_sub(tail) >= 8 {
        let mut hdr = [0u8; 8];
        read(tail, &mut hdr);
        let kind = u32::from_ne_bytes(hdr[0..4].try_into().unwrap());
        let len = u16::from_ne_bytes(hdr[6..8].try_into().unwrap()) as u64;
        if len < 8 || len > head - tail {
            // Not a record: stop here; the rest is freed with it rather than misread.
            break;
        }
        scratch.resize(len as usize, 0);
        read(tail, scratch);
        match kind {
            PERF_RECORD_SAMPLE if len >= 12 => {
                let raw = u32::from_ne_bytes(scratch[8..12].try_into().unwrap()) as usize;
                let end = (12 + raw).min(scratch.len());
                f(PerfRecord::Sample(&scratch[12..end]));
                n += 1;
            }
            PERF_RECORD_LOST if len >= 24 => {
                f(PerfRecord::Lost(u64::from_ne_bytes(scratch[16..24].try_into().unwrap())));
                n += 1;
            }
            _ => {}
        }
        tail += len;
    }
    n
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn sample(payload: &[u8]) -> Vec<u8> {
        // The kernel pads raw samples to 8 bytes: u32 size, data, padding.
        let len = (8 + 4 + payload.len()).div_ceil(8) * 8;
        let mut r = vec![0u8; len];
        r[0..4].copy_from_slice(&PERF_RECORD_SAMPLE.to_ne_bytes());
        r[6..8].copy_from_slice(&(len as u16).to_ne_bytes());
        r[8..12].copy_from_slice(&(payload.len() as u32).to_ne_bytes());
        r[12..12 + payload.len()].copy_from_slice(payload);
        r
    }

    fn lost(count: u64) -> Vec<u8> {
        let mut r = vec![0u8; 24];
        r[0..4].copy_from_slice(&PERF_RECORD_LOST.to_ne_bytes());
        r[6..8].copy_from_slice(&24u16.to_ne_bytes());
        r[16..24].copy_from_slice(&count.to_ne_bytes());
        r
    }

    /// Writes `recs` into a ring of `size` bytes from position `start`; returns the ring.
    fn ring(size: usize, start: u64, recs: &[Vec<u8>]) -> (Vec<u8>, u64) {
        let mut ring = vec![0xEEu8; size];
        let mut at = start;
        for r in recs {
            for &b in r {
                ring[(at % size as u64) as usize] = b;
                at += 1;
            }
        }
        (ring, at)
    }

    fn read_all(size: usize, start: u64, recs: &[Vec<u8>]) -> Vec<String> {
        let (ring, head) = ring(size, start, recs);
        let copy = |off: u64, dst: &mut [u8]| {
            dst.copy_from_slice(&ring[off as usize..off as usize + dst.len()])
        };
        let out = RefCell::new(Vec::new());
        let n = records(size as u64, start, head, copy, &mut Vec::new(), &mut |r| {
            out.borrow_mut().push(match r {
                PerfRecord::Sample(s) => String::from_utf8_lossy(s).into_owned(),
                PerfRecord::Lost(c) => format!("lost {c}"),
            })
        });
        let out = out.into_inner();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn samples_and_losses_in_order_also_across_the_end() {
        let recs = [sample(b"first"), lost(7), sample(b"second event"), sample(b"x")];
        let want = ["first", "lost 7", "second event", "x"];
        // From the start, then from every position so that each record wraps somewhere.
        for start in 0..64u64 {
            assert_eq!(read_all(64 * 2, start + 1000 * 128, &recs), want, "start {start}");
        }
    }

    #[test]
    fn a_record_that_is_no_record_stops_the_read() {
        let mut bad = sample(b"ok");
        bad[6..8].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(read_all(256, 0, &[sample(b"a"), bad, sample(b"b")]), ["a"]);
        // A length past head: a record the kernel has not finished is not read.
        let (ring, _) = ring(256, 0, &[sample(b"whole")]);
        let copy =
            |off: u64, dst: &mut [u8]| dst.copy_from_slice(&ring[off as usize..][..dst.len()]);
        let n = records(256, 0, 10, copy, &mut Vec::new(), &mut |_| panic!("read a partial"));
        assert_eq!(n, 0);
    }
}
