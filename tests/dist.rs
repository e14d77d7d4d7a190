//! `cargo xtask dist`: the packages are built, unpacked and inspected the way a user and a
//! package manager see them, and the packed binary runs.
//!
//! Needs what scripts/setup.sh installs: cargo-deb, cargo-generate-rpm, Debian's rpm (for
//! `rpm -qp`, `rpm2cpio`), file.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

fn out(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    o
}

fn text(cmd: &mut Command) -> String {
    String::from_utf8(out(cmd).stdout).unwrap()
}

fn sh(script: &str) -> String {
    text(Command::new("sh").args(["-euc", script]))
}

/// `rpmlib(...)` features rpm 4.11 (RHEL 7, vz7) provides (its lib/rpmds.c rpmlibProvides):
/// an RPM requiring any other (PayloadIsZstd, RichDependencies, LargeFiles, ...) will not
/// install there.
const RPM_4_11_RPMLIB: &[&str] = &[
    "BuiltinLuaScripts",
    "CompressedFileNames",
    "ConcurrentAccess",
    "ExplicitPackageProvide",
    "FileCaps",
    "FileDigests",
    "HeaderLoadSortsTags",
    "PartialHardlinkSets",
    "PayloadFilesHavePrefix",
    "PayloadIsBzip2",
    "PayloadIsLzma",
    "PayloadIsXz",
    "ScriptletExpansion",
    "ScriptletInterpreterArgs",
    "TildeInVersions",
    "VersionedDependencies",
];

/// What every package installs: the binary and its documents.
fn expected_files(root: &Path) -> BTreeSet<String> {
    let mut files: BTreeSet<String> =
        ["/usr/bin/ploop-verify", "/usr/share/doc/ploop-verify/README.md"].map(String::from).into();
    for e in fs::read_dir(root.join("kernel-patch")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        files.insert(format!("/usr/share/doc/ploop-verify/kernel-patch/{name}"));
    }
    files
}

/// The packed binary is static: `file` and `ldd` both say so.
fn assert_static(bin: &Path) {
    let f = text(Command::new("file").arg("-b").arg(bin));
    assert!(f.contains("ELF 64-bit") && f.contains("x86-64"), "{f}");
    assert!(f.contains("statically linked") || f.contains("static-pie linked"), "{f}");
    // ldd exits 1 for a static binary, saying so.
    let l = Command::new("ldd").arg(bin).output().unwrap();
    let l = String::from_utf8_lossy(&l.stdout).into_owned() + &String::from_utf8_lossy(&l.stderr);
    assert!(l.contains("not a dynamic executable") || l.contains("statically linked"), "ldd: {l}");
    assert!(!l.contains("=>"), "shared libraries: {l}");
}

fn sha256(p: &Path) -> String {
    sh(&format!("sha256sum '{}'", p.display()))[..64].to_string()
}

