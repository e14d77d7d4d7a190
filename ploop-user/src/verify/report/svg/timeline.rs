//! The overview: the whole run on one time axis, a lane per ploop device.

use std::fmt::Write as _;

use super::collect::{Span, X1};
use super::{
    COLOURS, MAX_MARKS, MAX_SPANS, PLOT_W, PLOT_X, RED, Reported, Rows, axis, heading, legend,
    note, square, title, x1_mark, x1_tip, xml,
};

const ROW_H: f64 = 14.0;
/// Overlapping calls on one device stack into sub-rows, up to this many (more overlap at
/// once than that is drawn on the last one).
const MAX_SUBROWS: usize = 6;
const DENSITY_H: f64 = 34.0;
/// The X1 mark's centre, right of the violation marker's (which is 10 pixels wide).
const X1_DX: f64 = 11.0;

/// Draws the overview from `y`; returns the y below it.
pub fn render(rows: &Rows, rep: &Reported, total: usize, y: f64, o: &mut String) -> f64 {
    let Some(first) = rows.first_ns else {
        return note(o, y + 6.0, "no snapshot call was observed: nothing to draw on a timeline")
            + 6.0;
    };
    let dense = total > MAX_SPANS;
    // A call that never returned is drawn up to the moment its violation was reported.
    let last = rep.orphans.iter().map(|v| v.ts_ns).chain([rows.last_ns]).max().unwrap_or(0);
    let span_ns = (last.saturating_sub(first)).max(1) as f64;
    let x = |t: u64| PLOT_X + (t.saturating_sub(first) as f64 / span_ns).min(1.0) * PLOT_W;
    let mut y = heading(
        o,
        y,
        &format!(
            "Timeline: {} over {}{}",
            axis::plural(total as u64, "snapshot call", "snapshot calls"),
            axis::dur(span_ns),
            if dense {
                format!(
                    " (more than {MAX_SPANS}: drawn as density per device, failing calls marked)"
                )
            } else {
                String::new()
            }
        ),
    );
    y = legends(rows, dense, y, o);
    let top = y;
    let mut lanes_out = String::new();
    for (i, name) in rows.lanes.iter().enumerate() {
        let calls = rows.lane_calls[i];
        let failing = rows.lane_failing[i];
        let h = if dense {
            DENSITY_H
        } else {
            let spans: Vec<&Span> = rows.spans.iter().filter(|s| s.lane == i).collect();
            subrows(&spans).1 as f64 * ROW_H
        };
        // Room for the two label lines at the left, however few rows.
        let lane_h = (h + 4.0).max(30.0);
        let _ = writeln!(
            lanes_out,
            "<g class=\"lane\" data-device=\"{}\">{}<rect x=\"{PLOT_X}\" y=\"{y:.1}\" width=\"{PLOT_W}\" height=\"{:.1}\" fill=\"#f4f4f4\"/>",
            xml(name),
            title(&format!(
                "{name}: {}{}",
                axis::plural(calls as u64, "snapshot call", "snapshot calls"),
                if failing > 0 { format!(", {failing} failing") } else { String::new() }
            )),
            lane_h
        );
        let _ = writeln!(
            lanes_out,
            "<text x=\"10\" y=\"{:.1}\">{}</text><text x=\"10\" y=\"{:.1}\" fill=\"{}\">{}{}</text>",
            y + 11.0,
            xml(&clip(name, 27)),
            y + 24.0,
            if failing > 0 { RED } else { "#555" },
            axis::plural(calls as u64, "call", "calls"),
            if failing > 0 { format!(", {failing} failing") } else { String::new() }
        );
        if dense {
            density_lane(rows, rep, i, first, span_ns, y + 2.0, &mut lanes_out);
        } else {
            span_lane(rows, rep, i, &x, last, y + 2.0, &mut lanes_out);
        }
        // Violations of calls that were never judged: a marker where they were reported.
        for v in rep.orphans.iter().filter(|v| lane_of(rows, &v.device) == i) {
            let _ = writeln!(
                lanes_out,
                "<g class=\"violation-mark orphan\" data-seq=\"{}\">{}<line x1=\"{mx:.1}\" y1=\"{:.1}\" x2=\"{mx:.1}\" y2=\"{:.1}\" stroke=\"{RED}\" stroke-dasharray=\"3 2\"/>{}</g>",
                v.seq,
                title(&orphan_text(v, first)),
                y + 2.0,
                y + lane_h,
                triangle(mx_of(&x, v.ts_ns), y + 3.0, ""),
                mx = mx_of(&x, v.ts_ns)
            );
        }
        lanes_out.push_str("</g>\n");
        y += lane_h + 4.0;
    }
    o.push_str(&lanes_out);
    // Grid lines over the lanes, faint enough not to hide a one-pixel call.
    let ticks = axis::time_ticks(span_ns, 8);
    for (t, _) in &ticks {
        let gx = PLOT_X + t / span_ns * PLOT_W;
        let _ = writeln!(
            o,
            "<line x1=\"{gx:.1}\" y1=\"{top:.1}\" x2=\"{gx:.1}\" y2=\"{y:.1}\" stroke=\"black\" stroke-opacity=\"0.12\"/>"
        );
    }
    if dense && rows.x1_clean > 0 {
        // Thousands of pass marks would bury the failing calls; the count says the oracle ran.
        y = note(
            o,
            y,
            &format!(
                "X1 passed (old snapshot clean) in {}: not marked one by one in the density view.",
                axis::plural(rows.x1_clean as u64, "call", "calls")
            ),
        );
    }
    if dense && rows.failing > rows.marks.len() {
        y = note(
            o,
            y,
            &format!(
                "The first {MAX_MARKS} failing calls are marked; the other {} show as red in their lane's density.",
                rows.failing - rows.marks.len()
            ),
        );
    }
    y = time_axis(o, y, &ticks, span_ns, "since the first call");
    for v in rep.orphans.iter().take(super::MAX_INSETS) {
        let text = orphan_text(v, first);
        for line in super::wrap(&text, 140) {
            let _ = writeln!(
                o,
                "<text class=\"explanation\" x=\"10\" y=\"{:.1}\" fill=\"{RED}\">{}</text>",
                y + 11.0,
                xml(&line)
            );
            y += 13.0;
        }
    }
    if rep.orphans.len() > super::MAX_INSETS {
        y = note(
            o,
            y,
            &format!(
                "... and {} more such violations in summary.json",
                rep.orphans.len() - super::MAX_INSETS
            ),
        );
    }
    y + 8.0
}

