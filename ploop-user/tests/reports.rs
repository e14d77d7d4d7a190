//! The reports of a replay, on synthetic traces around the aggregation threshold: per call
//! below it, one case per invariant above it, and the same verdict either way; a damaged
//! trace leaves no report behind; and timeline.svg, rendered by a real SVG renderer
//! (rsvg-convert) and parsed as XML, has what a person reads it for.

use std::{fs, path::Path, process::Command};

use ploop_user::verify::report::AGGREGATE_ABOVE;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ploop-verify"))
}

/// Writes a synthetic trace of `calls` snapshot calls and replays it into `dir/report`.
fn replay(dir: &Path, calls: usize) -> serde_json::Value {
    let trace = dir.join("trace.jsonl");
    let st = bin()
        .args(["testkit", "synth-trace", "--calls", &calls.to_string(), "--out"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let out =
        bin().arg("report").arg(&trace).arg("--out").arg(dir.join("report")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&fs::read_to_string(dir.join("report/summary.json")).unwrap()).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ploop-reports-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn per_call_cases_up_to_the_threshold_then_aggregated() {
    for (calls, aggregated) in [(AGGREGATE_ABOVE, false), (AGGREGATE_ABOVE + 1, true)] {
        let dir = scratch(&calls.to_string());
        let s = replay(&dir, calls);
        assert_eq!(
            (s["snapshots"].as_u64(), s["verdict"].as_str()),
            (Some(calls as u64), Some("clean"))
        );
        let junit = fs::read_to_string(dir.join("report/junit.xml")).unwrap();
        let ktap = fs::read_to_string(dir.join("report/results.ktap")).unwrap();
        let suites = junit.matches("<testsuite ").count();
        let invariants = s["invariants"].as_array().unwrap().len();
        if aggregated {
            assert!(junit.contains("<!-- aggregated: "), "{}", &junit[..400]);
            assert_eq!(suites, 1, "one suite of invariants, no failing call");
            assert_eq!(junit.matches("<testcase ").count(), invariants);
            assert!(ktap.contains(&format!("\n1..{invariants}\n")), "{}", &ktap[..300]);
        } else {
            assert!(!junit.contains("aggregated"));
            assert_eq!(suites, calls);
            assert_eq!(junit.matches("<testcase ").count(), calls * invariants);
            assert!(ktap.contains(&format!("\n1..{calls}\n")));
        }
        // Well-formed: every suite closed, the document closed once.
        assert_eq!(junit.matches("</testsuite>").count(), suites);
        assert!(junit.ends_with("</testsuites>\n"));
        // The timeline keeps the histogram of every freeze window (its drawing: below).
        let svg = fs::read_to_string(dir.join("report/timeline.svg")).unwrap();
        let windows = s["freeze_window"]["count"].as_u64().unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("timeline.svg is XML");
        let in_bars: u64 = with_class(&doc, "bar").iter().map(|b| bar_count(b)).sum();
        assert_eq!(in_bars, windows, "histogram over all");
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_damaged_trace_leaves_no_report() {
    let dir = scratch("damaged");
    let trace = dir.join("trace.jsonl");
    let st = bin().args(["testkit", "synth-trace", "--calls", "50", "--out"]).arg(&trace).status();
    assert!(st.unwrap().success());
    let text = fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len() / 2;
    fs::write(&trace, format!("{}\n{}\n", lines[..cut].join("\n"), &lines[cut][..20])).unwrap();
    let out_dir = dir.join("report");
    let out = bin().arg("report").arg(&trace).arg("--out").arg(&out_dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains(&format!("trace.jsonl:{}: not a trace record", cut + 1)), "{err}");
    assert!(!out_dir.exists(), "nothing written for a damaged trace");
    fs::remove_dir_all(&dir).unwrap();
}

// --- timeline.svg ---------------------------------------------------------------------------

/// Elements whose `class` attribute holds `class`.
fn with_class<'a>(doc: &'a roxmltree::Document, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants()
        .filter(|n| n.attribute("class").is_some_and(|c| c.split(' ').any(|c| c == class)))
        .collect()
}

/// The tooltip of an element: its `<title>` child.
fn tip<'a>(n: &roxmltree::Node<'a, 'a>) -> &'a str {
    n.children().find(|c| c.has_tag_name("title")).and_then(|t| t.text()).unwrap_or("")
}

/// The count a histogram bar's tooltip gives ("1.00 ms to 1.58 ms: 2 freeze windows").
fn bar_count(n: &roxmltree::Node) -> u64 {
    let t = tip(n);
    let words = t.rsplit_once(": ").map(|(_, w)| w).unwrap_or_else(|| panic!("bar title {t:?}"));
    words.split(' ').next().unwrap().replace(',', "").parse().unwrap_or_else(|_| panic!("{t:?}"))
}

/// All text inside `n`, its `<title>` excepted.
fn text_of(n: &roxmltree::Node) -> String {
    n.descendants()
        .filter(|d| d.is_text() && !d.parent().is_some_and(|p| p.has_tag_name("title")))
        .filter_map(|d| d.text())
        .collect()
}

/// Renders `svg` to PNG with rsvg-convert and returns the PNG's size; `None` (with the
/// reason printed) only where rsvg-convert is not installed and this is not CI.
fn rsvg(svg: &Path) -> Option<(u32, u32)> {
    let png = svg.with_extension("png");
    let out = match Command::new("rsvg-convert").arg(svg).arg("-o").arg(&png).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED rendering {}: rsvg-convert is not installed (apt-get install \
                 librsvg2-bin; scripts/setup.sh does)",
                svg.display()
            );
            return None;
        }
        Err(e) => panic!("rsvg-convert: {e} (CI installs librsvg2-bin through scripts/setup.sh)"),
    };
    assert!(
        out.status.success(),
        "rsvg-convert refused {}: {}",
        svg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    Some((be(16), be(20)))
}

/// Reports for a trace into `dir`; returns timeline.svg's text and summary.json.
fn report_of(trace: &Path, dir: &Path) -> (String, serde_json::Value) {
    let out = bin().arg("report").arg(trace).arg("--out").arg(dir).output().unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
    let summary =
        serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    (fs::read_to_string(dir.join("timeline.svg")).unwrap(), summary)
}

/// What every timeline has: it renders at its declared size, the verdict line is counted
/// right, the shared time axis has ticks with units, a lane per ploop device, every failing
/// call marked with each of its violations in the mark's tooltip, every X1 failure with an
/// X1 mark of its own (and no call without one), and the histogram holds every freeze window.
fn check_timeline(svg_path: &Path, svg: &str, s: &serde_json::Value) {
    let doc = roxmltree::Document::parse(svg).expect("timeline.svg is XML");
    let root = doc.root_element();
    assert!(root.has_tag_name("svg"));
    if let Some(size) = rsvg(svg_path) {
        let attr = |a: &str| root.attribute(a).unwrap().parse::<f64>().unwrap().round() as u32;
        assert_eq!(size, (attr("width"), attr("height")), "rendered at the size it declares");
    }
    // The verdict, counted right ("1 violation", never "1 violations (violations)").
    let verdict = text_of(&with_class(&doc, "verdict")[0]);
    let (calls, violations) = (s["snapshots"].as_u64().unwrap(), s["violations"].as_u64().unwrap());
    let counted = |n: u64, one: &str| {
        let digits = n.to_string();
        let mut g = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                g.push(',');
            }
            g.push(ch);
        }
        format!("{g} {one}{}", if n == 1 { "" } else { "s" })
    };
    assert!(verdict.contains(&counted(calls, "snapshot call")), "{verdict}");
    assert!(verdict.contains(&counted(violations, "violation")), "{verdict}");
    assert!(
        verdict.contains(s["verdict"].as_str().unwrap().replace('-', " ").as_str()),
        "{verdict}"
    );
    // The shared time axis: ticks, every label after "0" with a unit.
    let axis = with_class(&doc, "axis");
    let ticks: Vec<String> = axis[0]
        .descendants()
        .filter(|n| n.attribute("class") == Some("tick"))
        .map(|n| text_of(&n))
        .collect();
    assert!(ticks.len() >= 3, "{ticks:?}");
    assert_eq!(ticks[0], "0");
    assert!(
        ticks[1..]
            .iter()
            .all(|t| ["ns", "µs", "ms", "s"].iter().any(|u| t.ends_with(&format!(" {u}")))),
        "{ticks:?}"
    );
    // Every failing call is marked, its tooltip holding each of its violations in full.
    let marks = with_class(&doc, "violation-mark");
    for v in s["violation_list"].as_array().unwrap() {
        let seq = v["seq"].as_u64().unwrap().to_string();
        let why = v["why"].as_str().unwrap();
        assert!(
            marks
                .iter()
                .any(|m| m.attribute("data-seq") == Some(seq.as_str()) && tip(m).contains(why)),
            "no mark for snapshot #{seq} with {why:?}"
        );
    }
    // X1 failures: the needs-recovery mark on exactly those calls, with the why.
    let x1_failed: Vec<&serde_json::Value> =
        s["violation_list"].as_array().unwrap().iter().filter(|v| v["id"] == "X1").collect();
    // (The legend's swatches name no call.)
    let x1_marks: Vec<_> = with_class(&doc, "needs-recovery")
        .into_iter()
        .filter(|m| m.has_attribute("data-seq"))
        .collect();
    for v in &x1_failed {
        let seq = v["seq"].as_u64().unwrap().to_string();
        let why = v["why"].as_str().unwrap();
        assert!(
            x1_marks.iter().any(|m| m.attribute("data-seq") == Some(seq.as_str())
                && m.attribute("class").unwrap().contains("x1-mark")
                && tip(m).contains(why)),
            "no X1 mark for snapshot #{seq} with {why:?}"
        );
    }
    for m in &x1_marks {
        let seq = m.attribute("data-seq").unwrap().parse::<u64>().unwrap();
        assert!(
            x1_failed.iter().any(|v| v["seq"] == seq),
            "snapshot #{seq} marked as needing a journal replay, and X1 did not fail on it"
        );
    }
    let legend: String = with_class(&doc, "legend").iter().map(text_of).collect();
    assert_eq!(
        legend.contains("X1: old snapshot needs a journal replay"),
        !x1_seqs(&doc, "needs-recovery").is_empty() || !x1_seqs(&doc, "clean").is_empty(),
        "the X1 legend entry exactly where the oracle judged: {legend}"
    );
    // The histogram holds every freeze window, with ticks on its axes.
    let in_bars: u64 = with_class(&doc, "bar").iter().map(|b| bar_count(b)).sum();
    assert_eq!(in_bars, s["freeze_window"]["count"].as_u64().unwrap());
    if in_bars > 0 {
        assert!(with_class(&doc, "xtick").len() >= 2 && with_class(&doc, "ytick").len() >= 2);
    }
}

