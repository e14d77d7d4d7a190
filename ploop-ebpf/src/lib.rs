//! Probe logic shared by the two eBPF objects.
//!
//! The objects differ only in transport: `ploop-rb` (BPF ring buffer and aya-log, kernel 5.8+)
//! and `ploop-perf` (perf event array, `bpf_probe_read`, no globals, no ring buffer: it loads
//! on kernels as old as vz7's 3.10 tech-preview BPF, whose verifier's limits ploop-user's
//! `kernel::verifier` holds it to, as built). Everything else, including program names, is
//! generated here by [`probes!`], so both objects offer the same programs.
#![no_std]

use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use ploop_common::{
    Event, PLOOP_CTL_CHUNK_SIZE, PLOOP_CTL_SIZE, Probe, Stash, StashKey, config, flags, phase,
    ploop_if::{PLOOP_IOC_FREEZE, PLOOP_IOC_SNAPSHOT, PLOOP_IOC_THAW, PloopCtl, PloopCtlChunk},
    sync_state,
};

/// Filled by user space before attaching; offsets come from the running kernel's BTF,
/// because aya-ebpf has no CO-RE field relocations.
#[map(name = "PLOOP_CONFIG")]
pub static PLOOP_CONFIG: Array<u64> = Array::with_max_entries(config::LEN, 0);

/// Entry arguments waiting for their kretprobe, keyed by thread and function; also the
/// marker that lets `sys_exit_ioctl` report the ioctl of a snapshot call.
#[map(name = "PLOOP_STASH")]
pub static PLOOP_STASH: HashMap<StashKey, Stash> = HashMap::with_max_entries(4096, 0);

/// Where events are built: a 176-byte event on the 512-byte BPF stack, zeroed, made LLVM emit
/// `memset` calls (bpf-to-bpf calls, which kernels before 4.16 refuse). A per-CPU slot needs
/// neither.
/// `ctl`/`chunks` keep stale bytes outside `ploop_snapshot` entries; nothing reads them there.
#[map(name = "PLOOP_SCRATCH")]
pub static PLOOP_SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// Events that the transport refused (buffer full). Slot 0. The perf transport also reports
/// its own losses to user space; this counts what the program itself saw fail.
#[map(name = "PLOOP_LOST")]
pub static PLOOP_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What differs between the two objects.
pub trait Flavor {
    /// Read kernel memory (`bpf_probe_read_kernel`, or `bpf_probe_read` on old kernels).
    fn read_kernel_u32(addr: u64) -> Result<u32, i32>;
    fn read_kernel_u64(addr: u64) -> Result<u64, i32>;
    /// Read user memory (`bpf_probe_read_user`, or `bpf_probe_read` on old kernels).
    fn read_user(addr: u64, dst: &mut [u8]) -> Result<(), i32>;
    /// Hand the event to user space; `false` when the transport had no room.
    fn emit<C: EbpfContext>(ctx: &C, ev: &Event) -> bool;
}

/// The 8-byte slot `n` of the program context, read with the flavor's probe read, as a plain
/// number: fentry/fexit arguments (a direct load gives the verifier a typed BTF pointer, to
/// which adding a runtime offset is refused), and tracepoint fields (aya's `read_at` uses
/// `bpf_probe_read_kernel`, which old kernels lack).
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

/// `base + config[slot]`, or `None` while the offset is unknown.
#[inline(always)]
fn field(base: u64, slot: u32) -> Option<u64> {
    let off = config(slot);
    (base != 0 && off != config::UNKNOWN).then(|| base.wrapping_add(off))
}

/// `block_device.bd_dev` of a `struct block_device *`.
#[inline(always)]
fn read_bd_dev<F: Flavor>(bdev: u64) -> (u32, u8) {
    match field(bdev, config::BD_DEV_OFFSET).map(F::read_kernel_u32) {
        Some(Ok(dev)) => (dev, 0),
        _ => (0, flags::DEV_UNREAD),
    }
}

