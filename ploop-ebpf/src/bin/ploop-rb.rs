//! Ring-buffer object (kernel 5.8+): events through `PLOOP_EVENTS` (BPF_MAP_TYPE_RINGBUF),
//! diagnostics through aya-log.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user_buf},
    macros::map,
    maps::RingBuf,
};
use ploop_common::Event;

#[map(name = "PLOOP_EVENTS")]
static PLOOP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

struct RingBufFlavor;

impl ploop_ebpf::Flavor for RingBufFlavor {
    #[inline(always)]
    fn read_kernel_u32(addr: u64) -> Result<u32, i32> {
        unsafe { bpf_probe_read_kernel(addr as *const u32) }
    }
    #[inline(always)]
    fn read_kernel_u64(addr: u64) -> Result<u64, i32> {
        unsafe { bpf_probe_read_kernel(addr as *const u64) }
    }
    #[inline(always)]
    fn read_user(addr: u64, dst: &mut [u8]) -> Result<(), i32> {
        unsafe { bpf_probe_read_user_buf(addr as *const u8, dst) }
    }
    #[inline(always)]
    fn emit<C: EbpfContext>(ctx: &C, ev: &Event) -> bool {
        // The consumer polls the buffer on its own clock: no wake-up per event.
        const BPF_RB_NO_WAKEUP: u64 = 1;
        if PLOOP_EVENTS.output(ev, BPF_RB_NO_WAKEUP).is_ok() {
            return true;
        }
        aya_log_ebpf::warn!(ctx, "ring buffer full: event of func {} dropped", ev.func);
        false
    }
}

ploop_ebpf::probes!(RingBufFlavor);
