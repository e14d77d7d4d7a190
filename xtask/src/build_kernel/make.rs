//! Steps 4-6: config, make, the artifacts, BTF and the manifest in the out directory.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow};

use super::{
    Args, Built, Error, PatchResult, bad, failed,
    manifest::{self, Artifacts, KernelConfig, Manifest, Mode, PatchEntry},
    say, sha256_hex, which,
};

/// One build: make with the same variables for every step, its output in one log.
pub(super) struct Builder {
    log_path: PathBuf,
    log: fs::File,
    make_vars: Vec<String>,
    jobs: u32,
    timings: Vec<(String, f64)>,
}

impl Builder {
    pub(super) fn new(args: &Args, src: &Path) -> Result<Self, Error> {
        let logs = crate::build_dir().join("build-kernel");
        fs::create_dir_all(&logs).map_err(bad)?;
        // Unique per build, not per process: the tests run builds in parallel threads, and
        // one build removing "its" log under the other made that one fail (seen in CI).
        static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = logs.join(format!("build-{}-{n}.log", std::process::id()));
        let mut log = fs::File::create(&log_path).map_err(bad)?;
        writeln!(log, "# cargo xtask build-kernel --src {}", src.display()).map_err(bad)?;
        say(format!("build log: {}", log_path.display()));
        let mut make_vars = vec![format!("CC={}", args.cc)];
        if let Some(r) = &args.kernelrelease {
            make_vars.push(format!("KERNELRELEASE={r}"));
        }
        Ok(Builder { log_path, log, make_vars, jobs: args.jobs.max(1), timings: Vec::new() })
    }

