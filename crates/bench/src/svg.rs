//! The SVG chart: one horizontal bar per row that has a guest/host ratio, on a log scale (ratios
//! here run from about 1 to over 100): the bar goes from 1 (as on the host) to the ratio of the
//! medians, the whisker from the smallest to the largest per-run ratio. Below it, if `scale` ran,
//! its figures: per figure, a bar per machine on a linear axis from 0, memory sizes on the left
//! and vCPU counts on the right, so the growth shows at a glance. Written as plain text; no
//! plotting library.

use std::fmt::Write;

use super::report::{Report, Row, Status};
use super::scale;
use super::stats::Summary;
use super::table;

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
    let first = libm::log10(lo).floor() as i32;
    let last = libm::log10(hi).ceil() as i32;
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

/// The chart for `report`: the guest/host ratios (rows without a ratio are left out; a note says
/// so when none has one), then, if `scale` ran, its figures as the machine grows.
pub fn render(report: &Report) -> String {
    let panels = scale::panels(&report.rows);
    let bars: Vec<(&Row, Summary)> = report
        .rows
        .iter()
        .filter(|r| r.status == Status::Ok)
        .filter_map(|r| Some((r, r.ratio()?)))
        .filter(|(_, s)| s.median.is_finite() && s.min.is_finite() && s.max.is_finite())
        .collect();
    let peer_bars: Vec<(&Row, Summary)> = report
        .rows
        .iter()
        .filter(|r| r.status == Status::Ok)
        .filter_map(|r| Some((r, r.peer_ratio()?)))
        .filter(|(_, s)| s.median.is_finite() && s.min.is_finite() && s.max.is_finite())
        .collect();
    let mut body = String::new();
    let mut height = 0.0;
    if !bars.is_empty() || (panels.is_empty() && peer_bars.is_empty()) {
        height = ratio_chart(&mut body, report.runs, &bars, height, &GUEST_HOST);
    }
    if !peer_bars.is_empty() {
        let peer = report.peer.as_deref().unwrap_or("the peer");
        let subtitle = format!(
            "1 = as under {}; lower = Kite costs less (seccomp {} on both)",
            escape(peer),
            escape(&report.seccomp)
        );
        let titles = Titles {
            title: "Kite / peer",
            subtitle: &subtitle,
        };
        height = ratio_chart(&mut body, report.runs, &peer_bars, height, &titles);
    }
    if !panels.is_empty() {
        height = scale_chart(&mut body, &panels, height);
    }
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
    s.push_str(&body);
    s.push_str("</svg>\n");
    s
}

/// What a ratio chart says above its bars (`subtitle` already escaped).
struct Titles<'a> {
    title: &'a str,
    subtitle: &'a str,
}

const GUEST_HOST: Titles<'static> = Titles {
    title: "Kite: guest / host",
    subtitle: "1 = as on the bare host; higher = the VM costs more",
};

/// The ratio bars (guest/host or Kite/peer), from `top` down; returns where the chart ends.
fn ratio_chart(
    s: &mut String,
    runs: u32,
    bars: &[(&Row, Summary)],
    top: f64,
    titles: &Titles,
) -> f64 {
    let (lo, hi) = axis(bars.iter().flat_map(|(_, s)| [s.min, s.median, s.max]));
    let span = libm::log(hi / lo);
    let x = |v: f64| PLOT_X + (libm::log(v.max(lo).min(hi) / lo) / span) * PLOT_W;
    let plot_top = top + TOP;
    let plot_h = ROW_H * bars.len().max(1) as f64;

    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"16\" font-weight=\"bold\">{}, \
         log scale (bar: ratio of medians; whisker: min..max of {} paired runs)</text>",
        10.0,
        top + 24.0,
        titles.title,
        runs
    );
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"{}\" fill=\"#555\">{}</text>",
        top + 44.0,
        titles.subtitle
    );
    // Grid and axis labels.
    for tick in ticks(lo, hi) {
        let tx = x(tick);
        let _ = writeln!(
            s,
            "<line x1=\"{tx:.1}\" y1=\"{plot_top}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            plot_top + plot_h
        );
        let _ = writeln!(
            s,
            "<text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            plot_top + plot_h + 18.0,
            trim_number(tick)
        );
    }
    if bars.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{PLOT_X}\" y=\"{:.1}\" fill=\"#555\">no row has both a host and a guest \
             side</text>",
            plot_top + ROW_H * 0.65
        );
    }
    for (i, (row, r)) in bars.iter().enumerate() {
        let y = plot_top + ROW_H * i as f64;
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
        whisker(s, x(r.min), x(r.max), mid);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{:.2}</text>",
            x(r.max).max(x(r.median)) + 6.0,
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
        plot_top - 4.0,
        plot_top + plot_h + 4.0
    );
    plot_top + plot_h + BOTTOM
}

