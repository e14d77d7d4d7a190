//! `timeline.svg`: the first calls as rows with their freeze windows and switch, and the
//! freeze-window histogram.

use std::fmt::Write as _;

use super::{Summary, Windows, xml};
use crate::{errno::ret_name, kernel::KDev, stats::Distribution, verify::checker::CallReport};

const COLOURS: [&str; 6] = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// The calls the timeline draws: the first [`MAX_ROWS`].
#[derive(Default)]
pub struct Rows(Vec<CallReport>);

const MAX_ROWS: usize = 300;

impl Rows {
    pub fn push(&mut self, r: CallReport) {
        if self.0.len() < MAX_ROWS {
            self.0.push(r);
        }
    }
}

/// Each snapshot call on its own row, on its own time scale (calls last milliseconds, runs
/// minutes): the call span, the freeze window per device, the switch, errors in red; then the
/// freeze-window histogram with p50, p99 and max. `total`: every call of the run.
pub fn render(s: &Summary, rows: &Rows, total: usize, windows: &Distribution, o: &mut String) {
    let calls = &rows.0;
    let rows = calls.len();
    let (left, width, row_h) = (260.0, 600.0, 18.0);
    let hist_top = 60.0 + rows as f64 * row_h + 40.0;
    let height = hist_top + 220.0;
    // Room on the right for the percentile labels of the histogram.
    let total_w = left + width + 130.0;
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_w}\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\">"
    );
    let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"20\" font-size=\"14\">ploop-verify: {} snapshot calls, {} violations ({})</text>",
        s.snapshots, s.violations, s.verdict
    );
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"38\" fill=\"#555\">each row: one call on its own scale; bars: freeze windows per device; black tick: ploop_quiesce..ploop_relax; red: error or violation</text>"
    );
    // Devices in order of first appearance, with a name for the legend.
    let mut devices: Vec<(Option<KDev>, String)> = Vec::new();
    for (i, r) in calls.iter().enumerate() {
        let c = &r.call;
        let y = 60.0 + i as f64 * row_h;
        let end = c.end_ns.unwrap_or(c.start_ns + 1);
        let span = (end.saturating_sub(c.start_ns)).max(1) as f64;
        let x =
            |t: u64| left + (t.saturating_sub(c.start_ns) as f64 / span).clamp(0.0, 1.0) * width;
        let bad = r.failures().next().is_some();
        let err = c.ret.is_some_and(|r| r != 0);
        let colour = if bad || err { "#d62728" } else { "#333" };
        let _ = writeln!(
            o,
            "<text x=\"10\" y=\"{}\" fill=\"{colour}\">{}</text>",
            y + 12.0,
            xml(&format!(
                "#{} tid {} ret {}{}",
                c.seq,
                c.tid,
                c.ret.map(ret_name).unwrap_or_default(),
                if bad {
                    format!(" {}", r.failures().map(|(id, _)| id).collect::<Vec<_>>().join(","))
                } else {
                    String::new()
                }
            ))
        );
        let _ = writeln!(
            o,
            "<rect x=\"{left}\" y=\"{}\" width=\"{width}\" height=\"{}\" fill=\"#eee\" stroke=\"{}\"/>",
            y + 2.0,
            row_h - 4.0,
            if bad { "#d62728" } else { "#ccc" }
        );
        for f in c.freezes.iter().filter(|f| f.ok) {
            let k = devices.iter().position(|d| d.0 == f.dev).unwrap_or_else(|| {
                devices.push((f.dev, c.dev_name(f.dev)));
                devices.len() - 1
            });
            let to = f.thaw.as_ref().and_then(|t| t.ret_ns).unwrap_or(end);
            let leaked = f.thaw.is_none();
            let _ = writeln!(
                o,
                "<rect x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\" opacity=\"0.8\"><title>{}</title></rect>",
                x(f.ret_ns),
                y + 4.0,
                (x(to) - x(f.ret_ns)).max(1.0),
                row_h - 8.0,
                if leaked { "#d62728" } else { COLOURS[k % COLOURS.len()] },
                xml(&format!(
                    "{} frozen {:.2} ms{}",
                    c.dev_name(f.dev),
                    to.saturating_sub(f.ret_ns) as f64 / 1e6,
                    if leaked { " (never thawed)" } else { "" }
                ))
            );
        }
        if let (Some(q), Some(rl)) = (c.quiesce_ns, c.relax_ns) {
            let _ = writeln!(
                o,
                "<rect x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"3\" fill=\"black\"/>",
                x(q),
                y + row_h / 2.0 - 1.5,
                (x(rl) - x(q)).max(1.0)
            );
        }
    }
    if total > rows {
        let _ = writeln!(
            o,
            "<text x=\"10\" y=\"{}\">... {} more calls in summary.json</text>",
            60.0 + rows as f64 * row_h + 14.0,
            total - rows
        );
    }
    for (k, (_, name)) in devices.iter().enumerate() {
        let _ = writeln!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            10.0 + k as f64 * 150.0,
            hist_top - 30.0,
            COLOURS[k % COLOURS.len()],
            24.0 + k as f64 * 150.0,
            hist_top - 21.0,
            xml(name)
        );
    }
    histogram(o, &s.freeze_window, windows, left, hist_top, width);
    let _ = o.write_str("</svg>\n");
}

fn histogram(o: &mut String, w: &Windows, windows: &Distribution, left: f64, top: f64, width: f64) {
    let h = 150.0;
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"{}\" font-size=\"13\">freeze windows: {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)</text>",
        top + 14.0,
        w.count,
        w.p50_ms,
        w.p99_ms,
        w.max_ms
    );
    if windows.count() == 0 {
        return;
    }
    const BINS: usize = 30;
    let max = w.max_ms.max(1e-6);
    let mut bins = [0u64; BINS];
    for (ns, n) in windows.buckets() {
        let b = ((ns as f64 / 1e6) / max * BINS as f64) as usize;
        bins[b.min(BINS - 1)] += n;
    }
    let peak = *bins.iter().max().unwrap_or(&1) as f64;
    let base = top + 30.0 + h;
    let bw = width / BINS as f64;
    for (i, n) in bins.iter().enumerate() {
        let bh = *n as f64 / peak * h;
        let _ = writeln!(
            o,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#1f77b4\"><title>{n}</title></rect>",
            left + i as f64 * bw,
            base - bh,
            bw - 1.0
        );
    }
    let _ = writeln!(
        o,
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>",
        left + width
    );
    for (label, v, colour) in
        [("p50", w.p50_ms, "#2ca02c"), ("p99", w.p99_ms, "#ff7f0e"), ("max", w.max_ms, "#d62728")]
    {
        let x = left + (v / max).clamp(0.0, 1.0) * width;
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{base}\" stroke=\"{colour}\" stroke-dasharray=\"4 2\"/><text x=\"{:.1}\" y=\"{}\" fill=\"{colour}\">{label} {v:.2} ms</text>",
            top + 30.0,
            x + 3.0,
            top + 40.0
                + if label == "p99" {
                    12.0
                } else if label == "max" {
                    24.0
                } else {
                    0.0
                }
        );
    }
    let _ = writeln!(o, "<text x=\"{left}\" y=\"{}\">0 ms</text>", base + 14.0);
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max:.2} ms</text>",
        left + width,
        base + 14.0
    );
}
