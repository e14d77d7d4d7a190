//! Small triggers that make the kernel freeze and thaw a block device, for live tests and for
//! checking a probe setup by hand. Each one is a single well-understood kernel path.

use std::{fs, os::fd::AsRawFd, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use crate::kit::dm;

#[derive(Subcommand, Debug)]
pub enum Testkit {
    /// EXT4_IOC_SHUTDOWN with the default flag on the ext4 mounted at MOUNTPOINT: the kernel
    /// freezes and thaws the filesystem's block device, then marks the fs shut down
    /// (unmount and mount it again to reuse it).
    Ext4Shutdown { mountpoint: PathBuf },
    /// Create a dm-linear device NAME over DEVICE (its whole size); prints the new node.
    DmLinear { name: String, device: PathBuf },
    /// Suspend a dm device (freezes the filesystem on it), then resume it (thaws).
    DmSuspendResume { name: String },
    /// Remove a dm device.
    DmRemove { name: String },
    /// Create a dm-crypt device NAME over DEVICE; prints the new node
    ///
    /// Its whole size, plain mode (no header), aes-xts-plain64 with a fixed test key unless
    /// --key. Its dm uuid is
    /// CRYPT-PLAIN-<NAME> unless --uuid/--no-uuid: like cryptsetup's, so the ploop snapshot
    /// autodetection recognises it.
    DmCrypt {
        /// The dm name (/dev/mapper/NAME).
        name: String,
        /// The device to encrypt, e.g. /dev/ploop0.
        device: PathBuf,
        /// The dm uuid (the autodetection wants the prefix CRYPT-).
        #[arg(long, conflicts_with = "no_uuid")]
        uuid: Option<String>,
        /// Create it without a uuid (as plain dmsetup does): invisible to the autodetection.
        #[arg(long)]
        no_uuid: bool,
        /// The key, 64 or 128 hex digits.
        #[arg(long, default_value = TEST_KEY)]
        key: String,
    },
    /// Random PLOOP_IOC_SNAPSHOT requests from several threads, each answer checked against
    /// the contract (see --help).
    FuzzSnapshot(crate::kit::ploop_stress::FuzzArgs),
    /// Time PLOOP_IOC_SNAPSHOT over a series of snapshots; prints min/p50/p90/max/mean.
    SnapshotBench(crate::kit::ploop_stress::BenchArgs),
    /// Write a synthetic trace of CALLS correct snapshot calls (for the replay benchmark:
    /// `ploop-verify report` on it measures the checker's throughput).
    SynthTrace {
        #[arg(long, default_value_t = 100_000)]
        calls: u64,
        /// Every Nth call freezes the wrong device (S1 and S2 fail); 0: every call is correct.
        #[arg(long, value_name = "N", default_value_t = 0)]
        wrong_freeze_every: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

/// The fixed aes-xts-plain64 key of `testkit dm-crypt` (test data only, never a secret).
pub const TEST_KEY: &str = "6d6f64656c2d6b65792d666f722d706c6f6f702d7665726966792d74657374a5";

/// `_IOR('X', 125, __u32)` (the kernel reads the flag, whatever the direction bits say).
const EXT4_IOC_SHUTDOWN: libc::Ioctl =
    nix::request_code_read!(b'X', 125, std::mem::size_of::<u32>());
const EXT4_GOING_FLAGS_DEFAULT: u32 = 0;

pub fn run(cmd: Testkit) -> Result<()> {
    match cmd {
        Testkit::Ext4Shutdown { mountpoint } => {
            let dir = fs::File::open(&mountpoint)
                .with_context(|| format!("opening {}", mountpoint.display()))?;
            let flag = EXT4_GOING_FLAGS_DEFAULT;
            // SAFETY: the ioctl reads one u32 through the pointer.
            let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flag) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| {
                    format!("EXT4_IOC_SHUTDOWN on {} (is it ext4?)", mountpoint.display())
                });
            }
        }
        Testkit::DmLinear { name, device } => {
            if !device.exists() {
                bail!("{}: no such device", device.display());
            }
            let sectors = dm::sectors(&device)?;
            if sectors == 0 {
                bail!("{} has size 0", device.display());
            }
            let node = dm::create(
                &name,
                &[dm::Target {
                    start: 0,
                    length: sectors,
                    kind: "linear".into(),
                    params: format!("{} 0", device.display()),
                }],
            )?;
            println!("{}", node.display());
        }
        Testkit::DmSuspendResume { name } => {
            dm::suspend(&name)?;
            dm::resume(&name)?;
        }
        Testkit::DmRemove { name } => dm::remove(&name)?,
        Testkit::DmCrypt { name, device, uuid, no_uuid, key } => {
            if !device.exists() {
                bail!("{}: no such device", device.display());
            }
            let sectors = dm::sectors(&device)?;
            if sectors == 0 {
                bail!("{} has size 0", device.display());
            }
            let table = [dm::crypt_table(&device, sectors, &key)?];
            let node = if no_uuid {
                dm::create(&name, &table)?
            } else {
                let uuid = uuid.unwrap_or_else(|| format!("CRYPT-PLAIN-{name}"));
                dm::create_with_uuid(&name, &uuid, &table)?
            };
            println!("{}", node.display());
        }
        Testkit::FuzzSnapshot(a) => crate::kit::ploop_stress::fuzz(a)?,
        Testkit::SnapshotBench(a) => crate::kit::ploop_stress::bench(a)?,
        Testkit::SynthTrace { calls, wrong_freeze_every, out } => {
            let events = crate::verify::synth::write(&out, calls, wrong_freeze_every)?;
            println!("{events} events in {calls} snapshot calls: {}", out.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(clippy::unnecessary_cast, reason = "libc::Ioctl is u64 on glibc, i32 on musl")]
    fn ext4_shutdown_request_number() {
        // From <linux/ext4.h>: EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32) = 0x8004587d
        assert_eq!(super::EXT4_IOC_SHUTDOWN as u64 & 0xffff_ffff, 0x8004_587d);
    }
}