/// The calls with an X1 mark of `kind` ("needs-recovery", "clean") anywhere, each once.
fn x1_seqs(doc: &roxmltree::Document, kind: &str) -> std::collections::BTreeSet<u64> {
    with_class(doc, kind)
        .iter()
        .filter(|m| m.attribute("class").unwrap().contains("x1-mark"))
        .filter_map(|m| m.attribute("data-seq").map(|s| s.parse().unwrap()))
        .collect()
}

fn lanes(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    with_class(&doc, "lane")
        .iter()
        .map(|l| l.attribute("data-device").unwrap().to_string())
        .collect()
}

fn insets(svg: &str) -> Vec<u64> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    with_class(&doc, "inset")
        .iter()
        .map(|l| l.attribute("data-seq").unwrap().parse().unwrap())
        .collect()
}

fn golden(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/traces").join(name)
}

/// The demo's failing case (autodetection freezes dm-crypt): each call drawn on the shared
/// axis, each zoomed in an inset that names the device frozen and the one that should have
/// been.
#[test]
fn timeline_of_failing_calls() {
    let dir = scratch("svg-s2");
    let (svg, s) = report_of(&golden("6.1-ioctl-s2-auto.jsonl"), &dir);
    check_timeline(&dir.join("timeline.svg"), &svg, &s);
    assert_eq!(lanes(&svg), ["ploop0 (253:0)"]);
    assert_eq!(insets(&svg), [1, 2, 3], "an inset per failing call");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    for m in with_class(&doc, "call") {
        let t = tip(&m);
        assert!(t.contains("frozen: dm-0 (254:0)"), "{t}");
        assert!(t.contains("should have been frozen: dm-1 (254:1) (ext4 at /mnt/p0)"), "{t}");
    }
    assert_eq!(with_class(&doc, "call").len(), 3, "a span per call");
    assert!(svg.contains("3 failing calls, zoomed"));
    assert!(with_class(&doc, "x1-mark").is_empty(), "no oracle ran: X1 is n/a, never marked");
    fs::remove_dir_all(&dir).unwrap();
}