#[test]
fn dist_builds_a_tarball_an_rpm_for_rhel7_and_a_deb_that_run() {
    let root = xtask::root();
    let dir: PathBuf = xtask::build_dir().join("dist-test");
    let _ = fs::remove_dir_all(&dir);
    let t = Instant::now();
    let d = xtask::dist::dist(&dir.join("out")).expect("cargo xtask dist");
    eprintln!("dist took {:.1}s", t.elapsed().as_secs_f64());
    let version = xtask::dist::VERSION;
    for p in [&d.tarball, &d.rpm, &d.deb] {
        eprintln!("{}: {} bytes", p.display(), fs::metadata(p).unwrap().len());
    }
    // The sums of the three packages check.
    sh(&format!("cd '{}' && sha256sum -c --strict SHA256SUMS", d.sums.parent().unwrap().display()));
    assert_eq!(fs::read_to_string(&d.sums).unwrap().lines().count(), 3);

    // The tarball: versioned top directory, its own SHA256SUMS, README and the series.
    let unpacked = dir.join("tar");
    fs::create_dir_all(&unpacked).unwrap();
    out(Command::new("tar").arg("-xzf").arg(&d.tarball).arg("-C").arg(&unpacked));
    let top = unpacked.join(xtask::dist::tar_stem());
    assert!(top.to_str().unwrap().contains(version));
    let sums = sh(&format!("cd '{}' && sha256sum -c --strict SHA256SUMS", top.display()));
    let mut listed: BTreeSet<String> =
        sums.lines().map(|l| l.trim_end_matches(": OK").to_string()).collect();
    let mut wanted: BTreeSet<String> = expected_files(&root)
        .iter()
        .map(|f| {
            f.trim_start_matches("/usr/share/doc/ploop-verify/")
                .trim_start_matches("/usr/bin/")
                .to_string()
        })
        .collect();
    assert_eq!(listed, wanted, "the tarball's SHA256SUMS covers exactly its files");
    listed.insert("SHA256SUMS".into());
    wanted = sh(&format!("cd '{}' && find . -type f | sed 's|^./||'", top.display()))
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(listed, wanted, "nothing else in the tarball");
    let bin = top.join("ploop-verify");
    assert_static(&bin);

    // --version: the version, this checkout's commit, the aya Cargo.lock resolved.
    let head = sh(&format!("git -C '{}' rev-parse HEAD", root.display()));
    let lock = fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let aya = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"aya\"\n"))
        .and_then(|p| p.split("version = \"").nth(1))
        .and_then(|v| v.split('"').next())
        .unwrap();
    let v = text(Command::new(&bin).arg("--version"));
    assert_eq!(v.trim(), format!("ploop-verify {version} (commit {}, aya {aya})", head.trim()));

    // doctor runs anywhere, prints its findings and plan, and its status says whether a
    // plan exists (this host may lack kprobes or root: then 2 and the reason).
    let doc = Command::new(&bin).arg("doctor").output().unwrap();
    let stdout = String::from_utf8_lossy(&doc.stdout);
    eprintln!("doctor ({}):\n{stdout}{}", doc.status, String::from_utf8_lossy(&doc.stderr));
    for want in ["kernel ", "capabilities:", "  kprobe ", "symbols:", "plan: "] {
        assert!(stdout.contains(want), "doctor printed no {want:?}:\n{stdout}");
    }
    let no_plan = stdout.contains("plan: none: ");
    assert_eq!(doc.status.code(), Some(if no_plan { 2 } else { 0 }), "{stdout}");

    // The RPM: what RHEL 7's rpm 4.11 can install.
    let q = |fmt: &str| text(Command::new("rpm").args(["-qp", "--qf", fmt]).arg(&d.rpm));
    assert_eq!(
        q("%{NAME} %{VERSION} %{RELEASE} %{ARCH}"),
        format!("ploop-verify {version} 1 x86_64")
    );
    assert_eq!(q("%{PAYLOADFORMAT}"), "cpio");
    let compressor = q("%{PAYLOADCOMPRESSOR}");
    assert!(
        ["gzip", "xz"].contains(&compressor.as_str()),
        "payload {compressor}: rpm 4.11 reads gzip and xz"
    );
    // File digests: MD5 (1) or SHA-256 (8), both known to 4.11.
    let algo = q("%{FILEDIGESTALGO}");
    assert!(["1", "8", "(none)"].contains(&algo.as_str()), "file digest algorithm {algo}");
    let requires = text(Command::new("rpm").args(["-qp", "--requires"]).arg(&d.rpm));
    for r in requires.lines() {
        let feature = r
            .strip_prefix("rpmlib(")
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("a dependency beyond rpm itself: {r}"));
        assert!(RPM_4_11_RPMLIB.contains(&feature), "rpm 4.11 lacks rpmlib({feature})");
    }
    // rpm 4.11 checks the header by its SHA1 digest (it knows no SHA256 one; it ignores the
    // payload's, and checks no MD5 that is absent): the SHA1 must be there and good.
    let k = text(Command::new("rpm").args(["-Kv", "--nosignature"]).arg(&d.rpm));
    assert!(k.contains("Header SHA1 digest: OK"), "rpm -Kv:\n{k}");
    assert!(!k.contains("BAD") && !k.contains("NOT OK"), "rpm -Kv:\n{k}");
    let rpm_files: BTreeSet<String> =
        text(Command::new("rpm").args(["-qpl"]).arg(&d.rpm)).lines().map(String::from).collect();
    assert_eq!(rpm_files, expected_files(&root), "rpm -qpl");
    let rpm_root = dir.join("rpm");
    fs::create_dir_all(&rpm_root).unwrap();
    sh(&format!(
        "cd '{}' && rpm2cpio '{}' | cpio -idm --quiet",
        rpm_root.display(),
        d.rpm.display()
    ));
    let rpm_bin = rpm_root.join("usr/bin/ploop-verify");
    assert_eq!(sha256(&rpm_bin), sha256(&bin), "the RPM packs the tarball's binary");
    assert_eq!(sh(&format!("stat -c %a '{}'", rpm_bin.display())).trim(), "755");

    // The .deb.
    let info = text(Command::new("dpkg-deb").arg("-I").arg(&d.deb));
    let field =
        |f: &str| text(Command::new("dpkg-deb").args(["-f"]).arg(&d.deb).arg(f)).trim().to_string();
    assert_eq!(field("Package"), "ploop-verify", "{info}");
    assert_eq!(field("Architecture"), "amd64", "{info}");
    assert_eq!(field("Version"), format!("{version}-1"), "{info}");
    assert_eq!(field("Depends"), "", "no dependencies: {info}");
    let listing = text(Command::new("dpkg-deb").arg("-c").arg(&d.deb));
    let deb_files: BTreeSet<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|f| f.trim_start_matches('.').to_string())
        .filter(|f| !f.starts_with("/usr/share/doc/ploop-verify/copyright"))
        .collect();
    assert_eq!(deb_files, expected_files(&root), "dpkg-deb -c:\n{listing}");
    let deb_root = dir.join("deb");
    out(Command::new("dpkg-deb").arg("-x").arg(&d.deb).arg(&deb_root));
    let deb_bin = deb_root.join("usr/bin/ploop-verify");
    assert_eq!(sha256(&deb_bin), sha256(&bin), "the .deb packs the tarball's binary");
    assert_static(&deb_bin);

    fs::remove_dir_all(&dir).unwrap();
}
