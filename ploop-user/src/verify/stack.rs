//! What sits above a ploop device at the time of a snapshot call: the block devices stacked
//! on it (sysfs `holders`, through any dm stack) and the filesystems mounted on them
//! (mountinfo). S2 and O2 read it; it is recorded in the trace so a replay sees the same.

use std::{collections::BTreeSet, fs, path::Path};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::kernel::KDev;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    /// The ploop device.
    pub ploop_dev: KDev,
    /// The ploop device and every device above it, bottom first.
    pub devices: Vec<StackDev>,
    /// Block devices with a mounted filesystem outside this stack: what a sync fd elsewhere
    /// gets frozen (the filesystem holding the delta files, in a hang), named in reports by
    /// their name, not a bare major:minor. Absent in older traces.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub others: Vec<StackDev>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackDev {
    pub dev: KDev,
    /// Inline strings: a stack comes with every snapshot call of a trace.
    pub name: CompactString,
    /// The devices holding this one.
    #[serde(default)]
    pub holders: Vec<KDev>,
    /// The partitions of this disk (`ploop0p1`: where a container's filesystem lives).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub partitions: Vec<KDev>,
    /// Mountpoints of the filesystem on this device (empty: no filesystem mounted).
    #[serde(default)]
    pub mounts: Vec<CompactString>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fstype: Option<CompactString>,
}

impl Stack {
    /// Reads sysfs and `/proc/self/mountinfo` now.
    pub fn capture(ploop_dev: KDev) -> Stack {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::capture_from(Path::new("/sys"), &mountinfo, ploop_dev)
    }

    pub fn capture_from(sys: &Path, mountinfo: &str, ploop_dev: KDev) -> Stack {
        let mut devices = Vec::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![ploop_dev];
        while let Some(dev) = todo.pop() {
            if !seen.insert(dev) {
                continue;
            }
            let name = sysfs_name(sys, dev);
            let holders: Vec<KDev> =
                fs::read_dir(sys.join("class/block").join(&name).join("holders"))
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .filter_map(|e| fs::read_to_string(e.path().join("dev")).ok())
                            .filter_map(|d| d.trim().parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
            // A disk's partitions are directories of its own with a `partition` file.
            let partitions: Vec<KDev> = fs::read_dir(sys.join("class/block").join(&name))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| p.join("partition").is_file())
                        .filter_map(|p| fs::read_to_string(p.join("dev")).ok())
                        .filter_map(|d| d.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let (mounts, fstype) = mounts_of(mountinfo, dev);
            todo.extend(holders.iter().chain(&partitions).copied());
            devices.push(StackDev { dev, name, holders, partitions, mounts, fstype });
        }
        // Major 0 is the kernel's anonymous devices (tmpfs, proc, overlay): no block device.
        let others = mountinfo
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2)?.parse::<KDev>().ok())
            .filter(|d| d.major() != 0 && !seen.contains(d))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|dev| {
                let (mounts, fstype) = mounts_of(mountinfo, dev);
                let name = sysfs_name(sys, dev);
                StackDev { dev, name, holders: vec![], partitions: vec![], mounts, fstype }
            })
            .collect();
        Stack { ploop_dev, devices, others }
    }

    pub fn device(&self, dev: KDev) -> Option<&StackDev> {
        self.devices.iter().find(|d| d.dev == dev)
    }

    /// Devices of this stack that carry a mounted filesystem.
    pub fn filesystems(&self) -> impl Iterator<Item = &StackDev> {
        self.devices.iter().filter(|d| !d.mounts.is_empty())
    }

    /// The devices with a mounted filesystem on `dev` or stacked above it (through holders
    /// and partitions), nearest first: what a sync fd naming `dev` means to freeze.
    pub fn filesystems_on(&self, dev: KDev) -> Vec<&StackDev> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut todo = std::collections::VecDeque::from([dev]);
        while let Some(d) = todo.pop_front() {
            let Some(sd) = self.device(d).filter(|_| seen.insert(d)) else { continue };
            if !sd.mounts.is_empty() {
                out.push(sd);
            }
            todo.extend(sd.holders.iter().chain(&sd.partitions).copied());
        }
        out
    }

    pub fn name(&self, dev: KDev) -> String {
        match self.device(dev).or_else(|| self.others.iter().find(|d| d.dev == dev)) {
            Some(d) => format!("{} ({dev})", d.name),
            None => dev.to_string(),
        }
    }
}

/// The live side's stacks, captured again only when the kernel has said something may have
/// changed: a mount or unmount (`/proc/self/mountinfo` polls POLLPRI), or a block device
/// added, removed or changed (a `SUBSYSTEM=block` uevent: dm tables, partitions). A capture
/// walks sysfs and the mount table, milliseconds in a TCG guest, once per snapshot call
/// before (issue 15); now once per change. Without either source (no netlink, no procfs)
/// every call captures, as before.
pub struct StackWatch {
    mountinfo: Option<fs::File>,
    uevents: Option<std::os::fd::OwnedFd>,
    /// The stack last handed out per ploop device.
    last: std::collections::HashMap<KDev, Stack>,
}

impl Default for StackWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl StackWatch {
    pub fn new() -> Self {
        StackWatch {
            mountinfo: fs::File::open("/proc/self/mountinfo").ok(),
            uevents: uevent_socket(),
            last: std::collections::HashMap::new(),
        }
    }

