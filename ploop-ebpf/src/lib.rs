//! Probe logic shared by the two eBPF objects.
//!
//! The objects differ only in transport: `ploop-rb` (BPF ring buffer and aya-log, kernel 5.8+)
//! and `ploop-perf` (perf event array, `bpf_probe_read`, no globals, no ring buffer: it loads
//! on kernels as old as vz7's 3.10 tech-preview BPF). Everything else, including program
//! names, is generated here by [`probes!`], so both objects offer the same programs.
#![no_std]

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use ploop_common::{Event, Stash, StashKey, config, flags, phase};

/// Filled by user space before attaching; offsets come from the running kernel's BTF,
/// because aya-ebpf has no CO-RE field relocations.
#[map(name = "PLOOP_CONFIG")]
pub static PLOOP_CONFIG: Array<u64> = Array::with_max_entries(config::LEN, 0);

/// Entry arguments waiting for their kretprobe, keyed by thread and function.
#[map(name = "PLOOP_STASH")]
pub static PLOOP_STASH: HashMap<StashKey, Stash> = HashMap::with_max_entries(4096, 0);

/// Events that the transport refused (buffer full). Slot 0. The perf transport also reports
/// its own losses to user space; this counts what the program itself saw fail.
#[map(name = "PLOOP_LOST")]
pub static PLOOP_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What differs between the two objects.
pub trait Flavor {
    /// Read a kernel value (`bpf_probe_read_kernel`, or `bpf_probe_read` on old kernels).
    fn read_kernel_u32(addr: u64) -> Result<u32, i32>;
    fn read_kernel_u64(addr: u64) -> Result<u64, i32>;
    /// Hand the event to user space; `false` when the transport had no room.
    fn emit<C: EbpfContext>(ctx: &C, ev: &Event) -> bool;
}

/// Argument `n` of an fentry/fexit program, as a plain number. Loading it from the context
/// directly gives the verifier a typed BTF pointer, and adding a runtime offset to one is
/// refused; a probe read of the context slot yields a scalar.
#[inline(always)]
pub fn tracing_arg<F: Flavor, C: EbpfContext>(ctx: &C, n: usize) -> u64 {
    let slot = (ctx.as_ptr() as *const u64).wrapping_add(n);
    F::read_kernel_u64(slot as u64).unwrap_or(0)
}

#[inline(always)]
fn config(slot: u32) -> u64 {
    PLOOP_CONFIG.get(slot).copied().unwrap_or(config::UNKNOWN)
}

#[inline(always)]
fn count_lost() {
    if let Some(n) = PLOOP_LOST.get_ptr_mut(0) {
        // Per-CPU slot: no other writer races with this increment.
        unsafe { *n += 1 };
    }
}

/// `block_device.bd_dev` of the pointer in argument 0.
#[inline(always)]
fn read_bd_dev<F: Flavor>(bdev: u64) -> (u32, u8) {
    let off = config(config::BD_DEV_OFFSET);
    if bdev == 0 || off == config::UNKNOWN {
        return (0, flags::DEV_UNREAD);
    }
    match F::read_kernel_u32(bdev.wrapping_add(off)) {
        Ok(dev) => (dev, 0),
        Err(_) => (0, flags::DEV_UNREAD),
    }
}

