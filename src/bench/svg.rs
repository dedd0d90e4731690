//! The SVG chart: one horizontal bar per row that has a guest/host ratio, on a log scale (ratios
//! here run from about 1 to over 100): the bar goes from 1 (as on the host) to the ratio of the
//! medians, the whisker from the smallest to the largest per-run ratio. Written as plain text; no
//! plotting library.

use std::fmt::Write;

use super::report::{Report, Status};

const WIDTH: f64 = 900.0;
const LABEL_W: f64 = 300.0;
const PLOT_X: f64 = LABEL_W + 20.0;
const PLOT_W: f64 = WIDTH - PLOT_X - 90.0;
const TOP: f64 = 56.0;
const ROW_H: f64 = 28.0;
const BOTTOM: f64 = 44.0;

/// Text with `&`, `<`, `>` and quotes escaped for XML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The axis range: every ratio and whisker, 1, and at least a factor of 4 overall.
fn axis(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (1.0f64, 1.0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (mut lo, mut hi) = (lo / 1.25, hi * 1.25);
    while hi / lo < 4.0 {
        lo /= 1.25;
        hi *= 1.25;
    }
    (lo, hi)
}

/// Tick values 1, 2, 5 times powers of ten within `lo..=hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    for e in first..=last {
        for m in [1.0, 2.0, 5.0] {
            let t = m * 10f64.powi(e);
            if t >= lo && t <= hi {
                out.push(t);
            }
        }
    }
    out
}

/// The chart for `report` (rows without a ratio are left out; a note says so when none has one).
pub fn render(report: &Report) -> String {
    let bars: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.status == Status::Ok)
        .filter_map(|r| Some((r, r.ratio()?)))
        .filter(|(_, s)| s.median.is_finite() && s.min.is_finite() && s.max.is_finite())
        .collect();
    let (lo, hi) = axis(bars.iter().flat_map(|(_, s)| [s.min, s.median, s.max]));
    let span = (hi / lo).ln();
    let x = |v: f64| PLOT_X + ((v.max(lo).min(hi) / lo).ln() / span) * PLOT_W;
    let plot_h = ROW_H * bars.len().max(1) as f64;
    let height = TOP + plot_h + BOTTOM;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"13\">"
    );
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"white\"/>"
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">Kite: guest / host, \
         log scale (bar: ratio of medians; whisker: min..max of {} paired runs)</text>",
        10.0, report.runs
    );
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"44\" fill=\"#555\">1 = as on the bare host; higher = the VM \
         costs more</text>"
    );
    // Grid and axis labels.
    for tick in ticks(lo, hi) {
        let tx = x(tick);
        let _ = writeln!(
            s,
            "<line x1=\"{tx:.1}\" y1=\"{TOP}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            TOP + plot_h
        );
        let _ = writeln!(
            s,
            "<text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            TOP + plot_h + 18.0,
            trim_number(tick)
        );
    }
    if bars.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{PLOT_X}\" y=\"{:.1}\" fill=\"#555\">no row has both a host and a guest \
             side</text>",
            TOP + ROW_H * 0.65
        );
    }
    for (i, (row, r)) in bars.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let mid = y + ROW_H / 2.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LABEL_W + 10.0,
            mid + 4.5,
            escape(&row.name)
        );
        let (one, at) = (x(1.0), x(r.median));
        // Blue: the VM costs more than the host; green: less.
        let fill = if r.median >= 1.0 {
            "#4c78a8"
        } else {
            "#59a14f"
        };
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
             fill=\"{fill}\"><title>{}: {:.3} ({:.3}..{:.3})</title></rect>",
            one.min(at),
            y + 5.0,
            (at - one).abs().max(1.0),
            ROW_H - 10.0,
            escape(&row.name),
            r.median,
            r.min,
            r.max
        );
        let (x0, x1) = (x(r.min), x(r.max));
        let _ = writeln!(
            s,
            "<path d=\"M{x0:.1} {mid:.1}H{x1:.1}M{x0:.1} {:.1}V{:.1}M{x1:.1} {:.1}V{:.1}\" \
             stroke=\"#222\" stroke-width=\"1.5\" fill=\"none\"/>",
            mid - 6.0,
            mid + 6.0,
            mid - 6.0,
            mid + 6.0
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{:.2}</text>",
            x1.max(x(r.median)) + 6.0,
            mid + 4.5,
            r.median
        );
    }
    // The host line, over the bars.
    let one = x(1.0);
    let _ = writeln!(
        s,
        "<line x1=\"{one:.1}\" y1=\"{:.1}\" x2=\"{one:.1}\" y2=\"{:.1}\" stroke=\"#c00\" \
         stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>",
        TOP - 4.0,
        TOP + plot_h + 4.0
    );
    s.push_str("</svg>\n");
    s
}

