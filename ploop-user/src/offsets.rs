//! The struct offsets the eBPF programs need (they have no CO-RE relocations), and where they
//! come from: the kernel's BTF where it has one, else the DWARF of its `vmlinux` (a vz7 host's
//! 3.10 has no BTF at all, but `kernel-debuginfo` has the DWARF), remembered in a small cache
//! file keyed by kernel release and build id so that only the first run pays for the read.

pub mod dwarf;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use ploop_common::config;

use crate::btf;

/// `block_device.bd_dev`: every session needs it (36 on 6.1, 52 on 6.12).
pub const BD_DEV: (&str, &str) = ("block_device", "bd_dev");

/// The members of the in-kernel fd walk (S1), by config slot.
pub const FD_WALK: &[(u32, &str, &str)] = &[
    (config::TASK_FILES, "task_struct", "files"),
    (config::FILES_FDT, "files_struct", "fdt"),
    (config::FDT_MAX_FDS, "fdtable", "max_fds"),
    (config::FDT_FD, "fdtable", "fd"),
    (config::FILE_F_INODE, "file", "f_inode"),
    (config::INODE_I_SB, "inode", "i_sb"),
    (config::SB_S_DEV, "super_block", "s_dev"),
    (config::SB_S_BDEV, "super_block", "s_bdev"),
    (config::INODE_I_MODE, "inode", "i_mode"),
    (config::INODE_I_RDEV, "inode", "i_rdev"),
    (config::INODE_I_INO, "inode", "i_ino"),
];

/// Every (struct, member) the probes read.
pub fn wanted() -> Vec<(&'static str, &'static str)> {
    std::iter::once(BD_DEV).chain(FD_WALK.iter().map(|&(_, s, m)| (s, m))).collect()
}

fn key(st: &str, member: &str) -> String {
    format!("{st}.{member}")
}

/// Where the offsets were read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// BTF: `--btf FILE` or the kernel's own.
    Btf { path: PathBuf },
    /// The DWARF of a vmlinux, read now; `cache` is where they were written, else why not.
    Dwarf { vmlinux: PathBuf, cache: Option<PathBuf>, cache_error: Option<String> },
    /// A cache file written earlier from the DWARF of `vmlinux`.
    Cache { path: PathBuf, vmlinux: PathBuf },
}

impl Source {
    pub fn is_btf(&self) -> bool {
        matches!(self, Source::Btf { .. })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Btf { path } => write!(f, "BTF {}", path.display()),
            Source::Dwarf { vmlinux, cache: Some(c), .. } => {
                write!(f, "DWARF {} (cached in {})", vmlinux.display(), c.display())
            }
            Source::Dwarf { vmlinux, cache_error, .. } => write!(
                f,
                "DWARF {} (not cached: {})",
                vmlinux.display(),
                cache_error.as_deref().unwrap_or("?")
            ),
            Source::Cache { path, vmlinux } => {
                write!(f, "cache {} (from the DWARF of {})", path.display(), vmlinux.display())
            }
        }
    }
}

/// The offsets one source gave, `struct.member` -> byte offset; what it lacks is absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Offsets {
    pub source: Source,
    pub members: BTreeMap<String, u64>,
}

impl Offsets {
    pub fn get(&self, st: &str, member: &str) -> Option<u64> {
        self.members.get(&key(st, member)).copied()
    }

    pub fn bd_dev(&self) -> Option<u64> {
        self.get(BD_DEV.0, BD_DEV.1)
    }

    /// The fd walk's offsets by config slot, or `None` if any is missing.
    pub fn fd_walk(&self) -> Option<Vec<(u32, u64)>> {
        FD_WALK.iter().map(|&(slot, st, m)| self.get(st, m).map(|o| (slot, o))).collect()
    }

    pub fn from_btf(path: &Path) -> Result<Self> {
        let parsed = btf::load(path)?;
        let members = wanted()
            .into_iter()
            .filter_map(|(st, m)| btf::member_offset(&parsed, st, m).ok().map(|o| (key(st, m), o)))
            .collect();
        Ok(Offsets { source: Source::Btf { path: path.to_path_buf() }, members })
    }
}