#[inline(always)]
fn event<F: Flavor>(probe: Probe, ph: u8, args: [u64; 3], ret: i64) -> Option<&'static mut Event> {
    let (dev, fl) = match probe.dev_arg() {
        None => (0, flags::DEV_UNREAD),
        Some(n) => read_bd_dev::<F>(args[n]),
    };
    // SAFETY: this CPU's slot; a BPF program is not preempted by another on the same CPU
    // that uses it before this one has sent the event.
    let ev = unsafe { &mut *PLOOP_SCRATCH.get_ptr_mut(0)? };
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.pid_tgid = bpf_get_current_pid_tgid();
    ev.func = probe.id();
    ev.phase = ph;
    ev.flags = fl;
    ev.cpu = unsafe { bpf_get_smp_processor_id() };
    ev.dev = dev;
    ev._pad = 0;
    ev.args = args;
    ev.ret = ret;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.sync_dev = 0;
    ev.sync_state = sync_state::NONE;
    ev.sync_mode = 0;
    ev.sync_rdev = 0;
    ev.delta_ino = 0;
    ev.delta_dev = 0;
    ev._pad2 = 0;
    Some(ev)
}

#[inline(always)]
fn send<F: Flavor, C: EbpfContext>(ctx: &C, ev: &Event) {
    if !F::emit(ctx, ev) {
        count_lost();
    }
}

#[inline(always)]
fn stash_key(pid_tgid: u64, probe: Probe) -> StashKey {
    StashKey { pid_tgid, func: probe.id() as u32, _pad: 0 }
}

/// The `struct inode *` behind `fd` of the current task: `Err(NO_FILE)` for no open file,
/// `Err(UNREAD)` when the walk task -> files -> fdtable -> file failed.
#[inline(always)]
fn fd_inode<F: Flavor>(fd: i32) -> Result<u64, u32> {
    fd_inode_walk::<F>(fd).unwrap_or(Err(sync_state::UNREAD))
}

/// Functions, not closures, throughout: a closure LLVM declines to inline is a bpf-to-bpf
/// call, which the legacy object must not contain: mainline kernels before 4.16 refuse
/// them (vz7's 7.8 base takes them; see `build.rs` for why the object still avoids them).
#[inline(always)]
fn fd_inode_walk<F: Flavor>(fd: i32) -> Option<Result<u64, u32>> {
    let task = unsafe { bpf_get_current_task() };
    let files = F::read_kernel_u64(field(task, config::TASK_FILES)?).ok()?;
    let fdt = F::read_kernel_u64(field(files, config::FILES_FDT)?).ok()?;
    let max_fds = F::read_kernel_u32(field(fdt, config::FDT_MAX_FDS)?).ok()?;
    if fd < 0 || fd as u32 >= max_fds {
        return Some(Err(sync_state::NO_FILE));
    }
    let table = F::read_kernel_u64(field(fdt, config::FDT_FD)?).ok()?;
    let file = F::read_kernel_u64(table.wrapping_add(fd as u64 * 8)).ok()?;
    if file == 0 {
        return Some(Err(sync_state::NO_FILE));
    }
    Some(Ok(F::read_kernel_u64(field(file, config::FILE_F_INODE)?).ok()?))
}

/// The fd walk for S1 and S4: which filesystem holds `fd` of the current task, and is the
/// fd itself a block-device node (and of which device)? Into `ev.sync_*`.
#[inline(always)]
fn resolve_fd<F: Flavor>(ev: &mut Event, fd: i32) {
    match fd_inode::<F>(fd) {
        Ok(inode) => {
            (ev.sync_dev, ev.sync_state) = inode_sb::<F>(inode).unwrap_or((0, sync_state::UNREAD));
            if let Some((mode, rdev)) = inode_node::<F>(inode) {
                ev.sync_mode = mode;
                ev.sync_rdev = rdev;
            }
        }
        Err(state) => ev.sync_state = state,
    }
}

/// Chunk #0's fd (the new top delta): its inode number and filesystem, into `ev.delta_*`.
#[inline(always)]
fn resolve_delta<F: Flavor>(ev: &mut Event) {
    if ev.flags & flags::CHUNKS_UNREAD != 0 {
        return;
    }
    let fd = i32::from_le_bytes([ev.chunks[0], ev.chunks[1], ev.chunks[2], ev.chunks[3]]);
    let Ok(inode) = fd_inode::<F>(fd) else { return };
    let Some(at) = field(inode, config::INODE_I_INO) else { return };
    let (Ok(ino), Some((dev, _))) = (F::read_kernel_u64(at), inode_sb::<F>(inode)) else {
        return;
    };
    ev.delta_ino = ino;
    ev.delta_dev = dev;
}

