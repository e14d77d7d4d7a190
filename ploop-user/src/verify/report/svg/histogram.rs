//! The freeze-window histogram: log-scale buckets (freeze windows run from microseconds to
//! seconds, and a linear scale puts all but the slowest in its first bar), ticks on both
//! axes, p50, p99 and max marked.

use std::fmt::Write as _;

use super::{PLOT_W, PLOT_X, RED, axis, heading, legend, note, title, xml};
use crate::{stats::Distribution, verify::report::Windows};

/// Buckets per power of ten: each 1.58 times as wide as the one before.
const PER_DECADE: f64 = 5.0;
const PLOT_H: f64 = 140.0;

/// The bucket range: whole decades, with at least one empty bucket beyond the smallest and
/// the largest value, so that no value, however alike all of them are, sits at an edge.
pub fn range(min_ns: u64, max_ns: u64) -> (i64, i64) {
    let b = |v: u64| ((v.max(1) as f64).log10() * PER_DECADE).floor() as i64;
    let per = PER_DECADE as i64;
    let lo = (b(min_ns) - 1).div_euclid(per) * per;
    let hi = (b(max_ns) + 2 + per - 1).div_euclid(per) * per;
    (lo.max(0), hi.max(per))
}

fn edge(bucket: i64) -> f64 {
    10f64.powf(bucket as f64 / PER_DECADE)
}

pub fn render(w: &Windows, windows: &Distribution, y: f64, o: &mut String) -> f64 {
    let mut y = heading(
        o,
        y,
        &format!(
            "Freeze windows (freeze_bdev return to thaw_bdev return): {}",
            axis::plural(w.count, "window", "windows")
        ),
    );
    if windows.count() == 0 {
        return note(o, y, "nothing was frozen in any call") + 8.0;
    }
    let min = windows.buckets().next().map_or(0, |(v, _)| v);
    let (lo, hi) = range(min, windows.max());
    let mut counts = vec![0u64; (hi - lo) as usize];
    for (ns, n) in windows.buckets() {
        // A value is known to 0.1 % (stats.rs); one that close to a bucket edge may land in
        // the next bucket up, which a 58 %-wide bucket does not show.
        let b = ((ns.max(1) as f64).log10() * PER_DECADE).floor() as i64;
        counts[(b - lo).clamp(0, hi - lo - 1) as usize] += n;
    }
    let peak = counts.iter().copied().max().unwrap_or(1);
    let yticks = axis::count_ticks(peak, 4);
    let ymax = *yticks.last().unwrap_or(&1) as f64;
    let x = |ns: f64| {
        PLOT_X + ((ns.max(1.0)).log10() * PER_DECADE - lo as f64) / (hi - lo) as f64 * PLOT_W
    };
    // The percentiles: in the legend with their values, and as lines on the plot (one line for
    // equal values, labelled with every name).
    let marks: Vec<(&str, f64, &str)> =
        vec![("p50", w.p50_ms, "#2ca02c"), ("p99", w.p99_ms, "#ff7f0e"), ("max", w.max_ms, RED)];
    let mut lx = 10.0;
    for (name, v, colour) in &marks {
        let colour: &'static str = colour_static(colour);
        lx = legend(
            o,
            lx,
            y,
            move |x, y| {
                format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"2\" fill=\"{colour}\"/>",
                    y + 5.0
                )
            },
            &format!("{name} {}", axis::dur(v * 1e6)),
        );
    }
    // A band above the plot for the percentile labels: they never print over a bar.
    y += 22.0 + 26.0;
    let top = y;
    let base = top + PLOT_H;
    let _ = writeln!(o, "<g class=\"histogram\">");
    // The y axis: counts.
    for t in &yticks {
        let ty = base - *t as f64 / ymax * PLOT_H;
        let _ = writeln!(
            o,
            "<g class=\"tick ytick\"><line x1=\"{:.1}\" y1=\"{ty:.1}\" x2=\"{:.1}\" y2=\"{ty:.1}\" stroke=\"black\" stroke-opacity=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text></g>",
            PLOT_X - 4.0,
            PLOT_X + PLOT_W,
            if *t == 0 { 1.0 } else { 0.12 },
            PLOT_X - 7.0,
            ty + 4.0
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"{:.1}\" fill=\"#555\">windows per bucket</text>",
        top + PLOT_H / 2.0
    );
    for (i, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
        let b = lo + i as i64;
        let (x0, x1) = (x(edge(b)), x(edge(b + 1)));
        let h = *n as f64 / ymax * PLOT_H;
        let _ = writeln!(
            o,
            "<g class=\"bar\">{}<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#1f77b4\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{n}</text></g>",
            title(&format!(
                "{} to {}: {}",
                axis::dur(edge(b)),
                axis::dur(edge(b + 1)),
                axis::plural(*n, "freeze window", "freeze windows")
            )),
            x0 + 1.0,
            base - h,
            x1 - x0 - 2.0,
            (x0 + x1) / 2.0,
            base - h - 3.0
        );
    }
    // The x axis: a labelled tick per decade, small ticks between.
    let _ = writeln!(
        o,
        "<line x1=\"{PLOT_X}\" y1=\"{base:.1}\" x2=\"{:.1}\" y2=\"{base:.1}\" stroke=\"black\"/>",
        PLOT_X + PLOT_W
    );
    let per = PER_DECADE as i64;
    for d in lo / per..=hi / per {
        let v = 10f64.powi(d as i32);
        let tx = x(v);
        let _ = writeln!(
            o,
            "<g class=\"tick xtick\"><line x1=\"{tx:.1}\" y1=\"{base:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"black\"/><text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></g>",
            base + 6.0,
            base + 18.0,
            xml(&decade(d))
        );
        if d < hi / per {
            for m in 2..10 {
                let mx = x(v * m as f64);
                let _ = writeln!(
                    o,
                    "<line x1=\"{mx:.1}\" y1=\"{base:.1}\" x2=\"{mx:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
                    base + 3.0
                );
            }
        }
    }
    // Equal values share a line and a label.
    let mut lines: Vec<(f64, Vec<&str>, &str)> = Vec::new();
    for (name, v, colour) in &marks {
        match lines.iter_mut().find(|l| l.0 == *v) {
            Some(l) => l.1.push(name),
            None => lines.push((*v, vec![name], colour)),
        }
    }
    let mut last_label = f64::NEG_INFINITY;
    let mut stagger = 0.0;
    for (v, names, colour) in lines {
        let lxp = x(v * 1e6);
        // Labels closer than their width would overprint: the next one goes a line lower.
        stagger = if lxp - last_label < 70.0 { stagger + 12.0 } else { 0.0 };
        last_label = lxp;
        let label = names.join(" = ");
        let _ = writeln!(
            o,
            "<g class=\"percentile\">{}<line x1=\"{lxp:.1}\" y1=\"{:.1}\" x2=\"{lxp:.1}\" y2=\"{base:.1}\" stroke=\"{colour}\" stroke-dasharray=\"4 2\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{}</text></g>",
            title(&format!("{label}: {}", axis::dur(v * 1e6))),
            top - 24.0 + stagger,
            lxp + 3.0,
            top - 16.0 + stagger,
            xml(&label)
        );
    }
    o.push_str("</g>\n");
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">freeze window (log scale: each bucket 1.58 times the one before)</text>",
        PLOT_X + PLOT_W / 2.0,
        base + 34.0
    );
    base + 44.0
}

