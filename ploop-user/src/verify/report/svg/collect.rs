//! What the timeline keeps of the calls streaming past: bounded whatever the run's length.

use crate::{
    errno::ret_name,
    kernel::KDev,
    verify::{
        checker::{Call, CallReport, Verdict},
        events::SyncState,
    },
};

use super::axis::dur;

/// Calls kept as spans: a run of up to this many is drawn call by call, a longer one as
/// density (beyond a few hundred spans in 770 pixels, spans merge into a grey smear anyway).
pub const MAX_SPANS: usize = 500;
/// Failing calls kept as marks with their explanations; beyond, failing calls show in the
/// density bins only (and the picture says how many).
pub const MAX_MARKS: usize = 1000;
/// Failing calls zoomed into insets: enough to see each kind of fault, few enough to scroll.
pub const MAX_INSETS: usize = 6;
/// ploop devices with a lane of their own; the rest share one.
pub const MAX_LANES: usize = 12;
/// Density bins over the run (shared by all lanes); more than the plot has pixels per lane
/// would only add bytes.
const BINS: usize = 512;

/// One call as the overview draws it.
#[derive(Clone, Debug)]
pub struct Span {
    pub seq: u64,
    pub lane: usize,
    pub start: u64,
    /// `None`: the call had not returned when the run ended.
    pub end: Option<u64>,
    /// Successful freezes: (index into [`Rows::frozen`], frozen at, thawed at (`None`: never)).
    pub freezes: Vec<(usize, u64, Option<u64>)>,
    /// The delta switch ([`Call::switch`]).
    pub switch: Option<(u64, u64)>,
    pub failed: bool,
    /// The call returned an error (a refusal may be correct; it is drawn apart all the same).
    pub error: bool,
    /// X1 where the oracle judged the call; `None` where X1 is n/a (no `--oracle`, no key,
    /// not ext4, not a successful sync snapshot): n/a is no finding, so it gets no mark.
    pub x1: Option<X1>,
    /// The tooltip: what happened, and for a failing call why it fails.
    pub tip: String,
}

/// The oracle's finding on a call, as the timeline marks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X1 {
    /// The old snapshot's ext4 is clean: X1 passed.
    Clean,
    /// The old snapshot needs a journal replay: X1 failed.
    NeedsRecovery,
}

impl X1 {
    pub fn of(r: &CallReport) -> Option<X1> {
        match r.verdict("X1") {
            Some(Verdict::Pass) => Some(X1::Clean),
            Some(Verdict::Fail(_)) => Some(X1::NeedsRecovery),
            _ => None,
        }
    }
}

/// Per lane and bin: time spent in calls, time frozen, calls started, failing calls started,
/// calls started whose old snapshot needs a journal replay (X1 failed).
#[derive(Clone)]
pub struct Bins {
    pub busy: Vec<u64>,
    pub frozen: Vec<u64>,
    pub calls: Vec<u32>,
    pub failing: Vec<u32>,
    pub x1_failing: Vec<u32>,
}

impl Bins {
    fn new() -> Self {
        Bins {
            busy: vec![0; BINS],
            frozen: vec![0; BINS],
            calls: vec![0; BINS],
            failing: vec![0; BINS],
            x1_failing: vec![0; BINS],
        }
    }
}

/// Fixed-size bins over a time range that doubles as the run goes on: memory stays constant
/// and the resolution is always between BINS/2 and BINS bins over the run.
pub struct Density {
    /// Start of bin 0: the start of the first call judged. A call judged later may have
    /// started earlier (calls complete out of order); its part before `t0` goes to bin 0.
    pub t0: u64,
    /// Bin width in ns.
    pub width: u64,
    pub lanes: Vec<Bins>,
}

impl Density {
    fn new(t0: u64) -> Self {
        Density { t0, width: 1000, lanes: Vec::new() }
    }

    /// Widens the bins until `t` falls inside them.
    fn fit(&mut self, t: u64) {
        while t.saturating_sub(self.t0) >= self.width * BINS as u64 {
            for b in &mut self.lanes {
                merge(&mut b.busy);
                merge(&mut b.frozen);
                merge(&mut b.calls);
                merge(&mut b.failing);
                merge(&mut b.x1_failing);
            }
            self.width *= 2;
        }
    }

    fn bin(&self, t: u64) -> usize {
        ((t.saturating_sub(self.t0) / self.width) as usize).min(BINS - 1)
    }

    /// Adds the part of `from..to` that falls in each bin to `v`.
    fn spread(t0: u64, width: u64, v: &mut [u64], from: u64, to: u64) {
        let (a, b) = (from.max(t0) - t0, to.max(t0) - t0);
        let mut t = a;
        while t < b {
            let i = (t / width) as usize;
            let edge = (i as u64 + 1) * width;
            let next = edge.min(b);
            if let Some(x) = v.get_mut(i) {
                *x += next - t;
            }
            t = next;
        }
    }