const S_IFMT: u32 = 0o170000;
const S_IFBLK: u32 = 0o060000;

/// The inode's file type, and `i_rdev` for a block-device node (0 otherwise).
#[inline(always)]
fn inode_node<F: Flavor>(inode: u64) -> Option<(u32, u32)> {
    // umode_t is 16 bits: the next two bytes are another field.
    let mode = F::read_kernel_u32(field(inode, config::INODE_I_MODE)?).ok()? & S_IFMT;
    if mode != S_IFBLK {
        return Some((mode, 0));
    }
    Some((mode, F::read_kernel_u32(field(inode, config::INODE_I_RDEV)?).ok()?))
}

/// `s_dev` of the inode's superblock, and whether it has a block device.
#[inline(always)]
fn inode_sb<F: Flavor>(inode: u64) -> Option<(u32, u32)> {
    let sb = F::read_kernel_u64(field(inode, config::INODE_I_SB)?).ok()?;
    let dev = F::read_kernel_u32(field(sb, config::SB_S_DEV)?).ok()?;
    let bdev = F::read_kernel_u64(field(sb, config::SB_S_BDEV)?).ok()?;
    Some((dev, if bdev == 0 { sync_state::NO_BDEV } else { sync_state::RESOLVED }))
}

/// The `dev_t` of the ploop block device `fd` names, or `None` when it names something else
/// (or cannot be read: a call the probe cannot place is no ploop call to anchor).
#[inline(always)]
fn ploop_bdev<F: Flavor>(fd: i32) -> Option<u32> {
    let inode = fd_inode::<F>(fd).ok()?;
    let (mode, rdev) = inode_node::<F>(inode)?;
    if mode != S_IFBLK {
        return None;
    }
    let major = config(config::PLOOP_MAJOR);
    (major == config::UNKNOWN || u64::from(rdev >> 20) == major).then_some(rdev)
}

/// A snapshot request at `arg` (user memory): copy it the way the kernel is about to read
/// it, and resolve chunk #1's fd while the caller's fd table is at hand.
#[inline(always)]
fn fill_snapshot<F: Flavor>(ev: &mut Event, arg: u64) {
    if F::read_user(arg, &mut ev.ctl).is_err() {
        ev.flags |= flags::CTL_UNREAD;
        return;
    }
    if F::read_user(arg + PLOOP_CTL_SIZE as u64, &mut ev.chunks).is_err() {
        // A one-chunk request may end where its mapping does (the top of the caller's stack):
        // chunk #0 alone is all the kernel reads then, and names the new delta (X1).
        let c0 = &mut ev.chunks[..PLOOP_CTL_CHUNK_SIZE];
        ev.flags |= if F::read_user(arg + PLOOP_CTL_SIZE as u64, c0).is_err() {
            flags::CHUNKS_UNREAD
        } else {
            flags::CHUNK1_UNREAD
        };
        resolve_delta::<F>(ev);
        return;
    }
    resolve_delta::<F>(ev);
    let n = offset_of!(PloopCtl, pctl_chunks);
    let nr = u16::from_le_bytes([ev.ctl[n], ev.ctl[n + 1]]);
    if nr == 2 {
        let c1 = PLOOP_CTL_CHUNK_SIZE + offset_of!(PloopCtlChunk, pctl_fd);
        let fd = i32::from_le_bytes([
            ev.chunks[c1],
            ev.chunks[c1 + 1],
            ev.chunks[c1 + 2],
            ev.chunks[c1 + 3],
        ]);
        if fd != -1 {
            resolve_fd::<F>(ev, fd);
        }
    }
}

/// Function entry. `stash` is set for kprobes, whose return probe cannot see the arguments.
#[inline(always)]
pub fn on_entry<F: Flavor, C: EbpfContext>(ctx: &C, probe: Probe, args: [u64; 3], stash: bool) {
    let Some(ev) = event::<F>(probe, phase::ENTRY, args, 0) else { return count_lost() };
    if probe == Probe::PloopSnapshot {
        fill_snapshot::<F>(ev, args[1]);
        // Arms sys_exit_ioctl for this thread: E3 compares the errno user space sees.
        let marker = Stash { args, dev: ev.dev, flags: 0 };
        let _ = PLOOP_STASH.insert(&stash_key(ev.pid_tgid, Probe::SysExitIoctl), &marker, 0);
    }
    if stash {
        let val = Stash { args, dev: ev.dev, flags: ev.flags as u32 };
        // A full stash only costs the return event its arguments (flagged NO_ENTRY).
        let _ = PLOOP_STASH.insert(&stash_key(ev.pid_tgid, probe), &val, 0);
    }
    send::<F, C>(ctx, ev);
}

