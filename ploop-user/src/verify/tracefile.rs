//! The trace file: JSON lines written by `trace` and `run`, replayed by `report`. A header,
//! then device stacks and events in time order, then an end record. Written to a temporary
//! name and renamed when complete, so a trace on disk is never half-written; a reader names
//! the line of any damage.
//!
//! Every record carries its place and its content's checksum right after its tag:
//! `{"record":"event","rec":17,"crc":"1c291ca3",...}`. `rec` counts the records from the
//! header's 0, so a record dropped, repeated or moved shows as a number out of turn, and the
//! reader says which; `crc` is the CRC-32 of the line without the `"crc":"...",` field, so a
//! record changed in place (a flipped bit that still parses) shows too. The end record's
//! `events` is compared with the events read. Traces written before these fields existed are
//! read as before and said to be unchecked ([`TraceStatus::Unchecked`]).

use std::{
    fs,
    io::{BufRead as _, BufWriter, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use ploop_common::Probe;
use serde::{Deserialize, Serialize};

use crate::{
    kernel::Generation,
    verify::events::TraceEvent,
    verify::report::{TraceIntegrity, TraceStatus},
    verify::stack::Stack,
};

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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
    /// The record being written, serialised before its integrity fields go in.
    buf: Vec<u8>,
    /// Its `"rec":N,`.
    rec_field: String,
    /// The next record's number (the header's is 0).
    rec: u64,
}

/// Where a serialised record's own fields begin: after `{"record":"KIND",`.
fn after_tag(line: &[u8]) -> Option<usize> {
    let rest = line.strip_prefix(br#"{"record":""#)?;
    let close = memchr::memchr(b'"', rest)?;
    rest[close + 1..].starts_with(b",").then_some(TAG_OPEN.len() + close + 2)
}

const TAG_OPEN: &[u8] = br#"{"record":""#;
const REC_KEY: &[u8] = br#""rec":"#;
const CRC_KEY: &[u8] = br#""crc":""#;

impl Writer {
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = path.with_extension("partial");
        let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Writer {
            path: path.to_path_buf(),
            tmp,
            w: BufWriter::new(f),
            buf: Vec::with_capacity(1024),
            rec_field: String::new(),
            rec: 0,
        })
    }

    pub fn line(&mut self, l: &TraceLine) -> Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, l)?;
        let split = after_tag(&self.buf).context("a trace record without fields")?;
        let (tagged, fields) = self.buf.split_at(split);
        self.rec_field.clear();
        std::fmt::Write::write_fmt(&mut self.rec_field, format_args!("\"rec\":{},", self.rec))?;
        let rec = self.rec_field.as_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(tagged);
        crc.update(rec);
        crc.update(fields);
        self.w.write_all(tagged)?;
        self.w.write_all(rec)?;
        write!(self.w, "\"crc\":\"{:08x}\",", crc.finalize())?;
        self.w.write_all(fields)?;
        self.w.write_all(b"\n")?;
        self.rec += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        self.w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A trace refused for what it holds (not for a failure to read it): `report` exits
/// [`Refused::EXIT`] and writes no report. The text names the file and the line.
#[derive(Debug)]
pub struct Refused(pub String);