/// 10^d ns as a tick label: "1 ms", "100 µs", "10 s".
fn decade(d: i64) -> String {
    let (unit, rest) = match d {
        ..=2 => ("ns", d),
        3..=5 => ("µs", d - 3),
        6..=8 => ("ms", d - 6),
        _ => ("s", d - 9),
    };
    format!("{} {unit}", 10u64.pow(rest as u32))
}

fn colour_static(c: &str) -> &'static str {
    match c {
        "#2ca02c" => "#2ca02c",
        "#ff7f0e" => "#ff7f0e",
        _ => RED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_sit_inside_the_range() {
        // Down to 10 ns: a freeze takes microseconds at the very least.
        for v in [1_000_000u64, 4_090_000, 999, 10, 17_980_000_000] {
            let (lo, hi) = range(v, v);
            let b = ((v.max(1) as f64).log10() * PER_DECADE).floor() as i64;
            assert!(lo < b && b < hi - 1, "{v}: bucket {b} in {lo}..{hi}");
            assert_eq!((lo % 5, hi % 5), (0, 0), "whole decades");
        }
        assert_eq!(
            [decade(0), decade(5), decade(6), decade(10)],
            ["1 ns", "100 µs", "1 ms", "10 s"]
        );
        assert_eq!(range(4_090_000, 4_090_000), (30, 35), "1 ms to 10 ms");
        assert_eq!(range(0, 0), (0, 5), "nothing below 1 ns");
        assert_eq!(range(140_000, 17_980_000), (20, 40), "10 µs to 100 ms");
    }
}