/// A time axis at `y` along the plot: a line, ticks with labels; returns the y below it.
pub fn time_axis(o: &mut String, y: f64, ticks: &[(f64, String)], span_ns: f64, what: &str) -> f64 {
    let _ = writeln!(
        o,
        "<g class=\"axis\"><line x1=\"{PLOT_X}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"black\"/>",
        PLOT_X + PLOT_W
    );
    for (t, label) in ticks {
        let tx = PLOT_X + t / span_ns * PLOT_W;
        let anchor = if *t == 0.0 { "start" } else { "middle" };
        let _ = writeln!(
            o,
            "<g class=\"tick\"><line x1=\"{tx:.1}\" y1=\"{y:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"black\"/><text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text></g>",
            y + 5.0,
            y + 17.0,
            xml(label)
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">time {}</text></g>",
        PLOT_X - 8.0,
        y + 17.0,
        xml(what)
    );
    y + 24.0
}

fn legends(rows: &Rows, dense: bool, y: f64, o: &mut String) -> f64 {
    let mut lx = 10.0;
    if dense {
        lx = legend(o, lx, y, square("#bbb"), "share of time in a call");
        lx = legend(o, lx, y, square(COLOURS[0]), "share of time frozen");
    } else {
        lx = legend(
            o,
            lx,
            y,
            |x, y| {
                format!(
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"12\" height=\"12\" fill=\"#ddd\" stroke=\"#888\"/>"
                )
            },
            "snapshot call",
        );
        lx = legend(
            o,
            lx,
            y,
            |x, y| {
                format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"4\" fill=\"black\"/>",
                    y + 4.0
                )
            },
            "switch",
        );
    }
    lx = legend(o, lx, y, |x, y| triangle(x + 6.0, y + 11.0, ""), "violation (hover for why)");
    // Only a run with the oracle has X1 marks to explain; the failure's entry stays even when
    // none failed, so that a clean picture says what a failure would have looked like.
    if rows.x1_failing + rows.x1_clean > 0 {
        lx = legend(
            o,
            lx,
            y,
            |x, y| x1_mark(X1::NeedsRecovery, None, x + 6.0, y + 6.0, ""),
            "X1: old snapshot needs a journal replay",
        );
        if !dense && rows.x1_clean > 0 {
            legend(
                o,
                lx,
                y,
                |x, y| x1_mark(X1::Clean, None, x + 6.0, y + 6.0, ""),
                "X1: old snapshot clean",
            );
        }
    }
    let mut y = y + 18.0;
    if !dense && !rows.frozen.is_empty() {
        let mut lx = 10.0;
        let _ = writeln!(o, "<text x=\"{lx}\" y=\"{:.1}\">frozen:</text>", y + 10.0);
        lx += 60.0;
        for (k, (_, name)) in rows.frozen.iter().enumerate() {
            if lx > 850.0 {
                y += 16.0;
                lx = 70.0;
            }
            lx = legend(o, lx, y, square(COLOURS[k % COLOURS.len()]), name);
        }
        y += 18.0;
    }
    y + 4.0
}

