//! Step 3: the patch series, applied with GNU patch, or recognised as applied, or undone.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::SystemTime,
};

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize};

use super::{Error, bad, say, sha256_hex, which};

/// What happened to one patch of the series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchStatus {
    Applied,
    AlreadyApplied,
}

#[derive(Clone, Debug)]
pub struct PatchResult {
    pub name: String,
    pub path: PathBuf,
    /// The commit id of the patch's `From <sha> Mon Sep 17 ...` line, if it has one.
    pub from: Option<String>,
    pub subject: Option<String>,
    /// sha256 of the patch file.
    pub sha256: String,
    pub status: PatchStatus,
}

/// One patch of a series file, parsed.
#[derive(Clone, Debug)]
pub struct Patch {
    pub name: String,
    pub path: PathBuf,
    pub strip: u32,
    pub from: Option<String>,
    pub subject: Option<String>,
    pub sha256: String,
    /// Files the patch touches (after stripping), with their hunk headers in order.
    pub files: Vec<(String, Vec<String>)>,
}

/// Reads `dir/series` and the patches it names.
pub fn read_series(dir: &Path) -> Result<Vec<Patch>, Error> {
    let series = dir.join("series");
    let text = fs::read_to_string(&series)
        .with_context(|| format!("reading the series file {}", series.display()))
        .map_err(bad)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let strip =
            words.find_map(|w| w.strip_prefix("-p").and_then(|n| n.parse().ok())).unwrap_or(1);
        let path = dir.join(name);
        let bytes = fs::read(&path)
            .with_context(|| format!("{}: patch named in {}", path.display(), series.display()))
            .map_err(bad)?;
        out.push(parse_patch(name, &path, strip, &bytes));
    }
    if out.is_empty() {
        return Err(bad(anyhow!("{} names no patch", series.display())));
    }
    Ok(out)
}

fn parse_patch(name: &str, path: &Path, strip: u32, bytes: &[u8]) -> Patch {
    let text = String::from_utf8_lossy(bytes);
    let mut from = None;
    let mut subject = None;
    let mut files: Vec<(String, Vec<String>)> = Vec::new();
    let mut old_name: Option<String> = None;
    for line in text.lines() {
        if from.is_none()
            && files.is_empty()
            && let Some(rest) = line.strip_prefix("From ")
        {
            let sha = rest.split_whitespace().next().unwrap_or("");
            if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                from = Some(sha.to_string());
            }
        }
        if subject.is_none()
            && files.is_empty()
            && let Some(s) = line.strip_prefix("Subject: ")
        {
            subject = Some(s.trim_start_matches("[PATCH] ").to_string());
        }
        if let Some(f) = line.strip_prefix("--- ") {
            old_name = Some(f.split('\t').next().unwrap_or(f).to_string());
        } else if let Some(f) = line.strip_prefix("+++ ") {
            let new = f.split('\t').next().unwrap_or(f).to_string();
            let pick = if new == "/dev/null" { old_name.take().unwrap_or(new) } else { new };
            files.push((strip_path(&pick, strip), Vec::new()));
        } else if line.starts_with("@@ ")
            && let Some(f) = files.last_mut()
        {
            f.1.push(line.to_string());
        }
    }
    Patch {
        name: name.to_string(),
        path: path.to_path_buf(),
        strip,
        from,
        subject,
        sha256: sha256_hex(bytes),
        files,
    }
}

fn strip_path(p: &str, n: u32) -> String {
    let mut s = p;
    for _ in 0..n {
        match s.split_once('/') {
            Some((_, rest)) => s = rest,
            None => break,
        }
    }
    s.to_string()
}

