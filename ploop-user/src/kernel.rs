//! Everything that differs between kernel generations lives here, behind [`Generation`]:
//! symbol names, the shape of `freeze_bdev`'s return value, and the `dev_t` encoding.
//! Nothing else in the tool asks which kernel it runs on. The BPF features the probes need
//! and the kernels that have them are in [`minimums`].

pub mod minimums;
pub mod tracefs;
pub mod verifier;

use std::{collections::BTreeMap, fs};

use anyhow::{Context as _, Result};
use ploop_common::{Attach, Probe};
use serde::{Deserialize, Serialize};

/// The three generations of the freeze/thaw interface the contract names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generation {
    /// vz7 (RHEL7 3.10): `struct super_block *freeze_bdev(bdev)`, `thaw_bdev(bdev, sb)`.
    Vz7,
    /// 5.10 to 6.7: `int freeze_bdev(bdev)`, `int thaw_bdev(bdev)`.
    FreezeBdev,
    /// 6.8 and later: `int bdev_freeze(bdev)`, `int bdev_thaw(bdev)`.
    BdevFreeze,
}

/// Where a resolved symbol lives.
#[derive(Clone, Debug, Serialize)]
pub struct Resolved {
    pub name: String,
    /// `None` for vmlinux, the module name otherwise (fentry reaches vmlinux only).
    pub module: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelInfo {
    pub release: String,
    pub generation: Generation,
    /// Probes on kernel functions -> the symbols actually present: the first of its names
    /// the kernel has, or for a probe on every implementation of an operation
    /// ([`Attach::Function`]'s `every`) each one present.
    #[serde(serialize_with = "one_or_every")]
    pub symbols: BTreeMap<Probe, Vec<Resolved>>,
}

/// A probe on one function keeps the shape traces and `doctor --json` have always had (its
/// symbol); a probe on every implementation lists them.
fn one_or_every<S: serde::Serializer>(
    symbols: &BTreeMap<Probe, Vec<Resolved>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut m = s.serialize_map(Some(symbols.len()))?;
    for (probe, found) in symbols {
        match (every(*probe), found.first()) {
            (false, Some(first)) => m.serialize_entry(probe, first)?,
            _ => m.serialize_entry(probe, found)?,
        }
    }
    m.end()
}

/// Whether `probe` attaches to each implementation present, not to one function.
pub fn every(probe: Probe) -> bool {
    matches!(probe.attach(), Attach::Function { every: true, .. })
}

impl KernelInfo {
    /// Reads `uname` and `/proc/kallsyms` (names are visible without privileges).
    pub fn detect() -> Result<Self> {
        let release =
            nix::sys::utsname::uname().context("uname")?.release().to_string_lossy().into_owned();
        let kallsyms = fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
        Ok(Self::from_parts(release, &kallsyms))
    }

