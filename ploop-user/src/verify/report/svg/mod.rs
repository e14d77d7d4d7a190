//! `timeline.svg`: what a person looks at first.
//!
//! From the top: the verdict; the run on one shared time axis, a lane per ploop device, each
//! call a span with its freeze windows inside and the delta switch marked; every failing call
//! zoomed in an inset of its own (up to [`MAX_INSETS`]); the freeze-window histogram on a
//! log scale. Every mark carries its explanation as an SVG `<title>` (a tooltip in browsers).
//!
//! Calls stream through [`Rows::push`] and memory stays bounded however long the run: the
//! first [`MAX_SPANS`] calls are kept as spans, every call also goes into fixed-size density
//! bins, and failing calls are kept as marks up to [`MAX_MARKS`]. A run of more calls than
//! spans is drawn as density per lane (share of time in a call, share of time frozen) with
//! the failing calls drawn over it.
//!
//! Elements carry `class` names (`lane`, `tick`, `call`, `violation-mark`, `x1-mark`, `inset`,
//! `bar`) so tests and scripts find them without reading coordinates.
//!
//! X1 (the oracle, `run --oracle`) is the consequence of S2 rather than another fault in the
//! call, so it gets a mark of its own beside the violation marker: a dark diamond where the
//! old snapshot needs a journal replay, a small hollow green circle where the oracle read it
//! clean (a pass is drawn, faintly, because "checked and clean" and "not checked" otherwise
//! look alike; the circle is too small to compete with a fault). X1 n/a gets no mark.

pub(crate) mod axis;
mod collect;
mod histogram;
mod inset;
mod timeline;

use std::fmt::Write as _;

use rustc_hash::FxHashMap as HashMap;

use super::{RunVerdict, Summary, xml};
use crate::{stats::Distribution, verify::checker::Violation};
pub use collect::Rows;
use collect::X1;
use collect::{MAX_INSETS, MAX_MARKS, MAX_SPANS};

/// Width of the drawing; the plots run from [`PLOT_X`] to `WIDTH - 30`.
const WIDTH: f64 = 1000.0;
/// Left edge of every plot: lane and row labels go to its left.
const PLOT_X: f64 = 200.0;
const PLOT_W: f64 = WIDTH - PLOT_X - 30.0;

const RED: &str = "#d62728";
/// X1 failed: dark, apart from the red of the violation marker it sits beside.
const X1_FAIL: &str = "#5c0012";
const X1_PASS: &str = "#2ca02c";
/// Colours of the frozen devices, in order of first appearance (red is kept for faults).
const COLOURS: [&str; 6] = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Renders the whole picture. `total`: every call of the run; `windows`: every freeze window.
pub fn render(s: &Summary, rows: &Rows, total: usize, windows: &Distribution, o: &mut String) {
    let mut body = String::new();
    let reported = Reported::new(&s.violation_list, rows);
    let mut y = header(s, &mut body);
    y = timeline::render(rows, &reported, total, y, &mut body);
    y = inset::render_all(rows, &reported, y, &mut body);
    y = histogram::render(&s.freeze_window, windows, y, &mut body);
    let height = y + 10.0;
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"DejaVu Sans Mono, monospace\" font-size=\"11\">"
    );
    let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    o.push_str(&body);
    o.push_str("</svg>\n");
}

/// The violations as printed during the run (summary.json's list), by call. Most belong to
/// a judged call and are already in its verdicts; T2 is reported while a call hangs, so a
/// call that never returned has violations and no judged report ("orphans"), and one that
/// returned later may carry T2 outside its verdicts.
struct Reported<'a> {
    by_seq: HashMap<u64, Vec<&'a Violation>>,
    orphans: Vec<&'a Violation>,
}

impl<'a> Reported<'a> {
    fn new(list: &'a [Violation], rows: &Rows) -> Self {
        let mut by_seq: HashMap<u64, Vec<&Violation>> = HashMap::default();
        for v in list {
            by_seq.entry(v.seq).or_default().push(v);
        }
        // Only when every failing call is kept as a mark is "not among the marks" the same as
        // "no judged call"; past that the list and the marks cover different calls.
        let orphans = if rows.failing <= MAX_MARKS {
            list.iter().filter(|v| !rows.marks.iter().any(|m| m.seq == v.seq)).collect()
        } else {
            Vec::new()
        };
        Reported { by_seq, orphans }
    }

    /// `tip` (a call's explanation) with the violations reported for call `seq` it lacks.
    fn tip(&self, seq: u64, tip: &str) -> String {
        let mut out = tip.to_string();
        for v in self.by_seq.get(&seq).into_iter().flatten() {
            if !tip.contains(&v.why) {
                out.push_str(&format!(
                    "\n{} violated (reported while the call ran): {}",
                    v.id, v.why
                ));
            }
        }
        out
    }
}

