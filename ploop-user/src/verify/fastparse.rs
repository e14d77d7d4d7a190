//! A fast path for the one record shape that makes up nearly all of a trace: an event
//! without a request, exactly as this tool writes it (fields in declaration order, no
//! escapes, nothing unknown, a comm the kernel could have), given from its first field on
//! (the reader has taken the tag and the integrity fields). Anything else, or anything unexpected, returns `None` and goes to serde_json,
//! which stays the reference: a test parses every event of the golden traces both ways and
//! demands the same result. Replaying a long trace spends most of its time parsing JSON;
//! this parses such a line about twice as fast.

use compact_str::CompactString;
use ploop_common::Probe;

use crate::{
    kernel::KDev,
    verify::events::{Args, Phase, TASK_COMM_LEN, TraceEvent},
};

struct Cursor<'a> {
    s: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn lit(&mut self, l: &[u8]) -> Option<()> {
        self.s = self.s.strip_prefix(l)?;
        Some(())
    }

    /// `"name":` if it comes next.
    fn key(&mut self, k: &[u8]) -> bool {
        let Some(rest) = self.s.strip_prefix(b"\"").and_then(|r| r.strip_prefix(k)) else {
            return false;
        };
        let Some(rest) = rest.strip_prefix(b"\":") else { return false };
        self.s = rest;
        true
    }

    fn uint(&mut self) -> Option<u64> {
        let n = self.s.iter().take_while(|b| b.is_ascii_digit()).count();
        // No leading zeros (JSON), at most 19 digits (fits u64 without overflow checks).
        if n == 0 || n > 19 || (n > 1 && self.s[0] == b'0') {
            return None;
        }
        let v = self.s[..n].iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
        self.s = &self.s[n..];
        Some(v)
    }

    fn int(&mut self) -> Option<i64> {
        if self.lit(b"-").is_some() {
            let v = self.uint()?;
            return (v <= i64::MAX as u64).then(|| -(v as i64));
        }
        i64::try_from(self.uint()?).ok()
    }

    /// A string without escapes.
    fn str(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let end = memchr::memchr2(b'"', b'\\', self.s)?;
        if self.s[end] != b'"' {
            return None;
        }
        let (text, rest) = self.s.split_at(end);
        self.s = &rest[1..];
        // The whole line is valid UTF-8 and '"' is ASCII: this slice is too.
        std::str::from_utf8(text).ok()
    }
}

/// `fields`: an event record from its first key, `"ts_ns":...`, to its closing brace.
pub fn event(fields: &str) -> Option<TraceEvent> {
    let mut c = Cursor { s: fields.as_bytes() };
    c.lit(br#""ts_ns":"#)?;
    let ts_ns = c.uint()?;
    c.lit(b",")?;
    let mut u32_field = |k: &[u8]| -> Option<u32> {
        c.key(k).then_some(())?;
        let v = u32::try_from(c.uint()?).ok()?;
        c.lit(b",")?;
        Some(v)
    };
    let pid = u32_field(b"pid")?;
    let tid = u32_field(b"tid")?;
    c.key(b"comm").then_some(())?;
    // Longer ones go to serde, which refuses those no task could have.
    let comm = c.str().filter(|s| s.len() < TASK_COMM_LEN)?;
    let comm = CompactString::from(comm);
    c.lit(b",")?;
    c.key(b"func").then_some(())?;
    let func = Probe::from_name(c.str()?)?;
    c.lit(b",")?;
    c.key(b"phase").then_some(())?;
    let phase = match c.str()? {
        "entry" => Phase::Entry,
        "return" => Phase::Return,
        _ => return None,
    };
    c.lit(b",")?;
    let dev = if c.key(b"dev") {
        let d: KDev = c.str()?.parse().ok()?;
        c.lit(b",")?;
        Some(d)
    } else {
        None
    };
    c.key(b"args").then_some(())?;
    c.lit(b"[")?;
    let mut vals = [0u64; 3];
    let mut n = 0;
    if c.lit(b"]").is_none() {
        loop {
            let a = c.str()?;
            *vals.get_mut(n)? = u64::from_str_radix(a.strip_prefix("0x")?, 16).ok()?;
            n += 1;
            if c.lit(b"]").is_some() {
                break;
            }
            c.lit(b",")?;
        }
    }
    c.lit(b",")?;
    let ret = if c.key(b"ret") {
        let r = c.int()?;
        c.lit(b",")?;
        Some(r)
    } else {
        None
    };
    c.key(b"cpu").then_some(())?;
    let cpu = u32::try_from(c.uint()?).ok()?;
    let no_entry = c.lit(br#","no_entry":true"#).is_some();
    c.lit(b"}")?;
    if !c.s.is_empty() {
        return None;
    }
    Some(TraceEvent {
        ts_ns,
        pid,
        tid,
        comm,
        func,
        phase,
        dev,
        args: Args::new(&vals[..n]),
        ret,
        cpu,
        no_entry,
        request: None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every event line of every golden trace: the fast path either declines or agrees with
    /// serde_json exactly; and it takes the common shapes.
    #[test]
    fn agrees_with_serde_on_every_golden_event() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/traces");
        let (mut taken, mut declined) = (0, 0);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if !line.starts_with(r#"{"record":"event","#) {
                    continue;
                }
                let reference: TraceEvent =
                    serde_json::from_str(&format!("{{{}", fields(line))).unwrap();
                match event(fields(line)) {
                    Some(fast) => {
                        assert_eq!(fast, reference, "{line}");
                        taken += 1;
                    }
                    None => {
                        assert!(reference.request.is_some(), "declined a plain event: {line}");
                        declined += 1;
                    }
                }
            }
        }
        assert!(taken > 1000 && declined > 100, "taken {taken}, declined {declined}");
    }

    /// What follows the tag and, in a trace that has them, the integrity fields.
    fn fields(line: &str) -> &str {
        let f = line.strip_prefix(r#"{"record":"event","#).unwrap();
        match f.strip_prefix(r#""rec":"#) {
            Some(r) => &r[r.find(r#"","#).unwrap() + 2..],
            None => f,
        }
    }

    #[test]
    fn declines_what_it_does_not_know_for_sure() {
        let ok = r#""ts_ns":5,"pid":1,"tid":2,"comm":"x","func":"thaw_bdev","phase":"return","dev":"7:1","args":["0x10"],"ret":-16,"cpu":0,"no_entry":true}"#;
        let e = event(ok).expect("the shape this tool writes");
        assert_eq!((e.ret, e.no_entry, e.dev), (Some(-16), true, Some(KDev((7 << 20) | 1))));
        for bad in [
            ok.replace(r#""comm":"x""#, r#""comm":"a\"b""#),
            ok.replace(r#""ts_ns":5"#, r#""ts_ns":05"#),
            ok.replace(r#""ts_ns":5"#, r#""ts_ns":99999999999999999999"#),
            ok.replace(r#""args":["0x10"]"#, r#""args":["0x1","0x2","0x3","0x4"]"#),
            ok.replace(r#""args":["0x10"]"#, r#""args":["16"]"#),
            ok.replace("thaw_bdev", "unknown_fn"),
            ok.replace(r#","cpu":0"#, r#","cpu":0,"extra":1"#),
            ok.replace('}', "} "),
            ok.replace(r#""comm":"x""#, r#""comm":"0123456789abcdef""#),
            ok.replace(r#""dev":"7:1""#, r#""duv":"7:1""#),
            ok.replace(r#""pid":1,"tid":2"#, r#""tid":2,"pid":1"#),
        ] {
            assert_eq!(event(&bad), None, "{bad}");
        }
    }
}