    pub fn from_parts(release: String, kallsyms: &str) -> Self {
        let mut present: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        for line in kallsyms.lines() {
            let mut f = line.split_whitespace();
            let (Some(_addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            // Only text symbols can be probed.
            if !matches!(kind, "t" | "T") {
                continue;
            }
            let module = f.next().map(|m| m.trim_matches(|c| c == '[' || c == ']'));
            present.entry(name).or_insert(module);
        }
        let mut symbols = BTreeMap::new();
        for probe in Probe::ALL {
            let Attach::Function { symbols: names, every, .. } = probe.attach() else { continue };
            let found: Vec<Resolved> = names
                .iter()
                .filter_map(|n| resolve(&present, n))
                .map(|(name, module)| Resolved {
                    name: name.to_string(),
                    module: module.map(str::to_string),
                })
                .take(if every { names.len() } else { 1 })
                .collect();
            if !found.is_empty() {
                symbols.insert(probe, found);
            }
        }
        let generation = match symbols.get(&Probe::FreezeBdev).map(|r| r[0].name.as_str()) {
            Some("bdev_freeze") => Generation::BdevFreeze,
            _ if release.starts_with("3.") => Generation::Vz7,
            _ => Generation::FreezeBdev,
        };
        Self { release, generation, symbols }
    }

    /// The symbol of a probe on one function (for an `every` probe, the first present).
    pub fn symbol(&self, probe: Probe) -> Option<&Resolved> {
        self.symbols.get(&probe).and_then(|found| found.first())
    }

    /// Every symbol `probe` attaches to on this kernel (empty: none present).
    pub fn symbols_of(&self, probe: Probe) -> &[Resolved] {
        self.symbols.get(&probe).map_or(&[], Vec::as_slice)
    }
}

/// `name` as kallsyms has it: the name itself, else a clone gcc made of a static function
/// (`name.isra.0`, `name.constprop.0`, `name.part.0`, combinations of them), which is the
/// function's entry under another name. A `.cold` part is never an entry: not taken.
fn resolve<'a>(
    present: &BTreeMap<&'a str, Option<&'a str>>,
    name: &str,
) -> Option<(&'a str, Option<&'a str>)> {
    if let Some((&n, &m)) = present.get_key_value(name) {
        return Some((n, m));
    }
    let prefix = format!("{name}.");
    present
        .range::<str, _>((std::ops::Bound::Included(prefix.as_str()), std::ops::Bound::Unbounded))
        .take_while(|(n, _)| n.starts_with(&prefix))
        .find(|(n, _)| {
            n[prefix.len()..].split('.').all(|part| {
                matches!(part, "isra" | "constprop" | "part" | "lto_priv")
                    || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(|(&n, &m)| (n, m))
}

/// The taint bit RHEL 7 sets at the first `bpf()` call (`TAINT_TECH_PREVIEW`), logging "TECH
/// PREVIEW: eBPF syscall may not be fully supported".
pub const TAINT_TECH_PREVIEW: u32 = 29;

/// Whether `release` is a RHEL 7-family kernel (RHEL, CentOS, vz7 on its RHEL base), whose
/// BPF is a tech preview that taints the kernel: `3.10.0-1127.el7.x86_64`,
/// `3.10.0-1127.18.2.vz7.163.22`. Oracle's UEK (`4.14.35-...el7uek`) is no RHEL kernel.
pub fn bpf_taints(release: &str) -> bool {
    let mut parts = release.split(['.', '-', '_', '+']);
    let rhel = release.starts_with("3.10.0-");
    parts.any(|p| p == "vz7" || (rhel && p == "el7"))
}

/// Whether `/proc/sys/kernel/tainted` (a decimal mask) has the tech-preview bit.
pub fn tech_preview_tainted(tainted: &str) -> Option<bool> {
    let mask: u64 = tainted.trim().parse().ok()?;
    Some(mask & (1 << TAINT_TECH_PREVIEW) != 0)
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Generation::Vz7 => "3.10 vz7: freeze_bdev returns the super_block, thaw_bdev takes it",
            Generation::FreezeBdev => "5.10-6.7: int freeze_bdev/thaw_bdev",
            Generation::BdevFreeze => "6.8+: int bdev_freeze/bdev_thaw",
        })
    }
}

impl Generation {
    /// Whether `freeze_bdev` returns the `super_block` it froze (3.10): then its return also
    /// tells whether the device held a filesystem (NULL: none). Later kernels return an int.
    pub fn freeze_returns_super_block(self) -> bool {
        matches!(self, Generation::Vz7)
    }

    /// Whether `thaw_bdev` takes the `super_block` that freeze returned (3.10; O4 checks it).
    pub fn thaw_takes_super_block(self) -> bool {
        matches!(self, Generation::Vz7)
    }

    /// Whether a `freeze_bdev` return value means failure. On 3.10 it is a pointer
    /// (`ERR_PTR` on error, NULL when no filesystem was found); later an int.
    pub fn freeze_failed(self, ret: i64) -> bool {
        if self.freeze_returns_super_block() { (-4095..0).contains(&ret) } else { ret != 0 }
    }

    /// Whether a probed function returns a C `int`: the probes read the whole return
    /// register, so an int must be sign-extended from its low 32 bits. Pointers (3.10's
    /// `freeze_bdev` and `find_and_freeze_bdev`) and the syscall's `long` are 64-bit.
    pub fn returns_int(self, probe: Probe) -> bool {
        match probe {
            Probe::FreezeBdev | Probe::FindAndFreezeBdev => !self.freeze_returns_super_block(),
            Probe::SysExitIoctl => false,
            _ => true,
        }
    }

    /// The verifier the legacy object is held to on this generation ([`verifier`]): 3.10's.
    /// Later kernels accept all the older ones did.
    pub fn verifier_profile(self) -> Option<&'static verifier::Profile> {
        matches!(self, Generation::Vz7).then_some(&verifier::VZ7)
    }

    /// Number of arguments of a probed function (3.10's `thaw_bdev` also takes the
    /// `super_block` that freeze returned).
    pub fn arity(self, probe: Probe) -> usize {
        match probe {
            Probe::ThawBdev if self.thaw_takes_super_block() => 2,
            // The format's operation takes the top delta and the new delta's snapdata.
            Probe::CompleteSnapshot => 2,
            Probe::FreezeBdev | Probe::ThawBdev => 1,
            _ => 3,
        }
    }
}

/// A kernel-internal `dev_t` (`MAJOR << 20 | MINOR`), the form probes read from
/// `block_device.bd_dev` and `super_block.s_dev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KDev(pub u32);

impl KDev {
    pub fn major(self) -> u32 {
        self.0 >> 20
    }
    pub fn minor(self) -> u32 {
        self.0 & 0xfffff
    }
    /// From a user-space `st_dev`/`st_rdev` (glibc/musl encoding).
    pub fn from_user(dev: u64) -> Self {
        let major = libc::major(dev) as u32;
        let minor = libc::minor(dev) as u32;
        KDev((major << 20) | minor)
    }
}

impl std::fmt::Display for KDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major(), self.minor())
    }
}