#[inline(always)]
fn event(func: u16, ph: u8, fl: u8, dev: u32, args: [u64; 3], ret: i64) -> Event {
    Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid: bpf_get_current_pid_tgid(),
        func,
        phase: ph,
        flags: fl,
        cpu: unsafe { bpf_get_smp_processor_id() },
        dev,
        _pad: 0,
        args,
        ret,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

#[inline(always)]
fn send<F: Flavor, C: EbpfContext>(ctx: &C, ev: &Event) {
    if !F::emit(ctx, ev) {
        count_lost();
    }
}

/// Function entry. `stash` is set for kprobes, whose return probe cannot see the arguments.
#[inline(always)]
pub fn on_entry<F: Flavor, C: EbpfContext>(ctx: &C, func: u16, args: [u64; 3], stash: bool) {
    let (dev, fl) = read_bd_dev::<F>(args[0]);
    let ev = event(func, phase::ENTRY, fl, dev, args, 0);
    if stash {
        let key = StashKey {
            pid_tgid: ev.pid_tgid,
            func: func as u32,
            _pad: 0,
        };
        let val = Stash {
            args,
            dev,
            flags: fl as u32,
        };
        // A full stash only costs the return event its arguments (flagged NO_ENTRY).
        let _ = PLOOP_STASH.insert(&key, &val, 0);
    }
    send::<F, C>(ctx, &ev);
}

/// Function return seen by a kretprobe: arguments come from the entry stash.
#[inline(always)]
pub fn on_kretprobe<F: Flavor, C: EbpfContext>(ctx: &C, func: u16, ret: i64) {
    let key = StashKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        func: func as u32,
        _pad: 0,
    };
    let (args, dev, fl) = match unsafe { PLOOP_STASH.get(&key) } {
        Some(s) => (s.args, s.dev, s.flags as u8),
        None => ([0; 3], 0, flags::NO_ENTRY | flags::DEV_UNREAD),
    };
    let _ = PLOOP_STASH.remove(&key);
    send::<F, C>(ctx, &event(func, phase::RETURN, fl, dev, args, ret));
}

/// Function return seen by fexit, which has the arguments at hand.
#[inline(always)]
pub fn on_fexit<F: Flavor, C: EbpfContext>(ctx: &C, func: u16, args: [u64; 3], ret: i64) {
    let (dev, fl) = read_bd_dev::<F>(args[0]);
    send::<F, C>(ctx, &event(func, phase::RETURN, fl, dev, args, ret));
}

/// Generates every program of an object for one [`Flavor`]. Program names are
/// `<kernel function>_<attach method>`; user space attaches `freeze_bdev_*` to `freeze_bdev`
/// or `bdev_freeze`, whichever the kernel has.
#[macro_export]
macro_rules! probes {
    ($flavor:ty) => {
        $crate::probes!(@one $flavor, ploop_common::func::FREEZE_BDEV,
            freeze_bdev_kprobe, freeze_bdev_kretprobe, freeze_bdev_fentry, freeze_bdev_fexit);
        $crate::probes!(@one $flavor, ploop_common::func::THAW_BDEV,
            thaw_bdev_kprobe, thaw_bdev_kretprobe, thaw_bdev_fentry, thaw_bdev_fexit);
    };
    (@one $flavor:ty, $func:expr, $kp:ident, $krp:ident, $fentry:ident, $fexit:ident) => {
        #[aya_ebpf::macros::kprobe]
        pub fn $kp(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            let a = |n| ctx.arg::<u64>(n).unwrap_or(0);
            $crate::on_entry::<$flavor, _>(&ctx, $func, [a(0), a(1), a(2)], true);
            0
        }
        #[aya_ebpf::macros::kretprobe]
        pub fn $krp(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
            $crate::on_kretprobe::<$flavor, _>(&ctx, $func, ctx.ret::<i64>());
            0
        }
        #[aya_ebpf::macros::fentry]
        pub fn $fentry(ctx: aya_ebpf::programs::FEntryContext) -> u32 {
            // freeze/thaw take one argument on every kernel that has fentry (5.5+).
            let a0 = $crate::tracing_arg::<$flavor, _>(&ctx, 0);
            $crate::on_entry::<$flavor, _>(&ctx, $func, [a0, 0, 0], false);
            0
        }
        #[aya_ebpf::macros::fexit]
        pub fn $fexit(ctx: aya_ebpf::programs::FExitContext) -> u32 {
            // The return value follows the arguments in the fexit context; reading slot 1
            // directly (one argument) works from 5.5, where bpf_get_func_ret needs 5.17.
            let ret = $crate::tracing_arg::<$flavor, _>(&ctx, 1) as i64;
            let a0 = $crate::tracing_arg::<$flavor, _>(&ctx, 0);
            $crate::on_fexit::<$flavor, _>(&ctx, $func, [a0, 0, 0], ret);
            0
        }
    };
}
