//! The trace file: JSON lines written by `trace` and `run`, replayed by `report`. A header,
//! then device stacks and events in time order, then an end record. Written to a temporary
//! name and renamed when complete, so a trace on disk is never half-written; a reader names
//! the line of any damage.

use std::{
    fs,
    io::{BufRead as _, BufWriter, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{events::TraceEvent, kernel::Generation, stack::Stack};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum TraceLine {
    Header(Header),
    Stack(Stack),
    Event(TraceEvent),
    End(End),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub tool: String,
    pub kernel: serde_json::Value,
    pub generation: Generation,
    pub plan: serde_json::Value,
    /// Roles whose probes attached (`freeze_bdev`, `ploop_snapshot`, `sys_exit_ioctl`, ...).
    pub probed: Vec<String>,
    /// Optional probes that did not attach, with the reason.
    #[serde(default)]
    pub narrowed: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct End {
    pub events: u64,
    pub lost: u64,
    pub command_status: Option<i32>,
}

pub const TOOL: &str = concat!("ploop-verify ", env!("CARGO_PKG_VERSION"));

/// The header of a trace taken through `session` on this kernel.
pub fn header(
    kernel: &crate::kernel::KernelInfo,
    session: &crate::probe::Session,
) -> Result<Header> {
    Ok(Header {
        tool: TOOL.into(),
        kernel: serde_json::to_value(kernel)?,
        generation: kernel.generation,
        plan: serde_json::to_value(&session.plan)?,
        probed: session.probed.clone(),
        narrowed: session.narrowed.clone(),
    })
}

pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    w: BufWriter<fs::File>,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = path.with_extension("partial");
        let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Writer { path: path.to_path_buf(), tmp, w: BufWriter::new(f) })
    }

    pub fn line(&mut self, l: &TraceLine) -> Result<()> {
        serde_json::to_writer(&mut self.w, l)?;
        self.w.write_all(b"\n")?;
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        self.w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A whole trace, checked: a header first, an end record last, valid JSON in between.
pub struct Trace {
    pub header: Header,
    pub body: Vec<TraceLine>,
    pub end: End,
}

pub fn read(path: &Path) -> Result<Trace> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut header = None;
    let mut body = Vec::new();
    let mut end = None;
    let mut n = 0;
    for line in std::io::BufReader::new(f).lines() {
        n += 1;
        let line = line.with_context(|| format!("{}:{n}: unreadable", path.display()))?;
        if end.is_some() {
            bail!("{}:{n}: data after the end record", path.display());
        }
        let rec: TraceLine = serde_json::from_str(&line)
            .map_err(|e| anyhow!("{}:{n}: not a trace record: {e}", path.display()))?;
        match (rec, header.is_some()) {
            (TraceLine::Header(h), false) => header = Some(h),
            (TraceLine::Header(_), true) => bail!("{}:{n}: a second header", path.display()),
            (_, false) => {
                bail!("{}:{n}: the trace must start with a header record", path.display())
            }
            (TraceLine::End(e), true) => end = Some(e),
            (other, true) => body.push(other),
        }
    }
    let header = header.ok_or_else(|| anyhow!("{}: empty trace", path.display()))?;
    let end = end.ok_or_else(|| {
        anyhow!("{}:{n}: the trace ends without an end record (truncated?)", path.display())
    })?;
    Ok(Trace { header, body, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ploop-tracefile-{}-{name}", std::process::id()))
    }

    fn header() -> TraceLine {
        TraceLine::Header(Header {
            tool: TOOL.into(),
            kernel: serde_json::json!({"release": "6.1"}),
            generation: Generation::FreezeBdev,
            plan: serde_json::json!({}),
            probed: vec!["freeze_bdev".into()],
            narrowed: vec![],
        })
    }

    #[test]
    fn round_trip_and_atomic_rename() {
        let p = tmp("ok.jsonl");
        let mut w = Writer::create(&p).unwrap();
        w.line(&header()).unwrap();
        assert!(!p.exists(), "nothing at the final name before finish");
        w.line(&TraceLine::End(End { events: 0, lost: 0, command_status: Some(0) })).unwrap();
        w.finish().unwrap();
        let t = read(&p).unwrap();
        assert_eq!(t.header.probed, ["freeze_bdev"]);
        assert!(t.body.is_empty());
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn damage_is_reported_with_its_line() {
        let p = tmp("bad.jsonl");
        let h = serde_json::to_string(&header()).unwrap();
        fs::write(&p, format!("{h}\n{{\"record\":\"event\",\"ts_ns\":\n")).unwrap();
        let e = read(&p).err().unwrap().to_string();
        assert!(e.contains(":2: not a trace record"), "{e}");
        fs::write(&p, format!("{h}\n")).unwrap();
        let e = read(&p).err().unwrap().to_string();
        assert!(e.contains(":1: the trace ends without an end record"), "{e}");
        fs::write(&p, "{\"record\":\"end\",\"events\":0,\"lost\":0,\"command_status\":null}\n")
            .unwrap();
        assert!(
            read(&p).err().unwrap().to_string().contains(":1: the trace must start with a header")
        );
        fs::remove_file(p).unwrap();
    }
}
