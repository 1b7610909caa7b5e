//! The PNG chart of a compare run: skiff/etcd throughput ratio per case (higher is better)
//! and skiff/etcd p99 latency ratio (lower is better), with the 1.0 line (parity) and the
//! 1.5 goal. Drawn with plotters' bitmap backend; text uses a TrueType font read at run
//! time (pure-Rust `ab_glyph`, no fontconfig), by default DejaVu Sans from Debian's
//! `fonts-dejavu-core`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Where a sans-serif TrueType font is usually found.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Register the font plotters draws text with (once per process).
fn register_font(explicit: Option<&Path>) -> Result<(), String> {
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match explicit {
            Some(path) => vec![path.to_path_buf()],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(path);
            }
        }
        Err(format!(
            "no TrueType font found (tried {}); install fonts-dejavu-core or pass --font",
            explicit
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| FONT_CANDIDATES.join(", "))
        ))
    })
    .clone()
    .map(|_| ())
}

/// One bar group of the chart.
#[derive(Debug, Clone)]
pub struct ChartCase {
    pub label: String,
    /// skiff ops/s ÷ etcd ops/s.
    pub throughput_ratio: f64,
    /// skiff p99 ÷ etcd p99.
    pub p99_ratio: f64,
}

/// Draw the chart to `path` (PNG).
pub fn render(
    path: &Path,
    title: &str,
    cases: &[ChartCase],
    font: Option<&Path>,
) -> Result<(), String> {
    register_font(font)?;
    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(450);
    panel(
        &top,
        &format!("{title}: throughput, skiff ÷ etcd (higher is better)"),
        cases,
        |c| c.throughput_ratio,
        &RGBColor(46, 110, 180),
    )
    .map_err(|e| err(&e))?;
    panel(
        &bottom,
        "p99 latency, skiff ÷ etcd (lower is better)",
        cases,
        |c| c.p99_ratio,
        &RGBColor(220, 120, 40),
    )
    .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    cases: &[ChartCase],
    value: impl Fn(&ChartCase) -> f64,
    color: &RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let values: Vec<f64> = cases
        .iter()
        .map(&value)
        .map(|v| if v.is_finite() { v } else { 0.0 })
        .collect();
    let top = values.iter().copied().fold(1.6f64, f64::max) * 1.15;
    let n = cases.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_max_light_lines(1)
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => cases.get(*i).map(|c| c.label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 15))
        .y_label_style(("sans-serif", 15))
        .y_desc("ratio (red line: 1.0 = etcd; grey: 1.5)")
        .draw()?;
    chart.draw_series(
        Histogram::vertical(&chart)
            .style(color.filled())
            .margin(14)
            .data(values.iter().enumerate().map(|(i, v)| (i, *v))),
    )?;
    for (level, style) in [
        (1.5, BLACK.mix(0.4).stroke_width(1)),
        (1.0, RED.stroke_width(2)),
    ] {
        chart.draw_series(LineSeries::new(
            [(SegmentValue::Exact(0), level), (SegmentValue::Last, level)],
            style,
        ))?;
    }
    let label_style = ("sans-serif", 15)
        .into_font()
        .into_text_style(area)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(values.iter().enumerate().map(|(i, v)| {
        Text::new(
            format!("{v:.2}"),
            (SegmentValue::CenterOf(i), *v + top * 0.01),
            label_style.clone(),
        )
    }))?;
    Ok(())
}

/// Draw named series of per-round values (e.g. milliseconds per leader kill) as lines
/// with points, one colour each, to `path` (PNG).
pub fn render_series(path: &Path, title: &str, series: &[(&str, &[f64])]) -> Result<(), String> {
    render_series_with_axes(path, title, ("round", "ms"), series)
}

/// [`render_series`] with the axes named `(x, y)`.
pub fn render_series_with_axes(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[(&str, &[f64])],
) -> Result<(), String> {
    register_font(None)?;
    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let rounds = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1usize..rounds, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_style(("sans-serif", 15))
        .y_label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [
        RGBColor(46, 110, 180),
        RGBColor(220, 120, 40),
        RGBColor(60, 160, 80),
    ];
    for (i, (name, values)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<(usize, f64)> = values
            .iter()
            .enumerate()
            .map(|(round, v)| (round + 1, if v.is_finite() { *v } else { 0.0 }))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_when_a_font_is_available() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let cases = vec![
            ChartCase {
                label: "put c1".into(),
                throughput_ratio: 1.2,
                p99_ratio: 0.8,
            },
            ChartCase {
                label: "range-l c16".into(),
                throughput_ratio: 0.7,
                p99_ratio: f64::NAN,
            },
        ];
        match render(&path, "test", &cases, None) {
            Ok(()) => {
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(&bytes[1..4], b"PNG");
            }
            // No font on this machine: the error says what to install.
            Err(msg) => assert!(msg.contains("font"), "{msg}"),
        }
    }
}
