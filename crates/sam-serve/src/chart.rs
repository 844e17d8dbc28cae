//! Inline SVG charts for the dashboard: horizontal bars, daily columns and
//! line charts with axes. Plain SVG elements (every one closed, as SVG
//! inside HTML needs), no script, no fonts beyond the page's.

use maud::{Markup, html};
use sam_runs::{nice_ticks, tick_label as label};

/// Colours of a chart's series, in order.
pub(crate) const PALETTE: [&str; 8] =
    ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];

/// Horizontal bars, one per `(label, value)`, longest value first as given.
pub(crate) fn bars(items: &[(String, u64)], color: impl Fn(&str, usize) -> &'static str) -> Markup {
    const ROW: f64 = 24.0;
    const LABEL: f64 = 100.0;
    const W: f64 = 340.0;
    let max = items.iter().map(|i| i.1).max().unwrap_or(0).max(1) as f64;
    let h = (items.len().max(1) as f64) * ROW + 6.0;
    let span = W - LABEL - 48.0;
    html! {
        svg.chart.bars viewBox=(format!("0 0 {W} {h}")) width="100%" role="img" {
            @if items.is_empty() {
                text x="4" y="18" fill="#6b7280" { "nothing yet" }
            }
            @for (i, (label, value)) in items.iter().enumerate() {
                @let y = i as f64 * ROW + 4.0;
                @let w = (*value as f64 / max * span).max(1.0);
                g {
                    title { (label) ": " (value) }
                    text x=(LABEL - 8.0) y=(fmt(y + 15.0)) text-anchor="end" { (truncate(label, 14)) }
                    rect x=(LABEL) y=(fmt(y + 2.0)) width=(fmt(w)) height=(ROW - 8.0) rx="3" fill=(color(label, i)) {}
                    text x=(fmt(LABEL + w + 6.0)) y=(fmt(y + 15.0)) { (value) }
                }
            }
        }
    }
}

/// One column per day.
pub(crate) fn columns(days: &[(String, u64)]) -> Markup {
    const W: f64 = 1100.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 48.0;
    const BOTTOM: f64 = 40.0;
    const TOP: f64 = 12.0;
    let max = days.iter().map(|d| d.1).max().unwrap_or(0).max(1) as f64;
    let ticks = nice_ticks(0.0, max, 4);
    let top = ticks.last().copied().unwrap_or(max).max(max);
    let plot_h = H - TOP - BOTTOM;
    // At most 30 days are shown; a short history keeps narrow columns.
    let slot = ((W - LEFT - 8.0) / days.len().max(1) as f64).min((W - LEFT - 8.0) / 30.0);
    let label_every = (days.len() / 10).max(1);
    html! {
        svg.chart.columns viewBox=(format!("0 0 {W} {H}")) width="100%" role="img" {
            @for t in &ticks {
                @let y = TOP + plot_h * (1.0 - t / top);
                line x1=(LEFT) y1=(fmt(y)) x2=(W - 8.0) y2=(fmt(y)) stroke="#e5e7eb" {}
                text x=(LEFT - 6.0) y=(fmt(y + 4.0)) text-anchor="end" class="tick" { (label(*t)) }
            }
            @if days.is_empty() {
                text x=(LEFT + 8.0) y=(H / 2.0) fill="#6b7280" { "no examples yet" }
            }
            @for (i, (day, n)) in days.iter().enumerate() {
                @let h = plot_h * (*n as f64 / top);
                @let x = LEFT + i as f64 * slot;
                g {
                    title { (day) ": " (n) " examples" }
                    rect x=(fmt(x + slot * 0.15)) y=(fmt(TOP + plot_h - h)) width=(fmt(slot * 0.7)) height=(fmt(h.max(0.5))) rx="2" fill=(PALETTE[0]) {}
                    @if i % label_every == 0 || i + 1 == days.len() {
                        text x=(fmt(x + slot / 2.0)) y=(H - BOTTOM + 16.0) text-anchor="middle" class="tick" { (day.get(5..).unwrap_or(day)) }
                    }
                }
            }
            line x1=(LEFT) y1=(TOP + plot_h) x2=(W - 8.0) y2=(TOP + plot_h) stroke="#9ca3af" {}
        }
    }
}

/// A named series of `(x, y)` points.
pub(crate) struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
    /// Draw points as dots as well as a line (sparse series such as
    /// validation losses).
    pub dots: bool,
}

/// The coordinate frame of a line chart, written into the SVG as data
/// attributes so that the page's script can add live points.
pub(crate) struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

const LW: f64 = 460.0;
const LH: f64 = 240.0;
const LLEFT: f64 = 50.0;
const LRIGHT: f64 = 12.0;
const LTOP: f64 = 14.0;
const LBOTTOM: f64 = 34.0;

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LLEFT + (x - self.x0) / (self.x1 - self.x0) * (LW - LLEFT - LRIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        let y = y.clamp(self.y0, self.y1);
        LTOP + (1.0 - (y - self.y0) / (self.y1 - self.y0)) * (LH - LTOP - LBOTTOM)
    }
}

