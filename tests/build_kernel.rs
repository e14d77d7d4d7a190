//! `cargo xtask build-kernel`: the patch handling against throwaway trees built from the
//! pre-image of the shipped patch's own hunks (run through the real xtask binary, for its
//! messages and exit statuses), and the modules-only build path against Debian's
//! linux-source-6.1, whose result (the ploop model driver) must load in the 6.1 guest.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Instant, SystemTime},
};

use serde_json::Value;
use xtask::{
    build_kernel::{
        self, Args,
        manifest::{Manifest, Mode},
        sha256_hex,
    },
    initramfs,
    kernels::Kernel,
    vm::Vm,
};

const PATCH: &str = "0001-ploop-Provide-interface-to-pass-freezing-fs-during-s.patch";
/// Ours, on top of 0001: a block device node as sync fd names its own device.
const PATCH2: &str = "0002-ploop-A-block-device-node-as-sync-fd-names-its-own-.patch";

fn repo() -> PathBuf {
    xtask::root()
}

fn shipped_patch() -> String {
    fs::read_to_string(repo().join("kernel-patch").join(PATCH)).expect("the shipped patch")
}

fn shipped_patch2() -> String {
    fs::read_to_string(repo().join("kernel-patch").join(PATCH2)).expect("the shipped 0002")
}

// --- the pre-image of the patch's own hunks -----------------------------------------------

struct Hunk {
    old_start: usize,
    old: Vec<String>,
    new: Vec<String>,
}

/// The hunks of the one file the patch changes, checked against their headers' counts.
fn hunks(patch: &str) -> Vec<Hunk> {
    let mut out: Vec<(usize, usize, usize, Vec<&str>)> = Vec::new();
    let mut in_diff = false;
    for line in patch.lines() {
        if line.starts_with("@@ -") {
            let spec: Vec<usize> = line
                .trim_start_matches("@@ -")
                .split(" @@")
                .next()
                .unwrap()
                .split([',', ' ', '+'])
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            out.push((spec[0], spec[1], spec[3], Vec::new()));
            in_diff = true;
        } else if line == "-- " {
            break;
        } else if in_diff && line.starts_with([' ', '-', '+']) {
            out.last_mut().unwrap().3.push(line);
        }
    }
    out.into_iter()
        .map(|(old_start, old_len, new_len, lines)| {
            let old: Vec<String> =
                lines.iter().filter(|l| !l.starts_with('+')).map(|l| l[1..].to_string()).collect();
            let new: Vec<String> =
                lines.iter().filter(|l| !l.starts_with('-')).map(|l| l[1..].to_string()).collect();
            assert_eq!(old.len(), old_len, "old line count of hunk at {old_start}");
            assert_eq!(new.len(), new_len, "new line count of hunk at {old_start}");
            Hunk { old_start, old, new }
        })
        .collect()
}

/// dev.c as it was before the patch, as far as the hunks tell: their context and '-' lines at
/// their line numbers, numbered filler lines between them.
fn pre_image(hunks: &[Hunk]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for h in hunks {
        while lines.len() < h.old_start - 1 {
            lines.push(format!("/* dev.c line {} */", lines.len() + 1));
        }
        lines.extend(h.old.iter().cloned());
    }
    for _ in 0..5 {
        lines.push(format!("/* dev.c line {} */", lines.len() + 1));
    }
    lines
}

/// The same file after the patch: each hunk's old lines replaced by its new ones.
fn post_image(hunks: &[Hunk]) -> Vec<String> {
    let mut lines = pre_image(hunks);
    for h in hunks.iter().rev() {
        let at = h.old_start - 1;
        lines.splice(at..at + h.old.len(), h.new.iter().cloned());
    }
    lines
}

/// dev.c after the whole series: 0001's post-image with 0002's hunks applied (0002 changes
/// only lines 0001 added, so the fake tree has all of its context).
fn series_post_image(hunks: &[Hunk]) -> Vec<String> {
    let mut lines = post_image(hunks);
    for h in self::hunks(&shipped_patch2()).iter().rev() {
        let at = h.old_start - 1;
        assert_eq!(lines[at..at + h.old.len()], h.old[..], "0002's context at {}", h.old_start);
        lines.splice(at..at + h.old.len(), h.new.iter().cloned());
    }
    lines
}