/// Function return seen by a kretprobe: arguments come from the entry stash.
#[inline(always)]
pub fn on_kretprobe<F: Flavor, C: EbpfContext>(ctx: &C, probe: Probe, ret: i64) {
    let key = stash_key(bpf_get_current_pid_tgid(), probe);
    let Some(ev) = event::<F>(probe, phase::RETURN, [0; 3], ret) else { return count_lost() };
    match unsafe { PLOOP_STASH.get(&key) } {
        Some(s) => {
            ev.args = s.args;
            ev.dev = s.dev;
            ev.flags = s.flags as u8 & flags::DEV_UNREAD;
        }
        None => ev.flags = flags::NO_ENTRY | flags::DEV_UNREAD,
    }
    let _ = PLOOP_STASH.remove(&key);
    send::<F, C>(ctx, ev);
}

/// Function return seen by fexit, which has the arguments at hand.
#[inline(always)]
pub fn on_fexit<F: Flavor, C: EbpfContext>(ctx: &C, probe: Probe, args: [u64; 3], ret: i64) {
    match event::<F>(probe, phase::RETURN, args, ret) {
        Some(ev) => send::<F, C>(ctx, ev),
        None => count_lost(),
    }
}

/// `syscalls:sys_enter_ioctl`: a snapshot, freeze or thaw request on a ploop device. The
/// anchor of a snapshot call, whatever the compiler made of `ploop_snapshot`.
#[inline(always)]
pub fn on_sys_enter_ioctl<F: Flavor, C: EbpfContext>(ctx: &C, fd: u64, cmd: u64, arg: u64) {
    // The request number is an `unsigned int` in the kernel's ioctl path.
    let cmd = u64::from(cmd as u32);
    if cmd != PLOOP_IOC_SNAPSHOT && cmd != PLOOP_IOC_FREEZE && cmd != PLOOP_IOC_THAW {
        return;
    }
    let Some(rdev) = ploop_bdev::<F>(fd as i32) else { return };
    let Some(ev) = event::<F>(Probe::SysEnterIoctl, phase::ENTRY, [fd, cmd, arg], 0) else {
        return count_lost();
    };
    ev.dev = rdev;
    ev.flags = 0;
    if cmd == PLOOP_IOC_SNAPSHOT {
        fill_snapshot::<F>(ev, arg);
    }
    // Arms sys_exit_ioctl for this thread: the call ends there.
    let marker = Stash { args: [fd, cmd, arg], dev: rdev, flags: 0 };
    let _ = PLOOP_STASH.insert(&stash_key(ev.pid_tgid, Probe::SysExitIoctl), &marker, 0);
    send::<F, C>(ctx, ev);
}

/// `syscalls:sys_exit_ioctl`, for threads whose ioctl `sys_enter_ioctl` or `ploop_snapshot`
/// armed.
#[inline(always)]
pub fn on_sys_exit_ioctl<F: Flavor, C: EbpfContext>(ctx: &C, ret: i64) {
    let key = stash_key(bpf_get_current_pid_tgid(), Probe::SysExitIoctl);
    let Some(s) = (unsafe { PLOOP_STASH.get(&key) }) else { return };
    let (args, dev) = (s.args, s.dev);
    let _ = PLOOP_STASH.remove(&key);
    let Some(ev) = event::<F>(Probe::SysExitIoctl, phase::RETURN, args, ret) else {
        return count_lost();
    };
    ev.dev = dev;
    ev.flags = 0;
    send::<F, C>(ctx, ev);
}