/// The BTF that decides, when there is one: `--btf FILE`, else the kernel's own. Without
/// either the offsets come from DWARF, and fentry (which needs BTF) is out.
pub fn btf_path(user: Option<&Path>) -> Option<PathBuf> {
    match user {
        Some(p) => Some(p.to_path_buf()),
        None => Path::new(btf::SYS_BTF).exists().then(|| PathBuf::from(btf::SYS_BTF)),
    }
}

/// What names a kernel build: its release and its GNU build id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub release: String,
    pub build_id: String,
}

/// The cache directory: regenerable data, so /var/cache (FHS); `PLOOP_VERIFY_CACHE` names
/// another (a read-only /var, tests).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PLOOP_VERIFY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ploop-verify"))
}

pub fn cache_file(dir: &Path, keys: &Keys) -> PathBuf {
    // A release is a file-name-safe token (uname); keep it so even if a custom one is not.
    let release: String = keys
        .release
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' })
        .collect();
    dir.join(format!("offsets-{release}-{}.json", keys.build_id))
}

/// The cache file's content.
#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    release: String,
    build_id: String,
    /// The vmlinux whose DWARF gave the offsets.
    vmlinux: PathBuf,
    members: BTreeMap<String, u64>,
    /// Wanted members the DWARF does not have: known absent, not a reason to read it again.
    missing: Vec<String>,
}

const CACHE_FORMAT: u32 = 1;

/// The cached offsets for `keys`, if a cache file for them holds every wanted member (or
/// knows it absent). A file from an older ploop-verify that wanted fewer is not used.
pub fn read_cache(path: &Path, keys: &Keys) -> Option<Offsets> {
    let text = std::fs::read_to_string(path).ok()?;
    let c: CacheFile = serde_json::from_str(&text).ok()?;
    let complete = wanted()
        .iter()
        .all(|&(s, m)| c.members.contains_key(&key(s, m)) || c.missing.contains(&key(s, m)));
    (c.format == CACHE_FORMAT
        && c.release == keys.release
        && c.build_id == keys.build_id
        && complete)
        .then(|| Offsets {
            source: Source::Cache { path: path.to_path_buf(), vmlinux: c.vmlinux },
            members: c.members,
        })
}

/// Writes the cache for `keys` (atomically: a reader never sees half a file); its path.
pub fn write_cache(
    dir: &Path,
    keys: &Keys,
    vmlinux: &Path,
    members: &BTreeMap<String, u64>,
) -> Result<PathBuf> {
    let path = cache_file(dir, keys);
    let missing =
        wanted().iter().map(|&(s, m)| key(s, m)).filter(|k| !members.contains_key(k)).collect();
    let c = CacheFile {
        format: CACHE_FORMAT,
        release: keys.release.clone(),
        build_id: keys.build_id.clone(),
        vmlinux: std::path::absolute(vmlinux).unwrap_or_else(|_| vmlinux.to_path_buf()),
        members: members.clone(),
        missing,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(&c)? + "\n")
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A vmlinux opened for its keys, before its DWARF is read (the build id is cheap; the
/// DWARF is not, so a file of another kernel is turned away first).
pub struct Vmlinux {
    pub path: PathBuf,
    map: dwarf::Mapped,
}

impl Vmlinux {
    pub fn open(path: &Path) -> Result<Self> {
        let map = dwarf::Mapped::open(path)?;
        let v = Vmlinux { path: path.to_path_buf(), map };
        v.object()?;
        Ok(v)
    }

    fn object(&self) -> Result<object::File<'_>> {
        object::File::parse(self.map.bytes())
            .map_err(|e| anyhow!("{}: not an ELF vmlinux: {e}", self.path.display()))
    }

    pub fn build_id(&self) -> Result<Option<String>> {
        dwarf::build_id(&self.object()?)
    }

    /// The release in the kernel's banner, if the file has one.
    pub fn release(&self) -> Option<String> {
        dwarf::banner_release(&self.object().ok()?)
    }

    /// The wanted offsets from the DWARF, and the seconds the read took.
    pub fn member_offsets(&self) -> Result<(BTreeMap<String, u64>, f64)> {
        let t = Instant::now();
        let members = dwarf::member_offsets(&self.object()?, &wanted())
            .with_context(|| format!("reading the DWARF of {}", self.path.display()))?;
        Ok((members, t.elapsed().as_secs_f64()))
    }
}

/// The running kernel's GNU build id, from the ELF notes in /sys/kernel/notes.
pub fn running_build_id() -> Option<String> {
    notes_build_id(&std::fs::read("/sys/kernel/notes").ok()?)
}

/// The `NT_GNU_BUILD_ID` descriptor of a raw ELF note sequence (native endian, 4-aligned).
pub fn notes_build_id(mut notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let pad = |n: u32| (n as usize).div_ceil(4) * 4;
    while notes.len() >= 12 {
        let (namesz, descsz, ty) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)?);
        let name = notes.get(12..12 + namesz as usize)?;
        let desc_at = 12 + pad(namesz);
        let desc = notes.get(desc_at..desc_at + descsz as usize)?;
        if ty == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(dwarf::hex(desc));
        }
        notes = notes.get(desc_at + pad(descsz)..)?;
    }
    None
}

