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
use ploop_common::Probe;
use serde::{Deserialize, Serialize};

use crate::{kernel::Generation, verify::events::TraceEvent, verify::stack::Stack};

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
    /// The probes that attached.
    pub probed: Vec<Probe>,
    /// Optional probes that did not attach, with the reason.
    #[serde(default)]
    pub narrowed: Vec<(Probe, String)>,
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
    session: &crate::verify::probe::Session,
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

/// A trace read one record at a time (a long run's trace need not fit in memory): a header
/// first, an end record last, valid JSON in between. Damage is reported with its line.
pub struct Reader {
    path: PathBuf,
    lines: std::io::Lines<std::io::BufReader<fs::File>>,
    n: usize,
    pub header: Header,
    end: Option<End>,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self> {
        let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut lines = std::io::BufReader::new(f).lines();
        let first = lines.next().ok_or_else(|| anyhow!("{}: empty trace", path.display()))?;
        let first = first.with_context(|| format!("{}:1: unreadable", path.display()))?;
        let header = match serde_json::from_str(&first) {
            Ok(TraceLine::Header(h)) => h,
            Ok(_) => bail!("{}:1: the trace must start with a header record", path.display()),
            Err(e) => bail!("{}:1: not a trace record: {e}", path.display()),
        };
        Ok(Reader { path: path.to_path_buf(), lines, n: 1, header, end: None })
    }

    /// The next stack or event record; `None` after the end record.
    pub fn next_record(&mut self) -> Result<Option<TraceLine>> {
        let p = self.path.display();
        let Some(line) = self.lines.next() else {
            if self.end.is_none() {
                bail!("{p}:{}: the trace ends without an end record (truncated?)", self.n);
            }
            return Ok(None);
        };
        self.n += 1;
        let n = self.n;
        let line = line.with_context(|| format!("{p}:{n}: unreadable"))?;
        if self.end.is_some() {
            bail!("{p}:{n}: data after the end record");
        }
        match serde_json::from_str(&line)
            .map_err(|e| anyhow!("{p}:{n}: not a trace record: {e}"))?
        {
            TraceLine::Header(_) => bail!("{p}:{n}: a second header"),
            TraceLine::End(e) => {
                self.end = Some(e);
                // Only blank lines may follow; anything else is damage.
                self.next_record()
            }
            other => Ok(Some(other)),
        }
    }

    /// The end record, once every record has been read.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }
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
            probed: vec![Probe::FreezeBdev],
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
        let mut t = Reader::open(&p).unwrap();
        assert_eq!(t.header.probed, [Probe::FreezeBdev]);
        assert!(t.next_record().unwrap().is_none());
        assert_eq!(t.end().unwrap().command_status, Some(0));
        fs::remove_file(p).unwrap();
    }

    fn drain(p: &Path) -> Result<()> {
        let mut r = Reader::open(p)?;
        while r.next_record()?.is_some() {}
        Ok(())
    }

    #[test]
    fn damage_is_reported_with_its_line() {
        let p = tmp("bad.jsonl");
        let h = serde_json::to_string(&header()).unwrap();
        fs::write(&p, format!("{h}\n{{\"record\":\"event\",\"ts_ns\":\n")).unwrap();
        let e = drain(&p).err().unwrap().to_string();
        assert!(e.contains(":2: not a trace record"), "{e}");
        fs::write(&p, format!("{h}\n")).unwrap();
        let e = drain(&p).err().unwrap().to_string();
        assert!(e.contains(":1: the trace ends without an end record"), "{e}");
        fs::write(&p, "{\"record\":\"end\",\"events\":0,\"lost\":0,\"command_status\":null}\n")
            .unwrap();
        assert!(
            drain(&p).err().unwrap().to_string().contains(":1: the trace must start with a header")
        );
        fs::remove_file(p).unwrap();
    }
}