/// The demo's two cases under `run --oracle`: with the autodetection every call is marked
/// X1 beside its S2 marker, on the timeline and in its inset; with the sync fd every call
/// carries the faint pass mark and none the failure.
#[test]
fn timeline_marks_x1_beside_s2() {
    let dir = scratch("svg-x1-auto");
    let (svg, s) = report_of(&golden("6.1-oracle-s2-auto.jsonl"), &dir);
    check_timeline(&dir.join("timeline.svg"), &svg, &s);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    for call in with_class(&doc, "call") {
        let seq = call.attribute("data-seq").unwrap();
        let marks: Vec<_> = call
            .descendants()
            .filter(|n| n.attribute("class") == Some("x1-mark needs-recovery"))
            .collect();
        assert_eq!(marks.len(), 1, "snapshot #{seq}: one X1 mark on its span");
        assert!(tip(&marks[0]).contains("needs_recovery"), "{}", tip(&marks[0]));
    }
    assert_eq!(insets(&svg), [1, 2, 3]);
    for inset in with_class(&doc, "inset") {
        assert!(
            inset.descendants().any(|n| n.attribute("class") == Some("x1-mark needs-recovery")),
            "inset #{} without its X1 mark",
            inset.attribute("data-seq").unwrap()
        );
    }
    assert!(x1_seqs(&doc, "clean").is_empty(), "no call passed X1");

    let dir = scratch("svg-x1-sync");
    let (svg, s) = report_of(&golden("6.1-oracle-s2-sync.jsonl"), &dir);
    check_timeline(&dir.join("timeline.svg"), &svg, &s);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(x1_seqs(&doc, "clean"), [1, 2, 3].into(), "each call's pass, faintly");
    for call in with_class(&doc, "call") {
        assert!(
            call.descendants().any(|n| n.attribute("class") == Some("x1-mark clean")),
            "snapshot #{}: no pass mark on its span",
            call.attribute("data-seq").unwrap()
        );
    }
    assert!(x1_seqs(&doc, "needs-recovery").is_empty());
    let legend: String = with_class(&doc, "legend").iter().map(text_of).collect();
    assert!(legend.contains("X1: old snapshot clean"), "{legend}");
    fs::remove_dir_all(&dir).unwrap();
}