impl Refused {
    /// EX_DATAERR of sysexits.h, beside EX_USAGE (64) for a bad command line.
    pub const EXIT: u8 = 65;
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

macro_rules! refuse {
    ($($t:tt)*) => { return Err(Refused(format!($($t)*)).into()) };
}

/// How far event time may go back from one record to a later one: the transports' largest
/// reorder window (the perf buffer's; a ring buffer's stream is in order per task, and the
/// drain releases events up to the moment it read the clock).
pub const TIME_BACK_NS: u64 = crate::verify::drive::PERF_REORDER_NS;

/// A trace read one record at a time (a long run's trace need not fit in memory): a header
/// first, an end record last, valid JSON in between. Damage is reported with its line.
pub struct Reader {
    path: PathBuf,
    input: std::io::BufReader<fs::File>,
    /// A line that straddles the end of the read buffer, gathered here.
    straddling: Vec<u8>,
    /// A record's fields in braces of their own, for serde (the tag and integrity fields
    /// are not the record type's).
    scratch: String,
    /// The record last read, lent out by [`Reader::next_record`]: moving a record costs a
    /// copy of it, and a replay reads millions.
    current: Option<TraceLine>,
    n: usize,
    pub header: Header,
    end: Option<End>,
    /// The header carried `rec` and `crc`: so must every record.
    checked: bool,
    /// The `rec` the next record must carry.
    next_rec: u64,
    events: u64,
    /// The latest event time so far, and its line.
    latest: Option<(u64, usize)>,
    /// `--accept-damaged`: integrity failures are counted, not refused.
    accept_damaged: bool,
    problems: u64,
    listed: Vec<String>,
}

/// The integrity problems a damaged trace read anyway lists (the count covers all).
pub const PROBLEMS_LISTED: usize = 10;

/// One line taken apart: its tag, its integrity fields, and its own fields.
struct Parts<'a> {
    kind: &'a str,
    /// `rec`, and whether `crc` matched.
    integrity: Option<(u64, Result<(), String>)>,
    /// The record's own fields, from the first key to the closing brace.
    fields: &'a str,
}

fn parts(line: &str) -> Option<Parts<'_>> {
    let b = line.as_bytes();
    let split = after_tag(b)?;
    let kind = &line[TAG_OPEN.len()..split - 2];
    let rest = &b[split..];
    let Some(r) = rest.strip_prefix(REC_KEY) else {
        return Some(Parts { kind, integrity: None, fields: &line[split..] });
    };
    let digits = r.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || (digits > 1 && r[0] == b'0') {
        return None;
    }
    let rec: u64 = line[split + REC_KEY.len()..][..digits].parse().ok()?;
    let crc_at = split + REC_KEY.len() + digits + 1;
    let c = b.get(crc_at..)?.strip_prefix(CRC_KEY)?;
    (b.get(crc_at - 1) == Some(&b',')).then_some(())?;
    let hex = c.get(..8)?;
    c.get(8..10).filter(|t| *t == b"\",")?;
    let written = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    let fields_at = crc_at + CRC_KEY.len() + 10;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&b[..crc_at]);
    crc.update(&b[fields_at..]);
    let computed = crc.finalize();
    let ok = if computed == written {
        Ok(())
    } else {
        Err(format!(
            "its checksum is {written:08x}, its bytes give {computed:08x}: the record was changed"
        ))
    };
    Some(Parts { kind, integrity: Some((rec, ok)), fields: &line[fields_at..] })
}

/// Parses a record's own fields (`fields`: from its first key to its closing brace) as
/// `kind`. Events go through the fast parser first; `None` for a kind this tool never wrote.
fn parse_fields(
    kind: &str,
    fields: &str,
    scratch: &mut String,
) -> Option<serde_json::Result<TraceLine>> {
    if kind == "event"
        && let Some(e) = crate::verify::fastparse::event(fields)
    {
        return Some(Ok(TraceLine::Event(e)));
    }
    scratch.clear();
    scratch.push('{');
    scratch.push_str(fields);
    let s = scratch.as_str();
    Some(match kind {
        "event" => serde_json::from_str(s).map(TraceLine::Event),
        "stack" => serde_json::from_str(s).map(TraceLine::Stack),
        "oracle" => serde_json::from_str(s).map(TraceLine::Oracle),
        "end" => serde_json::from_str(s).map(TraceLine::End),
        "header" => serde_json::from_str(s).map(|h| TraceLine::Header(Box::new(h))),
        _ => return None,
    })
}

/// What one line held.
enum Line {
    Record {
        parsed: serde_json::Result<TraceLine>,
        /// `rec`, and whether the checksum matched (`None`: the line has neither).
        integrity: Option<(u64, Result<(), String>)>,
    },
    Blank,
    NotText(std::str::Utf8Error),
}

