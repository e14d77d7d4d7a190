//! An initramfs for a guest: busybox, the requested kernel modules with their dependencies
//! (read from each module's `.modinfo`, since Debian's images ship no `modules.dep` until
//! depmod runs), host binaries with their shared libraries, and test files.
//!
//! The archive is an uncompressed newc cpio: under TCG, decompressing costs more boot time
//! than reading a few extra megabytes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::kernels::Kernel;

pub const BUSYBOX: &str = "/bin/busybox";

/// What goes into the archive besides busybox and the init script.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    /// Module names (`dm-mod` or `dm_mod`); dependencies are added and ordered.
    pub modules: Vec<String>,
    /// Out-of-tree modules (`.ko` files) loaded after the kernel's own.
    pub extra_modules: Vec<PathBuf>,
    /// Host executables copied with the shared libraries `ldd` reports, at the same path.
    pub host_bins: Vec<PathBuf>,
    /// `(host executable, guest path)`: a host executable at a guest path of its own, with its
    /// shared libraries where [`Contents::host_bins`] puts them (a wrapper takes its name).
    pub host_bins_at: Vec<(PathBuf, String)>,
    /// `(host file, guest path)`.
    pub files: Vec<(PathBuf, String)>,
    /// `(guest path, target)`.
    pub symlinks: Vec<(String, String)>,
    /// The user's files and directories (`--copy`), put under [`COPY_DIR`] by [`copy_plan`].
    pub copy: Vec<PathBuf>,
}

/// Where `--copy` puts each file or directory in the guest: `/copy/<its name>`.
pub const COPY_DIR: &str = "/copy";
/// Where the shared libraries of copied programs go, with their loader.
pub const COPY_LIB_DIR: &str = "/copy/lib";

/// Guest files for `--copy`: each path at `/copy/<name>` (a directory with everything in
/// it), and for every dynamically linked ELF among them the shared libraries `ldd` lists,
/// its loader included, in `/copy/lib` under the names the program asks for. The guest has
/// no C library of its own, so such a program runs as
/// `/copy/lib/ld-linux-x86-64.so.2 --library-path /copy/lib /copy/PROG`: its own libraries,
/// whatever else the guest holds.
pub fn copy_plan(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let put = |guest: String, host: PathBuf, files: &mut BTreeMap<String, PathBuf>| match files
        .get(&guest)
    {
        Some(other) if fs::canonicalize(other).ok() != fs::canonicalize(&host).ok() => bail!(
            "--copy: {} and {} would both be {guest} in the guest",
            other.display(),
            host.display()
        ),
        _ => {
            files.insert(guest, host);
            Ok(())
        }
    };
    let mut programs = Vec::new();
    for path in paths {
        let name = fs::canonicalize(path)
            .with_context(|| format!("--copy {}", path.display()))?
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("--copy {}: no UTF-8 file name", path.display()))?;
        let mut todo = vec![(path.clone(), format!("{COPY_DIR}/{name}"))];
        while let Some((host, guest)) = todo.pop() {
            if host.is_dir() {
                for e in
                    fs::read_dir(&host).with_context(|| format!("reading {}", host.display()))?
                {
                    let e = e?;
                    let n = e.file_name().into_string().map_err(|n| anyhow!("{n:?}: not UTF-8"))?;
                    todo.push((e.path(), format!("{guest}/{n}")));
                }
            } else {
                if is_elf(&host)? {
                    programs.push(host.clone());
                }
                put(guest, host, &mut files)?;
            }
        }
    }
    for prog in programs {
        for lib in shared_libs(&prog)? {
            let name = lib.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            put(format!("{COPY_LIB_DIR}/{name}"), lib, &mut files)?;
        }
    }
    Ok(files.into_iter().map(|(guest, host)| (host, guest)).collect())
}