/// One call, one violation: counted in the singular; a clean run zooms its slowest call.
#[test]
fn timeline_counts_in_the_singular_and_zooms_a_clean_run() {
    let dir = scratch("svg-one");
    let (svg, s) = report_of(&golden("6.1-bug-thaw_other.jsonl"), &dir);
    check_timeline(&dir.join("timeline.svg"), &svg, &s);
    assert!(svg.contains("1 snapshot call, 1 violation (O1 in 1 call)"), "singular");
    let dir = scratch("svg-clean");
    let (svg, s) = report_of(&golden("6.1-clean.jsonl"), &dir);
    check_timeline(&dir.join("timeline.svg"), &svg, &s);
    assert_eq!(lanes(&svg), ["ploop0 (253:0)", "ploop1 (253:1)"], "a lane per device");
    assert_eq!(insets(&svg).len(), 1, "the longest freeze window, zoomed");
    assert!(svg.contains("No failing call. The call with the longest freeze window"));
    fs::remove_dir_all(&dir).unwrap();
}

/// 10,000 calls, one in 97 failing (S2 and X1): lanes drawn as density, every failing call
/// still marked with its explanation and its X1 mark, the X1 passes counted rather than
/// marked, insets capped (and the cap said), and a file a browser opens at once.
#[test]
fn timeline_at_ten_thousand_calls() {
    let dir = scratch("svg-10k");
    let trace = dir.join("trace.jsonl");
    let st = bin()
        .args(["testkit", "synth-trace", "--calls", "10000", "--wrong-freeze-every", "97"])
        .args(["--oracle", "--out"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let (svg, s) = report_of(&trace, &dir.join("report"));
    check_timeline(&dir.join("report/timeline.svg"), &svg, &s);
    assert_eq!(lanes(&svg), ["ploop0 (253:0)", "ploop1 (253:1)"]);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let failing = 10_000 / 97;
    assert_eq!(
        with_class(&doc, "call").len(),
        failing,
        "only the failing calls are drawn one by one"
    );
    assert!(with_class(&doc, "bin").len() > 100, "the rest as density");
    assert_eq!(x1_seqs(&doc, "needs-recovery").len(), failing, "each X1 failure marked");
    assert!(x1_seqs(&doc, "clean").is_empty(), "passes are not marked in density");
    assert!(svg.contains("X1 passed (old snapshot clean) in 9,897 calls"), "but counted");
    assert_eq!(insets(&svg), [97, 194, 291, 388, 485, 582], "the first 6 failing calls");
    assert!(svg.contains(&format!("the first 6 of {failing}")), "the cap is said");
    assert!(svg.len() < 1 << 20, "{} bytes", svg.len());
    fs::remove_dir_all(&dir).unwrap();
}

// --- one run, one verdict, in every report --------------------------------------------------

use ploop_user::verify::{
    checker::{CallReport, Checker, Options, Verdict},
    tracefile::{Reader, TraceLine},
};

/// What every report of a replay must say, derived once from the judged calls: the checker
/// fed the trace, its judged snapshots counted here, not read from any report.
#[derive(Debug)]
struct Expected {
    /// Snapshots as the reports receive them (a retried request is one, with both calls).
    units: usize,
    /// Of them, the ones that returned (a call hung at the end never did).
    snapshots: usize,
    /// Verdicts of every ioctl call: pass, fail, n/a.
    cases: [usize; 3],
    /// The run's problems, by kind.
    problems: Vec<&'static str>,
    exit: i32,
    /// More than the aggregation threshold: per-invariant cases plus the failing snapshots'.
    aggregated: bool,
    failing_units: usize,
    failing_cases: [usize; 3],
}

fn expected(trace: &Path, expect_refusals: bool) -> Expected {
    let mut r = Reader::open(trace).unwrap();
    let header = r.header.clone();
    let (max_freeze_ms, hang_after) =
        header.policy.as_ref().map_or((5000.0, 10.0), |p| (p.max_freeze_ms, p.hang_after));
    let mut c = Checker::new(
        header.generation,
        header.probed.clone(),
        Options {
            max_freeze_ns: (max_freeze_ms * 1e6) as u64,
            max_hang_ns: (hang_after * 1e9) as u64,
        },
    );
    if header.oracle {
        c.expect_oracle();
    }
    let mut units: Vec<CallReport> = Vec::new();
    let mut last = 0;
    while let Some(line) = r.next_record().unwrap() {
        match line {
            TraceLine::Stack(s) => c.stack(s),
            TraceLine::Oracle(f) => drop(c.oracle(f)),
            TraceLine::Event(e) => {
                last = last.max(e.ts_ns);
                c.hung(e.ts_ns);
                c.event(e);
            }
            _ => {}
        }
        units.extend(c.take_judged());
    }
    let end = r.end().unwrap().clone();
    c.finish(last.max(end.end_ns.unwrap_or(0)));
    units.extend(c.take_judged());
    let count = |u: &CallReport| {
        let mut k = [0; 3];
        for (_, v) in u.calls().flat_map(|c| &c.verdicts) {
            k[match v {
                Verdict::Pass => 0,
                Verdict::Fail(_) => 1,
                _ => 2,
            }] += 1;
        }
        k
    };
    let sum = |us: &mut dyn Iterator<Item = &CallReport>| {
        us.map(count).fold([0; 3], |a, k| [a[0] + k[0], a[1] + k[1], a[2] + k[2]])
    };
    let cases = sum(&mut units.iter());
    let failing: Vec<&CallReport> = units.iter().filter(|u| count(u)[1] > 0).collect();
    let snapshots = units.iter().filter(|u| u.call.result().is_some()).count();
    let succeeded = units.iter().filter(|u| u.call.result() == Some(0)).count();
    let mut problems = Vec::new();
    if snapshots == 0 {
        problems.push("no_snapshot");
    }
    if snapshots > 0 && succeeded == 0 && !expect_refusals {
        problems.push("none_succeeded");
    }
    if end.lost > 0 {
        problems.push("events_lost");
    }
    let exit = if cases[1] > 0 {
        1
    } else if !problems.is_empty() {
        2
    } else {
        0
    };
    Expected {
        units: units.len(),
        snapshots,
        cases,
        problems,
        exit,
        aggregated: units.len() > AGGREGATE_ABOVE,
        failing_units: failing.len(),
        failing_cases: sum(&mut failing.into_iter()),
    }
}

/// Counts of pass, fail, n/a as `[usize; 3]`, from a verdict word.
fn slot(k: &mut [usize; 3], kind: usize) {
    k[kind] += 1;
}

/// `report TRACE` with every report, KCIDB too; checks that summary.json, summary.md,
/// junit.xml, results.ktap, kcidb.json, timeline.svg, the console and the exit status all
/// say what `expected` derived from the judged calls.
fn agree(name: &str, trace: &Path, extra: &[&str]) {
    let want = expected(trace, extra.contains(&"--expect-refusals"));
    let dir = scratch(&format!("agree-{name}"));
    let out = bin()
        .arg("report")
        .arg(trace)
        .arg("--out")
        .arg(&dir)
        .arg("--kcidb")
        .arg(dir.join("kcidb.json"))
        .args(["--kcidb-origin", "agree"])
        .args(extra)
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stderr).into_owned();
    let ctx = format!("{name}: {want:?}\n{console}");
    assert_eq!(out.status.code(), Some(want.exit), "exit status: {ctx}");
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let verdict = ["clean", "violations", "nothing-verified"][want.exit as usize];

    // summary.json
    let s: serde_json::Value = serde_json::from_str(&read("summary.json")).unwrap();
    assert_eq!(s["verdict"], verdict, "{ctx}");
    assert_eq!(s["exit_code"], want.exit, "{ctx}");
    assert_eq!(s["snapshots"], want.snapshots, "{ctx}");
    let kinds: Vec<&str> =
        s["status"].as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, want.problems, "{ctx}");
    let inv = s["invariants"].as_array().unwrap();
    let tally = ["pass", "fail", "not_applicable"]
        .map(|k| inv.iter().map(|i| i[k].as_u64().unwrap() as usize).sum::<usize>());
    assert_eq!(tally, want.cases, "summary.json's tally: {ctx}");
    let set = s["report_set"]["id"].as_str().unwrap().to_string();
    let texts: Vec<&str> =
        s["status"].as_array().unwrap().iter().map(|p| p["text"].as_str().unwrap()).collect();

    // The console: the same headline, every problem in its words.
    let snapshots = plural(want.snapshots, "snapshot call");
    assert!(console.contains(&format!("ploop-verify: {verdict}: {snapshots}, ")), "{ctx}");
    for t in &texts {
        assert!(console.contains(&format!("ploop-verify: {t}\n")), "console lacks {t:?}: {ctx}");
    }
    assert!(console.contains(&format!("(report set {set})")), "{ctx}");

    // summary.md
    let md = read("summary.md");
    let icon = ["✅ clean", "❌ violations", "⚠️ nothing verified"][want.exit as usize];
    assert!(md.contains(&format!("**{icon}**: {snapshots}, ")), "{md}");
    for k in &want.problems {
        assert!(md.contains(&format!("**{k}**")), "summary.md lacks {k}: {md}");
    }
    assert!(md.contains(&format!("report set {set}")));

    // junit.xml, case by case and by its declared totals.
    let junit = read("junit.xml");
    let doc = roxmltree::Document::parse(&junit).expect("junit.xml is XML");
    let (mut cases, mut errors) = ([0; 3], 0);
    for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let has = |t: &str| case.children().any(|c| c.has_tag_name(t));
        if has("error") {
            errors += 1;
        } else {
            slot(
                &mut cases,
                if has("failure") {
                    1
                } else if has("skipped") {
                    2
                } else {
                    0
                },
            );
        }
    }
    assert_eq!(errors, want.problems.len(), "junit errors: {ctx}");
    let root = doc.root_element();
    let attr = |a: &str| root.attribute(a).unwrap().parse::<usize>().unwrap();
    assert_eq!(attr("errors"), errors);
    assert_eq!((attr("failures"), attr("skipped")), (cases[1], cases[2]), "{ctx}");
    assert_eq!(attr("tests"), cases.iter().sum::<usize>() + errors);
    let call_suites = doc
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .filter(|n| n.attribute("name").unwrap().starts_with("snapshot #"))
        .count();
    let marked = |text: &str| text.contains(&format!("report set {set}"));
    assert!(doc.descendants().any(|n| n.is_comment() && marked(n.text().unwrap())));

    // results.ktap: top-level tests (a snapshot each, then each problem), their subtests.
    let ktap = read("results.ktap");
    let top: Vec<&str> =
        ktap.lines().filter(|l| l.starts_with("ok ") || l.starts_with("not ok ")).collect();
    let status_tests: Vec<&str> =
        top.iter().copied().filter(|l| l.contains(" run_status_")).collect();
    assert_eq!(status_tests.len(), want.problems.len(), "{ktap}");
    assert!(status_tests.iter().all(|l| l.starts_with("not ok ")), "{status_tests:?}");
    assert!(ktap.contains(&format!("\n1..{}\n", top.len())), "KTAP plan");
    assert!(ktap.contains(&format!("# report set: {set}\n")));
    let mut sub = [0; 3];
    for l in ktap.lines().filter_map(|l| l.strip_prefix("    ")) {
        if l.starts_with("not ok ") {
            slot(&mut sub, 1);
        } else if l.starts_with("ok ") {
            slot(&mut sub, if l.contains(" # SKIP") { 2 } else { 0 });
        }
    }

    // kcidb.json: the per-invariant tests, the problems as ERROR, the run's own status.
    let k: serde_json::Value = serde_json::from_str(&read("kcidb.json")).unwrap();
    let tests = k["tests"].as_array().unwrap();
    let mut kc = [0; 3];
    let mut k_errors = 0;
    for t in tests.iter().filter(|t| t["path"] != "ploop_verify" && t["status"] != "MISS") {
        match t["status"].as_str().unwrap() {
            "PASS" => slot(&mut kc, 0),
            "FAIL" => slot(&mut kc, 1),
            "SKIP" => slot(&mut kc, 2),
            "ERROR" if t["path"] == "ploop_verify.run_status" => k_errors += 1,
            other => panic!("{other}: {t}"),
        }
    }
    assert_eq!(k_errors, want.problems.len(), "{ctx}");
    let run = tests.iter().find(|t| t["path"] == "ploop_verify").unwrap();
    assert_eq!(run["status"], ["PASS", "FAIL", "ERROR"][want.exit as usize], "{ctx}");
    assert_eq!(
        (&run["misc"]["report_set"], &run["misc"]["snapshots"]),
        (&set.clone().into(), &want.snapshots.into())
    );

    if want.aggregated {
        // One case per invariant (pass, fail, or skipped when it applied to no call), then
        // the failing snapshots' cases.
        assert_eq!(call_suites, want.failing_units, "{ctx}");
        let per_invariant = inv.len();
        assert_eq!(
            cases.iter().sum::<usize>(),
            per_invariant + want.failing_cases.iter().sum::<usize>()
        );
        assert_eq!(top.len(), per_invariant + want.failing_units + want.problems.len());
        assert_eq!(sub, want.failing_cases, "KTAP subtests of the failing snapshots");
    } else {
        assert_eq!(cases, want.cases, "junit cases: {ctx}");
        assert_eq!(call_suites, want.units, "one suite per snapshot: {ctx}");
        assert_eq!(top.len(), want.units + want.problems.len(), "{ktap}");
        assert_eq!(sub, want.cases, "KTAP subtests: {ctx}");
        assert_eq!(kc, want.cases, "KCIDB tests: {ctx}");
    }

    // timeline.svg: the same headline, the same set.
    let svg = read("timeline.svg");
    let doc = roxmltree::Document::parse(&svg).expect("timeline.svg is XML");
    let head = text_of(&with_class(&doc, "verdict")[0]);
    assert!(head.contains(&snapshots), "{head}");
    assert!(head.contains(&verdict.replace('-', " ")), "{head}");
    assert!(doc.descendants().any(|n| n.is_comment() && marked(n.text().unwrap())));
    fs::remove_dir_all(&dir).unwrap();
}

