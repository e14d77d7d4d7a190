//! Zoomed insets: one call on its own time axis, a row per device it touched, so that the
//! order of freeze, switch and thaw is seen, and what should have been frozen beside what was.

use std::fmt::Write as _;

use super::collect::{X1, explain, latest, should_freeze};
use super::{
    COLOURS, MAX_INSETS, PLOT_W, PLOT_X, RED, Reported, Rows, axis, heading, timeline::time_axis,
    title, wrap, x1_mark, x1_tip, xml,
};
use crate::{errno::ret_name, kernel::KDev, verify::checker::CallReport};

const ROW_H: f64 = 16.0;

/// The failing calls' insets (or, in a clean run, the call with the longest freeze window)
/// from `y`; returns the y below them.
pub fn render_all(rows: &Rows, rep: &Reported, y: f64, o: &mut String) -> f64 {
    let mut y = y;
    if rows.failing > 0 {
        let shown = rows.insets.len();
        y = heading(
            o,
            y,
            &if shown == rows.failing {
                format!("{}, zoomed", axis::plural(shown as u64, "failing call", "failing calls"))
            } else {
                format!(
                    "Failing calls, zoomed: the first {shown} of {} (at most {MAX_INSETS}; summary.json lists the violations)",
                    rows.failing
                )
            },
        );
        for r in &rows.insets {
            y = inset(r, rep, &rows.frozen, y, o);
        }
    } else if let Some((_, r)) = &rows.slowest {
        let what =
            if rep.orphans.is_empty() { "No failing call" } else { "No returned call failed" };
        y = heading(o, y, &format!("{what}. The call with the longest freeze window, zoomed"));
        y = inset(r, rep, &rows.frozen, y, o);
    }
    y
}

/// One device row of an inset.
struct Row {
    dev: Option<KDev>,
    name: String,
}

