//! What sits above a ploop device at the time of a snapshot call: the block devices stacked
//! on it (sysfs `holders`, through any dm stack) and the filesystems mounted on them
//! (mountinfo). S2 and O2 read it; it is recorded in the trace so a replay sees the same.

use std::{collections::BTreeSet, fs, path::Path};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::kernel::KDev;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    /// The ploop device.
    pub ploop_dev: KDev,
    /// The ploop device and every device above it, bottom first.
    pub devices: Vec<StackDev>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
            let name = fs::read_link(sys.join("dev/block").join(dev.to_string()))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into()))
                .unwrap_or_else(|| dev.to_string().into());
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
        Stack { ploop_dev, devices }
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
        match self.device(dev) {
            Some(d) => format!("{} ({dev})", d.name),
            None => dev.to_string(),
        }
    }
}

/// Mountpoints and filesystem type of the filesystem whose `st_dev` is `dev`.
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

    /// ploop0 (253:0) <- dm-0 crypt (254:0) <- dm-1 linear (254:1), ext4 on dm-1.
    #[test]
    fn walks_holders_through_a_dm_stack() {
        let tmp = std::env::temp_dir().join(format!("ploop-stack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        for (dev, name, holders) in [
            ("253:0", "ploop0", vec!["dm-0"]),
            ("254:0", "dm-0", vec!["dm-1"]),
            ("254:1", "dm-1", vec![]),
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
                         40 1 254:1 / /mnt/data rw,relatime - ext4 /dev/dm-1 rw\n";
        let d = |t: &str| t.parse::<KDev>().unwrap();
        let s = Stack::capture_from(&tmp, mountinfo, d("253:0"));
        let names: Vec<&str> = s.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["ploop0", "dm-0", "dm-1"]);
        let fss: Vec<KDev> = s.filesystems().map(|d| d.dev).collect();
        assert_eq!(fss, [d("254:1")]);
        assert_eq!(s.device(d("254:1")).unwrap().fstype.as_deref(), Some("ext4"));
        assert_eq!(s.name(d("254:0")), "dm-0 (254:0)");
        fs::remove_dir_all(&tmp).unwrap();
    }
}