/// A red marker pointing down at `x`, its tip at `y`.
fn triangle(x: f64, y: f64, tip: &str) -> String {
    format!(
        "<path d=\"M{:.1},{:.1} L{:.1},{:.1} L{x:.1},{y:.1} Z\" fill=\"{RED}\">{tip}</path>",
        x - 5.0,
        y - 8.0,
        x + 5.0,
        y - 8.0
    )
}

/// Sub-row of each span (greedy: the first row free at its start) and the number of rows.
fn subrows(spans: &[&Span]) -> (Vec<usize>, usize) {
    let mut ends: Vec<u64> = Vec::new();
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| spans[i].start);
    let mut row = vec![0; spans.len()];
    for i in order {
        let s = spans[i];
        let end = s.end.unwrap_or(u64::MAX);
        let r = match ends.iter().position(|&e| e <= s.start) {
            Some(r) => r,
            None if ends.len() < MAX_SUBROWS => {
                ends.push(0);
                ends.len() - 1
            }
            None => MAX_SUBROWS - 1,
        };
        ends[r] = ends[r].max(end);
        row[i] = r;
    }
    (row, ends.len().max(1))
}

/// Every call of lane `lane` as a span: the call in grey, its freeze windows in their
/// device's colour, the switch in black, a red marker over a failing call.
fn span_lane(
    rows: &Rows,
    rep: &Reported,
    lane: usize,
    x: &impl Fn(u64) -> f64,
    last: u64,
    y: f64,
    o: &mut String,
) {
    let spans: Vec<&Span> = rows.spans.iter().filter(|s| s.lane == lane).collect();
    let (row, _) = subrows(&spans);
    // Failing calls last, so that their markers are on top.
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| spans[i].failed);
    for i in order {
        let s = spans[i];
        let ry = y + row[i] as f64 * ROW_H;
        let end = s.end.unwrap_or(last);
        let (x0, x1) = (x(s.start), x(end));
        let class = if s.failed { "call violation-mark" } else { "call" };
        let (fill, stroke) = if s.failed {
            ("#fbdada", RED)
        } else if s.error {
            ("#eee", "#e08080")
        } else {
            ("#ddd", "#888")
        };
        let _ = write!(
            o,
            "<g class=\"{class}\" data-seq=\"{}\">{}<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"0.6\"/>",
            s.seq,
            title(&rep.tip(s.seq, &s.tip)),
            ry + 1.0,
            (x1 - x0).max(1.5),
            ROW_H - 2.0
        );
        for &(k, from, to) in &s.freezes {
            let (f0, f1) = (x(from), x(to.unwrap_or(end)));
            let colour = if to.is_none() { RED } else { COLOURS[k % COLOURS.len()] };
            let _ = write!(
                o,
                "<rect x=\"{f0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
                ry + 3.0,
                (f1 - f0).max(1.0),
                ROW_H - 6.0
            );
        }
        if let Some((q, r)) = s.switch {
            let _ = write!(
                o,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"3\" fill=\"black\"/>",
                x(q),
                ry + ROW_H / 2.0 - 1.5,
                (x(r) - x(q)).max(1.0)
            );
        }
        let mid = (x0 + x1) / 2.0;
        if s.failed {
            o.push_str(&triangle(mid, ry + 1.0, ""));
        }
        if let Some(k) = s.x1 {
            o.push_str(&x1_mark(k, Some(s.seq), mid + X1_DX, ry - 3.0, &x1_tip(k, s.seq, &s.tip)));
        }
        o.push_str("</g>\n");
    }
}