/// The verdict in words, correctly counted; returns the y below it.
fn header(s: &Summary, o: &mut String) -> f64 {
    let (word, colour) = match s.verdict {
        RunVerdict::Clean => ("clean", "#2ca02c"),
        RunVerdict::Violations => ("violations", RED),
        RunVerdict::NothingVerified => ("nothing verified", "#ff7f0e"),
    };
    let failed: Vec<String> = s
        .invariants
        .iter()
        .filter(|i| i.fail > 0)
        .map(|i| format!("{} in {}", i.id, axis::plural(i.fail as u64, "call", "calls")))
        .collect();
    let _ = writeln!(
        o,
        "<text class=\"verdict\" x=\"10\" y=\"22\" font-size=\"15\"><tspan font-weight=\"bold\" \
         fill=\"{colour}\">ploop-verify: {word}</tspan> — {}, {}{}</text>",
        axis::plural(s.snapshots as u64, "snapshot call", "snapshot calls"),
        axis::plural(s.violations as u64, "violation", "violations"),
        if failed.is_empty() { String::new() } else { format!(" ({})", failed.join(", ")) }
    );
    let release = s.kernel.get("release").and_then(|r| r.as_str()).unwrap_or("?");
    let mut line =
        format!("kernel {release}; {}, {} lost", axis::plural(s.events, "event", "events"), s.lost);
    if let Some(r) = &s.reason {
        line.push_str(&format!("; {r}"));
    }
    let _ = writeln!(o, "<text x=\"10\" y=\"40\" fill=\"#555\">{}</text>", xml(&line));
    52.0
}

/// A section heading at `y`; returns the y below it.
fn heading(o: &mut String, y: f64, text: &str) -> f64 {
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        y + 14.0,
        xml(text)
    );
    y + 22.0
}

/// A note in grey at `y`; returns the y below it.
fn note(o: &mut String, y: f64, text: &str) -> f64 {
    let mut y = y;
    for line in wrap(text, 150) {
        let _ =
            writeln!(o, "<text x=\"10\" y=\"{:.1}\" fill=\"#555\">{}</text>", y + 11.0, xml(&line));
        y += 14.0;
    }
    y
}

/// `text` cut at spaces into lines of at most `width` characters (longer words stay whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// A `<title>` element: the tooltip of the element it is the first child of.
fn title(text: &str) -> String {
    format!("<title>{}</title>", xml(text))
}

/// A legend entry at `x`: `swatch(x, y)` draws its 12-pixel sample; returns the x after it.
fn legend(o: &mut String, x: f64, y: f64, swatch: impl Fn(f64, f64) -> String, text: &str) -> f64 {
    let _ = writeln!(
        o,
        "<g class=\"legend\">{}<text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
        swatch(x, y),
        x + 16.0,
        y + 10.0,
        xml(text)
    );
    x + 16.0 + text.chars().count() as f64 * 6.7 + 18.0
}

/// The X1 mark centred at (`x`, `y`) with its tooltip (`tip`: a `<title>`, or empty for a
/// legend swatch).
fn x1_mark(x1: X1, seq: Option<u64>, x: f64, y: f64, tip: &str) -> String {
    let seq = seq.map(|s| format!(" data-seq=\"{s}\"")).unwrap_or_default();
    match x1 {
        X1::NeedsRecovery => format!(
            "<g class=\"x1-mark needs-recovery\"{seq}>{tip}<path d=\"M{x:.1},{:.1} L{:.1},{y:.1} \
             L{x:.1},{:.1} L{:.1},{y:.1} Z\" fill=\"{X1_FAIL}\" stroke=\"white\" stroke-width=\"0.8\"/></g>",
            y - 5.5,
            x + 5.5,
            y + 5.5,
            x - 5.5
        ),
        X1::Clean => format!(
            "<g class=\"x1-mark clean\"{seq}>{tip}<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" \
             fill=\"white\" stroke=\"{X1_PASS}\" stroke-width=\"1.2\"/></g>"
        ),
    }
}

/// The tooltip of an X1 mark: the failure in full (from the call's tooltip), or the pass.
fn x1_tip(x1: X1, seq: u64, call_tip: &str) -> String {
    match x1 {
        X1::NeedsRecovery => {
            let why = call_tip
                .lines()
                .find_map(|l| l.strip_prefix("X1 violated: "))
                .unwrap_or("the old snapshot needs a journal replay");
            title(&format!("X1 snapshot #{seq}: {why}"))
        }
        X1::Clean => title(&format!(
            "X1 snapshot #{seq}: the old snapshot's ext4 is clean (mountable read-only without \
             a journal replay)"
        )),
    }
}

/// A filled 12x12 square swatch.
fn square(fill: &'static str) -> impl Fn(f64, f64) -> String {
    move |x, y| {
        format!("<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"12\" height=\"12\" fill=\"{fill}\"/>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_wraps_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("averyveryverylongword x", 5), ["averyveryverylongword", "x"]);
        assert!(wrap("", 5).is_empty());
    }
}