fn inset(
    r: &CallReport,
    rep: &Reported,
    frozen: &[(Option<KDev>, String)],
    y0: f64,
    o: &mut String,
) -> f64 {
    let c = &r.call;
    let failed = r.failures().next().is_some();
    let end = latest(c);
    let span = (end.saturating_sub(c.start_ns)).max(1) as f64;
    let x = |t: u64| PLOT_X + (t.saturating_sub(c.start_ns) as f64 / span).min(1.0) * PLOT_W;
    let mut rows: Vec<Row> = Vec::new();
    let row_of =
        |dev: Option<KDev>, rows: &mut Vec<Row>| match rows.iter().position(|r| r.dev == dev) {
            Some(i) => i,
            None => {
                rows.push(Row { dev, name: c.dev_name(dev) });
                rows.len() - 1
            }
        };
    for f in &c.freezes {
        row_of(f.dev, &mut rows);
    }
    for t in &c.stray_thaws {
        row_of(t.dev, &mut rows);
    }
    // The device that should have been frozen and was not gets a row of its own, empty but
    // outlined in red: what is missing is seen beside what was done.
    let want = should_freeze(c);
    let missing = want.as_ref().filter(|(d, _)| !c.freezes.iter().any(|f| f.ok && f.dev == *d));
    let missing_row = missing.map(|(d, _)| row_of(*d, &mut rows));

    let _ = writeln!(
        o,
        "<g class=\"inset\" data-seq=\"{}\">{}",
        c.seq,
        title(&rep.tip(c.seq, &explain(r)))
    );
    let mut y = y0;
    let head = format!(
        "snapshot #{} by {}[{}/{}] on {}: {}",
        c.seq,
        c.comm,
        c.pid,
        c.tid,
        c.device_name(),
        match c.end_ns {
            Some(e) => format!(
                "returned {} after {}",
                c.result().map(ret_name).unwrap_or_else(|| "?".into()),
                axis::dur(e.saturating_sub(c.start_ns) as f64)
            ),
            None => "had not returned when the run ended".into(),
        }
    );
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"{:.1}\" fill=\"{}\">{}</text>",
        y + 11.0,
        if failed { RED } else { "black" },
        xml(&head)
    );
    y += 18.0;
    let top = y;
    let n_rows = 1 + rows.len();
    let bottom = top + n_rows as f64 * ROW_H;
    // The switch: a band across every row, so that what was frozen during it is read off.
    if let Some(sw) = c.switch() {
        let (q, rl) = (sw.start_ns, sw.end_ns);
        let _ = writeln!(
            o,
            "<g class=\"switch\">{}<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"black\" fill-opacity=\"0.10\" stroke=\"black\" stroke-dasharray=\"3 2\" stroke-width=\"0.7\"/></g>",
            title(&format!(
                "the delta switch: {} at +{} to {} at +{} ({})",
                sw.start_by,
                axis::dur(q.saturating_sub(c.start_ns) as f64),
                sw.end_by,
                axis::dur(rl.saturating_sub(c.start_ns) as f64),
                axis::dur(rl.saturating_sub(q) as f64)
            )),
            x(q),
            (x(rl) - x(q)).max(1.5),
            bottom - top
        );
    }
    // Row 0: the call itself.
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"{:.1}\">the call</text><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"0.6\"/>",
        top + 12.0,
        x(c.start_ns),
        top + 2.0,
        (x(end) - x(c.start_ns)).max(1.5),
        ROW_H - 4.0,
        if failed { "#fbdada" } else { "#ddd" },
        if failed { RED } else { "#888" }
    );
    if let Some(q) = c.switch().map(|sw| sw.start_ns) {
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"{}\">switch</text>",
            label_x(x(q)),
            top + 12.0,
            anchor(x(q))
        );
    }
    // X1 just past the call's end, where the oracle reads the old snapshot (after the return).
    if let Some(k) = X1::of(r) {
        let _ = writeln!(
            o,
            "{}",
            x1_mark(
                k,
                Some(c.seq),
                x(end) + 8.0,
                top + ROW_H / 2.0,
                &x1_tip(k, c.seq, &explain(r))
            )
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let ry = top + (i + 1) as f64 * ROW_H;
        let _ = writeln!(
            o,
            "<text x=\"10\" y=\"{:.1}\">{}</text><line x1=\"{PLOT_X}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            ry + 12.0,
            xml(&row.name),
            ry + ROW_H,
            PLOT_X + PLOT_W,
            ry + ROW_H
        );
        let colour = frozen
            .iter()
            .position(|(d, _)| *d == row.dev)
            .map_or(COLOURS[0], |k| COLOURS[k % COLOURS.len()]);
        for f in c.freezes.iter().filter(|f| f.dev == row.dev) {
            if !f.ok {
                let _ = writeln!(
                    o,
                    "<g class=\"freeze-failed\">{}<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"{RED}\"/></g>",
                    title(&format!("freeze of {} failed: {}", row.name, ret_name(f.ret))),
                    x(f.entry_ns),
                    ry + 3.0,
                    (x(f.ret_ns) - x(f.entry_ns)).max(2.0),
                    ROW_H - 6.0
                );
                continue;
            }
            let thaw_in = f.thaw.as_ref().map(|t| t.entry_ns);
            let thaw_out = f.thaw.as_ref().and_then(|t| t.ret_ns);
            let to = thaw_in.unwrap_or(end);
            let tip = match &f.thaw {
                Some(_) => format!(
                    "{} frozen from +{} to +{} ({}); freeze_bdev entered at +{}, thaw_bdev returned at +{}",
                    row.name,
                    axis::dur(f.ret_ns.saturating_sub(c.start_ns) as f64),
                    axis::dur(to.saturating_sub(c.start_ns) as f64),
                    axis::dur(thaw_out.unwrap_or(to).saturating_sub(f.ret_ns) as f64),
                    axis::dur(f.entry_ns.saturating_sub(c.start_ns) as f64),
                    thaw_out.map_or("?".into(), |t| axis::dur(t.saturating_sub(c.start_ns) as f64)),
                ),
                None => format!(
                    "{} frozen at +{} and never thawed in this call",
                    row.name,
                    axis::dur(f.ret_ns.saturating_sub(c.start_ns) as f64)
                ),
            };
            let fill = if f.thaw.is_none() { RED } else { colour };
            // Freezing and thawing (inside freeze_bdev / thaw_bdev) faint; frozen solid.
            let _ = writeln!(
                o,
                "<g class=\"freeze\">{}<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\" fill-opacity=\"0.35\"/><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"/><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\" fill-opacity=\"0.35\"/></g>",
                title(&tip),
                x(f.entry_ns),
                ry + 3.0,
                x(f.ret_ns) - x(f.entry_ns),
                ROW_H - 6.0,
                x(f.ret_ns),
                ry + 3.0,
                (x(to) - x(f.ret_ns)).max(1.0),
                ROW_H - 6.0,
                x(to),
                ry + 3.0,
                thaw_out.map_or(0.0, |t| x(t) - x(to)),
                ROW_H - 6.0
            );
            if f.thaw.is_none() {
                let _ = writeln!(
                    o,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"white\" font-size=\"10\">never thawed</text>",
                    x(end) - 3.0,
                    ry + 11.5
                );
            }
        }
        for t in c.stray_thaws.iter().filter(|t| t.dev == row.dev) {
            let _ = writeln!(
                o,
                "<g class=\"violation-mark\">{}<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{RED}\"/></g>",
                title(&format!(
                    "thaw of {} at +{} without a freeze of it in this call",
                    row.name,
                    axis::dur(t.entry_ns.saturating_sub(c.start_ns) as f64)
                )),
                x(t.entry_ns),
                ry + 3.0,
                (t.ret_ns.map_or(x(t.entry_ns) + 2.0, x) - x(t.entry_ns)).max(2.0),
                ROW_H - 6.0
            );
        }
        if Some(i) == missing_row
            && let Some((_, name)) = &want
        {
            let (from, to) = c.switch().map_or((c.start_ns, end), |sw| (sw.start_ns, sw.end_ns));
            let why: Vec<String> = r.failures().map(|(id, why)| format!("{id}: {why}")).collect();
            let _ = writeln!(
                o,
                "<g class=\"violation-mark\">{}<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"{RED}\" stroke-dasharray=\"4 2\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{RED}\" font-size=\"10\" text-anchor=\"{}\">not frozen</text></g>",
                title(&format!(
                    "should have been frozen{}: {name}; it was not\n{}",
                    if c.switch_seen() { " during the switch" } else { "" },
                    why.join("\n")
                )),
                x(from),
                ry + 2.0,
                (x(to) - x(from)).max(2.0),
                ROW_H - 4.0,
                label_x(x(from)),
                ry + 11.5,
                anchor(x(from))
            );
        }
    }
    let ticks = axis::time_ticks(span, 8);
    y = time_axis(o, bottom + 2.0, &ticks, span, "since the call began");
    // What should have been frozen, and every violation in full.
    let mut lines: Vec<(String, &str)> = Vec::new();
    if let Some((_, name)) = &want {
        lines.push((format!("should have been frozen: {name}"), "#333"));
    }
    for (id, why) in r.failures() {
        lines.push((format!("{id}: {why}"), RED));
    }
    for v in rep.by_seq.get(&c.seq).into_iter().flatten() {
        if !r.failures().any(|(_, why)| why == v.why) {
            lines.push((format!("{} (reported while the call ran): {}", v.id, v.why), RED));
        }
    }
    for (text, colour) in lines {
        for line in wrap(&text, 140) {
            let _ = writeln!(
                o,
                "<text class=\"explanation\" x=\"10\" y=\"{:.1}\" fill=\"{colour}\">{}</text>",
                y + 10.0,
                xml(&line)
            );
            y += 13.0;
        }
    }
    let _ = writeln!(
        o,
        "<rect x=\"4\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"{}\" rx=\"4\"/></g>",
        y0 - 2.0,
        PLOT_X + PLOT_W + 20.0,
        y - y0 + 8.0,
        if failed { RED } else { "#bbb" }
    );
    y + 14.0
}

/// A label starting at `x` inside the plot: to its right, or to its left near the right edge.
fn label_x(x: f64) -> f64 {
    if x > PLOT_X + PLOT_W - 70.0 { x - 3.0 } else { x + 3.0 }
}

fn anchor(x: f64) -> &'static str {
    if x > PLOT_X + PLOT_W - 70.0 { "end" } else { "start" }
}