/// A min..max whisker from `x0` to `x1` at height `mid`, `half` high on each side.
fn whisker_sized(s: &mut String, x0: f64, x1: f64, mid: f64, half: f64) {
    let _ = writeln!(
        s,
        "<path d=\"M{x0:.1} {mid:.1}H{x1:.1}M{x0:.1} {:.1}V{:.1}M{x1:.1} {:.1}V{:.1}\" \
         stroke=\"#222\" stroke-width=\"1.5\" fill=\"none\"/>",
        mid - half,
        mid + half,
        mid - half,
        mid + half
    );
}

fn whisker(s: &mut String, x0: f64, x1: f64, mid: f64) {
    whisker_sized(s, x0, x1, mid, 6.0);
}

/// Height of one machine's bar in the `scale` chart, and of a figure's title.
const SCALE_BAR_H: f64 = 18.0;
const SCALE_TITLE_H: f64 = 22.0;
/// Width of a column of the `scale` chart (one per series), its label area and the room right of
/// the bars for the value.
const SCALE_COL_W: f64 = (WIDTH - 30.0) / 2.0;
const SCALE_LABEL_W: f64 = 72.0;
const SCALE_VALUE_W: f64 = 64.0;

/// `scale`'s figures from `top` down, a figure per line of panels and a panel per series: a bar
/// per machine from 0 to the median on a linear axis the figure's panels share, the whisker from
/// min to max. Returns where the chart ends.
fn scale_chart(s: &mut String, panels: &[scale::Panel], top: f64) -> f64 {
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"{:.1}\" font-size=\"16\" font-weight=\"bold\">Kite as the machine \
         grows (scale): bar: median; whisker: min..max of the runs</text>",
        top + 24.0
    );
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"{:.1}\" fill=\"#555\">times in ms after kite run is spawned; \
         guest RAM is mapped, not touched; a figure's two panels share one axis from 0</text>",
        top + 44.0
    );
    let col_x = |c: usize| 10.0 + c as f64 * (SCALE_COL_W + 10.0);
    let mut y = top + 68.0;
    for (c, series) in scale::SERIES.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{y:.1}\" font-weight=\"bold\" fill=\"#333\">{}</text>",
            col_x(c),
            escape(series.title())
        );
    }
    y += 8.0;
    for panel in panels {
        let max = panel
            .columns
            .iter()
            .flat_map(|(_, bars)| bars.iter().filter_map(|b| b.value.ok()))
            .map(|v| v.max.max(v.median))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let max = if max > 0.0 { max * 1.05 } else { 1.0 };
        let plot_w = SCALE_COL_W - SCALE_LABEL_W - SCALE_VALUE_W;
        let unit = match panel.unit.is_empty() {
            true => String::new(),
            false => format!(", {}", panel.unit),
        };
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{:.1}\" font-weight=\"bold\">{}{}</text>",
            y + 16.0,
            escape(&panel.figure),
            escape(&unit)
        );
        y += SCALE_TITLE_H;
        let mut deepest = 0usize;
        for (series, bars) in &panel.columns {
            let c = scale::SERIES.iter().position(|x| x == series).unwrap_or(0);
            let plot_x = col_x(c) + SCALE_LABEL_W;
            let x = |v: f64| plot_x + (v.max(0.0) / max).min(1.0) * plot_w;
            deepest = deepest.max(bars.len());
            let _ = writeln!(
                s,
                "<line x1=\"{plot_x:.1}\" y1=\"{y:.1}\" x2=\"{plot_x:.1}\" y2=\"{:.1}\" \
                 stroke=\"#999\"/>",
                y + SCALE_BAR_H * bars.len() as f64
            );
            for (i, bar) in bars.iter().enumerate() {
                let row_y = y + SCALE_BAR_H * i as f64;
                let mid = row_y + SCALE_BAR_H / 2.0;
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                    plot_x - 6.0,
                    mid + 4.5,
                    escape(&bar.label)
                );
                match bar.value {
                    Ok(v) => {
                        let _ = writeln!(
                            s,
                            "<rect x=\"{plot_x:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
                             height=\"{:.1}\" fill=\"#f28e2b\"><title>{} {}: {} ({}..{}){}\
                             </title></rect>",
                            row_y + 3.0,
                            (x(v.median) - plot_x).max(1.0),
                            SCALE_BAR_H - 6.0,
                            escape(&bar.label),
                            escape(&panel.figure),
                            table::num(v.median),
                            table::num(v.min),
                            table::num(v.max),
                            escape(&unit)
                        );
                        whisker_sized(s, x(v.min), x(v.max), mid, 4.0);
                        let _ = writeln!(
                            s,
                            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                            x(v.max).max(x(v.median)) + 5.0,
                            mid + 4.5,
                            table::num(v.median)
                        );
                    }
                    Err(why) => {
                        let _ = writeln!(
                            s,
                            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#888\">{why}</text>",
                            plot_x + 5.0,
                            mid + 4.5
                        );
                    }
                }
            }
        }
        y += SCALE_BAR_H * deepest as f64 + 10.0;
    }
    y + 10.0
}

