//! Axis arithmetic: tick steps a person reads (1, 2 or 5 times a power of ten), durations in
//! the unit that suits them, and the ticks of a logarithmic axis.

/// The unit a time axis is labelled in, chosen from its largest tick so that labels are
/// short numbers ("20 ms", not "20000000 ns" or "0.02 s").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Unit {
    pub name: &'static str,
    pub ns: f64,
}

const UNITS: [Unit; 4] = [
    Unit { name: "s", ns: 1e9 },
    Unit { name: "ms", ns: 1e6 },
    Unit { name: "µs", ns: 1e3 },
    Unit { name: "ns", ns: 1.0 },
];

/// The largest unit not larger than `ns` (ns for anything below a microsecond).
pub fn unit_for(ns: f64) -> Unit {
    UNITS.into_iter().find(|u| ns >= u.ns).unwrap_or(UNITS[3])
}

/// A duration with three significant digits in its own unit: "412 µs", "4.09 ms", "1.25 s".
pub fn dur(ns: f64) -> String {
    let u = unit_for(ns);
    let v = ns / u.ns;
    let decimals = if v >= 100.0 || u.ns == 1.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.decimals$} {}", u.name)
}

/// The smallest step of the form 1, 2 or 5 times a power of ten that cuts `range` into at
/// most `target` intervals.
pub fn nice_step(range: f64, target: usize) -> f64 {
    let raw = (range / target.max(1) as f64).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|s| *s >= raw * 0.999_999).unwrap()
}

/// A linear time axis over `0..=span_ns`: tick positions (ns) and their labels, all in one
/// unit.
pub fn time_ticks(span_ns: f64, target: usize) -> Vec<(f64, String)> {
    let span = span_ns.max(1.0);
    let step = nice_step(span, target);
    // The unit of the largest label, so that "3.5 ms" is not "3500 µs".
    let unit = unit_for((span / step + 1e-9).floor() * step);
    // Enough decimals to tell neighbouring ticks apart (a 0.5 ms step needs one).
    let decimals = (-(step / unit.ns).log10().floor()).max(0.0) as usize;
    let n = (span / step + 1e-9).floor() as usize;
    (0..=n)
        .map(|i| {
            let t = i as f64 * step;
            let label = if i == 0 {
                "0".to_string()
            } else {
                format!("{:.decimals$} {}", t / unit.ns, unit.name)
            };
            (t, label)
        })
        .collect()
}

/// Count ticks over `0..=max`: whole numbers only.
pub fn count_ticks(max: u64, target: usize) -> Vec<u64> {
    let step = nice_step(max.max(1) as f64, target).max(1.0) as u64;
    (0..=max.div_ceil(step)).map(|i| i * step).collect()
}

/// "1 snapshot call", "3 snapshot calls", "10,000 snapshot calls".
pub fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{} {}", grouped(n), if n == 1 { one } else { many })
}

/// `n` with its thousands grouped by commas: five digits and more are misread without.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_one_two_five() {
        assert_eq!(nice_step(100.0, 5), 20.0);
        assert_eq!(nice_step(100.0, 10), 10.0);
        assert_eq!(nice_step(0.37, 8), 0.05);
        assert_eq!(nice_step(7.0, 7), 1.0);
        assert_eq!(nice_step(37_709e6, 8), 5e9);
    }

    #[test]
    fn time_labels_carry_their_unit() {
        let t = time_ticks(124.4e6, 8);
        let labels: Vec<&str> = t.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "20 ms", "40 ms", "60 ms", "80 ms", "100 ms", "120 ms"]);
        let t = time_ticks(3.5e6, 8);
        assert_eq!(t[1].1, "0.5 ms");
        assert_eq!(t.last().unwrap().1, "3.5 ms");
        let t = time_ticks(37.7e9, 8);
        assert_eq!(t[1].1, "5 s");
        assert_eq!(time_ticks(800.0, 4)[1].1, "200 ns");
    }

    #[test]
    fn durations_and_counts_read_naturally() {
        assert_eq!(dur(4_090_000.0), "4.09 ms");
        assert_eq!(dur(17_980_000.0), "18.0 ms");
        assert_eq!(dur(412_000.0), "412 µs");
        assert_eq!(dur(1.25e9), "1.25 s");
        assert_eq!(dur(750.0), "750 ns");
        assert_eq!(plural(1u64, "violation", "violations"), "1 violation");
        assert_eq!(plural(3u64, "violation", "violations"), "3 violations");
        assert_eq!(plural(0u64, "violation", "violations"), "0 violations");
        assert_eq!(plural(10_000u64, "call", "calls"), "10,000 calls");
        assert_eq!(
            [grouped(999), grouped(1000), grouped(1_234_567)],
            ["999", "1,000", "1,234,567"]
        );
        assert_eq!(count_ticks(3, 5), [0, 1, 2, 3]);
        assert_eq!(count_ticks(5000, 5), [0, 1000, 2000, 3000, 4000, 5000]);
        assert_eq!(count_ticks(7, 4), [0, 2, 4, 6, 8]);
    }
}