fn text(lines: &[String]) -> String {
    lines.join("\n") + "\n"
}

/// A throwaway vz7-like tree: top Makefile, drivers/block/ploop/{dev.c,Makefile}.
fn fake_tree(name: &str, dev_c: &str) -> PathBuf {
    let dir = xtask::build_dir()
        .join("build-kernel-tests")
        .join(format!("{name}-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    fs::create_dir_all(dir.join("drivers/block/ploop")).unwrap();
    fs::write(
        dir.join("Makefile"),
        "VERSION = 3\nPATCHLEVEL = 10\nSUBLEVEL = 0\nEXTRAVERSION = -1127.18.2.vz7.163.22\n\
         NAME = Unicycling Gorilla\n",
    )
    .unwrap();
    fs::write(
        dir.join("drivers/block/ploop/Makefile"),
        "obj-$(CONFIG_BLK_DEV_PLOOP) += ploop.o\nploop-objs := dev.o map.o io.o sysfs.o\n",
    )
    .unwrap();
    fs::write(dir.join("drivers/block/ploop/dev.c"), dev_c).unwrap();
    dir
}

/// Every file under `dir` with its sha256, size, mode and mtime.
fn tree_state(dir: &Path) -> BTreeMap<PathBuf, (String, u64, u32, SystemTime)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    (
                        sha256_hex(&fs::read(&p).unwrap()),
                        m.len(),
                        m.permissions().mode(),
                        m.modified().unwrap(),
                    ),
                );
            }
        }
    }
    out
}

// --- the real xtask binary -----------------------------------------------------------------

/// Builds the xtask binary once, in a target dir of its own (`cargo test` holds the lock on
/// `target/`), and returns its path.
fn xtask_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target = xtask::build_dir().join("cargo");
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(repo())
            .args(["build", "--package", "xtask", "--bin", "xtask", "--target-dir"])
            .arg(&target)
            .status()
            .expect("running cargo");
        assert!(st.success(), "building the xtask binary failed");
        target.join("debug/xtask")
    })
    .clone()
}

struct Run {
    code: i32,
    stderr: String,
    secs: f64,
}

fn build_kernel(args: &[&str], path: Option<&Path>) -> Run {
    let mut cmd = Command::new(xtask_bin());
    cmd.arg("build-kernel").args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let t = Instant::now();
    let out = cmd.output().expect("running xtask");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        secs: t.elapsed().as_secs_f64(),
    };
    eprintln!(
        "xtask build-kernel {} -> {} in {:.2}s\n{}",
        args.join(" "),
        run.code,
        run.secs,
        run.stderr
    );
    run
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// --- patch handling ------------------------------------------------------------------------

#[test]
fn shipped_patch_is_git_format_with_consistent_hunks() {
    let p = shipped_patch();
    let first: Vec<&str> = p.lines().take(4).collect();
    assert_eq!(
        first,
        [
            "From 56e1c4d968993c8985bb90d983cb563a43d32010 Mon Sep 17 00:00:00 2001",
            "From: Kirill Tkhai <ktkhai@virtuozzo.com>",
            "Date: Tue, 15 Sep 2020 14:12:20 +0300",
            "Subject: [PATCH] ploop: Provide interface to pass freezing fs during snapshot",
        ]
    );
    assert!(p.contains("\nSigned-off-by: Kirill Tkhai <ktkhai@virtuozzo.com>\n---\n"));
    assert!(p.contains(" 1 file changed, 56 insertions(+), 8 deletions(-)\n"));
    assert!(!p.contains("@@  "), "hunk headers have one space before the context");
    let h = hunks(&p);
    assert_eq!(h.len(), 4);
    let added: usize = h.iter().map(|h| h.new.len()).sum::<usize>();
    let removed: usize = h.iter().map(|h| h.old.len()).sum::<usize>();
    // The diffstat: 56 insertions, 8 deletions (context lines count on both sides).
    assert_eq!(added - removed, 56 - 8);
    let series = fs::read_to_string(repo().join("kernel-patch/series")).unwrap();
    assert_eq!(series.lines().collect::<Vec<_>>(), [PATCH, PATCH2]);
    // 0002: a mail of our own, on top of 0001, the same file.
    let p2 = shipped_patch2();
    assert!(
        p2.starts_with("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n")
    );
    assert!(p2.contains(
        "\nSubject: [PATCH] ploop: A block device node as sync fd names its own device\n"
    ));
    assert!(p2.contains(" 1 file changed, 12 insertions(+)\n"));
    let h2 = hunks(&p2);
    assert_eq!(h2.len(), 1);
    assert_eq!(h2[0].new.len() - h2[0].old.len(), 12);
}