/// Whether `path` is an ELF file (a program or a library whose libraries are wanted too).
fn is_elf(path: &Path) -> Result<bool> {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(f.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

/// Module file index of a kernel: normalised name -> path.
pub struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(normalise(stem))
}

impl ModuleIndex {
    pub fn new(kernel: &Kernel) -> Result<Self> {
        let mut files = BTreeMap::new();
        let mut stack = vec![kernel.modules.join("kernel")];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(name) = module_name(&p) {
                    files.insert(name, p);
                }
            }
        }
        let builtin = fs::read_to_string(kernel.modules.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| module_name(Path::new(l)))
            .collect();
        Ok(ModuleIndex { files, builtin })
    }

    /// `names` and their dependencies, dependencies first; built-in modules are left out.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for n in names {
            self.visit(&normalise(n), &mut seen, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
        path: &mut Vec<String>,
    ) -> Result<()> {
        if seen.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
        }
        let Some(file) = self.files.get(name) else {
            if self.builtin.contains(name) {
                seen.insert(name.to_string());
                return Ok(());
            }
            bail!("module {name} is neither a file under the modules tree nor built in");
        };
        let image = read_module(file)?;
        path.push(name.to_string());
        for dep in modinfo(&image, "depends")?.iter().flat_map(|d| d.split(',')) {
            if !dep.is_empty() {
                self.visit(&normalise(dep), seen, order, path)?;
            }
        }
        path.pop();
        seen.insert(name.to_string());
        order.push((name.to_string(), image));
        Ok(())
    }
}

/// A module file, decompressed (busybox insmod handles plain ELF only).
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} (install it: scripts/setup.sh)"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Values of `key` in a module's `.modinfo` section.
pub fn modinfo(image: &[u8], key: &str) -> Result<Vec<String>> {
    use object::{Object as _, ObjectSection as _};
    let obj = object::File::parse(image).context("parsing module ELF")?;
    let Some(sec) = obj.section_by_name(".modinfo") else {
        return Ok(Vec::new());
    };
    let data = sec.data()?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .collect())
}