/// Generates every program of an object for one [`Flavor`]. Program names are
/// `<kernel function>_<attach method>`; user space attaches `freeze_bdev_*` to `freeze_bdev`
/// or `bdev_freeze`, whichever the kernel has. Functions of the ploop module get kprobes
/// only: fentry reaches vmlinux functions alone.
#[macro_export]
macro_rules! probes {
    ($flavor:ty) => {
        // Every object is GPL (bpf_probe_read and the perf/ring output need it) and no_std.
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";

        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        $crate::probes!(@kprobe $flavor, ploop_common::Probe::FreezeBdev, freeze_bdev_kprobe, freeze_bdev_kretprobe);
        $crate::probes!(@kprobe $flavor, ploop_common::Probe::ThawBdev, thaw_bdev_kprobe, thaw_bdev_kretprobe);
        $crate::probes!(@fentry $flavor, ploop_common::Probe::FreezeBdev, freeze_bdev_fentry, freeze_bdev_fexit);
        $crate::probes!(@fentry $flavor, ploop_common::Probe::ThawBdev, thaw_bdev_fentry, thaw_bdev_fexit);
        $crate::probes!(@kprobe $flavor, ploop_common::Probe::PloopSnapshot, ploop_snapshot_kprobe, ploop_snapshot_kretprobe);
        $crate::probes!(@kprobe $flavor, ploop_common::Probe::FindAndFreezeBdev, find_and_freeze_bdev_kprobe, find_and_freeze_bdev_kretprobe);
        $crate::probes!(@kprobe $flavor, ploop_common::Probe::GetBdevFromFd, get_bdev_from_fd_kprobe, get_bdev_from_fd_kretprobe);
        $crate::probes!(@kprobe $flavor, ploop_common::Probe::PloopQuiesce, ploop_quiesce_kprobe, ploop_quiesce_kretprobe);
        $crate::probes!(@kprobe $flavor, ploop_common::Probe::PloopRelax, ploop_relax_kprobe, ploop_relax_kretprobe);
        $crate::probes!(@kprobe $flavor, ploop_common::Probe::CompleteSnapshot, complete_snapshot_kprobe, complete_snapshot_kretprobe);

        #[aya_ebpf::macros::tracepoint]
        pub fn sys_enter_ioctl(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
            // `struct trace_event_raw_sys_enter`: 8 bytes of common fields, the syscall nr,
            // then `unsigned long args[6]` from offset 16 (slots 2, 3, 4: fd, cmd, arg).
            let a = |n| $crate::tracing_arg::<$flavor, _>(&ctx, n);
            $crate::on_sys_enter_ioctl::<$flavor, _>(&ctx, a(2), a(3), a(4));
            0
        }

        #[aya_ebpf::macros::tracepoint]
        pub fn sys_exit_ioctl(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
            // `struct trace_event_raw_sys_exit`: 8 bytes of common fields, the syscall nr,
            // then `long ret` at offset 16 (slot 2).
            let ret = $crate::tracing_arg::<$flavor, _>(&ctx, 2) as i64;
            $crate::on_sys_exit_ioctl::<$flavor, _>(&ctx, ret);
            0
        }
    };
    (@kprobe $flavor:ty, $probe:expr, $kp:ident, $krp:ident) => {
        #[aya_ebpf::macros::kprobe]
        pub fn $kp(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            let a = |n| ctx.arg::<u64>(n).unwrap_or(0);
            $crate::on_entry::<$flavor, _>(&ctx, $probe, [a(0), a(1), a(2)], true);
            0
        }
        #[aya_ebpf::macros::kretprobe]
        pub fn $krp(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
            $crate::on_kretprobe::<$flavor, _>(&ctx, $probe, ctx.ret::<i64>());
            0
        }
    };
    (@fentry $flavor:ty, $probe:expr, $fentry:ident, $fexit:ident) => {
        #[aya_ebpf::macros::fentry]
        pub fn $fentry(ctx: aya_ebpf::programs::FEntryContext) -> u32 {
            // freeze/thaw take one argument on every kernel that has fentry (5.5+).
            let a0 = $crate::tracing_arg::<$flavor, _>(&ctx, 0);
            $crate::on_entry::<$flavor, _>(&ctx, $probe, [a0, 0, 0], false);
            0
        }
        #[aya_ebpf::macros::fexit]
        pub fn $fexit(ctx: aya_ebpf::programs::FExitContext) -> u32 {
            // The return value follows the arguments in the fexit context; reading slot 1
            // directly (one argument) works from 5.5, where bpf_get_func_ret needs 5.17.
            let ret = $crate::tracing_arg::<$flavor, _>(&ctx, 1) as i64;
            let a0 = $crate::tracing_arg::<$flavor, _>(&ctx, 0);
            $crate::on_fexit::<$flavor, _>(&ctx, $probe, [a0, 0, 0], ret);
            0
        }
    };
}