#[test]
fn patch_applies_cleanly_then_is_recognised_as_applied() {
    let h = hunks(&shipped_patch());
    let tree = fake_tree("clean", &text(&pre_image(&h)));
    let before = tree_state(&tree);

    let r = build_kernel(&["--src", s(&tree), "--patch-only"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("applied {PATCH}")), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("applied {PATCH2}")), "{}", r.stderr);
    let dev_c = fs::read_to_string(tree.join("drivers/block/ploop/dev.c")).unwrap();
    assert!(dev_c == text(&series_post_image(&h)), "dev.c is not the post-image");
    assert!(dev_c.contains("*bdev = bdget(inode->i_rdev);"));
    let after = tree_state(&tree);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "no file added (.orig, .rej) or removed"
    );

    let again = build_kernel(&["--src", s(&tree), "--patch-only"], None);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stderr.contains("already applied: skipped"), "{}", again.stderr);
    assert_eq!(tree_state(&tree), after, "an applied series is left alone");
    eprintln!(
        "timing: patch check, clean apply {:.2}s, already applied {:.2}s (process included)",
        r.secs, again.secs
    );
    fs::remove_dir_all(&tree).unwrap();
}

#[test]
fn conflict_names_patch_and_hunk_and_leaves_tree_unchanged() {
    let h = hunks(&shipped_patch());
    let mut pre = pre_image(&h);
    // A context line of hunk #2 (`struct ploop_ctl ctl;` in ploop_snapshot) differs.
    let at = h[1].old_start - 1 + 4;
    assert_eq!(pre[at], "\tstruct ploop_ctl ctl;");
    pre[at] = "\tstruct ploop_ctl ctl = {};".into();
    let tree = fake_tree("conflict", &text(&pre));
    let before = tree_state(&tree);
    let r = build_kernel(&["--src", s(&tree), "--patch-only"], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in [
        "conflict",
        PATCH,
        "drivers/block/ploop/dev.c: hunk #2",
        "@@ -3683,12 +3715,12 @@",
        "the tree is unchanged",
    ] {
        assert!(r.stderr.contains(want), "want {want:?} in:\n{}", r.stderr);
    }
    assert_eq!(tree_state(&tree), before, "the tree changed");
    fs::remove_dir_all(&tree).unwrap();
}

#[test]
fn conflict_in_a_later_patch_undoes_the_earlier_ones() {
    let h = hunks(&shipped_patch());
    let tree = fake_tree("series", &text(&pre_image(&h)));
    let series = tree.with_extension("patches");
    fs::create_dir_all(&series).unwrap();
    fs::write(series.join(PATCH), shipped_patch()).unwrap();
    fs::write(
        series.join("0002-ploop-build-map2.patch"),
        "From 0000000000000000000000000000000000000002 Mon Sep 17 00:00:00 2001\n\
         Subject: [PATCH] ploop: build map2\n---\n\
         diff --git a/drivers/block/ploop/Makefile b/drivers/block/ploop/Makefile\n\
         --- a/drivers/block/ploop/Makefile\n\
         +++ b/drivers/block/ploop/Makefile\n\
         @@ -1,2 +1,2 @@\n \
         obj-$(CONFIG_BLK_DEV_PLOOP) += ploop.o\n\
         -ploop-objs := dev.o map.o io.o\n\
         +ploop-objs := dev.o map.o map2.o io.o\n",
    )
    .unwrap();
    fs::write(
        series.join("series"),
        format!("# two patches\n{PATCH}\n0002-ploop-build-map2.patch -p1\n"),
    )
    .unwrap();
    let before = tree_state(&tree);
    let r = build_kernel(&["--src", s(&tree), "--patches", s(&series), "--patch-only"], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("applied {PATCH}")), "{}", r.stderr);
    for want in [
        "conflict: 0002-ploop-build-map2.patch",
        "drivers/block/ploop/Makefile: hunk #1 `@@ -1,2 +1,2 @@` FAILED",
        "1 earlier patch(es) of the series undone",
    ] {
        assert!(r.stderr.contains(want), "want {want:?} in:\n{}", r.stderr);
    }
    assert_eq!(tree_state(&tree), before, "the tree changed");
    fs::remove_dir_all(&tree).unwrap();
    fs::remove_dir_all(&series).unwrap();
}