/// "1 snapshot call", "3 snapshot calls", grouped as the reports group them.
fn plural(n: usize, one: &str) -> String {
    let digits = n.to_string();
    let mut g = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            g.push(',');
        }
        g.push(ch);
    }
    format!("{g} {one}{}", if n == 1 { "" } else { "s" })
}

fn synth(dir: &Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let trace = dir.join(format!("{name}.jsonl"));
    let st = bin()
        .args(["testkit", "synth-trace"])
        .args(args)
        .arg("--out")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    trace
}

#[test]
fn every_report_console_and_exit_status_agree_with_the_judged_calls() {
    // Golden: clean; violations; libploop's fallback (a pair, one snapshot); every call
    // refused (with violations: exit 1, and the run says none succeeded); a call hung at the
    // end; the oracle's X1.
    for name in [
        "6.1-clean",
        "6.1-ioctl-s2-auto",
        "6.1-ioctl-lp-unpatched",
        "6.1-ioctl-lp-seed",
        "6.1-hung-at-end",
        "6.1-ioctl-unpatched",
        "6.1-oracle-s2-auto",
        "6.12-bug-einval",
    ] {
        agree(name, &golden(&format!("{name}.jsonl")), &[]);
    }
    // Damaged and odd runs, synthetic.
    let dir = scratch("agree-synth");
    let lost = synth(&dir, "lost", &["--calls", "5", "--lost", "3"]);
    agree("lost", &lost, &[]);
    let lost_failing =
        synth(&dir, "lost-failing", &["--calls", "6", "--lost", "2", "--wrong-freeze-every", "3"]);
    agree("lost-failing", &lost_failing, &[]);
    let refused = synth(&dir, "refused", &["--calls", "3", "--refused"]);
    agree("refused", &refused, &[]);
    agree("refused-expected", &refused, &["--expect-refusals"]);
    let none = synth(&dir, "none", &["--calls", "0", "--lost", "1"]);
    agree("none", &none, &[]);
    let many =
        synth(&dir, "many", &["--calls", "1001", "--lost", "1", "--wrong-freeze-every", "400"]);
    agree("aggregated-lost", &many, &[]);
    fs::remove_dir_all(&dir).unwrap();
}

