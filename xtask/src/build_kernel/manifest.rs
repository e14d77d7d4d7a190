//! `manifest.json`: what a build was made from (tree, config, patches, compiler) and where
//! its artifacts are.
//!
//! The fields are declared in alphabetical order: the first manifests were written through
//! serde_json's sorted map, and the same order keeps old and new manifests of one build
//! comparable with diff.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{PatchResult, PatchStatus};

/// The `tool` of every manifest.
pub const TOOL: &str = "cargo xtask build-kernel";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub artifacts: Artifacts,
    pub built_at_unix: u64,
    pub cc: String,
    pub config: KernelConfig,
    pub jobs: u32,
    /// `VERSION.PATCHLEVEL.SUBLEVEL` + `EXTRAVERSION` of the tree's Makefile.
    pub kernel_version: String,
    pub kernelrelease: String,
    pub mode: Mode,
    pub patches: Vec<PatchEntry>,
    pub src: PathBuf,
    /// Seconds, to 0.01, per step: `patches`, each make step, `total`.
    pub timings_s: BTreeMap<String, f64>,
    pub tool: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    ModulesOnly,
    Full,
}

/// The `.config` the build used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelConfig {
    /// `--config`, when one was given.
    pub from: Option<PathBuf>,
    pub path: PathBuf,
    /// Of `path` after `make olddefconfig`.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchEntry {
    /// The commit id of the patch's `From` line.
    pub from: Option<String>,
    pub name: String,
    /// Of the patch file.
    pub sha256: String,
    pub status: PatchStatus,
    pub subject: Option<String>,
}

impl From<&PatchResult> for PatchEntry {
    fn from(p: &PatchResult) -> Self {
        PatchEntry {
            from: p.from.clone(),
            name: p.name.clone(),
            sha256: p.sha256.clone(),
            status: p.status,
            subject: p.subject.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifacts {
    pub build_log: PathBuf,
    /// Full build only, like `modules_dir`.
    #[serde(rename = "bzImage")]
    pub bz_image: Option<PathBuf>,
    pub modules: Vec<PathBuf>,
    pub modules_dir: Option<PathBuf>,
    pub vmlinux: Option<PathBuf>,
    pub vmlinux_btf: Option<PathBuf>,
    /// Why there is no `vmlinux_btf`.
    pub vmlinux_btf_note: Option<String>,
}

impl Manifest {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        fs::write(path, serde_json::to_string_pretty(self)? + "\n")?;
        Ok(())
    }
}

/// `timings_s`: the series, then the make steps in the order they ran, then the total.
pub(super) fn timings(patches: f64, steps: &[(String, f64)], total: f64) -> BTreeMap<String, f64> {
    let round = |s: f64| (s * 100.0).round() / 100.0;
    let mut t = BTreeMap::from([("patches".to_string(), round(patches))]);
    t.extend(steps.iter().map(|(k, v)| (k.clone(), round(*v))));
    t.insert("total".into(), round(total));
    t
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn sample() -> Manifest {
        Manifest {
            artifacts: Artifacts {
                build_log: "/out/build.log".into(),
                bz_image: Some("/out/bzImage".into()),
                modules: vec!["/out/modules/ploop.ko".into(), "/out/modules/pfmt_raw.ko".into()],
                modules_dir: Some("/out/root/lib/modules/3.10.0".into()),
                vmlinux: Some("/src/vmlinux".into()),
                vmlinux_btf: None,
                vmlinux_btf_note: Some("pahole made no BTF".into()),
            },
            built_at_unix: 1_700_000_000,
            cc: "gcc-4.8".into(),
            config: KernelConfig {
                from: None,
                path: "/src/.config".into(),
                sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            },
            jobs: 2,
            kernel_version: "3.10.0".into(),
            kernelrelease: "3.10.0-1127.18.2.vz7.163.22".into(),
            mode: Mode::Full,
            patches: vec![PatchEntry {
                from: Some("56e1c4d968993c8985bb90d983cb563a43d32010".into()),
                name: "0001-x.patch".into(),
                sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
                status: PatchStatus::AlreadyApplied,
                subject: None,
            }],
            src: "/src".into(),
            timings_s: timings(0.123, &[("config".into(), 7.5), ("kernel".into(), 60.0)], 70.0),
            tool: TOOL.into(),
        }
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().expect("an object").keys().map(String::as_str).collect()
    }

    #[test]
    fn round_trips_through_json_with_the_documented_field_names() {
        let m = sample();
        let text = serde_json::to_string_pretty(&m).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            keys(&v),
            [
                "artifacts",
                "built_at_unix",
                "cc",
                "config",
                "jobs",
                "kernel_version",
                "kernelrelease",
                "mode",
                "patches",
                "src",
                "timings_s",
                "tool"
            ]
        );
        assert_eq!(
            keys(&v["artifacts"]),
            [
                "build_log",
                "bzImage",
                "modules",
                "modules_dir",
                "vmlinux",
                "vmlinux_btf",
                "vmlinux_btf_note"
            ]
        );
        assert_eq!(keys(&v["config"]), ["from", "path", "sha256"]);
        assert_eq!(keys(&v["patches"][0]), ["from", "name", "sha256", "status", "subject"]);
        assert_eq!(keys(&v["timings_s"]), ["config", "kernel", "patches", "total"]);
        assert_eq!(v["mode"], "full");
        assert_eq!(serde_json::to_value(Mode::ModulesOnly).unwrap(), "modules-only");
        assert_eq!(v["patches"][0]["status"], "already-applied");
        assert_eq!(serde_json::to_value(PatchStatus::Applied).unwrap(), "applied");
        assert_eq!(v["timings_s"]["patches"], 0.12);
        // Absent values are null, as in the first manifests, not left out.
        assert!(v["artifacts"]["vmlinux_btf"].is_null() && v["config"]["from"].is_null());
        // Byte for byte what the sorted map of the first manifests wrote.
        assert_eq!(text, serde_json::to_string_pretty(&v).unwrap());
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
    }
}
