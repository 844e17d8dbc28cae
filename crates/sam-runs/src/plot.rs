//! Loss curves as a self-contained SVG (no fonts or native libraries needed).

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;
const TRAIN_COLOR: &str = "#1f77b4";
const VALID_COLOR: &str = "#ff7f0e";

/// Draw training and validation loss against step as an SVG document.
/// Either series may be empty; non-finite points are left out.
///
/// ```
/// let svg = sam_runs::loss_svg("run 1", &[(1.0, 2.0), (2.0, 1.5)], &[(2.0, 1.7)]);
/// assert!(svg.starts_with("<svg") && svg.contains("train loss") && svg.contains("validation loss"));
/// ```
pub fn loss_svg(title: &str, train: &[(f64, f64)], valid: &[(f64, f64)]) -> String {
    let finite = |s: &[(f64, f64)]| -> Vec<(f64, f64)> {
        s.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect()
    };
    let (train, valid) = (finite(train), finite(valid));
    let all: Vec<(f64, f64)> = train.iter().chain(valid.iter()).copied().collect();
    let (mut x0, mut x1) = bounds(all.iter().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (mut y0, mut y1) = bounds(all.iter().map(|p| p.1)).unwrap_or((0.0, 1.0));
    if x1 - x0 < 1e-12 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#, W / 2.0, escape(title));
    // Axes and grid.
    let (bx0, bx1, by0, by1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    for t in nice_ticks(y0, y1, 6) {
        let y = py(t);
        let _ = writeln!(s, r##"<line x1="{bx0}" y1="{y:.1}" x2="{bx1}" y2="{y:.1}" stroke="#e5e5e5"/>"##);
        let _ =
            writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, bx0 - 6.0, y + 4.0, tick_label(t));
    }
    for t in nice_ticks(x0, x1, 8) {
        let x = px(t);
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{by1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/>"##, by1 + 4.0);
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, by1 + 18.0, tick_label(t));
    }
    let _ = writeln!(
        s,
        r##"<rect x="{bx0}" y="{by0}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        bx1 - bx0,
        by1 - by0
    );
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"#, (bx0 + bx1) / 2.0, H - 10.0);
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">loss</text>"#,
        (by0 + by1) / 2.0,
        (by0 + by1) / 2.0
    );
    // Series.
    for (points, color, name, markers) in
        [(&train, TRAIN_COLOR, "train loss", false), (&valid, VALID_COLOR, "validation loss", true)]
    {
        if points.is_empty() {
            continue;
        }
        let path: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = writeln!(
            s,
            r#"<polyline class="series" data-name="{name}" fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            path.join(" ")
        );
        if markers || points.len() == 1 {
            for (x, y) in points.iter() {
                let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, px(*x), py(*y));
            }
        }
    }
    // Legend.
    let lx = bx1 - 150.0;
    for (i, (color, name, n)) in
        [(TRAIN_COLOR, "train loss", train.len()), (VALID_COLOR, "validation loss", valid.len())].iter().enumerate()
    {
        let y = by0 + 16.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2.5"/>"#,
            lx + 22.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{name} ({n})</text>"#, lx + 28.0, y + 4.0);
    }
    s.push_str("</svg>\n");
    s
}

fn bounds(it: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    it.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// About `n` round tick values (1, 2 or 5 × 10^k apart) within `[lo, hi]`
/// (the axes of `loss.svg`, and of the server's dashboard charts).
///
/// ```
/// assert_eq!(sam_runs::nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
/// assert_eq!(sam_runs::nice_ticks(1.0, 1.0, 4), vec![1.0]);
/// ```
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 50 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

/// A tick value as a short label: `3`, `0.25`, `1.333`.
pub fn tick_label(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(1.23, 1.87, 6);
        assert!(t.iter().all(|v| (1.23..=1.87).contains(v)), "{t:?}");
        assert!(t.len() >= 3);
    }

    #[test]
    fn svg_has_both_series_with_all_points() {
        let train: Vec<(f64, f64)> = (1..=20).map(|i| (i as f64, 3.0 / i as f64)).collect();
        let valid = [(5.0, 1.0), (10.0, 0.6), (f64::NAN, 1.0)];
        let svg = loss_svg("r <1>", &train, &valid);
        assert!(svg.contains("r &lt;1&gt;"));
        let series: Vec<&str> = svg.lines().filter(|l| l.contains("class=\"series\"")).collect();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].matches(',').count(), 20);
        assert_eq!(series[1].matches(',').count(), 2, "NaN point dropped");
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