fn trim_number(v: f64) -> String {
    let t = format!("{v:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Report, tests::sample_report};

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
    fn a_peer_adds_its_own_chart() {
        let svg = render(&crate::report::tests::peer_report());
        check_xml(&svg);
        let (guest, peer) = (
            svg.find("guest / host").unwrap(),
            svg.find("Kite / peer").unwrap(),
        );
        assert!(guest < peer);
        assert!(svg.contains("as under /p/firecracker") && svg.contains("seccomp on on both"));
        // Kite/peer of the cpu row: 470/470, whisker 1.0..1.6.
        assert!(svg[peer..].contains(">1.00</text>"), "{svg}");
        assert_eq!(svg.matches(">cpu: workload cycles</text>").count(), 2);
        assert!(!render(&sample_report()).contains("Kite / peer"));
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
    fn scale_alone_draws_its_panels_and_no_ratio_chart() {
        let report = Report {
            runs: 2,
            rows: scale::rows(&scale::tests::results()),
            ..Report::default()
        };
        let svg = render(&report);
        check_xml(&svg);
        assert!(!svg.contains("guest / host") && !svg.contains("no row has both"));
        assert!(svg.contains("Kite as the machine grows"));
        for text in [
            ">guest RAM ready, ms</text>",
            ">vCPUs configured, ms</text>",
            ">vmm memory overhead, MiB</text>",
            ">guest RAM (1 vCPU)</text>",
            ">vCPUs (256 MiB of RAM)</text>",
            ">16G</text>",
            ">32 vCPUs</text>",
            ">n/a</text>",
            ">error</text>",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        // 6 figures, 3 memory and 3 vCPU machines with figures in each.
        assert_eq!(svg.matches("fill=\"#f28e2b\"").count(), 36);
        // The image is as tall as its content.
        let height: f64 = svg
            .split("height=\"")
            .nth(1)
            .and_then(|h| h.split('"').next())
            .and_then(|h| h.parse().ok())
            .unwrap();
        assert!(height > 6.0 * 4.0 * SCALE_BAR_H, "{height}");
    }

    #[test]
    fn ratios_and_scale_stack() {
        let mut report = sample_report();
        report.rows.extend(scale::rows(&scale::tests::results()));
        let svg = render(&report);
        check_xml(&svg);
        assert_eq!(svg.matches("fill=\"#4c78a8\"").count(), 1);
        assert_eq!(svg.matches("fill=\"#f28e2b\"").count(), 36);
        let ratio = svg.find("guest / host").unwrap();
        let grows = svg.find("Kite as the machine grows").unwrap();
        assert!(ratio < grows);
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
