//! Perf-buffer object for old kernels (4.3+, vz7's 3.10 BPF tech preview): no ring buffer, no
//! global variables, no aya-log, and only `bpf_probe_read`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read, bpf_probe_read_buf},
    macros::map,
    maps::PerfEventArray,
};
use ploop_common::Event;

#[map(name = "PLOOP_EVENTS")]
static PLOOP_EVENTS: PerfEventArray<Event> = PerfEventArray::new(0);

struct PerfFlavor;

impl ploop_ebpf::Flavor for PerfFlavor {
    #[inline(always)]
    fn read_kernel_u32(addr: u64) -> Result<u32, i32> {
        unsafe { bpf_probe_read(addr as *const u32) }
    }
    #[inline(always)]
    fn read_kernel_u64(addr: u64) -> Result<u64, i32> {
        unsafe { bpf_probe_read(addr as *const u64) }
    }
    #[inline(always)]
    fn read_user(addr: u64, dst: &mut [u8]) -> Result<(), i32> {
        unsafe { bpf_probe_read_buf(addr as *const u8, dst) }
    }
    #[inline(always)]
    fn emit<C: EbpfContext>(ctx: &C, ev: &Event) -> bool {
        // A full perf buffer is reported to user space as a lost-samples record.
        PLOOP_EVENTS.output(ctx, ev, 0);
        true
    }
}

ploop_ebpf::probes!(PerfFlavor);