#[test]
fn not_a_kernel_tree_is_bad_input() {
    let base = xtask::build_dir()
        .join("build-kernel-tests")
        .join(format!("notree-{}", std::process::id()));
    let empty = base.join("empty");
    fs::create_dir_all(&empty).unwrap();
    let r = build_kernel(&["--src", s(&empty), "--modules-only"], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in ["is not a kernel tree with the ploop driver", "Makefile", "drivers/block/ploop/"] {
        assert!(r.stderr.contains(want), "want {want:?} in:\n{}", r.stderr);
    }

    // A mainline-like tree: a kernel Makefile, but no ploop driver.
    let vanilla = base.join("vanilla");
    fs::create_dir_all(vanilla.join("drivers/block")).unwrap();
    fs::write(vanilla.join("Makefile"), "VERSION = 6\nPATCHLEVEL = 1\n").unwrap();
    let r = build_kernel(&["--src", s(&vanilla)], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("missing: drivers/block/ploop/"), "{}", r.stderr);
    assert!(!r.stderr.contains("top-level kernel Makefile"), "{}", r.stderr);

    let r = build_kernel(&["--src", s(&base.join("nonexistent"))], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is not a directory"), "{}", r.stderr);
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn missing_compiler_is_bad_input_and_touches_nothing() {
    let h = hunks(&shipped_patch());
    let tree = fake_tree("nocc", &text(&pre_image(&h)));
    // A PATH with every tool of a kernel build but the compiler.
    let bin = tree.with_extension("bin");
    fs::create_dir_all(&bin).unwrap();
    for tool in ["make", "patch", "ld", "flex", "bison", "bc", "perl", "sh"] {
        let real = build_kernel::which(tool).unwrap_or_else(|| panic!("{tool} not on PATH"));
        let link = bin.join(tool);
        let _ = fs::remove_file(&link);
        symlink(real, link).unwrap();
    }
    let before = tree_state(&tree);
    let r = build_kernel(&["--src", s(&tree), "--modules-only"], Some(&bin));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no compiler: gcc not found on PATH"), "{}", r.stderr);
    assert!(r.stderr.contains("apt-get install gcc"), "{}", r.stderr);
    assert_eq!(tree_state(&tree), before, "nothing is patched without a compiler");
    fs::remove_dir_all(&tree).unwrap();
    fs::remove_dir_all(&bin).unwrap();
}

// --- BTF ----------------------------------------------------------------------------------

#[test]
fn btf_is_emitted_with_pahole_and_a_vmlinux_without_dwarf_is_reported() {
    let dir =
        xtask::build_dir().join("build-kernel-tests").join(format!("btf-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let c = dir.join("v.c");
    fs::write(
        &c,
        "struct block_device { unsigned int bd_dev; void *bd_holder; };\n\
         int bdev_freeze(struct block_device *b) { return b->bd_dev; }\n",
    )
    .unwrap();
    for (name, flags) in [("vmlinux-dwarf", &["-g"][..]), ("vmlinux-nodwarf", &[][..])] {
        let st = Command::new("gcc")
            .args(flags)
            .arg("-c")
            .arg(&c)
            .arg("-o")
            .arg(dir.join(name))
            .status()
            .expect("gcc");
        assert!(st.success());
    }
    let btf = dir.join("vmlinux.btf");
    build_kernel::emit_btf(&dir.join("vmlinux-dwarf"), &btf).expect("BTF from DWARF");
    let data = fs::read(&btf).unwrap();
    assert_eq!(&data[..2], &[0x9f, 0xeb], "BTF magic");
    assert!(data.windows(11).any(|w| w == b"bdev_freeze"), "the function is in the BTF");
    assert!(data.windows(12).any(|w| w == b"block_device"), "the struct is in the BTF");

    let err = build_kernel::emit_btf(&dir.join("vmlinux-nodwarf"), &btf).unwrap_err();
    assert!(format!("{err:#}").contains("CONFIG_DEBUG_INFO"), "{err:#}");
    assert!(!btf.exists(), "no stale BTF is left");
    fs::remove_dir_all(&dir).unwrap();
}

// --- the build path: Debian's linux-source-6.1 -----------------------------------------------

fn image_version(kernel: &Kernel) -> String {
    xtask::linux_source::image_version(kernel).unwrap_or_else(|e| panic!("{e:#}"))
}

fn sh(script: &str) {
    let st = Command::new("sh").args(["-euc", script]).status().expect("sh");
    assert!(st.success(), "failed: {script}");
}

/// Debian's linux-source-6.1 of `version`, downloaded and unpacked once (xtask::linux_source).
fn linux_source(version: &str) -> PathBuf {
    xtask::linux_source::tree(version).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A copy of the tree (`target/ploop/build-kernel-tests/<name>`) with the ploop model driver
/// at drivers/block/ploop/, kept between runs so that a second run is an incremental build.
/// Each test has its own copy: one tree switched between configs would rebuild everything.
fn work_tree(pristine: &Path, version: &str, name: &str) -> PathBuf {
    let dir = xtask::build_dir().join("build-kernel-tests").join(name);
    let tree = dir.join(format!("linux-source-{version}"));
    if !dir.join(format!(".copied-{version}")).exists() {
        let t = Instant::now();
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("cp").arg("-a").arg(pristine).arg(&tree).status().unwrap();
        assert!(st.success());
        fs::write(dir.join(format!(".copied-{version}")), "").unwrap();
        eprintln!("copied the tree in {:.1}s", t.elapsed().as_secs_f64());
    }
    let ploop = tree.join("drivers/block/ploop");
    fs::create_dir_all(&ploop).unwrap();
    let model = repo().join("tests/ploop-model");
    // A source the model no longer has (ploop_model.c became dev.c, ...) and the old .ko
    // files go: kbuild links the .ko files again, and only the model's modules are found.
    for e in fs::read_dir(&ploop).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        let stale =
            p.extension().is_some_and(|x| x == "c" || x == "h") && !model.join(name).exists();
        if stale || p.extension().is_some_and(|x| x == "ko") {
            fs::remove_file(&p).unwrap();
        }
    }
    // The sources and the model's own Kbuild (ploop.ko from dev.c, fmt_*.c, ...).
    for e in fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "c" || x == "h")
            || p.file_name().is_some_and(|n| n == "Kbuild")
        {
            let dst = ploop.join(p.file_name().unwrap());
            let data = fs::read(&p).unwrap();
            // Only what changed, so that kbuild rebuilds only what it must.
            if fs::read(&dst).ok() != Some(data.clone()) {
                fs::write(&dst, data).unwrap();
            }
        }
    }
    tree
}

#[test]
fn modules_only_build_of_the_model_driver_loads_in_debian_6_1() {
    let kernel = Kernel::resolve("6.1").expect("the 6.1 guest kernel (scripts/setup.sh)");
    let headers = kernel.headers.clone().expect("6.1 headers");
    let version = image_version(&kernel);
    let tree = work_tree(&linux_source(&version), &version, "linux-6.1");
    let out_dir = xtask::build_dir().join("build-kernel-tests/linux-6.1/out");
    let guest = "set -e\n\
                 grep '^ploop ' /proc/modules\n\
                 lsmod | grep -q '^ploop ' && echo lsmod-lists-ploop\n\
                 test -b /dev/ploop0 && echo dev-ploop0-is-a-block-device\n\
                 echo patched=$(cat /sys/module/ploop/parameters/patched)\n";
    let config = headers.join(".config");
    let symvers = headers.join("Module.symvers");
    let argv = [
        "build-kernel",
        "--src",
        s(&tree),
        "--modules-only",
        "--no-patches",
        "--config",
        s(&config),
        "--kernelrelease",
        &kernel.release,
        "--symvers",
        s(&symvers),
        "--jobs",
        "2",
        "--out",
        s(&out_dir),
        "--boot",
        "--boot-kernel",
        "6.1",
        "--boot-command",
        guest,
    ];
    let (built, total) = build_timed(&argv);
    assert_eq!(built.release.as_deref(), Some(kernel.release.as_str()));
    assert_eq!(built.modules.len(), 1, "{:?}", built.modules);
    let ko = &built.modules[0];
    assert_eq!(ko.file_name().unwrap(), "ploop.ko");

    // vermagic as the Debian kernel's own modules have it.
    let theirs = initramfs::read_module(&kernel.modules.join("kernel/drivers/block/loop.ko"))
        .or_else(|_| {
            initramfs::read_module(&kernel.modules.join("kernel/drivers/block/loop.ko.xz"))
        })
        .expect("loop.ko of the 6.1 kernel");
    let ours = initramfs::read_module(ko).unwrap();
    assert_eq!(
        initramfs::modinfo(&ours, "vermagic").unwrap(),
        initramfs::modinfo(&theirs, "vermagic").unwrap()
    );

    // The manifest.
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(built.manifest.as_ref().unwrap()).unwrap())
            .unwrap();
    let typed: Manifest = serde_json::from_value(manifest.clone()).expect("a typed Manifest");
    assert_eq!((typed.mode, typed.artifacts.modules), (Mode::ModulesOnly, built.modules.clone()));
    assert_eq!(manifest["kernelrelease"], kernel.release.as_str());
    assert_eq!(manifest["mode"], "modules-only");
    assert_eq!(manifest["patches"], serde_json::json!([]));
    assert_eq!(
        manifest["config"]["sha256"],
        sha256_hex(&fs::read(tree.join(".config")).unwrap()).as_str()
    );
    assert_eq!(manifest["artifacts"]["modules"][0], s(ko));
    assert!(out_dir.join("build.log").is_file());

    // The guest: the module loaded, no kernel BUG/WARNING, no modversions complaint.
    let boot = built.boot.as_ref().expect("the guest ran");
    assert_eq!(boot.status, Some(0), "guest output:\n{}", boot.stdout);
    for want in ["ploop ", "lsmod-lists-ploop", "dev-ploop0-is-a-block-device", "patched=Y"] {
        assert!(boot.stdout.contains(want), "want {want:?}:\n{}", boot.stdout);
    }
    assert!(boot.kernel_problems().is_empty(), "kernel log: {:?}", boot.kernel_problems());
    for bad in ["disagrees about version", "Invalid module format", "insmod"] {
        assert!(
            !boot.console.lines().any(|l| l.contains(bad)),
            "{bad:?} in the console:\n{}",
            xtask::vm::tail(&boot.console, 40)
        );
    }
    eprintln!(
        "timing: modules-only build + boot {total:.1}s; build steps {}",
        manifest["timings_s"]
    );
}

/// `make tinyconfig` plus tests/build_kernel/guest-6.1.config, made once in `tree` and kept
/// beside it (named by the fragment's hash, so an edited fragment makes a new one).
fn guest_config(tree: &Path) -> PathBuf {
    let fragment = repo().join("tests/build_kernel/guest-6.1.config");
    let frag = fs::read_to_string(&fragment).unwrap();
    let out =
        tree.parent().unwrap().join(format!("guest-{}.config", &sha256_hex(frag.as_bytes())[..16]));
    if !out.exists() {
        sh(&format!(
            "cd '{}' && make -s tinyconfig >/dev/null && \
             ./scripts/kconfig/merge_config.sh -m .config '{}' >/dev/null && \
             make -s olddefconfig",
            tree.display(),
            fragment.display()
        ));
        let config = fs::read_to_string(tree.join(".config")).unwrap();
        let missing: Vec<&str> = frag
            .lines()
            .filter(|l| l.starts_with("CONFIG_") && !config.lines().any(|c| c == *l))
            .collect();
        assert!(
            missing.is_empty(),
            "options the fragment asks for but kconfig dropped: {missing:?}"
        );
        fs::write(&out, config).unwrap();
    }
    out
}

/// The full-build path (bzImage, modules, modules_install, BTF, boot of the built kernel) on
/// a small config: a distribution config takes hours on CI's 2 cores, this one minutes. The
/// kernel has kprobes and BPF but no BTF of its own, as vz7: ploop-verify runs with the
/// vmlinux.btf that build-kernel made with pahole.
#[test]
fn full_build_of_a_small_6_1_kernel_boots_with_its_module_and_btf() {
    let kernel = Kernel::resolve("6.1").expect("the 6.1 guest kernel (scripts/setup.sh)");
    let version = image_version(&kernel);
    let tree = work_tree(&linux_source(&version), &version, "linux-6.1-full");
    // Wire the model into the kernel's own build, as vz7's drivers/block/Makefile does ploop.
    let block_mk = tree.join("drivers/block/Makefile");
    let mk = fs::read_to_string(&block_mk).unwrap();
    if !mk.lines().any(|l| l == "obj-m += ploop/") {
        fs::write(&block_mk, mk + "obj-m += ploop/\n").unwrap();
    }
    let config = guest_config(&tree);
    let out_dir = xtask::build_dir().join("build-kernel-tests/linux-6.1-full/out");
    let guest = "set -e\n\
                 grep '^ploop ' /proc/modules\n\
                 test -b /dev/ploop0 && echo dev-ploop0-is-a-block-device\n\
                 test ! -e /sys/kernel/btf/vmlinux && echo no-kernel-btf\n\
                 rc=0; ploop-verify --btf vmlinux.btf doctor --json > doctor.json || rc=$?\n\
                 echo doctor-rc=$rc\n";
    let argv = [
        "build-kernel",
        "--src",
        s(&tree),
        "--no-patches",
        "--config",
        s(&config),
        "--jobs",
        "2",
        "--out",
        s(&out_dir),
        "--boot",
        "--boot-command",
        guest,
    ];
    let (built, total) = build_timed(&argv);
    let release = built.release.clone().unwrap();
    assert!(release.starts_with("6.1."), "{release}");
    let image = built.image.as_ref().expect("a bzImage");
    assert!(image.metadata().unwrap().len() > 1 << 20, "bzImage too small");
    let mods = built.modules_dir.as_ref().expect("modules_install tree");
    assert!(mods.ends_with(format!("lib/modules/{release}")));
    assert!(mods.join("kernel/drivers/block/ploop/ploop.ko").is_file());
    assert!(mods.join("modules.dep").is_file());
    let btf = built.btf.as_ref().expect("vmlinux.btf");
    assert_eq!(&fs::read(btf).unwrap()[..2], &[0x9f, 0xeb]);

    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(built.manifest.as_ref().unwrap()).unwrap())
            .unwrap();
    let typed: Manifest = serde_json::from_value(manifest.clone()).expect("a typed Manifest");
    assert_eq!((typed.mode, typed.artifacts.vmlinux_btf), (Mode::Full, built.btf.clone()));
    assert_eq!(manifest["mode"], "full");
    assert_eq!(manifest["kernelrelease"], release.as_str());
    assert_eq!(manifest["artifacts"]["bzImage"], s(image));
    assert_eq!(manifest["artifacts"]["vmlinux_btf"], s(btf));

    let boot = built.boot.as_ref().expect("the guest ran");
    assert_eq!(boot.status, Some(0), "guest output:\n{}", boot.stdout);
    for want in ["ploop ", "dev-ploop0-is-a-block-device", "no-kernel-btf"] {
        assert!(boot.stdout.contains(want), "want {want:?}:\n{}", boot.stdout);
    }
    assert!(boot.kernel_problems().is_empty(), "kernel log: {:?}", boot.kernel_problems());
    // ploop-verify found what it needs in the BTF file: the offset of bd_dev and kprobes.
    let doctor: Value = serde_json::from_str(
        &fs::read_to_string(boot.share.join("doctor.json")).expect("doctor.json"),
    )
    .unwrap_or_else(|e| panic!("doctor --json: {e}; guest output:\n{}", boot.stdout));
    assert!(
        doctor["capabilities"]["bd_dev_offset"].is_u64(),
        "bd_dev offset from the BTF file: {}",
        doctor["capabilities"]
    );
    assert!(
        doctor["capabilities"]["kprobe"].get("Ok").is_some(),
        "kprobe: {}",
        doctor["capabilities"]["kprobe"]
    );
    eprintln!(
        "timing: full build (small config) + boot {total:.1}s; build steps {}",
        manifest["timings_s"]
    );
    offsets_from_dwarf_equal_btf_and_serve_a_kernel_without_btf(&tree, btf, image, mods);
}

/// Issue 21: the offsets `ploop-verify offsets` reads from the built vmlinux's DWARF equal
/// those of the BTF pahole made from it; booted with only that cache (no kernel BTF, no
/// --btf), doctor takes them from the cache and plans kprobes, not fentry.
fn offsets_from_dwarf_equal_btf_and_serve_a_kernel_without_btf(
    tree: &Path,
    btf: &Path,
    image: &Path,
    mods: &Path,
) {
    use ploop_user::offsets::{self, Offsets};
    let vmlinux = tree.join("vmlinux");
    let cache = xtask::build_dir().join("build-kernel-tests/offsets-cache");
    let _ = fs::remove_dir_all(&cache);
    let bin = xtask::build::ploop_verify_static().expect("the static ploop-verify");
    let t = Instant::now();
    let out = Command::new(&bin)
        .args(["offsets", "--json", "--vmlinux"])
        .arg(&vmlinux)
        .env("PLOOP_VERIFY_CACHE", &cache)
        .output()
        .expect("ploop-verify offsets");
    let wall = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "offsets: {}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let from_dwarf: BTreeMap<String, u64> = serde_json::from_value(got["members"].clone()).unwrap();
    let from_btf = Offsets::from_btf(btf).expect("the BTF pahole made");
    assert_eq!(from_btf.members.len(), offsets::wanted().len(), "BTF lacks members");
    assert_eq!(from_dwarf, from_btf.members, "DWARF and BTF offsets of the same kernel");
    let cache_file = PathBuf::from(got["cache"].as_str().unwrap());
    eprintln!(
        "timing: DWARF offsets of {} ({} MB): read {:.3}s, command {wall:.2}s; cache {} bytes",
        vmlinux.display(),
        vmlinux.metadata().unwrap().len() >> 20,
        got["dwarf_read_s"].as_f64().unwrap(),
        got["cache_bytes"]
    );

    let kernel = Kernel::custom(image, mods).unwrap();
    let guest = "set -e
                 test ! -e /sys/kernel/btf/vmlinux && echo no-kernel-btf
                 mkdir -p /var/cache/ploop-verify && cp offsets-*.json /var/cache/ploop-verify/
                 rc=0; ploop-verify doctor --json > doctor-dwarf.json || rc=$?
                 echo doctor-rc=$rc
";
    let vm = Vm::with_ploop_verify(kernel, &[], guest).unwrap();
    let boot = vm
        .run_with(|share| {
            fs::copy(&cache_file, share.join(cache_file.file_name().unwrap()))?;
            Ok(())
        })
        .unwrap();
    assert_eq!(boot.status, Some(0), "guest output:\n{}", boot.stdout);
    for want in ["no-kernel-btf", "doctor-rc=0"] {
        assert!(boot.stdout.contains(want), "want {want:?}:\n{}", boot.stdout);
    }
    let doctor: Value =
        serde_json::from_str(&fs::read_to_string(boot.share.join("doctor-dwarf.json")).unwrap())
            .unwrap();
    let caps = &doctor["capabilities"];
    assert_eq!(caps["offsets_source"]["kind"], "cache", "{caps}");
    assert_eq!(caps["bd_dev_offset"], from_btf.members["block_device.bd_dev"], "{caps}");
    assert!(caps["fd_walk"].is_array(), "{caps}");
    let plan = &doctor["plan"];
    assert_eq!(plan["offsets"]["kind"], "cache", "{doctor}");
    assert_eq!(plan["method"], "kprobe", "no BTF, so no fentry: {doctor}");
    assert!(plan["btf"].is_null(), "{plan}");
}

/// Runs build-kernel in-process with `argv`; panics with its exit status on failure.
fn build_timed(argv: &[&str]) -> (build_kernel::Built, f64) {
    let args = Args::parse_from_argv(argv).expect("arguments");
    let t = Instant::now();
    match build_kernel::run(&args) {
        Ok(b) => (b, t.elapsed().as_secs_f64()),
        Err(e) => panic!("build-kernel failed with status {}: {e}", e.exit_code()),
    }
}