/// Lines with axes; `x_max` fixes the right end of the x axis (a running
/// run's planned steps) so that live points fit.
pub(crate) fn lines(series: &[Series<'_>], x_label: &str, x_max: Option<f64>, id: &str) -> Markup {
    let pts = || series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1) = bounds(pts().map(|p| p.0)).unwrap_or((0.0, 1.0));
    if let Some(m) = x_max {
        x1 = x1.max(m);
    }
    x0 = x0.min(0.0);
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let (mut y0, mut y1) = bounds(pts().map(|p| p.1)).unwrap_or((0.0, 1.0));
    if y1 - y0 < 1e-9 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = (y1 - y0) * 0.08;
    let (y0, y1) = ((y0 - pad).max(if y0 >= 0.0 { 0.0 } else { f64::MIN }), y1 + pad);
    let f = Frame { x0, x1, y0, y1 };
    let plot_bottom = LH - LBOTTOM;
    html! {
        svg.chart.lines id=(id) viewBox=(format!("0 0 {LW} {LH}")) width="100%" role="img"
            data-x0=(x0) data-x1=(x1) data-y0=(y0) data-y1=(y1)
            data-left=(LLEFT) data-right=(LW - LRIGHT) data-top=(LTOP) data-bottom=(plot_bottom) {
            @for t in nice_ticks(y0, y1, 5) {
                @let y = f.py(t);
                line x1=(LLEFT) y1=(fmt(y)) x2=(LW - LRIGHT) y2=(fmt(y)) stroke="#e5e7eb" {}
                text x=(LLEFT - 6.0) y=(fmt(y + 4.0)) text-anchor="end" class="tick" { (label(t)) }
            }
            @for t in nice_ticks(x0, x1, 6) {
                @let x = f.px(t);
                line x1=(fmt(x)) y1=(plot_bottom) x2=(fmt(x)) y2=(plot_bottom + 4.0) stroke="#6b7280" {}
                text x=(fmt(x)) y=(plot_bottom + 16.0) text-anchor="middle" class="tick" { (label(t)) }
            }
            line x1=(LLEFT) y1=(plot_bottom) x2=(LW - LRIGHT) y2=(plot_bottom) stroke="#9ca3af" {}
            line x1=(LLEFT) y1=(LTOP) x2=(LLEFT) y2=(plot_bottom) stroke="#9ca3af" {}
            text x=(fmt((LLEFT + LW - LRIGHT) / 2.0)) y=(LH - 4.0) text-anchor="middle" class="tick" { (x_label) }
            @for s in series {
                @let points: Vec<String> = s.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite())
                    .map(|p| format!("{},{}", fmt(f.px(p.0)), fmt(f.py(p.1)))).collect();
                polyline.series data-series=(s.name) points=(points.join(" ")) fill="none" stroke=(s.color) stroke-width="2" stroke-linejoin="round" {}
                @if s.dots || s.points.len() == 1 {
                    @for p in s.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()) {
                        circle cx=(fmt(f.px(p.0))) cy=(fmt(f.py(p.1))) r="3" fill=(s.color) {
                            title { (s.name) " at " (label(p.0)) ": " (format!("{:.4}", p.1)) }
                        }
                    }
                }
            }
        }
    }
}

/// The legend of a line chart, as HTML (beside the chart, never over it).
pub(crate) fn legend(series: &[Series<'_>]) -> Markup {
    html! {
        span.legend {
            @for s in series {
                span.key style=(format!("background:{}", s.color)) {} (s.name)
            }
        }
    }
}

/// A thin horizontal gauge, 0 to 1.
pub(crate) fn gauge(share: Option<f64>, color: &str) -> Markup {
    let w = share.unwrap_or(0.0).clamp(0.0, 1.0) * 100.0;
    html! {
        svg.gauge viewBox="0 0 100 8" width="100" height="8" preserveAspectRatio="none" {
            rect width="100" height="8" rx="2" fill="#e5e7eb" {}
            rect width=(fmt(w)) height="8" rx="2" fill=(color) {}
        }
    }
}

fn bounds(it: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    it.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((a, b)) => Some((a.min(v), b.max(v))),
    })
}

/// A coordinate with one decimal.
fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n - 1).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_svg_element_is_closed_and_text_is_escaped() {
        let html = bars(&[("<script>".into(), 3), ("git".into(), 1)], |_, i| PALETTE[i]).into_string();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"), "{html}");
        assert!(!html.contains("/>") && html.matches("<rect").count() == html.matches("</rect>").count());
        let s = [Series { name: "train loss", color: PALETTE[0], points: vec![(1.0, 2.0), (2.0, 1.5)], dots: false }];
        let html = lines(&s, "step", Some(10.0), "c1").into_string();
        assert!(html.contains("<polyline") && html.contains("data-x1=\"10\""), "{html}");
    }
}