/// Where distributions put the vmlinux with DWARF of release `rel`, in the order tried.
pub fn debuginfo_paths(rel: &str) -> Vec<PathBuf> {
    [
        format!("/usr/lib/debug/lib/modules/{rel}/vmlinux"),
        format!("/usr/lib/debug/boot/vmlinux-{rel}"),
        format!("/boot/vmlinux-{rel}"),
        format!("/lib/modules/{rel}/build/vmlinux"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// The offsets for the running kernel: `--btf FILE` if given, else the kernel's BTF, else
/// the cache for (release, build id), else the debuginfo at its usual paths (writing the
/// cache). Nothing found: one message that says what to install or pass.
pub fn for_running_kernel(btf_file: Option<&Path>, release: &str) -> Result<Offsets> {
    if let Some(p) = btf_path(btf_file) {
        return Offsets::from_btf(&p);
    }
    let build_id = running_build_id();
    let dir = cache_dir();
    let keys = build_id.clone().map(|build_id| Keys { release: release.to_string(), build_id });
    if let Some(k) = &keys
        && let Some(o) = read_cache(&cache_file(&dir, k), k)
    {
        return Ok(o);
    }
    let mut tried = Vec::new();
    for path in debuginfo_paths(release) {
        if !path.exists() {
            continue;
        }
        match dwarf_for(&path, keys.as_ref(), &dir) {
            Ok(o) => return Ok(o),
            Err(e) => tried.push(format!("{e:#}")),
        }
    }
    bail!("{}", nothing_found(release, keys.as_ref(), &dir, &tried))
}

/// Offsets from the DWARF of `path`, which must be the running kernel's (same build id).
fn dwarf_for(path: &Path, running: Option<&Keys>, dir: &Path) -> Result<Offsets> {
    let v = Vmlinux::open(path)?;
    let file_id = v.build_id()?;
    let keys = match (running, file_id) {
        (Some(k), Some(id)) if k.build_id == id => k,
        (Some(k), Some(id)) => bail!(
            "{}: build id {id} is not the running kernel's ({}): the debuginfo of another build",
            path.display(),
            k.build_id
        ),
        (_, None) => bail!("{}: no build id note: cannot tell whose it is", path.display()),
        (None, Some(_)) => bail!(
            "{}: the running kernel's build id is not in /sys/kernel/notes: cannot tell \
             whether this vmlinux is its",
            path.display()
        ),
    };
    let (members, _) = v.member_offsets()?;
    let (cache, cache_error) = match write_cache(dir, keys, path, &members) {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    Ok(Offsets {
        source: Source::Dwarf { vmlinux: path.to_path_buf(), cache, cache_error },
        members,
    })
}

fn nothing_found(release: &str, keys: Option<&Keys>, dir: &Path, tried: &[String]) -> String {
    let cache = match keys {
        Some(k) => format!("no cache {}", cache_file(dir, k).display()),
        None => "no build id in /sys/kernel/notes to find a cache by".into(),
    };
    let searched = if tried.is_empty() {
        format!(
            "no vmlinux with DWARF at {}",
            debuginfo_paths(release)
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        tried.join("; ")
    };
    format!(
        "no struct offsets for kernel {release}: no {} (no kernel BTF), {cache}, {searched}. \
         Install this kernel's debuginfo (vz7: `yum install vzkernel-debuginfo-{release}`; \
         RHEL/CentOS: `debuginfo-install kernel-{release}` (kernel-debuginfo-{release}); \
         Debian: `apt-get install linux-image-{release}-dbg`), or pass `--btf FILE`, or run \
         `ploop-verify offsets --vmlinux FILE` with this kernel's vmlinux",
        btf::SYS_BTF
    )
}

/// `ploop-verify offsets`: the DWARF read by hand.
#[derive(clap::Args, Debug)]
pub struct OffsetsArgs {
    /// A vmlinux with DWARF (kernel-debuginfo's, Debian's -dbg, a build tree's).
    #[arg(long, value_name = "FILE")]
    pub vmlinux: PathBuf,
    /// The kernel release the file is for; default: read from the kernel's banner in it.
    #[arg(long, value_name = "RELEASE")]
    pub release: Option<String>,
    /// Print one JSON object (keys, offsets, cache path, read time) instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: OffsetsArgs) -> Result<std::process::ExitCode> {
    let v = Vmlinux::open(&args.vmlinux)?;
    let path = args.vmlinux.display();
    let build_id = v.build_id()?.ok_or_else(|| {
        anyhow!("{path}: no build id note (.note.gnu.build-id), which the cache is keyed by")
    })?;
    let release = args.release.or_else(|| v.release()).ok_or_else(|| {
        anyhow!("{path}: no kernel banner to read the release from: pass --release RELEASE")
    })?;
    let (members, secs) = v.member_offsets()?;
    if !members.contains_key(&key(BD_DEV.0, BD_DEV.1)) {
        bail!("{path}: no struct block_device with a bd_dev member in its DWARF");
    }
    let keys = Keys { release, build_id };
    let running = running_build_id().is_some_and(|id| id == keys.build_id);
    let cache = write_cache(&cache_dir(), &keys, &args.vmlinux, &members)?;
    let size = std::fs::metadata(&cache).map(|m| m.len()).unwrap_or(0);
    if args.json {
        let out = serde_json::json!({
            "vmlinux": args.vmlinux,
            "release": keys.release,
            "build_id": keys.build_id,
            "running_kernel": running,
            "dwarf_read_s": secs,
            "members": members,
            "cache": cache,
            "cache_bytes": size,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "{path}: kernel {}, build id {}, {}",
        keys.release,
        keys.build_id,
        if running { "the running kernel" } else { "not the running kernel" }
    );
    println!("DWARF read in {secs:.2} s");
    for (st, m) in wanted() {
        match members.get(&key(st, m)) {
            Some(o) => println!("  {:<24} {o}", key(st, m)),
            None => println!(
                "  {:<24} missing (S1 resolves the sync fd from /proc instead)",
                key(st, m)
            ),
        }
    }
    println!("cache: {} ({size} bytes)", cache.display());
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    //! On objects made at test time with `cc -g` from structs shaped like the kernel's
    //! (anonymous unions holding anonymous structs, named nested structs, const typedef'd
    //! members, a declaration in an earlier unit), checked against the `offsetof` values the
    //! same compiler prints.

    use std::{collections::BTreeMap, path::Path, process::Command};

    use super::*;

    const SHAPES: &str = r#"
typedef unsigned int u32;
typedef u32 dev_t;
typedef unsigned short umode_t;
struct super_block;
struct block_device {
    unsigned long bd_start_sect;
    struct { void *p; unsigned long q; } bd_stats;
    union {
        struct { int bd_openers; char bd_flag; };
        unsigned long long bd_pad[3];
    };
    const dev_t bd_dev;
    struct super_block *bd_super;
};
struct inode {
    umode_t i_mode;
    unsigned char i_bits: 3;
    struct super_block *i_sb;
    union { unsigned long i_a; void *i_b; };
    unsigned long i_ino;
    union { struct { char i_pad[5]; dev_t i_rdev; }; long i_w; };
};
struct file {
    union { void *fu_llist; int fu_x; } f_u;
    struct { void *mnt; void *dentry; } f_path;
    union { struct { long f_pad; struct { char f_c; struct inode *f_inode; }; }; char f_big[40]; };
};
struct fdtable { unsigned int max_fds; struct file **fd; };
struct files_struct { int count; char pad[60]; struct fdtable *fdt; };
struct super_block { void *s_list; dev_t s_dev; unsigned char s_blocksize_bits; struct block_device *s_bdev; };
typedef struct { volatile int sequence; } seqcount_t;
struct task_struct {
    volatile long __state;
    seqcount_t seq;
    struct { char randomized[100]; int more; };
    struct files_struct *files;
};
"#;

    const USE: &str = r#"
const char linux_banner[] = "Linux version 9.9.9-shapes (cc) #1 SMP\n";
long use(struct block_device *b, struct inode *i, struct file *f, struct fdtable *t,
         struct files_struct *fs, struct super_block *s, struct task_struct *k)
{
    return (long)b + (long)i + (long)f + (long)t + (long)fs + (long)s + (long)k;
}
"#;

    /// An earlier unit that only declares two of the wanted structs.
    const DECLARES: &str = r#"
struct fdtable; struct inode;
long first(struct fdtable *t, struct inode *i) { return (long)t + (long)i; }
"#;

    const PRINT: &str = r#"
#include <stdio.h>
#include <stddef.h>
#define P(s, m) printf(#s "." #m " %zu\n", offsetof(struct s, m))
int main(void) {
    P(block_device, bd_dev); P(task_struct, files); P(files_struct, fdt); P(fdtable, max_fds);
    P(fdtable, fd); P(file, f_inode); P(inode, i_sb); P(super_block, s_dev);
    P(super_block, s_bdev); P(inode, i_mode); P(inode, i_rdev); P(inode, i_ino);
    return 0;
}
"#;

    fn cc(dir: &Path, args: &[&str]) {
        let out = Command::new("cc").current_dir(dir).args(args).output().expect("cc");
        assert!(out.status.success(), "cc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The offsets the compiler itself computes.
    fn offsetof(dir: &Path) -> BTreeMap<String, u64> {
        std::fs::write(dir.join("shapes.h"), SHAPES).unwrap();
        std::fs::write(dir.join("print.c"), format!("#include \"shapes.h\"\n{PRINT}")).unwrap();
        cc(dir, &["-o", "print", "print.c"]);
        let out = Command::new(dir.join("print")).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let map: BTreeMap<String, u64> = text
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect();
        assert_eq!(map.len(), wanted().len());
        map
    }

    /// A shared object of two units (the declaring one first), each `cc -c` with `flags`.
    fn object_with(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
        std::fs::write(dir.join("shapes.h"), SHAPES).unwrap();
        std::fs::write(dir.join("declares.c"), DECLARES).unwrap();
        std::fs::write(dir.join("use.c"), format!("#include \"shapes.h\"\n{USE}")).unwrap();
        for unit in ["declares", "use"] {
            let (src, obj) = (format!("{unit}.c"), format!("{name}-{unit}.o"));
            let mut args = vec!["-c", "-fPIC", "-o", &obj, &src];
            args.extend_from_slice(flags);
            cc(dir, &args);
        }
        // Linked, as vmlinux is: a .o's DWARF still waits for its relocations.
        let (first, second) = (format!("{name}-declares.o"), format!("{name}-use.o"));
        let mut args = vec!["-shared", "-Wl,--build-id=sha1", "-o", name, &first, &second];
        args.extend_from_slice(flags);
        cc(dir, &args);
        dir.join(name)
    }

    #[test]
    fn dwarf_offsets_equal_offsetof_in_every_dwarf_version_and_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let expected = offsetof(dir.path());
        // The fixture must make the reader look through anonymous members, or it tests little.
        assert_ne!(expected["block_device.bd_dev"], 16);
        for (name, flags) in [
            ("v2.so", &["-gdwarf-2"][..]),
            ("v4.so", &["-gdwarf-4"][..]),
            ("v5.so", &["-gdwarf-5"][..]),
            ("v4z.so", &["-gdwarf-4", "-gz=zlib"][..]),
        ] {
            let path = object_with(dir.path(), name, flags);
            let v = Vmlinux::open(&path).unwrap();
            let (members, _) = v.member_offsets().unwrap();
            assert_eq!(members, expected, "{name}");
        }
        let compressed = std::fs::read(dir.path().join("v4z.so")).unwrap();
        let obj = object::File::parse(&compressed[..]).unwrap();
        let info = object::Object::section_by_name(&obj, ".debug_info").unwrap();
        assert!(
            matches!(
                object::ObjectSection::compressed_file_range(&info).unwrap().format,
                object::CompressionFormat::Zlib
            ),
            "-gz made no compressed section: the compressed case is not tested"
        );
    }

    #[test]
    fn a_member_missing_from_the_dwarf_is_left_out_and_a_bitfield_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.c"),
            "struct block_device { int a; unsigned bd_dev: 4; };\n\
             struct inode { int i_sb; };\n\
             long f(struct block_device *b, struct inode *i) { return (long)b + (long)i; }\n",
        )
        .unwrap();
        cc(dir.path(), &["-g", "-c", "s.c", "-o", "s.o"]);
        let data = std::fs::read(dir.path().join("s.o")).unwrap();
        let obj = object::File::parse(&data[..]).unwrap();
        let err = dwarf::member_offsets(&obj, &[BD_DEV]).unwrap_err();
        assert!(format!("{err:#}").contains("relocatable"), "{err:#}");
        cc(dir.path(), &["-shared", "-o", "s.so", "s.o"]);
        let data = std::fs::read(dir.path().join("s.so")).unwrap();
        let obj = object::File::parse(&data[..]).unwrap();
        let got = dwarf::member_offsets(&obj, &[("inode", "i_sb"), ("inode", "i_ino")]).unwrap();
        assert_eq!(got, BTreeMap::from([("inode.i_sb".to_string(), 0)]));
        let err = dwarf::member_offsets(&obj, &[BD_DEV]).unwrap_err();
        assert!(format!("{err:#}").contains("bd_dev is a bitfield"), "{err:#}");
    }

    #[test]
    fn a_stripped_file_has_no_dwarf_to_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = object_with(dir.path(), "nodebug.so", &[]);
        let err = Vmlinux::open(&path).unwrap().member_offsets().unwrap_err();
        assert!(format!("{err:#}").contains("no DWARF"), "{err:#}");
    }

    #[test]
    fn release_and_build_id_are_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = object_with(dir.path(), "v.so", &["-g"]);
        let v = Vmlinux::open(&path).unwrap();
        assert_eq!(v.release().as_deref(), Some("9.9.9-shapes"));
        let readelf = Command::new("readelf").arg("-n").arg(&path).output().unwrap();
        let text = String::from_utf8(readelf.stdout).unwrap();
        let theirs = text.split("Build ID: ").nth(1).unwrap().split_whitespace().next().unwrap();
        assert_eq!(v.build_id().unwrap().as_deref(), Some(theirs));
    }

    #[test]
    fn kernel_notes_give_the_gnu_build_id() {
        let note = |name: &[u8], ty: u32, desc: &[u8]| -> Vec<u8> {
            let mut v = Vec::new();
            v.extend((name.len() as u32).to_ne_bytes());
            v.extend((desc.len() as u32).to_ne_bytes());
            v.extend(ty.to_ne_bytes());
            v.extend(name);
            v.resize(v.len().div_ceil(4) * 4, 0);
            v.extend(desc);
            v.resize(v.len().div_ceil(4) * 4, 0);
            v
        };
        // Xen's and Linux's own notes come first in a real /sys/kernel/notes.
        let mut notes = note(b"Xen\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Linux\0", 1, b"6.1"));
        notes.extend(note(b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef, 0x01]));
        assert_eq!(notes_build_id(&notes).as_deref(), Some("deadbeef01"));
        assert_eq!(notes_build_id(&notes[..notes.len() - 8]), None, "a cut note");
        assert_eq!(notes_build_id(&[]), None);
    }

    #[test]
    fn the_cache_holds_its_keys_and_is_refused_for_other_keys_or_fewer_members() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys { release: "6.1.0-9-amd64".into(), build_id: "abcd".into() };
        let mut members: BTreeMap<String, u64> =
            wanted().iter().enumerate().map(|(i, &(s, m))| (key(s, m), i as u64 * 8)).collect();
        members.remove("inode.i_ino");
        let path = write_cache(dir.path(), &keys, Path::new("/x/vmlinux"), &members).unwrap();
        assert_eq!(path, dir.path().join("offsets-6.1.0-9-amd64-abcd.json"));
        let got = read_cache(&path, &keys).expect("the cache is read back");
        assert_eq!(got.members, members, "a member known missing stays missing");
        assert_eq!(
            got.source,
            Source::Cache { path: path.clone(), vmlinux: PathBuf::from("/x/vmlinux") }
        );
        assert_eq!(got.bd_dev(), Some(0));
        assert_eq!(got.fd_walk(), None, "i_ino is missing");
        let other = Keys { build_id: "abce".into(), ..keys.clone() };
        assert!(read_cache(&path, &other).is_none(), "another build's cache");
        // A cache from a version that wanted fewer members is read again from DWARF.
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        c["missing"] = serde_json::json!([]);
        std::fs::write(&path, c.to_string()).unwrap();
        assert!(read_cache(&path, &keys).is_none());
        std::fs::write(&path, "{").unwrap();
        assert!(read_cache(&path, &keys).is_none(), "a torn file");
    }

    #[test]
    fn debuginfo_of_another_build_is_refused_and_the_running_one_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = object_with(dir.path(), "v.so", &["-g"]);
        let id = Vmlinux::open(&path).unwrap().build_id().unwrap().unwrap();
        let cache = dir.path().join("cache");
        let other = Keys { release: "9.9.9-shapes".into(), build_id: "00".repeat(20) };
        let err = dwarf_for(&path, Some(&other), &cache).unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("build id {id} is not the running")),
            "{err:#}"
        );
        assert!(!cache.exists(), "nothing cached for a refused file");
        let running = Keys { build_id: id, ..other };
        let o = dwarf_for(&path, Some(&running), &cache).unwrap();
        let written = cache_file(&cache, &running);
        assert_eq!(
            o.source,
            Source::Dwarf {
                vmlinux: path.clone(),
                cache: Some(written.clone()),
                cache_error: None
            }
        );
        assert_eq!(read_cache(&written, &running).unwrap().members, o.members);
        assert!(o.fd_walk().is_some());
    }

    #[test]
    fn nothing_found_says_what_to_install_or_pass() {
        let keys = Keys { release: "3.10.0-1160.vz7".into(), build_id: "ab".into() };
        let msg = nothing_found("3.10.0-1160.vz7", Some(&keys), Path::new("/c"), &[]);
        for want in [
            "vzkernel-debuginfo-3.10.0-1160.vz7",
            "kernel-debuginfo-3.10.0-1160.vz7",
            "linux-image-3.10.0-1160.vz7-dbg",
            "--btf FILE",
            "ploop-verify offsets --vmlinux FILE",
            "/c/offsets-3.10.0-1160.vz7-ab.json",
            "/usr/lib/debug/lib/modules/3.10.0-1160.vz7/vmlinux",
        ] {
            assert!(msg.contains(want), "{want:?} not in: {msg}");
        }
        assert_eq!(msg.lines().count(), 1, "one message");
    }
}
