//! Where tracefs is. Kernels since 4.1 mount it at `/sys/kernel/tracing`; 3.10 (vz7) has it
//! only as `tracing` inside debugfs, which must be mounted first. The ioctl tracepoints
//! always need it (aya reads each tracepoint's id there), and kprobes do where there is no
//! kprobe PMU (before 4.17: aya writes `kprobe_events` there).
//!
//! aya 0.16 looks at `/sys/kernel/tracing`, then `/sys/kernel/debug/tracing`, once per
//! process, taking the first that is a non-empty directory: [`ensure`] must run before the
//! first attach, and uses the same test.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// Under the root directory, so that tests can build a fake one.
const TRACING: &str = "sys/kernel/tracing";
const DEBUGFS: &str = "sys/kernel/debug";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracefs {
    /// Mounted here.
    At(PathBuf),
    /// Not mounted, but debugfs can be, here, and brings it.
    Unmounted { debugfs: PathBuf },
    /// Neither, nor a place to mount debugfs.
    Missing,
}

/// aya's test: the directory exists and has an entry (an unmounted mount point is empty).
fn populated(dir: &Path) -> bool {
    dir.read_dir().is_ok_and(|mut d| d.next().is_some())
}

/// Where tracefs is under `root` (`/` outside tests), in aya's order.
pub fn find(root: &Path) -> Tracefs {
    let debugfs = root.join(DEBUGFS);
    let under_debugfs = debugfs.join("tracing");
    for dir in [root.join(TRACING), under_debugfs] {
        if populated(&dir) {
            return Tracefs::At(dir);
        }
    }
    // An empty debugfs mount point: debugfs is not mounted (mounted, it has `tracing` on
    // every kernel with ftrace).
    if debugfs.is_dir() && !populated(&debugfs) {
        return Tracefs::Unmounted { debugfs };
    }
    Tracefs::Missing
}

/// tracefs' directory, mounting debugfs when that is what it takes (saying so on stderr);
/// `None` when there is none. Decided once: aya decides once too.
pub fn ensure() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| match find(Path::new("/")) {
        Tracefs::At(dir) => Some(dir),
        Tracefs::Unmounted { debugfs } => {
            let mounted = nix::mount::mount(
                Some("debugfs"),
                &debugfs,
                Some("debugfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
            match (mounted, find(Path::new("/"))) {
                (Ok(()), Tracefs::At(dir)) => {
                    eprintln!(
                        "ploop-verify: no tracefs at /{TRACING}: mounted debugfs on {} for {}",
                        debugfs.display(),
                        dir.display()
                    );
                    Some(dir)
                }
                (Ok(()), _) => {
                    eprintln!(
                        "ploop-verify: mounted debugfs on {}, but it has no tracing directory \
                         (a kernel without ftrace?)",
                        debugfs.display()
                    );
                    None
                }
                (Err(e), _) => {
                    eprintln!(
                        "ploop-verify: no tracefs at /{TRACING}, and mounting debugfs on {} \
                         failed: {e}",
                        debugfs.display()
                    );
                    None
                }
            }
        }
        Tracefs::Missing => None,
    })
    .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dirs: &[&str], files: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        for f in files {
            let p = root.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        root
    }

    #[test]
    fn sys_kernel_tracing_first() {
        let r = root(
            &[],
            &["sys/kernel/tracing/kprobe_events", "sys/kernel/debug/tracing/kprobe_events"],
        );
        assert_eq!(find(r.path()), Tracefs::At(r.path().join("sys/kernel/tracing")));
    }

    /// 3.10: no tracefs of its own; with debugfs mounted, it is there.
    #[test]
    fn under_debugfs_where_sys_kernel_tracing_is_absent_or_empty() {
        let r = root(&[], &["sys/kernel/debug/tracing/kprobe_events"]);
        assert_eq!(find(r.path()), Tracefs::At(r.path().join("sys/kernel/debug/tracing")));
        // An empty mount point is not tracefs (a kernel that made the directory, unmounted).
        let r = root(&["sys/kernel/tracing"], &["sys/kernel/debug/tracing/trace"]);
        assert_eq!(find(r.path()), Tracefs::At(r.path().join("sys/kernel/debug/tracing")));
    }

    #[test]
    fn an_empty_debugfs_mount_point_is_to_be_mounted() {
        let r = root(&["sys/kernel/debug"], &[]);
        assert_eq!(
            find(r.path()),
            Tracefs::Unmounted { debugfs: r.path().join("sys/kernel/debug") }
        );
        // debugfs mounted, but no tracing in it: nothing to mount, nothing to use.
        let r = root(&["sys/kernel/tracing"], &["sys/kernel/debug/dri/0/name"]);
        assert_eq!(find(r.path()), Tracefs::Missing);
        let r = root(&["sys/kernel"], &[]);
        assert_eq!(find(r.path()), Tracefs::Missing);
    }
}