/// Shared libraries of a dynamic host binary, from `ldd` (empty for static ones), its
/// loader included.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// A newc cpio writer.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn new() -> Self {
        Cpio { out: Vec::new(), ino: 1, dirs: BTreeSet::new() }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let name = name.trim_start_matches('/');
        let mut hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        )
        .into_bytes();
        self.ino += 1;
        hdr.extend_from_slice(name.as_bytes());
        hdr.push(0);
        self.out.extend_from_slice(&hdr);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir_all(&mut self, path: &str) {
        let mut cur = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            if self.dirs.insert(cur.clone()) {
                self.entry(&cur, 0o040755, &[]);
            }
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir_all(parent);
        }
        self.entry(path, 0o100000 | mode, data);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir_all(parent);
        }
        self.entry(path, 0o120777, target.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// What was put in, for the runner's report.
#[derive(Debug)]
pub struct Built {
    pub path: PathBuf,
    pub bytes: u64,
    pub modules: Vec<String>,
}

/// The init script: mounts, modules, the 9p share, then the command on ttyS1.
fn init_script() -> String {
    r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt /share /usr/bin /usr/sbin /sbin
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# The kernel hands init TERM=linux, but ttyS1 is read on the host as a log, not watched:
# programs must not redraw lines in place there.
export TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
while read -r m; do
  insmod "/lib/modules/$m" || echo "ploop-vm: insmod $m failed"
done < /etc/ploop-vm/modules
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /share ||
  echo "ploop-vm: no 9p share"
ulimit -l unlimited
cd /share 2>/dev/null || cd /
echo "@@ploop-vm-start" >/dev/ttyS1
sh /etc/ploop-vm/command </dev/null >/dev/ttyS1 2>&1
echo "@@ploop-vm-exit=$?" >/dev/ttyS1
cd /
sync
umount /share 2>/dev/null
poweroff -f
"#
    .to_string()
}

pub fn build(kernel: &Kernel, contents: &Contents, command: &str, out: &Path) -> Result<Built> {
    let mut cpio = Cpio::new();
    let busybox = fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (apt-get install busybox-static)"))?;
    cpio.file(BUSYBOX, 0o755, &busybox);
    cpio.symlink("/bin/sh", "busybox");
    cpio.file("/init", 0o755, init_script().as_bytes());
    cpio.file("/etc/ploop-vm/command", 0o644, command.as_bytes());

    let index = ModuleIndex::new(kernel)?;
    let mut list = String::new();
    let mut names = Vec::new();
    for (name, image) in index.resolve(&contents.modules)? {
        cpio.file(&format!("/lib/modules/{name}.ko"), 0o644, &image);
        list.push_str(&format!("{name}.ko\n"));
        names.push(name);
    }
    for ko in &contents.extra_modules {
        let name = module_name(ko).ok_or_else(|| anyhow!("{}: not a .ko file", ko.display()))?;
        cpio.file(&format!("/lib/modules/{name}.ko"), 0o644, &read_module(ko)?);
        list.push_str(&format!("{name}.ko\n"));
        names.push(name);
    }
    cpio.file("/etc/ploop-vm/modules", 0o644, list.as_bytes());

    let mut libs = BTreeSet::new();
    for bin in &contents.host_bins {
        let data = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
        cpio.file(bin.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?, 0o755, &data);
        libs.extend(shared_libs(bin)?);
    }
    for (bin, guest) in &contents.host_bins_at {
        let data = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
        cpio.file(guest, 0o755, &data);
        libs.extend(shared_libs(bin)?);
    }
    for lib in libs {
        let real = lib.canonicalize()?;
        let data = fs::read(&real)?;
        cpio.file(lib.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?, 0o755, &data);
    }
    for (host, guest) in &contents.files {
        let meta = fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        let data = fs::read(host)?;
        cpio.file(guest, meta.permissions().mode() & 0o777, &data);
    }
    for (host, guest) in copy_plan(&contents.copy)? {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = fs::metadata(&host).with_context(|| format!("reading {}", host.display()))?;
        let data = fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
        cpio.file(&guest, meta.permissions().mode() & 0o777, &data);
    }
    for (path, target) in &contents.symlinks {
        cpio.symlink(path, target);
    }
    let bytes = cpio.finish();
    let mut f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    f.write_all(&bytes)?;
    Ok(Built { path: out.to_path_buf(), bytes: bytes.len() as u64, modules: names })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_normalised_across_compressions() {
        assert_eq!(module_name(Path::new("a/dm-mod.ko.xz")).as_deref(), Some("dm_mod"));
        assert_eq!(module_name(Path::new("ext4.ko")).as_deref(), Some("ext4"));
        assert_eq!(module_name(Path::new("x.txt")), None);
    }

    /// A dynamically linked program brings its libraries and loader; a directory comes whole;
    /// two things that would land on one guest path are refused.
    #[test]
    fn copied_programs_bring_their_libraries() {
        let dir = std::env::temp_dir().join(format!("ploop-copy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data/sub")).unwrap();
        fs::write(dir.join("data/sub/a.txt"), "a").unwrap();
        let plan = copy_plan(&[PathBuf::from("/usr/bin/sha256sum"), dir.join("data")]).unwrap();
        let guest: Vec<&str> = plan.iter().map(|(_, g)| g.as_str()).collect();
        for want in [
            "/copy/sha256sum",
            "/copy/lib/libc.so.6",
            "/copy/lib/ld-linux-x86-64.so.2",
            "/copy/data/sub/a.txt",
        ] {
            assert!(guest.contains(&want), "{want} missing from {guest:?}");
        }
        fs::create_dir_all(dir.join("other")).unwrap();
        fs::write(dir.join("other/sha256sum"), "not the program").unwrap();
        let e = copy_plan(&[PathBuf::from("/usr/bin/sha256sum"), dir.join("other/sha256sum")])
            .unwrap_err();
        assert!(e.to_string().contains("would both be /copy/sha256sum"), "{e}");
        assert!(copy_plan(&[dir.join("missing")]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::new();
        c.file("/a/b", 0o644, b"hello");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("a/b\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!"));
    }
}
