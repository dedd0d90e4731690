//! The SVG chart: one horizontal bar per row that has a guest/host ratio (the ratio of the
//! medians), with a whisker from the smallest to the largest per-run ratio, and a line at 1 (as
//! fast as the host). Written as plain text; no plotting library.

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

/// A round step for the axis ticks, about `span / 5`.
fn tick_step(span: f64) -> f64 {
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
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
    let top_value = bars
        .iter()
        .map(|(_, s)| s.max.max(s.median))
        .fold(1.0f64, f64::max)
        * 1.08;
    let step = tick_step(top_value);
    let axis_max = (top_value / step).ceil() * step;
    let x = |v: f64| PLOT_X + (v.max(0.0) / axis_max) * PLOT_W;
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
        "<text x=\"{}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">Kite: guest / host \
         (bar: ratio of medians; whisker: min..max of {} paired runs)</text>",
        10.0, report.runs
    );
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"44\" fill=\"#555\">1 = as on the bare host; higher = the VM \
         costs more</text>"
    );
    // Grid and axis labels.
    let mut tick = 0.0;
    while tick <= axis_max + step / 2.0 {
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
        tick += step;
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
        let _ = writeln!(
            s,
            "<rect x=\"{PLOT_X}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
             fill=\"#4c78a8\"><title>{}: {:.3} ({:.3}..{:.3})</title></rect>",
            y + 5.0,
            x(r.median) - PLOT_X,
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
    let t = format!("{v:.2}");
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
    fn ticks_are_round() {
        for (span, step) in [(1.08, 0.25), (2.0, 0.5), (9.0, 2.0), (30.0, 10.0)] {
            assert!((tick_step(span) - step).abs() < 1e-9, "{span}");
        }
        assert_eq!(trim_number(1.50), "1.5");
        assert_eq!(trim_number(2.0), "2");
    }
}