fn trim_number(v: f64) -> String {
    let t = format!("{v:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{Report, tests::sample_report};

    /// A small XML well-formedness check: tags nest and close, attributes are quoted, text and
    /// attribute values have no raw `<` or stray `&`.
    fn check_xml(doc: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = doc.trim();
        assert!(rest.starts_with("<svg"), "starts with <svg");
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('<') {
                let end = after.find('>').expect("tag closes");
                let tag = &after[..end];
                assert!(!tag.contains('<'), "< inside tag {tag}");
                assert_eq!(tag.matches('"').count() % 2, 0, "quotes in {tag}");
                check_entities(tag);
                if let Some(name) = tag.strip_prefix('/') {
                    assert_eq!(stack.pop().as_deref(), Some(name.trim()), "closing {tag}");
                } else if !tag.ends_with('/') {
                    let name = tag.split_whitespace().next().unwrap();
                    stack.push(name.to_string());
                }
                rest = &after[end + 1..];
                if stack.is_empty() {
                    assert!(rest.trim().is_empty(), "content after the root: {rest}");
                }
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                assert!(!rest[..end].contains('>'), "> in text");
                check_entities(&rest[..end]);
                rest = &rest[end..];
            }
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    fn check_entities(text: &str) {
        for (i, _) in text.match_indices('&') {
            let ent = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| ent.starts_with(e)),
                "stray & in {text}"
            );
        }
    }

    #[test]
    fn chart_is_well_formed_with_a_bar_per_ratio() {
        let svg = render(&sample_report());
        check_xml(&svg);
        // Only the cpu row has both sides.
        assert_eq!(svg.matches("fill=\"#4c78a8\"").count(), 1);
        assert!(svg.contains(">cpu: workload cycles</text>"));
        assert!(svg.contains("1.09"));
        assert!(!svg.contains("pio-rtt"));
    }

    #[test]
    fn empty_chart_is_well_formed() {
        let svg = render(&Report::default());
        check_xml(&svg);
        assert!(svg.contains("no row has both"));
    }

    #[test]
    fn names_are_escaped() {
        let mut report = sample_report();
        report.rows[0].name = "a<b & \"c\"".into();
        let svg = render(&report);
        check_xml(&svg);
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"));
    }

    #[test]
    fn log_axis_covers_every_value_and_one() {
        let (lo, hi) = axis([0.9, 1.1, 136.0].into_iter());
        assert!(lo < 0.9 && hi > 136.0);
        let (lo, hi) = axis([1.0, 1.01, f64::NAN].into_iter());
        assert!(lo < 1.0 && hi > 1.0 && hi / lo >= 4.0);
        let t = ticks(0.7, 160.0);
        assert_eq!(t.len(), 7, "{t:?}");
        for (got, want) in t.iter().zip([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]) {
            assert!((got - want).abs() < 1e-9, "{t:?}");
        }
        assert_eq!(trim_number(1.50), "1.5");
        assert_eq!(trim_number(2.0), "2");
    }
}