// --- one set of reports, escaped ------------------------------------------------------------

/// The report files of a set, summary.json last as it is written.
const SET: [&str; 5] = ["junit.xml", "results.ktap", "summary.md", "timeline.svg", "summary.json"];

/// Every file of `dir` by name.
fn names(dir: &Path) -> std::collections::BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A small tmpfs mounted at `dir` for the test's life: a disk that fills up.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk under `--out`: the earlier set is marked stale before anything of the new one
/// is written, nothing of the new set is left (no summary.json, no partial file, no stage),
/// and the message says what `--out` holds. Needs root (mount); CI runs it as root.
#[test]
fn a_full_disk_under_out_leaves_nothing_that_looks_complete() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs this test as root");
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let dir = scratch("full-disk");
    let out = dir.join("out");
    let _disk = Tmpfs::mount(&out, "128k");
    // The earlier run's set fits (about 45 KB).
    let first = bin()
        .arg("report")
        .arg(golden("6.1-ioctl-s2-auto.jsonl"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(1), "{}", String::from_utf8_lossy(&first.stderr));
    let old: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    // This run's does not (junit.xml alone is 770 KB).
    let trace = synth(&dir, "300", &["--calls", "300"]);
    let second = bin().arg("report").arg(&trace).arg("--out").arg(&out).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("writing the reports: none written"), "{err}");
    assert!(err.contains(&format!("{} holds no report of this run", out.display())), "{err}");
    assert!(err.contains("an earlier run's reports are kept, marked as not this run's"), "{err}");
    // Nothing under a report's name: the earlier set is all NAME.stale, the new one gone.
    let want: std::collections::BTreeSet<String> =
        SET.iter().map(|f| format!("{f}.stale")).collect();
    assert_eq!(names(&out), want, "{err}");
    // The stale set is the earlier run's, whole.
    let stale: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("summary.json.stale")).unwrap()).unwrap();
    assert_eq!(stale["report_set"], old["report_set"]);
    // With room again, the next set is complete and the stale one goes.
    drop(_disk);
    let third = bin().arg("report").arg(&trace).arg("--out").arg(&out).output().unwrap();
    assert_eq!(third.status.code(), Some(0), "{}", String::from_utf8_lossy(&third.stderr));
    assert_eq!(names(&out), SET.iter().map(|f| f.to_string()).collect());
    fs::remove_dir_all(&dir).unwrap();
}