    /// `make -C src <vars> <targets>`, output to the log, progress on stderr.
    fn make(&mut self, src: &Path, step: &str, targets: &[&str]) -> Result<(), Error> {
        let t = Instant::now();
        say(format!("{step}: make {}", targets.join(" ")));
        writeln!(self.log, "\n# === {step}: make {} ===", targets.join(" ")).map_err(bad)?;
        let (reader, writer) = std::io::pipe().map_err(bad)?;
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(src)
            .arg(format!("-j{}", self.jobs))
            .args(&self.make_vars)
            .args(targets)
            .env("LC_ALL", "C")
            // A make that runs us (or cargo's jobserver) must not leak into the kernel build.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .stdin(Stdio::null())
            .stdout(writer.try_clone().map_err(bad)?)
            .stderr(writer);
        let mut child = cmd.spawn().context("running make").map_err(bad)?;
        // The write ends it holds must close, or reading never sees the end of make's output.
        drop(cmd);
        let mut last_report = Instant::now();
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(reader).lines() {
            let line = line.unwrap_or_default();
            let _ = writeln!(self.log, "{line}");
            if last_report.elapsed() > Duration::from_secs(20) {
                say(format!("  {step} {:>5.0}s  {}", t.elapsed().as_secs_f64(), line.trim()));
                last_report = Instant::now();
            }
            tail.push(line);
            if tail.len() > 400 {
                tail.drain(..200);
            }
        }
        let status = child.wait().map_err(failed)?;
        let secs = t.elapsed().as_secs_f64();
        self.timings.push((step.to_string(), secs));
        if !status.success() {
            let errors: Vec<&String> = tail
                .iter()
                .filter(|l| l.contains("error") || l.contains("Error") || l.contains("ERROR"))
                .collect();
            let shown = if errors.is_empty() {
                tail[tail.len().saturating_sub(25)..].join("\n")
            } else {
                errors
                    .iter()
                    .rev()
                    .take(25)
                    .rev()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            return Err(failed(anyhow!(
                "{step} failed ({status}) after {secs:.1}s; full log {}:\n{shown}",
                self.log_path.display()
            )));
        }
        say(format!("{step}: done in {secs:.1}s"));
        Ok(())
    }

    /// `make -s <target>` and its first output line.
    fn query(&self, src: &Path, target: &str) -> Result<String, Error> {
        let out = Command::new("make")
            .arg("-C")
            .arg(src)
            .arg("-s")
            .args(&self.make_vars)
            .arg(target)
            .env("LC_ALL", "C")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .stdin(Stdio::null())
            .output()
            .context("running make")
            .map_err(bad)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| !l.starts_with("make")).unwrap_or("").trim().to_string();
        if !out.status.success() || line.is_empty() {
            return Err(failed(anyhow!(
                "make {target} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(line)
    }

    /// Steps 4-6; the log moves to `<out>/build.log` on success.
    pub(super) fn build(
        mut self,
        args: &Args,
        src: &Path,
        version: &str,
        patches: Vec<PatchResult>,
        patch_secs: f64,
        started: Instant,
    ) -> Result<Built, Error> {
        let dot_config = src.join(".config");
        let config_text = self.configure(args, src, &dot_config)?;
        self.compile(args, src, &config_text)?;
        let release = self.release(args, src)?;
        say(format!("kernel release {release}"));

        let out = match &args.out {
            Some(o) => std::path::absolute(o).map_err(bad)?,
            None => crate::build_dir().join("build-kernel").join(&release),
        };
        fs::create_dir_all(&out).map_err(bad)?;
        let modules = copy_modules(args, src, &out)?;
        let (image, modules_dir) = if args.modules_only {
            (None, None)
        } else {
            let (image, dir) = self.install(src, &out, &release)?;
            (Some(image), Some(dir))
        };
        let vmlinux = src.join("vmlinux");
        let (btf, btf_note) = btf(&vmlinux, &out);

        let build_log = out.join("build.log");
        self.log.flush().map_err(failed)?;
        fs::copy(&self.log_path, &build_log).map_err(failed)?;
        let _ = fs::remove_file(&self.log_path);

        let manifest = Manifest {
            artifacts: Artifacts {
                build_log,
                bz_image: image.clone(),
                modules: modules.clone(),
                modules_dir: modules_dir.clone(),
                vmlinux: vmlinux.is_file().then_some(vmlinux),
                vmlinux_btf: btf.clone(),
                vmlinux_btf_note: btf_note,
            },
            built_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            cc: args.cc.clone(),
            config: KernelConfig {
                from: args.config.as_ref().map(|c| std::path::absolute(c).unwrap_or(c.clone())),
                path: dot_config,
                sha256: sha256_hex(config_text.as_bytes()),
            },
            jobs: self.jobs,
            kernel_version: version.to_string(),
            kernelrelease: release.clone(),
            mode: if args.modules_only { Mode::ModulesOnly } else { Mode::Full },
            patches: patches.iter().map(PatchEntry::from).collect(),
            src: src.to_path_buf(),
            timings_s: manifest::timings(
                patch_secs,
                &self.timings,
                started.elapsed().as_secs_f64(),
            ),
            tool: manifest::TOOL.into(),
        };
        let manifest_path = out.join("manifest.json");
        manifest.write(&manifest_path).map_err(failed)?;
        say(format!("manifest {}", manifest_path.display()));
        Ok(Built {
            out: Some(out),
            manifest: Some(manifest_path),
            release: Some(release),
            patches,
            modules,
            image,
            modules_dir,
            btf,
            boot: None,
        })
    }

    /// Step 4: `.config` from `--config` (or as it is), `make olddefconfig`; returns the
    /// resulting `.config`.
    fn configure(&mut self, args: &Args, src: &Path, dot_config: &Path) -> Result<String, Error> {
        if let Some(cfg) = &args.config {
            let want = fs::read(cfg)
                .with_context(|| format!("reading --config {}", cfg.display()))
                .map_err(bad)?;
            if fs::read(dot_config).ok().as_ref() != Some(&want) {
                fs::write(dot_config, &want).map_err(bad)?;
            }
        } else if !dot_config.is_file() {
            return Err(bad(anyhow!(
                "{} has no .config: pass --config FILE (e.g. the config of the vz7 kernel \
                 you run, /boot/config-<release>)",
                src.display()
            )));
        }
        self.make(src, "config", &["olddefconfig"])?;
        fs::read_to_string(dot_config).map_err(bad)
    }

    /// Step 5: the ploop modules against the tree's (or `--symvers`) symbols, or the kernel.
    fn compile(&mut self, args: &Args, src: &Path, config: &str) -> Result<(), Error> {
        if !args.modules_only {
            return self.make(src, "kernel", &["bzImage", "modules"]);
        }
        let symvers = src.join("Module.symvers");
        if let Some(sv) = &args.symvers {
            let want = fs::read(sv)
                .with_context(|| format!("reading --symvers {}", sv.display()))
                .map_err(bad)?;
            if fs::read(&symvers).ok().as_ref() != Some(&want) {
                fs::write(&symvers, &want).map_err(bad)?;
            }
        } else if config.lines().any(|l| l == "CONFIG_MODVERSIONS=y") && !symvers.is_file() {
            return Err(bad(anyhow!(
                "CONFIG_MODVERSIONS is set and {} has no Module.symvers: a --modules-only \
                 build needs the symbol CRCs of the kernel the modules are for; pass \
                 --symvers (e.g. /usr/src/linux-headers-<release>/Module.symvers or \
                 /boot/symvers-<release>) or build the whole kernel",
                src.display()
            )));
        }
        self.make(src, "modules_prepare", &["modules_prepare"])?;
        self.make(src, "ploop modules", &["M=drivers/block/ploop", "modules"])
    }

    /// The release the build really used: a KERNELRELEASE override is not seen by
    /// `make kernelrelease` on every version, UTS_RELEASE is.
    fn release(&self, args: &Args, src: &Path) -> Result<String, Error> {
        let release = match &args.kernelrelease {
            Some(r) => r.clone(),
            None => self.query(src, "kernelrelease")?,
        };
        if let Ok(h) = fs::read_to_string(src.join("include/generated/utsrelease.h"))
            && let Some(uts) = h.split('"').nth(1)
            && uts != release
        {
            return Err(failed(anyhow!(
                "the build used release {uts:?}, not {release:?} (UTS_RELEASE in \
                 include/generated/utsrelease.h)"
            )));
        }
        Ok(release)
    }

    /// A full build's `modules_install` into `<out>/root` and its bzImage; returns
    /// `<out>/bzImage` and `<out>/root/lib/modules/<release>`.
    fn install(
        &mut self,
        src: &Path,
        out: &Path,
        release: &str,
    ) -> Result<(PathBuf, PathBuf), Error> {
        let root = out.join("root");
        if root.exists() {
            fs::remove_dir_all(&root).map_err(bad)?;
        }
        let install_path = format!("INSTALL_MOD_PATH={}", root.display());
        self.make(
            src,
            "modules_install",
            &["modules_install", &install_path, "INSTALL_MOD_STRIP=1"],
        )?;
        let bz = src.join("arch/x86/boot/bzImage");
        let image = out.join("bzImage");
        fs::copy(&bz, &image)
            .with_context(|| format!("copying {}", bz.display()))
            .map_err(failed)?;
        Ok((image, root.join("lib/modules").join(release)))
    }
}

/// The `.ko` files of drivers/block/ploop, copied to `<out>/modules/` (emptied first).
fn copy_modules(args: &Args, src: &Path, out: &Path) -> Result<Vec<PathBuf>, Error> {
    let mod_out = out.join("modules");
    if mod_out.exists() {
        fs::remove_dir_all(&mod_out).map_err(bad)?;
    }
    fs::create_dir_all(&mod_out).map_err(bad)?;
    let mut modules = Vec::new();
    for e in fs::read_dir(src.join("drivers/block/ploop")).map_err(bad)? {
        let p = e.map_err(bad)?.path();
        if p.extension().is_some_and(|e| e == "ko") {
            let dst = mod_out.join(p.file_name().expect("a file name"));
            fs::copy(&p, &dst).map_err(failed)?;
            modules.push(dst);
        }
    }
    modules.sort();
    if modules.is_empty() {
        let msg = "the build produced no .ko in drivers/block/ploop (CONFIG_BLK_DEV_PLOOP \
                   is not =m in the config)";
        if args.modules_only {
            return Err(failed(anyhow!("{msg}")));
        }
        say(format!("WARNING: {msg}; built in or not built"));
    }
    Ok(modules)
}

/// `<out>/vmlinux.btf` from `vmlinux` when the tree has one; else, or when pahole fails, no
/// BTF and the reason for the manifest (a build without BTF is still a build).
fn btf(vmlinux: &Path, out: &Path) -> (Option<PathBuf>, Option<String>) {
    let btf_path = out.join("vmlinux.btf");
    let _ = fs::remove_file(&btf_path);
    if !vmlinux.is_file() {
        return (
            None,
            Some("no vmlinux in the tree (a --modules-only build does not link one)".into()),
        );
    }
    let t = Instant::now();
    match emit_btf(vmlinux, &btf_path) {
        Ok(()) => {
            say(format!("BTF {} ({:.1}s)", btf_path.display(), t.elapsed().as_secs_f64()));
            (Some(btf_path), None)
        }
        Err(e) => {
            say(format!("WARNING: no BTF for vmlinux: {e:#}"));
            (None, Some(format!("{e:#}")))
        }
    }
}

/// `pahole --btf_encode_detached out vmlinux`: BTF from the DWARF of `vmlinux`, for
/// `ploop-verify --btf` on kernels without /sys/kernel/btf/vmlinux (vz7's 3.10).
pub fn emit_btf(vmlinux: &Path, out: &Path) -> anyhow::Result<()> {
    if which("pahole").is_none() {
        anyhow::bail!("pahole not found on PATH (apt-get install pahole)");
    }
    let _ = fs::remove_file(out);
    let o = Command::new("pahole")
        .arg("--btf_encode_detached")
        .arg(out)
        .arg(vmlinux)
        .env("LC_ALL", "C")
        .output()
        .context("running pahole")?;
    // BTF starts with the magic 0xeB9F (little endian on x86).
    let magic = fs::read(out).ok().filter(|b| b.len() > 24 && b[..2] == [0x9f, 0xeb]);
    if !o.status.success() || magic.is_none() {
        let _ = fs::remove_file(out);
        anyhow::bail!(
            "pahole made no BTF from {} (built without CONFIG_DEBUG_INFO?): {}{}",
            vmlinux.display(),
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}