impl std::str::FromStr for KDev {
    type Err = String;
    /// `major:minor` in decimal, as sysfs, mountinfo and the traces write it.
    fn from_str(s: &str) -> Result<Self, String> {
        // By hand: a replay parses one or two of these per event.
        let bad = || format!("{s:?} is not a major:minor device number");
        let mut parts = [0u32; 2];
        let mut i = 0;
        let mut digits = 0;
        for b in s.bytes() {
            match b {
                b'0'..=b'9' if digits < 7 => {
                    parts[i] = parts[i] * 10 + u32::from(b - b'0');
                    digits += 1;
                }
                b':' if i == 0 && digits > 0 => (i, digits) = (1, 0),
                _ => return Err(bad()),
            }
        }
        let [major, minor] = parts;
        if i != 1 || digits == 0 || major >= 1 << 12 || minor >= 1 << 20 {
            return Err(bad());
        }
        Ok(KDev((major << 20) | minor))
    }
}

/// As `major:minor` text: traces and reports are read by people.
impl Serialize for KDev {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KDev {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, not a String: a replay reads millions of these.
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = KDev;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a major:minor device number")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KDev, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS_61: &str = "\
ffffffff81000000 T _stext
ffffffff8132a1b0 T freeze_bdev
ffffffff8132a2c0 T thaw_bdev
ffffffffc0a01000 t ploop_snapshot\t[ploop_model]
ffffffffc0a02000 t get_bdev_from_fd\t[ploop_model]
ffffffff8132a2c0 D freeze_bdev_data
";

    #[test]
    fn detects_freeze_bdev_generation_and_module_symbols() {
        let k = KernelInfo::from_parts("6.1.0-56-amd64".into(), KALLSYMS_61);
        assert_eq!(k.generation, Generation::FreezeBdev);
        assert_eq!(k.symbol(Probe::FreezeBdev).unwrap().name, "freeze_bdev");
        assert_eq!(k.symbol(Probe::PloopSnapshot).unwrap().module.as_deref(), Some("ploop_model"));
        assert!(k.symbol(Probe::PloopRelax).is_none());
    }

