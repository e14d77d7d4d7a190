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
