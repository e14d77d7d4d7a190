//! Guest kernels: the Debian ones `scripts/setup.sh` unpacks, or any image + modules tree a
//! user names (their own vz7 build, for instance).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

#[derive(Clone, Debug)]
pub struct Kernel {
    pub release: String,
    pub image: PathBuf,
    /// `lib/modules/<release>` of this kernel.
    pub modules: PathBuf,
    /// Kbuild tree for out-of-tree modules, when known.
    pub headers: Option<PathBuf>,
}

impl Kernel {
    /// A kernel image and its modules directory, as a user names them.
    pub fn custom(image: &Path, modules: &Path) -> Result<Self> {
        if !image.is_file() {
            bail!("kernel image {}: no such file", image.display());
        }
        if !modules.join("kernel").is_dir() && !modules.join("modules.builtin").is_file() {
            bail!(
                "{} does not look like lib/modules/<release> (no kernel/ inside)",
                modules.display()
            );
        }
        let release = modules
            .canonicalize()?
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("cannot tell the release from {}", modules.display()))?
            .to_string();
        let build = modules.join("build");
        Ok(Kernel {
            release,
            image: image.to_path_buf(),
            modules: modules.to_path_buf(),
            headers: build.join("Makefile").is_file().then_some(build),
        })
    }

    /// A kernel unpacked by setup: `dir` holds `vmlinuz`, `modules` and `headers`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut k = Self::custom(&dir.join("vmlinuz"), &dir.join("modules"))?;
        let headers = dir.join("headers");
        if headers.join("Makefile").is_file() {
            k.headers = Some(headers.canonicalize()?);
        }
        Ok(k)
    }

    /// `6.1`, `6.12`: the Debian kernel of that series unpacked by setup; anything else is
    /// taken as a directory in the setup layout.
    pub fn resolve(spec: &str) -> Result<Self> {
        let dir = Path::new(spec);
        if dir.is_dir() {
            return Self::from_dir(dir);
        }
        let base = crate::build_dir().join("kernels");
        let mut found: Vec<PathBuf> = fs::read_dir(&base)
            .with_context(|| {
                format!("no guest kernels in {} (run `bash scripts/setup.sh`)", base.display())
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.join(".complete").exists()
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.strip_prefix(spec).is_some_and(|r| r.starts_with(['.', '-']))
                    })
            })
            .collect();
        found.sort();
        let dir = found.pop().ok_or_else(|| {
            anyhow!("no guest kernel {spec}.* in {} (run `bash scripts/setup.sh`)", base.display())
        })?;
        Self::from_dir(&dir)
    }
}