    /// Static functions with one caller are often cloned by gcc: the clone is the entry.
    #[test]
    fn clones_of_static_functions_resolve_and_cold_parts_do_not() {
        let k = KernelInfo::from_parts(
            "3.10.0-1127.18.2.vz7.163.22".into(),
            "1 T freeze_bdev\n2 T thaw_bdev\n\
             3 t ploop_snapshot.cold\t[ploop]\n\
             4 t ploop_snapshot.isra.0\t[ploop]\n\
             5 t get_bdev_from_fd.constprop.0.isra.0\t[ploop]\n\
             6 t find_and_freeze_bdev.cold.1\t[ploop]\n\
             7 t ploop_relax_helper\t[ploop]\n\
             8 t ploop_quiesce\t[ploop]\n9 t ploop_quiesce.part.0\t[ploop]\n",
        );
        assert_eq!(k.symbol(Probe::PloopSnapshot).unwrap().name, "ploop_snapshot.isra.0");
        assert_eq!(k.symbol(Probe::PloopSnapshot).unwrap().module.as_deref(), Some("ploop"));
        assert_eq!(
            k.symbol(Probe::GetBdevFromFd).unwrap().name,
            "get_bdev_from_fd.constprop.0.isra.0"
        );
        assert!(k.symbol(Probe::FindAndFreezeBdev).is_none(), "a .cold part is no entry");
        assert!(k.symbol(Probe::PloopRelax).is_none(), "another function sharing a prefix");
        assert_eq!(k.symbol(Probe::PloopQuiesce).unwrap().name, "ploop_quiesce", "exact first");
    }

    /// Each delta format has its own complete_snapshot (vz7: fmt_ploop1.ko, fmt_raw.ko):
    /// every one present is a target, clones included, in the order the names are listed.
    #[test]
    fn every_formats_complete_snapshot_resolves() {
        let k = KernelInfo::from_parts(
            "3.10.0-1127.18.2.vz7.163.22".into(),
            "1 T freeze_bdev\n2 T thaw_bdev\n\
             3 t raw_complete_snapshot.isra.0\t[pfmt_raw]\n\
             4 t ploop1_complete_snapshot\t[pfmt_ploop1]\n\
             5 t ploop1_complete_snapshot.cold\t[pfmt_ploop1]\n",
        );
        let found: Vec<(&str, Option<&str>)> = k
            .symbols_of(Probe::CompleteSnapshot)
            .iter()
            .map(|r| (r.name.as_str(), r.module.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                ("ploop1_complete_snapshot", Some("pfmt_ploop1")),
                ("raw_complete_snapshot.isra.0", Some("pfmt_raw"))
            ]
        );
        let json = serde_json::to_value(&k).unwrap();
        assert_eq!(json["symbols"]["freeze_bdev"]["name"], "freeze_bdev", "one: as before");
        assert_eq!(json["symbols"]["complete_snapshot"][1]["name"], "raw_complete_snapshot.isra.0");
        let raw_only = KernelInfo::from_parts(
            "6.1.0-57-amd64".into(),
            "1 T freeze_bdev\n2 T thaw_bdev\n3 t raw_complete_snapshot\t[ploop]\n",
        );
        assert_eq!(raw_only.symbols_of(Probe::CompleteSnapshot).len(), 1);
        assert!(
            KernelInfo::from_parts("6.1".into(), KALLSYMS_61)
                .symbols_of(Probe::CompleteSnapshot)
                .is_empty()
        );
    }

    #[test]
    fn prefers_renamed_symbols_and_recognises_vz7() {
        let k = KernelInfo::from_parts(
            "6.12.95+deb12-amd64".into(),
            "1 T bdev_freeze\n2 T bdev_thaw\n3 T freeze_bdev_stub\n",
        );
        assert_eq!(k.generation, Generation::BdevFreeze);
        assert_eq!(k.symbol(Probe::ThawBdev).unwrap().name, "bdev_thaw");
        let k = KernelInfo::from_parts(
            "3.10.0-1127.18.2.vz7.163.22".into(),
            "1 T freeze_bdev\n2 T thaw_bdev\n",
        );
        assert_eq!(k.generation, Generation::Vz7);
        assert_eq!(k.generation.arity(Probe::ThawBdev), 2);
        assert_eq!(Generation::BdevFreeze.arity(Probe::ThawBdev), 1);
    }