fn read(line: &[u8], scratch: &mut String) -> Line {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Blank;
    }
    // UTF-8 checked once for the whole line: parsing from bytes checks every string apart.
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(e) => return Line::NotText(e),
    };
    // Records this tool writes lead with their tag: their fields are parsed straight into
    // their type. Anything else goes through the tagged enum, which buffers the whole
    // object first and is several times slower (and refuses integrity fields out of place).
    if let Some(p) = parts(text)
        && let Some(parsed) = parse_fields(p.kind, p.fields, scratch)
    {
        return Line::Record { parsed, integrity: p.integrity };
    }
    Line::Record { parsed: serde_json::from_str(text), integrity: None }
}

impl Reader {
    /// A trace, refused at its first integrity failure.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, false)
    }

    /// `accept_damaged`: integrity failures (a record out of turn or changed, time going
    /// back, a count that does not match) are counted and listed instead of refused; what
    /// does not parse is refused all the same.
    pub fn open_with(path: &Path, accept_damaged: bool) -> Result<Self> {
        let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut r = Reader {
            path: path.to_path_buf(),
            input: std::io::BufReader::with_capacity(1 << 20, f),
            straddling: Vec::new(),
            scratch: String::new(),
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
            checked: false,
            next_rec: 0,
            events: 0,
            latest: None,
            accept_damaged,
            problems: 0,
            listed: Vec::new(),
        };
        let p = path.display();
        let (header, integrity) = match r.next_line()? {
            None => refuse!("{p}: empty trace"),
            Some(Line::Record { parsed: Ok(TraceLine::Header(h)), integrity }) => (*h, integrity),
            Some(Line::Record { parsed: Err(e), .. }) => refuse!("{p}:1: not a trace record: {e}"),
            Some(Line::NotText(e)) => refuse!("{p}:1: not a trace record: {e}"),
            Some(_) => refuse!("{p}:1: the trace must start with a header record"),
        };
        if let Some(policy) = &header.policy
            && let Err(e) = policy.validate()
        {
            refuse!("{p}:1: the header's limits: {e}");
        }
        r.header = header;
        r.checked = integrity.is_some();
        if let Some((rec, crc)) = integrity {
            r.in_turn(rec, crc)?;
        }
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
            let line = read(&buf[..i], &mut self.scratch);
            self.input.consume(i + 1);
            return Ok(Some(line));
        }
        self.straddling.clear();
        self.input.read_until(b'\n', &mut self.straddling).map_err(|e| unreadable(e, self.n))?;
        let line = self.straddling.strip_suffix(b"\n").unwrap_or(&self.straddling);
        Ok(Some(read(line, &mut self.scratch)))
    }

    /// An integrity failure at the current line: refused, or with `--accept-damaged` counted
    /// and the reading goes on.
    pub fn damage(&mut self, what: impl std::fmt::Display) -> Result<()> {
        let text = format!("{}:{}: {what}", self.path.display(), self.n);
        if !self.accept_damaged {
            return Err(Refused(format!("{text} (--accept-damaged reads it anyway)")).into());
        }
        self.problems += 1;
        if self.listed.len() < PROBLEMS_LISTED {
            self.listed.push(text);
        }
        Ok(())
    }

    /// The record numbered `rec` is read now: in its turn, or where it is out of turn, why.
    fn in_turn(&mut self, rec: u64, crc: Result<(), String>) -> Result<()> {
        if let Err(e) = crc {
            self.damage(e)?;
        }
        let due = self.next_rec;
        if rec > due {
            let missing = if rec == due + 1 {
                format!("record {due} is missing before it")
            } else {
                format!("records {due} to {} are missing before it", rec - 1)
            };
            self.damage(format_args!("record {rec} where {due} was due: {missing} (or moved)"))?;
        } else if rec < due {
            self.damage(format_args!(
                "record {rec} where {due} was due: it came before (repeated, or moved)"
            ))?;
        }
        self.next_rec = self.next_rec.max(rec + 1);
        Ok(())
    }

    /// Event time in the order written: back by more than [`TIME_BACK_NS`] from an earlier
    /// event is damage (the writer releases events in time order once the reorder window has
    /// passed).
    fn in_time(&mut self, ts: u64) -> Result<()> {
        match self.latest {
            Some((latest, line)) if ts.saturating_add(TIME_BACK_NS) < latest => {
                let back = (latest - ts) as f64 / 1e6;
                let window = TIME_BACK_NS / 1_000_000;
                self.damage(format_args!(
                    "time goes back {back:.3} ms from line {line} ({latest} ns) to {ts} ns here, \
                     more than the {window} ms the perf buffer may reorder"
                ))
            }
            Some((latest, _)) if latest >= ts => Ok(()),
            _ => {
                self.latest = Some((ts, self.n));
                Ok(())
            }
        }
    }

    /// The end record against what was read.
    fn at_end(&mut self, end: &End) -> Result<()> {
        if !self.checked {
            return Ok(());
        }
        if end.events != self.events {
            let (said, read) = (end.events, self.events);
            self.damage(format_args!(
                "the end record counts {said} events, the trace holds {read}"
            ))?;
        }
        if let (Some(end_ns), Some((latest, line))) = (end.end_ns, self.latest)
            && end_ns.saturating_add(TIME_BACK_NS) < latest
        {
            self.damage(format_args!(
                "the run ends at {end_ns} ns, before the event of line {line} ({latest} ns)"
            ))?;
        }
        Ok(())
    }

    /// The next stack or event record; `None` after the end record.
    pub fn next_record(&mut self) -> Result<Option<&TraceLine>> {
        loop {
            let line = self.next_line().with_context(|| self.path.display().to_string())?;
            let n = self.n;
            let Some(line) = line else {
                if self.end.is_none() {
                    refuse!(
                        "{}:{n}: the trace ends without an end record (truncated?)",
                        self.path.display()
                    );
                }
                return Ok(None);
            };
            let (record, integrity) = match line {
                // Only blank lines may follow the end record; anything else is damage.
                Line::Blank if self.end.is_some() => continue,
                _ if self.end.is_some() => {
                    refuse!("{}:{n}: data after the end record", self.path.display())
                }
                Line::Blank => {
                    refuse!("{}:{n}: not a trace record: a blank line", self.path.display())
                }
                Line::Record { parsed: Err(e), .. } => {
                    refuse!("{}:{n}: not a trace record: {e}", self.path.display())
                }
                Line::Record { parsed: Ok(r), integrity } => (r, integrity),
                Line::NotText(e) => refuse!("{}:{n}: not a trace record: {e}", self.path.display()),
            };
            match (integrity, self.checked) {
                (Some((rec, crc)), true) => self.in_turn(rec, crc)?,
                (None, true) => self.damage(
                    "a record without `rec` and `crc`, which every record of this trace carries",
                )?,
                // Integrity fields in a trace whose header has none: the header lost them.
                (Some(_), false) => refuse!(
                    "{}:{n}: a record with `rec` and `crc` in a trace whose header has none",
                    self.path.display()
                ),
                (None, false) => {}
            }
            match record {
                TraceLine::Header(_) => refuse!("{}:{n}: a second header", self.path.display()),
                TraceLine::End(e) => {
                    self.at_end(&e)?;
                    self.end = Some(e);
                }
                other => {
                    if let TraceLine::Event(e) = &other {
                        self.events += 1;
                        self.in_time(e.ts_ns)?;
                    }
                    return Ok(Some(self.current.insert(other)));
                }
            }
        }
    }

    /// The end record, once every record has been read.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// What this reading could prove of the trace (complete once every record is read).
    pub fn integrity(&self) -> TraceIntegrity {
        TraceIntegrity {
            // An old trace can be damaged too: time going back, a finding for no call.
            status: match (self.problems, self.checked) {
                (1.., _) => TraceStatus::Damaged,
                (0, true) => TraceStatus::Intact,
                (0, false) => TraceStatus::Unchecked,
            },
            records: self.next_rec,
            problems: self.problems,
            listed: self.listed.clone(),
        }
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

    /// A trace of three snapshot calls with oracle findings, through the writer.
    fn synthetic(name: &str) -> (PathBuf, Vec<String>) {
        let p = tmp(name);
        crate::verify::synth::write(&p, 3, 2, true).unwrap();
        let lines = fs::read_to_string(&p).unwrap().lines().map(String::from).collect();
        (p, lines)
    }

    fn write_lines(p: &Path, lines: &[String]) {
        fs::write(p, lines.join("\n") + "\n").unwrap();
    }

    /// Reads every record; the integrity, or the refusal's text.
    fn check(p: &Path, accept_damaged: bool) -> Result<TraceIntegrity, String> {
        let read = || -> Result<TraceIntegrity> {
            let mut r = Reader::open_with(p, accept_damaged)?;
            while r.next_record()?.is_some() {}
            Ok(r.integrity())
        };
        read().map_err(|e| {
            assert!(e.is::<Refused>(), "{e:#}");
            format!("{e:#}")
        })
    }

    /// Rewrites the records of `from` through the writer (valid `rec` and `crc`), each
    /// changed by `edit` first.
    fn rewrite(from: &Path, to: &Path, mut edit: impl FnMut(usize, &mut TraceLine)) {
        let text = fs::read_to_string(from).unwrap();
        let mut w = Writer::create(to).unwrap();
        for (i, l) in text.lines().enumerate() {
            let mut rec: TraceLine = serde_json::from_str(&strip_integrity(l)).unwrap();
            edit(i + 1, &mut rec);
            w.line(&rec).unwrap();
        }
        w.finish().unwrap();
    }

    /// The line as a trace without integrity fields holds it.
    fn strip_integrity(l: &str) -> String {
        let p = parts(l).unwrap();
        format!("{{\"record\":\"{}\",{}", p.kind, p.fields)
    }

    #[test]
    fn an_intact_trace_says_so() {
        let (p, lines) = synthetic("intact.jsonl");
        assert!(lines[0].starts_with(r#"{"record":"header","rec":0,"crc":""#), "{}", lines[0]);
        assert!(lines[1].starts_with(r#"{"record":"stack","rec":1,"crc":""#), "{}", lines[1]);
        let t = check(&p, false).unwrap();
        assert_eq!((t.status, t.records, t.problems), (TraceStatus::Intact, lines.len() as u64, 0));
        // Without the integrity fields: an old trace, read as before.
        let old: Vec<String> = lines.iter().map(|l| strip_integrity(l)).collect();
        write_lines(&p, &old);
        assert_eq!(check(&p, false).unwrap().status, TraceStatus::Unchecked);
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_record_missing_repeated_moved_or_changed_is_refused_with_its_line() {
        let (p, lines) = synthetic("moved.jsonl");
        let refused = |lines: &[String]| {
            write_lines(&p, lines);
            check(&p, false).unwrap_err()
        };
        let mut deleted = lines.clone();
        deleted.remove(4);
        let e = refused(&deleted);
        assert!(e.contains(":5: record 5 where 4 was due: record 4 is missing before it"), "{e}");
        assert!(e.ends_with("(--accept-damaged reads it anyway)"), "{e}");
        let mut repeated = lines.clone();
        repeated.insert(5, lines[4].clone());
        let e = refused(&repeated);
        assert!(e.contains(":6: record 4 where 5 was due: it came before"), "{e}");
        let mut swapped = lines.clone();
        swapped.swap(4, 5);
        assert!(refused(&swapped).contains(":5: record 5 where 4 was due"));
        // A bit flipped inside a value: still valid JSON, and the same record number.
        let mut changed = lines.clone();
        changed[6] = changed[6].replacen("\"ts_ns\":1000", "\"ts_ns\":1001", 1);
        assert_ne!(changed[6], lines[6]);
        let e = refused(&changed);
        assert!(e.contains(":7: its checksum is ") && e.contains("the record was changed"), "{e}");
        // A record of an integrity trace without its fields.
        let mut bare = lines.clone();
        bare[3] = strip_integrity(&bare[3]);
        assert!(refused(&bare).contains(":4: a record without `rec` and `crc`"));
        // Fields where the header has none: the header lost them.
        let mut headless = lines.clone();
        headless[0] = strip_integrity(&headless[0]);
        assert!(refused(&headless).contains(":2: a record with `rec` and `crc` in a trace whose"));
        // The end's count against the events read.
        let to = tmp("moved-end.jsonl");
        rewrite(&p, &to, |_, l| {
            if let TraceLine::End(e) = l {
                e.events += 1;
            }
        });
        let e = check(&to, false).unwrap_err();
        assert!(e.contains("the end record counts 46 events, the trace holds 45"), "{e}");
        fs::remove_file(to).unwrap();
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn damage_read_anyway_is_counted_and_listed() {
        let (p, mut lines) = synthetic("anyway.jsonl");
        lines.remove(4);
        lines.swap(10, 11);
        write_lines(&p, &lines);
        let t = check(&p, true).unwrap();
        assert_eq!((t.status, t.problems), (TraceStatus::Damaged, 4));
        assert!(t.listed[0].contains(":5: record 5 where 4 was due"), "{:?}", t.listed);
        assert!(t.listed[1].contains(":11: record 12 where 11 was due"), "{:?}", t.listed);
        assert!(t.listed[2].contains(":12: record 11 where 13 was due"), "{:?}", t.listed);
        assert!(t.listed[3].contains("the end record counts 45 events, the trace holds 44"));
        assert!(t.text().starts_with("damaged trace read anyway: 4 integrity problems ("));
        // An old trace has no integrity fields, but time going back is damage there too.
        let (q, _) = synthetic("anyway-old.jsonl");
        let to = tmp("anyway-old-back.jsonl");
        rewrite(&q, &to, |n, l| {
            if let (7, TraceLine::Event(e)) = (n, l) {
                e.ts_ns += 11_000_000_000;
            }
        });
        let old: Vec<String> =
            fs::read_to_string(&to).unwrap().lines().map(strip_integrity).collect();
        write_lines(&to, &old);
        assert!(check(&to, false).unwrap_err().contains(":8: time goes back"));
        let t = check(&to, true).unwrap();
        // Every later event is back from line 7's: each counted, the first ten listed.
        assert_eq!((t.status, t.problems, t.listed.len()), (TraceStatus::Damaged, 40, 10));
        fs::remove_file(to).unwrap();
        fs::remove_file(q).unwrap();
        // What does not parse is refused all the same.
        lines[7].truncate(30);
        write_lines(&p, &lines);
        assert!(check(&p, true).unwrap_err().contains(":8: not a trace record"));
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn time_going_back_beyond_the_reorder_window_names_both_lines() {
        let (p, _) = synthetic("time.jsonl");
        let to = tmp("time-jump.jsonl");
        // Line 7 an event 11 s late, as the issue's: the next event is 11 s before it.
        rewrite(&p, &to, |n, l| {
            if let (7, TraceLine::Event(e)) = (n, l) {
                e.ts_ns += 11_000_000_000;
            }
        });
        let e = check(&to, false).unwrap_err();
        assert!(e.contains(":8: time goes back 10999.950 ms from line 7 ("), "{e}");
        assert!(e.contains("more than the 30 ms the perf buffer may reorder"), "{e}");
        // Back by less than the window: the order the writer may give.
        rewrite(&p, &to, |n, l| {
            if let (7, TraceLine::Event(e)) = (n, l) {
                e.ts_ns += 29_000_000;
            }
        });
        assert_eq!(check(&to, false).unwrap().status, TraceStatus::Intact);
        fs::remove_file(to).unwrap();
        fs::remove_file(p).unwrap();
    }

    /// The header's limits go through `run`'s own parsers: refused with their message.
    #[test]
    fn header_limits_are_refused_as_the_command_line_refuses_them() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        #[command(name = "ploop-verify")]
        struct Cli {
            #[command(flatten)]
            _p: crate::verify::run::Policy,
        }
        let (p, _) = synthetic("limits.jsonl");
        let to = tmp("limits-bad.jsonl");
        for (flag, value) in
            [("--hang-after", 0.0), ("--hang-after", -1.0), ("--max-freeze-ms", 0.0)]
        {
            rewrite(&p, &to, |_, l| {
                if let TraceLine::Header(h) = l {
                    let mut policy = crate::verify::run::Policy {
                        max_freeze_ms: 5000.0,
                        expect_snapshots: 1,
                        hang_after: 10.0,
                        expect_refusals: false,
                    };
                    match flag {
                        "--hang-after" => policy.hang_after = value,
                        _ => policy.max_freeze_ms = value,
                    }
                    h.policy = Some(policy);
                }
            });
            let e = check(&to, false).unwrap_err();
            let cli = Cli::try_parse_from(["ploop-verify", &format!("{flag}={value}")])
                .err()
                .unwrap()
                .to_string();
            let cli = cli.lines().next().unwrap().strip_prefix("error: ").unwrap();
            assert!(cli.starts_with(&format!("invalid value '{value}' for '{flag} ")), "{cli}");
            assert!(e.contains(&format!(":1: the header's limits: {cli}")), "{e}\n{cli}");
        }
        fs::remove_file(to).unwrap();
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_comm_no_task_could_have_is_refused() {
        let (p, _) = synthetic("comm.jsonl");
        let to = tmp("comm-long.jsonl");
        let with_comm = |comm: &str| {
            rewrite(&p, &to, |n, l| {
                if let (3, TraceLine::Event(e)) = (n, l) {
                    e.comm = comm.into();
                }
            });
            check(&to, false)
        };
        assert!(with_comm("fifteen-bytes-x").is_ok());
        // Non-UTF-8 bytes as the live side writes them: each a U+FFFD, a byte each.
        assert!(with_comm(&"\u{fffd}".repeat(15)).is_ok());
        for (comm, bytes) in [
            ("sixteen-bytes-xx".to_string(), 16),
            ("x".repeat(17), 17),
            ("y".repeat(1 << 20), 1 << 20),
        ] {
            let e = with_comm(&comm).unwrap_err();
            let want =
                format!(":3: not a trace record: a comm of {bytes} bytes: the kernel's hold");
            assert!(e.contains(&want), "{}", &e[..e.len().min(300)]);
        }
        fs::remove_file(to).unwrap();
        fs::remove_file(p).unwrap();
    }

    /// A key no record type has (a flipped bit made `dev` into `duv`) is refused as an
    /// unknown record is, in every kind of record, with or without integrity fields.
    #[test]
    fn an_unknown_key_is_refused() {
        let (p, lines) = synthetic("duv.jsonl");
        for (i, from, to) in [
            (2, "\"dev\":", "\"duv\":"),
            (1, "\"ploop_dev\":", "\"ploop_duv\":"),
            (0, "\"probed\":", "\"probud\":"),
            (lines.len() - 1, "\"lost\":", "\"lust\":"),
        ] {
            for stripped in [false, true] {
                let mut bad = lines.clone();
                if stripped {
                    bad = bad.iter().map(|l| strip_integrity(l)).collect();
                }
                bad[i] = bad[i].replacen(from, to, 1);
                write_lines(&p, &bad);
                let e = check(&p, true).unwrap_err();
                let key = to.trim_matches([':', '"']);
                let want = format!(":{}: not a trace record: unknown field `{key}`", i + 1);
                assert!(e.contains(&want), "{e}");
            }
        }
        let oracle = lines.iter().position(|l| l.starts_with(r#"{"record":"oracle""#)).unwrap();
        let mut bad = lines.clone();
        bad[oracle] = bad[oracle].replacen("\"tid\":", "\"tud\":", 1);
        write_lines(&p, &bad);
        assert!(check(&p, false).unwrap_err().contains("unknown field `tud`"));
        fs::remove_file(p).unwrap();
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
