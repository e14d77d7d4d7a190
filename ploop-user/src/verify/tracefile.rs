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
    /// Boxed: it is large, once per trace, and would make every record as large.
    Header(Box<Header>),
    Stack(Stack),
    Event(TraceEvent),
    /// X1's finding on a call, recorded before the event that completes the call.
    Oracle(crate::verify::oracle::Finding),
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
    /// The limits `run` judged with: a replay judges with the same ones unless told
    /// otherwise (absent for `trace`, and in older traces).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy: Option<crate::verify::run::Policy>,
    /// `run --oracle`: each finding follows the event that completed its call, and X1 waits
    /// for it. Absent (false) otherwise, and in traces that recorded findings before that
    /// event.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub oracle: bool,
    /// The wall clock beside the monotonic clock of the events, read together when the trace
    /// began, so reports can say when a call ran (KCIDB's start_time). Absent in older traces.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub clock: Option<WallClock>,
}

/// One reading of CLOCK_REALTIME and CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WallClock {
    pub realtime_ns: u64,
    pub monotonic_ns: u64,
}

impl WallClock {
    pub fn now() -> Self {
        let mono = crate::verify::drive::mono_ns();
        let real =
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).expect("CLOCK_REALTIME");
        WallClock {
            realtime_ns: real.tv_sec() as u64 * 1_000_000_000 + real.tv_nsec() as u64,
            monotonic_ns: mono,
        }
    }

    /// Wall-clock ns since the epoch of the monotonic instant `mono_ns`. The wall clock may
    /// be stepped during a run; this is the time as the clock read at the trace's start.
    pub fn realtime_of(&self, mono_ns: u64) -> u64 {
        (self.realtime_ns as i128 + mono_ns as i128 - self.monotonic_ns as i128).max(0) as u64
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct End {
    pub events: u64,
    pub lost: u64,
    pub command_status: Option<i32>,
    /// When the run ended (monotonic ns): a call still hanging then is judged against it
    /// (T2). Absent in traces written before it was recorded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end_ns: Option<u64>,
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
        policy: None,
        oracle: false,
        clock: Some(WallClock::now()),
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
    input: std::io::BufReader<fs::File>,
    /// A line that straddles the end of the read buffer, gathered here.
    straddling: Vec<u8>,
    /// The record last read, lent out by [`Reader::next_record`]: moving a record costs a
    /// copy of it, and a replay reads millions.
    current: Option<TraceLine>,
    n: usize,
    pub header: Header,
    end: Option<End>,
}

/// Parses one record. Records this tool writes lead with their tag, so an event or a stack
/// is parsed straight into its type (serde skips the `record` key as unknown); anything
/// else goes through the tagged enum, which buffers the whole object first and is several
/// times slower.
fn parse(line: &str) -> serde_json::Result<TraceLine> {
    if line.starts_with(r#"{"record":"event","#) {
        if let Some(e) = crate::verify::fastparse::event(line) {
            return Ok(TraceLine::Event(e));
        }
        return serde_json::from_str(line).map(TraceLine::Event);
    }
    if line.starts_with(r#"{"record":"stack","#) {
        return serde_json::from_str(line).map(TraceLine::Stack);
    }
    serde_json::from_str(line)
}

/// What one line held.
enum Line {
    Record(serde_json::Result<TraceLine>),
    Blank,
    NotText(std::str::Utf8Error),
}

fn read(line: &[u8]) -> Line {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Blank;
    }
    // UTF-8 checked once for the whole line: parsing from bytes checks every string apart.
    match std::str::from_utf8(line) {
        Ok(text) => Line::Record(parse(text)),
        Err(e) => Line::NotText(e),
    }
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self> {
        let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut r = Reader {
            path: path.to_path_buf(),
            input: std::io::BufReader::with_capacity(1 << 20, f),
            straddling: Vec::new(),
            current: None,
            n: 0,
            header: Header {
                tool: String::new(),
                kernel: serde_json::Value::Null,
                generation: Generation::FreezeBdev,
                plan: serde_json::Value::Null,
                probed: Vec::new(),
                narrowed: Vec::new(),
                policy: None,
                clock: None,
                oracle: false,
            },
            end: None,
        };
        r.header = match r.next_line()? {
            None => bail!("{}: empty trace", path.display()),
            Some(Line::Record(Ok(TraceLine::Header(h)))) => *h,
            Some(Line::Record(Err(e))) => bail!("{}:1: not a trace record: {e}", path.display()),
            Some(Line::NotText(e)) => bail!("{}:1: not a trace record: {e}", path.display()),
            Some(_) => bail!("{}:1: the trace must start with a header record", path.display()),
        };
        Ok(r)
    }

    /// Reads and parses the next line, in the read buffer where it lies whole (a replay reads
    /// hundreds of megabytes: no copy per line); `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<Line>> {
        let unreadable = |e, n| anyhow::Error::from(e).context(format!("line {n}: unreadable"));
        let buf = self.input.fill_buf().map_err(|e| unreadable(e, self.n + 1))?;
        if buf.is_empty() {
            return Ok(None);
        }
        self.n += 1;
        if let Some(i) = memchr::memchr(b'\n', buf) {
            let line = read(&buf[..i]);
            self.input.consume(i + 1);
            return Ok(Some(line));
        }
        self.straddling.clear();
        self.input.read_until(b'\n', &mut self.straddling).map_err(|e| unreadable(e, self.n))?;
        let line = self.straddling.strip_suffix(b"\n").unwrap_or(&self.straddling);
        Ok(Some(read(line)))
    }

    /// The next stack or event record; `None` after the end record.
    pub fn next_record(&mut self) -> Result<Option<&TraceLine>> {
        loop {
            let line = self.next_line().with_context(|| self.path.display().to_string())?;
            let (p, n) = (self.path.display(), self.n);
            let Some(line) = line else {
                if self.end.is_none() {
                    bail!("{p}:{n}: the trace ends without an end record (truncated?)");
                }
                return Ok(None);
            };
            let record = match line {
                // Only blank lines may follow the end record; anything else is damage.
                Line::Blank if self.end.is_some() => continue,
                _ if self.end.is_some() => bail!("{p}:{n}: data after the end record"),
                Line::Blank => bail!("{p}:{n}: not a trace record: a blank line"),
                Line::Record(r) => r.map_err(|e| anyhow!("{p}:{n}: not a trace record: {e}"))?,
                Line::NotText(e) => bail!("{p}:{n}: not a trace record: {e}"),
            };
            match record {
                TraceLine::Header(_) => bail!("{p}:{n}: a second header"),
                TraceLine::End(e) => self.end = Some(e),
                other => return Ok(Some(self.current.insert(other))),
            }
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
        TraceLine::Header(Box::new(Header {
            tool: TOOL.into(),
            kernel: serde_json::json!({"release": "6.1"}),
            generation: Generation::FreezeBdev,
            plan: serde_json::json!({}),
            probed: vec![Probe::FreezeBdev],
            narrowed: vec![],
            policy: None,
            oracle: false,
            clock: Some(WallClock { realtime_ns: 1_700_000_000_000_000_000, monotonic_ns: 5_000 }),
        }))
    }

    #[test]
    fn the_wall_clock_of_a_monotonic_instant() {
        let c = WallClock { realtime_ns: 1_700_000_000_000_000_000, monotonic_ns: 5_000 };
        assert_eq!(c.realtime_of(5_000), 1_700_000_000_000_000_000);
        assert_eq!(c.realtime_of(1_005_000), 1_700_000_000_001_000_000);
        assert_eq!(c.realtime_of(0), 1_699_999_999_999_995_000, "an event before the header");
        let now = WallClock::now();
        assert!(now.realtime_ns > 1_700_000_000_000_000_000 && now.monotonic_ns > 0);
    }

    #[test]
    fn round_trip_and_atomic_rename() {
        let p = tmp("ok.jsonl");
        let mut w = Writer::create(&p).unwrap();
        w.line(&header()).unwrap();
        assert!(!p.exists(), "nothing at the final name before finish");
        let end = End { events: 0, lost: 0, command_status: Some(0), end_ns: None };
        w.line(&TraceLine::End(end)).unwrap();
        w.finish().unwrap();
        let mut t = Reader::open(&p).unwrap();
        assert_eq!(t.header.probed, [Probe::FreezeBdev]);
        assert_eq!(t.header.clock.map(|c| c.realtime_of(6_000)), Some(1_700_000_000_000_001_000));
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