/// Runs GNU patch in `src`; returns (success, output).
fn run_patch(src: &Path, p: &Patch, reverse: bool, dry: bool) -> Result<(bool, String), Error> {
    let mut cmd = Command::new("patch");
    cmd.current_dir(src)
        .env("LC_ALL", "C")
        .arg(format!("-p{}", p.strip))
        // Never ask; take the patch as forward (the reverse check is a separate run).
        .arg("--force")
        // Offsets are fine, fuzz is not: a hunk whose context differs is a conflict.
        .arg("--fuzz=0")
        .arg("--no-backup-if-mismatch")
        .arg("--reject-file=-")
        .arg("--input")
        .arg(&p.path)
        .stdin(Stdio::null());
    if reverse {
        cmd.arg("--reverse");
    }
    if dry {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().context("running patch (apt-get install patch)").map_err(bad)?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// A file's bytes, permissions and mtime.
type Saved = (Vec<u8>, fs::Permissions, SystemTime);

/// The files of a series, saved so that a failed series can be undone exactly.
struct Snapshot {
    files: Vec<(PathBuf, Option<Saved>)>,
    dirs: Vec<PathBuf>,
}

impl Snapshot {
    fn take(src: &Path, patches: &[Patch]) -> Result<Self, Error> {
        let mut names = BTreeSet::new();
        for p in patches {
            for (f, _) in &p.files {
                names.insert(f.clone());
            }
        }
        let mut files = Vec::new();
        let mut dirs = BTreeSet::new();
        for n in names {
            let path = src.join(&n);
            let saved = match fs::symlink_metadata(&path) {
                Ok(m) => Some((
                    fs::read(&path).map_err(bad)?,
                    m.permissions(),
                    m.modified().map_err(bad)?,
                )),
                Err(_) => {
                    let mut d = path.parent();
                    while let Some(dir) = d.filter(|d| d.starts_with(src) && !d.exists()) {
                        dirs.insert(dir.to_path_buf());
                        d = dir.parent();
                    }
                    None
                }
            };
            files.push((path, saved));
        }
        Ok(Snapshot { files, dirs: dirs.into_iter().rev().collect() })
    }

    fn restore(&self) -> anyhow::Result<()> {
        for (path, saved) in &self.files {
            match saved {
                Some((bytes, perm, mtime)) => {
                    if fs::read(path).ok().as_ref() != Some(bytes) {
                        fs::write(path, bytes)?;
                    }
                    fs::set_permissions(path, perm.clone())?;
                    fs::File::options().write(true).open(path)?.set_modified(*mtime)?;
                }
                None => {
                    if path.exists() {
                        fs::remove_file(path)?;
                    }
                }
            }
        }
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
        Ok(())
    }
}

/// The failing hunks of a dry run, described with the patch's own hunk headers.
fn describe_failure(p: &Patch, output: &str) -> String {
    let mut file: Option<&str> = None;
    let mut lines = Vec::new();
    for l in output.lines() {
        if let Some(f) =
            l.strip_prefix("checking file ").or_else(|| l.strip_prefix("patching file "))
        {
            file = Some(f.trim());
        } else if let Some(rest) = l.strip_prefix("Hunk #") {
            if !rest.contains("FAILED") {
                continue;
            }
            let n: usize = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let f = file.unwrap_or("?");
            let header = p
                .files
                .iter()
                .find(|(name, _)| name == f)
                .and_then(|(_, h)| h.get(n.wrapping_sub(1)))
                .map(|h| format!(" `{h}`"))
                .unwrap_or_default();
            lines.push(format!(
                "{f}: hunk #{n}{header} {}",
                rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim()
            ));
        } else if l.contains("No file to patch") || l.contains("can't find file") {
            lines.push(format!("{}: file missing in the tree", file.unwrap_or("?")));
        } else if l.contains("Only garbage") || l.contains("malformed") {
            lines.push(l.trim().to_string());
        }
    }
    if lines.is_empty() {
        lines.push(format!("patch said:\n{}", output.trim_end()));
    }
    lines.join("\n  ")
}

/// Applies the series in `dir` to `src`: see the module documentation.
pub fn apply_series(src: &Path, dir: &Path) -> Result<Vec<PatchResult>, Error> {
    let patches = read_series(dir)?;
    if which("patch").is_none() {
        return Err(bad(anyhow!("patch not found on PATH; install with `apt-get install patch`")));
    }
    let snapshot = Snapshot::take(src, &patches)?;
    let mut results = Vec::new();
    // A later patch may change lines an earlier one added (0002 edits what 0001 added): then
    // the earlier patch alone no longer reverses on a tree with the whole series, and only
    // undoing the series from its last patch back tells that it is applied.
    if series_applied(src, &patches, &snapshot)? {
        for p in &patches {
            say(format!("{} is already applied: skipped", p.name));
            results.push(result(p, PatchStatus::AlreadyApplied));
        }
        return Ok(results);
    }
    for p in &patches {
        let (fwd_ok, fwd_out) = run_patch(src, p, false, true)?;
        let status = if fwd_ok {
            let (ok, out) = run_patch(src, p, false, false)?;
            if !ok {
                let undo = snapshot.restore();
                return Err(bad(anyhow!(
                    "{}: the dry run passed but applying failed{}:\n  {}",
                    p.name,
                    undo_note(&undo),
                    describe_failure(p, &out)
                )));
            }
            say(format!("applied {}", p.name));
            PatchStatus::Applied
        } else {
            let (rev_ok, _) = run_patch(src, p, true, true)?;
            if rev_ok {
                say(format!("{} is already applied: skipped", p.name));
                PatchStatus::AlreadyApplied
            } else {
                let undo = snapshot.restore();
                let earlier = results
                    .iter()
                    .filter(|r: &&PatchResult| r.status == PatchStatus::Applied)
                    .count();
                return Err(bad(anyhow!(
                    "conflict: {} does not apply to {} (neither cleanly nor as already \
                     applied):\n  {}\nthe tree is unchanged{}",
                    p.name,
                    src.display(),
                    describe_failure(p, &fwd_out),
                    if earlier > 0 {
                        format!(
                            " ({earlier} earlier patch(es) of the series undone{})",
                            undo_note(&undo)
                        )
                    } else {
                        undo_note(&undo)
                    }
                )));
            }
        };
        results.push(result(p, status));
    }
    Ok(results)
}

fn result(p: &Patch, status: PatchStatus) -> PatchResult {
    PatchResult {
        name: p.name.clone(),
        path: p.path.clone(),
        from: p.from.clone(),
        subject: p.subject.clone(),
        sha256: p.sha256.clone(),
        status,
    }
}

/// Is the whole series applied to `src`? Undoes it from the last patch back, for real (a dry
/// run cannot chain), and puts the tree back exactly as it was (`snapshot`) either way.
fn series_applied(src: &Path, patches: &[Patch], snapshot: &Snapshot) -> Result<bool, Error> {
    let mut applied = true;
    for p in patches.iter().rev() {
        if !run_patch(src, p, true, true)?.0 || !run_patch(src, p, true, false)?.0 {
            applied = false;
            break;
        }
    }
    snapshot
        .restore()
        .with_context(|| format!("restoring {} after the applied-series check", src.display()))
        .map_err(bad)?;
    Ok(applied)
}

fn undo_note(r: &anyhow::Result<()>) -> String {
    match r {
        Ok(()) => String::new(),
        Err(e) => format!(" (WARNING: undoing failed: {e:#})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_parses_the_shipped_patch() {
        let p = read_series(&crate::root().join("kernel-patch")).unwrap();
        assert_eq!(p.len(), 2, "0001 (the seed commit) and 0002 (ours)");
        assert_eq!(p[0].from.as_deref(), Some("56e1c4d968993c8985bb90d983cb563a43d32010"));
        assert_eq!(
            p[0].subject.as_deref(),
            Some("ploop: Provide interface to pass freezing fs during snapshot")
        );
        assert_eq!(p[0].files.len(), 1);
        assert_eq!(p[0].files[0].0, "drivers/block/ploop/dev.c");
        assert_eq!(p[0].files[0].1.len(), 4);
        assert!(p[0].files[0].1[1].starts_with("@@ -3683,12 +3715,12 @@"));
        // 0002 has no commit yet (format-patch --zero-commit) and changes what 0001 added.
        assert_eq!(p[1].from.as_deref(), Some("0000000000000000000000000000000000000000"));
        assert_eq!(
            p[1].subject.as_deref(),
            Some("ploop: A block device node as sync fd names its own device")
        );
        assert_eq!(p[1].files.len(), 1);
        assert_eq!(p[1].files[0].0, "drivers/block/ploop/dev.c");
        assert_eq!(p[1].files[0].1.len(), 1);
        assert!(
            p[1].files[0].1[0].starts_with("@@ -3656,6 +3656,18 @@ static int get_bdev_from_fd")
        );
    }

    #[test]
    fn strip_path_components() {
        assert_eq!(strip_path("a/drivers/x.c", 1), "drivers/x.c");
        assert_eq!(strip_path("drivers/x.c", 0), "drivers/x.c");
    }
}