    fn add(&mut self, lane: usize, span: &Span, end: u64) {
        self.fit(end);
        while self.lanes.len() <= lane {
            self.lanes.push(Bins::new());
        }
        let (t0, w) = (self.t0, self.width);
        let i = self.bin(span.start);
        let b = &mut self.lanes[lane];
        Self::spread(t0, w, &mut b.busy, span.start, end);
        for &(_, from, to) in &span.freezes {
            Self::spread(t0, w, &mut b.frozen, from, to.unwrap_or(end));
        }
        b.calls[i] += 1;
        if span.failed {
            b.failing[i] += 1;
        }
        if span.x1 == Some(X1::NeedsRecovery) {
            b.x1_failing[i] += 1;
        }
    }
}

fn merge<T: Copy + Default + std::ops::Add<Output = T>>(v: &mut [T]) {
    let n = v.len() / 2;
    for i in 0..n {
        v[i] = v[2 * i] + v[2 * i + 1];
    }
    v[n..].fill(T::default());
}

/// What the timeline keeps of a run.
#[derive(Default)]
pub struct Rows {
    /// ploop devices with a lane, by name; a last lane "other devices" when they overflow.
    pub lanes: Vec<String>,
    pub lane_calls: Vec<usize>,
    pub lane_failing: Vec<usize>,
    /// Devices seen frozen, for their colour and the legend.
    pub frozen: Vec<(Option<KDev>, String)>,
    /// The first [`MAX_SPANS`] calls.
    pub spans: Vec<Span>,
    /// The first [`MAX_MARKS`] failing calls.
    pub marks: Vec<Span>,
    pub failing: usize,
    /// Calls the oracle judged: X1 passed, X1 failed.
    pub x1_clean: usize,
    pub x1_failing: usize,
    /// The first [`MAX_INSETS`] failing calls, whole.
    pub insets: Vec<CallReport>,
    /// The call with the longest freeze window: a clean run's inset shows what a call is like.
    pub slowest: Option<(u64, CallReport)>,
    pub density: Option<Density>,
    /// Earliest start and latest time seen in any call.
    pub first_ns: Option<u64>,
    pub last_ns: u64,
    /// The lane of the last call's ploop device: nearly every call is on a device seen just
    /// before, and naming it costs an allocation per call (replay throughput).
    last_lane: Option<(Option<KDev>, usize)>,
}

impl Rows {
    pub fn push(&mut self, r: CallReport) {
        let c = &r.call;
        let failed = r.failures().next().is_some();
        let lane = match self.last_lane {
            Some((dev, lane)) if dev == c.ploop_dev && dev.is_some() => lane,
            _ => {
                let lane = self.lane(c);
                self.last_lane = Some((c.ploop_dev, lane));
                lane
            }
        };
        let freezes: Vec<(usize, u64, Option<u64>)> = c
            .freezes
            .iter()
            .filter(|f| f.ok)
            .map(|f| {
                let k = match self.frozen.iter().position(|d| d.0 == f.dev) {
                    Some(k) => k,
                    None => {
                        self.frozen.push((f.dev, c.dev_name(f.dev)));
                        self.frozen.len() - 1
                    }
                };
                (k, f.ret_ns, f.thaw.as_ref().and_then(|t| t.ret_ns))
            })
            .collect();
        let last = latest(c);
        let span = Span {
            seq: c.seq,
            lane,
            start: c.start_ns,
            end: c.end_ns,
            freezes,
            switch: c.switch().map(|sw| (sw.start_ns, sw.end_ns)),
            failed,
            error: c.result().is_some_and(|r| r != 0),
            x1: X1::of(&r),
            // The tooltip only for a span that is drawn one by one (most of a long run's
            // calls go into the density strips): the text is most of a call's cost here.
            tip: if self.spans.len() < MAX_SPANS || (failed && self.marks.len() < MAX_MARKS) {
                explain(&r)
            } else {
                String::new()
            },
        };
        self.first_ns = Some(self.first_ns.map_or(c.start_ns, |f| f.min(c.start_ns)));
        self.last_ns = self.last_ns.max(last);
        self.lane_calls[lane] += 1;
        match span.x1 {
            Some(X1::Clean) => self.x1_clean += 1,
            Some(X1::NeedsRecovery) => self.x1_failing += 1,
            None => {}
        }
        let density = self.density.get_or_insert_with(|| Density::new(c.start_ns));
        density.add(lane, &span, last);
        if failed {
            self.failing += 1;
            self.lane_failing[lane] += 1;
            if self.marks.len() < MAX_MARKS {
                self.marks.push(span.clone());
            }
            if self.insets.len() < MAX_INSETS {
                self.insets.push(r.clone());
            }
        }
        let longest = c
            .freezes
            .iter()
            .filter(|f| f.ok)
            .map(|f| {
                f.thaw.as_ref().and_then(|t| t.ret_ns).unwrap_or(last).saturating_sub(f.ret_ns)
            })
            .max();
        if let Some(w) = longest
            && self.slowest.as_ref().is_none_or(|(m, _)| w > *m)
        {
            self.slowest = Some((w, r));
        }
        if self.spans.len() < MAX_SPANS {
            self.spans.push(span);
        }
    }