/// A lane as density: per bin the share of time a call was running (grey) and the share of
/// time something was frozen (blue), failing calls marked in red.
fn density_lane(
    rows: &Rows,
    rep: &Reported,
    lane: usize,
    first: u64,
    span_ns: f64,
    y: f64,
    o: &mut String,
) {
    let Some(d) = &rows.density else { return };
    let Some(b) = d.lanes.get(lane) else { return };
    let x = |t: f64| PLOT_X + ((t - first as f64) / span_ns).clamp(0.0, 1.0) * PLOT_W;
    let w = d.width as f64;
    let capped = rows.failing > rows.marks.len();
    for i in 0..b.busy.len() {
        if b.busy[i] == 0 && b.calls[i] == 0 {
            continue;
        }
        let from = d.t0 as f64 + i as f64 * w;
        let (x0, x1) = (x(from), x(from + w));
        let busy = (b.busy[i] as f64 / w).min(1.0);
        let frozen = (b.frozen[i] as f64 / w).min(1.0);
        let bw = (x1 - x0).max(0.6);
        let _ = write!(
            o,
            "<g class=\"bin\">{}<rect x=\"{x0:.2}\" y=\"{:.1}\" width=\"{bw:.2}\" height=\"{:.1}\" fill=\"#bbb\"/>",
            title(&format!(
                "{} to {}: {} started, in a call {:.0} % of the time, frozen {:.0} %{}",
                axis::dur(from - first as f64),
                axis::dur(from + w - first as f64),
                axis::plural(b.calls[i], "call", "calls"),
                b.busy[i] as f64 / w * 100.0,
                b.frozen[i] as f64 / w * 100.0,
                match (b.failing[i], b.x1_failing[i]) {
                    (0, _) => String::new(),
                    (f, 0) => format!(", {f} failing"),
                    (f, x) => format!(
                        ", {f} failing ({x} leaving a snapshot that needs a journal replay, X1)"
                    ),
                }
            )),
            y + DENSITY_H * (1.0 - busy),
            DENSITY_H * busy
        );
        if frozen > 0.0 {
            let _ = write!(
                o,
                "<rect x=\"{x0:.2}\" y=\"{:.1}\" width=\"{bw:.2}\" height=\"{:.1}\" fill=\"{}\"/>",
                y + DENSITY_H * (1.0 - frozen),
                (DENSITY_H * frozen).max(0.5),
                COLOURS[0]
            );
        }
        if capped && b.failing[i] > 0 {
            let _ = write!(
                o,
                "<rect x=\"{x0:.2}\" y=\"{:.1}\" width=\"{bw:.2}\" height=\"4\" fill=\"{RED}\"/>",
                y + DENSITY_H - 4.0
            );
        }
        // Past the marks, X1 failures still show: a dark strip above the red one.
        if capped && b.x1_failing[i] > 0 {
            let _ = write!(
                o,
                "<rect class=\"x1-strip\" x=\"{x0:.2}\" y=\"{:.1}\" width=\"{bw:.2}\" height=\"3\" fill=\"{}\"/>",
                y + DENSITY_H - 7.0,
                super::X1_FAIL
            );
        }
        o.push_str("</g>\n");
    }
    for s in rows.marks.iter().filter(|s| s.lane == lane) {
        let mx = x(s.start as f64);
        let _ = writeln!(
            o,
            "<g class=\"call violation-mark\" data-seq=\"{}\">{}<line x1=\"{mx:.1}\" y1=\"{y:.1}\" x2=\"{mx:.1}\" y2=\"{:.1}\" stroke=\"{RED}\"/>{}</g>",
            s.seq,
            title(&rep.tip(s.seq, &s.tip)),
            y + DENSITY_H,
            triangle(mx, y + 1.0, "")
        );
        // In the density view only failing calls are marked: an X1 pass is in the count below.
        if s.x1 == Some(X1::NeedsRecovery) {
            let _ = writeln!(
                o,
                "{}",
                x1_mark(
                    X1::NeedsRecovery,
                    Some(s.seq),
                    mx + X1_DX,
                    y - 3.0,
                    &x1_tip(X1::NeedsRecovery, s.seq, &s.tip)
                )
            );
        }
    }
}

fn mx_of(x: &impl Fn(u64) -> f64, t: u64) -> f64 {
    x(t)
}

/// The lane a violation's device has (the shared last lane when it has none of its own).
fn lane_of(rows: &Rows, device: &str) -> usize {
    rows.lanes.iter().position(|l| l == device).unwrap_or(rows.lanes.len().saturating_sub(1))
}

fn orphan_text(v: &super::Violation, first: u64) -> String {
    format!(
        "{} snapshot #{} (tid {}, {}) at +{}, a call that had not returned when the run ended: {}",
        v.id,
        v.seq,
        v.tid,
        v.device,
        axis::dur(v.ts_ns.saturating_sub(first) as f64),
        v.why
    )
}

/// `s` shortened to `n` characters with an ellipsis.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}