/// Every file of a set names the set; a refused trace leaves the reports already in `--out`
/// marked stale, and says so; a directory given as a trace is named.
#[test]
fn a_refused_trace_marks_the_reports_it_finds_and_a_directory_is_named() {
    let dir = scratch("refused-marks");
    let out = dir.join("out");
    let ok = bin()
        .arg("report")
        .arg(golden("6.1-ioctl-clean.jsonl"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert_eq!(ok.code(), Some(0));
    let s: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let id = s["report_set"]["id"].as_str().unwrap();
    assert_eq!(s["report_set"]["files"], serde_json::json!(SET));
    for f in SET {
        assert!(fs::read_to_string(out.join(f)).unwrap().contains(id), "{f} names the set {id}");
    }
    // A damaged trace: refused at its line, the reports there marked.
    let trace = dir.join("damaged.jsonl");
    let text = fs::read_to_string(golden("6.1-ioctl-clean.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    fs::write(&trace, format!("{}\n{{\"record\":\n", lines[..10].join("\n"))).unwrap();
    let bad = bin().arg("report").arg(&trace).arg("--out").arg(&out).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(65), "{err}");
    assert!(err.contains("damaged.jsonl:11"), "{err}");
    assert!(err.contains("marked as not this run's"), "{err}");
    assert_eq!(names(&out), SET.iter().map(|f| format!("{f}.stale")).collect());
    // A directory: named, with the trace it holds.
    let d = bin().arg("report").arg(&out).output().unwrap();
    let err = String::from_utf8_lossy(&d.stderr);
    assert_eq!(d.status.code(), Some(2));
    assert!(err.contains(&format!("{} is a directory, not a trace", out.display())), "{err}");
    assert!(!err.contains("BPF"), "no BPF hint for a replay: {err}");
    fs::remove_dir_all(&dir).unwrap();
}

/// A comm with ESC and BEL (the kernel allows any byte but NUL): written visibly as `\x1b`
/// in every report, never raw; junit.xml and timeline.svg stay XML.
#[test]
fn control_characters_from_the_kernel_are_written_visibly_everywhere() {
    let dir = scratch("escaped");
    let trace = synth(
        &dir,
        "esc",
        &["--calls", "3", "--wrong-freeze-every", "2", "--comm", "ev\u{1b}[31mil\u{7}"],
    );
    let out = dir.join("out");
    let r = bin().arg("report").arg(&trace).arg("--out").arg(&out).output().unwrap();
    assert_eq!(r.status.code(), Some(1));
    let console = String::from_utf8_lossy(&r.stderr);
    assert!(console.contains("ev\\x1b[31mil\\x07"), "{console}");
    assert!(!console.contains('\u{1b}'), "raw ESC on the console");
    for f in ["junit.xml", "results.ktap", "summary.md", "timeline.svg"] {
        let text = fs::read_to_string(out.join(f)).unwrap();
        assert!(!text.contains(['\u{1b}', '\u{7}']), "{f} holds a raw control character");
        assert!(text.contains("ev\\x1b[31mil\\x07"), "{f} shows the comm visibly");
    }
    for f in ["junit.xml", "timeline.svg"] {
        roxmltree::Document::parse(&fs::read_to_string(out.join(f)).unwrap())
            .unwrap_or_else(|e| panic!("{f} is not XML: {e}"));
    }
    // JSON escapes it its own way, and keeps the bytes.
    let s: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["clients"][0]["comm"], "ev\u{1b}[31mil\u{7}");
    fs::remove_dir_all(&dir).unwrap();
}

/// An unwritable `--kcidb` path: no file of the set is written (it once left three of them).
#[test]
fn an_unwritable_kcidb_path_writes_none_of_the_set() {
    let dir = scratch("kcidb-unwritable");
    let out = dir.join("out");
    let trace = golden("6.1-ioctl-s2-auto.jsonl");
    let ok = bin().arg("report").arg(&trace).arg("--out").arg(&out).status().unwrap();
    assert_eq!(ok.code(), Some(1));
    let r = bin()
        .arg("report")
        .arg(&trace)
        .arg("--out")
        .arg(&out)
        .args(["--kcidb", "/proc/no-such-dir/kcidb.json", "--kcidb-origin", "ci"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("none written"), "{err}");
    assert!(err.contains("/proc/no-such-dir"), "{err}");
    assert_eq!(names(&out), SET.iter().map(|f| format!("{f}.stale")).collect(), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}