    /// The lane of the call's ploop device.
    fn lane(&mut self, c: &Call) -> usize {
        let name = c.device_name();
        if let Some(i) = self.lanes.iter().position(|l| *l == name) {
            return i;
        }
        if self.lanes.len() < MAX_LANES {
            self.lanes.push(name);
        } else if self.lanes.len() == MAX_LANES {
            self.lanes.push("other ploop devices".into());
        } else {
            return MAX_LANES;
        }
        self.lane_calls.push(0);
        self.lane_failing.push(0);
        self.lanes.len() - 1
    }
}

/// The last moment seen in a call: its end, or for a call still in the kernel at the end of
/// the run, its last freeze, thaw or switch event.
pub fn latest(c: &Call) -> u64 {
    c.end_ns.unwrap_or_else(|| {
        c.freezes
            .iter()
            .flat_map(|f| [Some(f.ret_ns), f.thaw.as_ref().map(|t| t.entry_ns)])
            .chain([c.quiesce_ns, c.relax_ns, c.complete_ns, c.completed_ns])
            .flatten()
            .chain([c.start_ns])
            .max()
            .unwrap_or(c.start_ns)
    })
}

/// The device the call should have frozen, in words: the sync fd's filesystem, else the
/// filesystem above ploop; `None` when nothing should have been (no PLOOP_FLAG_FS_SYNC).
pub fn should_freeze(c: &Call) -> Option<(Option<KDev>, String)> {
    if !c.request.fs_sync() {
        return None;
    }
    if let Some(sync) = &c.request.sync
        && sync.state == SyncState::Resolved
        && let Some(dev) = sync.dev
    {
        return Some((
            Some(dev),
            format!("{} (the sync fd {}'s filesystem)", c.dev_name(Some(dev)), sync.fd),
        ));
    }
    let stack = c.stack.as_ref()?;
    let fs = stack.filesystems().next()?;
    Some((
        Some(fs.dev),
        format!(
            "{} ({} at {})",
            stack.name(fs.dev),
            fs.fstype.as_deref().unwrap_or("?"),
            fs.mounts.join(", ")
        ),
    ))
}

/// The tooltip of a call: who, how long, what it returned, each violation in full, what was
/// frozen and what should have been.
pub fn explain(r: &CallReport) -> String {
    let c = &r.call;
    let took = match c.end_ns {
        Some(e) => format!(
            "returned {} after {}",
            c.result().map(ret_name).unwrap_or_else(|| "?".into()),
            dur(e.saturating_sub(c.start_ns) as f64)
        ),
        None => "had not returned when the run ended".into(),
    };
    let mut lines = vec![format!(
        "snapshot #{} by {}[{}/{}] on {}: {took}",
        c.seq,
        c.comm,
        c.pid,
        c.tid,
        c.device_name()
    )];
    lines.push(format!("request: {}", c.request_shape()));
    for (id, why) in r.failures() {
        lines.push(format!("{id} violated: {why}"));
    }
    let frozen: Vec<String> = c
        .freezes
        .iter()
        .map(|f| {
            let name = c.dev_name(f.dev);
            match (&f.thaw, f.ok) {
                (_, false) => format!("{name}: freeze failed ({})", ret_name(f.ret)),
                (Some(t), true) => match t.ret_ns {
                    Some(at) => format!("{name} for {}", dur(at.saturating_sub(f.ret_ns) as f64)),
                    None => format!("{name} (thaw did not return)"),
                },
                (None, true) => format!("{name}, never thawed"),
            }
        })
        .collect();
    lines.push(format!(
        "frozen: {}",
        if frozen.is_empty() { "nothing".into() } else { frozen.join("; ") }
    ));
    for t in &c.stray_thaws {
        lines.push(format!("thawed without a freeze in this call: {}", c.dev_name(t.dev)));
    }
    lines.push(match should_freeze(c) {
        Some((_, name)) => format!("should have been frozen: {name}"),
        None => "should have been frozen: nothing (PLOOP_FLAG_FS_SYNC not set)".into(),
    });
    if let Some(sw) = c.switch() {
        lines.push(format!(
            "switch ({} to {}): {}",
            sw.start_by,
            sw.end_by,
            dur(sw.end_ns.saturating_sub(sw.start_ns) as f64)
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn density_bins_double_and_keep_every_nanosecond() {
        let mut d = Density::new(0);
        d.lanes.push(Bins::new());
        let w0 = d.width;
        Density::spread(d.t0, d.width, &mut d.lanes[0].busy, 10, 3 * w0 + 10);
        assert_eq!(d.lanes[0].busy.iter().sum::<u64>(), 3 * w0);
        d.fit(w0 * BINS as u64 * 3);
        assert_eq!(d.width, 4 * w0, "widened to hold the time");
        assert_eq!(d.lanes[0].busy.iter().sum::<u64>(), 3 * w0, "merging loses nothing");
        assert_eq!(d.lanes[0].busy[0], 3 * w0, "the first three bins became one");
    }
}