    #[test]
    fn freeze_return_values_per_generation() {
        assert!(Generation::FreezeBdev.freeze_failed(-16));
        assert!(!Generation::BdevFreeze.freeze_failed(0));
        // 3.10: a super_block pointer is success, NULL is "no filesystem", ERR_PTR fails.
        assert!(!Generation::Vz7.freeze_failed(0xffff_8880_1234_5678u64 as i64));
        assert!(!Generation::Vz7.freeze_failed(0));
        assert!(Generation::Vz7.freeze_failed(-16));
    }

    #[test]
    fn only_vz7_passes_the_super_block_from_freeze_to_thaw() {
        assert!(Generation::Vz7.freeze_returns_super_block());
        assert!(Generation::Vz7.thaw_takes_super_block());
        for g in [Generation::FreezeBdev, Generation::BdevFreeze] {
            assert!(!g.freeze_returns_super_block() && !g.thaw_takes_super_block(), "{g}");
        }
    }

    #[test]
    fn int_returns_are_told_from_pointers() {
        assert!(Generation::FreezeBdev.returns_int(Probe::PloopSnapshot));
        assert!(Generation::BdevFreeze.returns_int(Probe::FreezeBdev));
        assert!(!Generation::Vz7.returns_int(Probe::FreezeBdev));
        assert!(Generation::Vz7.returns_int(Probe::ThawBdev));
        assert!(!Generation::FreezeBdev.returns_int(Probe::SysExitIoctl));
    }

    #[test]
    fn rhel7_family_kernels_are_told_by_their_release() {
        for taints in [
            "3.10.0-1127.18.2.vz7.163.22",
            "3.10.0-1160.80.1.vz7.191.4",
            "3.10.0-1127.el7.x86_64",
            "3.10.0-1160.119.1.el7.x86_64",
            "3.10.0-1062.el7_7.x86_64",
        ] {
            assert!(bpf_taints(taints), "{taints}");
        }
        for clean in [
            "6.1.0-57-amd64",
            "4.14.35-2047.518.4.el7uek.x86_64",
            "4.18.0-553.el8_10.x86_64",
            "3.10.0-custom",
            "5.10.0-el7-like",
            "3.10.0-1127.el7uek",
        ] {
            assert!(!bpf_taints(clean), "{clean}");
        }
        assert_eq!(tech_preview_tainted("536870912\n"), Some(true));
        assert_eq!(tech_preview_tainted("536875008"), Some(true), "with O and E too");
        assert_eq!(tech_preview_tainted("4096"), Some(false));
        assert_eq!(tech_preview_tainted("x"), None);
        assert!(Generation::Vz7.verifier_profile().is_some());
        assert!(Generation::FreezeBdev.verifier_profile().is_none());
    }

    #[test]
    fn kernel_dev_t_encoding() {
        // loop0 is 7:0; a minor above 255 checks the split encoding of user-space dev_t.
        let user = libc::makedev(7, 300);
        let k = KDev::from_user(user);
        assert_eq!((k.major(), k.minor()), (7, 300));
        assert_eq!(k.0, (7 << 20) | 300);
        assert_eq!(k.to_string(), "7:300");
        assert_eq!("7:300".parse::<KDev>(), Ok(k));
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"7:300\"");
        assert_eq!(serde_json::from_str::<KDev>("\"7:300\"").unwrap(), k);
        for bad in ["7", "7:x", "4096:0", "0:1048576", "?", "", ":5", "5:", "1:2:3", "-1:0", "7: 1"]
        {
            assert!(bad.parse::<KDev>().is_err(), "{bad}");
        }
    }
}