    /// The stack above `dev` now, if it differs from the one last returned for `dev`
    /// (the checker keeps the latest per device, so an unchanged one need not be recorded).
    pub fn changed(&mut self, dev: KDev) -> Option<Stack> {
        if self.something_changed() {
            self.last.clear();
        }
        if self.last.contains_key(&dev) {
            return None;
        }
        let s = Stack::capture(dev);
        self.last.insert(dev, s.clone());
        Some(s)
    }

    fn something_changed(&mut self) -> bool {
        use std::os::fd::AsRawFd as _;
        let (Some(m), Some(u)) = (&self.mountinfo, &self.uevents) else { return true };
        let mut pfd = libc::pollfd { fd: m.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
        // SAFETY: one pollfd, zero timeout.
        let mounts = unsafe { libc::poll(&mut pfd, 1, 0) } != 0;
        let mut block = false;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: a non-blocking read into a buffer of its size.
            let n = unsafe {
                libc::recv(u.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            };
            if n < 0 {
                // EAGAIN: drained. ENOBUFS: the socket overflowed, so events were missed.
                if std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                    block = true;
                    continue;
                }
                break;
            }
            let msg = &buf[..n as usize];
            block |= msg.split(|&b| b == 0).any(|f| f == b"SUBSYSTEM=block");
        }
        mounts || block
    }
}

/// The kernel's uevent broadcast (what udev listens to), non-blocking.
fn uevent_socket() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket calls; the fd is owned from here on.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        );
        if fd < 0 {
            return None;
        }
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = 1; // the kernel's own events, not udev's re-broadcast
        let ok = libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) == 0;
        ok.then_some(fd)
    }
}

/// Mountpoints and filesystem type of the filesystem whose `st_dev` is `dev`.
/// The kernel's name of a block device (`ploop1`, `dm-0`), else its major:minor.
fn sysfs_name(sys: &Path, dev: KDev) -> CompactString {
    fs::read_link(sys.join("dev/block").join(dev.to_string()))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into()))
        .unwrap_or_else(|| dev.to_string().into())
}

fn mounts_of(mountinfo: &str, dev: KDev) -> (Vec<CompactString>, Option<CompactString>) {
    let mut mounts = Vec::new();
    let mut fstype = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[2].parse() != Ok(dev) {
            continue;
        }
        mounts.push(f[4].into());
        if let Some(sep) = f.iter().position(|w| *w == "-") {
            fstype = f.get(sep + 1).map(|s| (*s).into());
        }
    }
    (mounts, fstype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A stack is captured once, then again only after a change the kernel announced.
    #[test]
    fn a_watched_stack_is_captured_again_only_after_a_change() {
        let mut w = StackWatch::new();
        let dev: KDev = "253:0".parse().unwrap();
        assert!(w.changed(dev).is_some(), "the first call captures");
        if w.mountinfo.is_none() || w.uevents.is_none() {
            eprintln!("no mountinfo poll or uevent socket here: every call captures");
            assert!(w.changed(dev).is_some());
            return;
        }
        assert!(w.changed(dev).is_none(), "nothing changed: nothing to record");
        // Another device has no stack yet.
        assert!(w.changed("253:1".parse().unwrap()).is_some());
    }

    /// ploop0 (253:0) <- dm-0 crypt (254:0) <- dm-1 linear (254:1), ext4 on dm-1.
    #[test]
    fn walks_holders_through_a_dm_stack() {
        let tmp = std::env::temp_dir().join(format!("ploop-stack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        for (dev, name, holders) in [
            ("253:0", "ploop0", vec!["dm-0"]),
            ("254:0", "dm-0", vec!["dm-1"]),
            ("254:1", "dm-1", vec![]),
            ("253:16", "ploop1", vec![]),
        ] {
            fs::create_dir_all(tmp.join("dev/block")).unwrap();
            let class = tmp.join("class/block").join(name);
            fs::create_dir_all(class.join("holders")).unwrap();
            fs::write(class.join("dev"), format!("{dev}\n")).unwrap();
            symlink(&class, tmp.join("dev/block").join(dev)).unwrap();
            for h in holders {
                symlink(tmp.join("class/block").join(h), class.join("holders").join(h)).unwrap();
            }
        }
        let mountinfo = "22 1 0:21 / /proc rw - proc proc rw\n\
                         40 1 254:1 / /mnt/data rw,relatime - ext4 /dev/dm-1 rw\n\
                         41 1 253:16 / /vz rw,relatime - ext4 /dev/ploop1 rw\n";
        let d = |t: &str| t.parse::<KDev>().unwrap();
        let s = Stack::capture_from(&tmp, mountinfo, d("253:0"));
        let names: Vec<&str> = s.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["ploop0", "dm-0", "dm-1"]);
        let fss: Vec<KDev> = s.filesystems().map(|d| d.dev).collect();
        assert_eq!(fss, [d("254:1")]);
        assert_eq!(s.device(d("254:1")).unwrap().fstype.as_deref(), Some("ext4"));
        assert_eq!(s.name(d("254:0")), "dm-0 (254:0)");
        // ploop1 holds a filesystem but is not in ploop0's stack: named, not a member.
        assert!(s.device(d("253:16")).is_none());
        assert_eq!(s.name(d("253:16")), "ploop1 (253:16)");
        let others: Vec<(&str, &str)> =
            s.others.iter().map(|o| (o.name.as_str(), o.mounts[0].as_str())).collect();
        assert_eq!(
            others,
            [("ploop1", "/vz")],
            "proc (major 0) and the stack's dm-1 are not others"
        );
        assert_eq!(s.name(d("8:1")), "8:1", "unknown: the bare number");
        fs::remove_dir_all(&tmp).unwrap();
    }
}
