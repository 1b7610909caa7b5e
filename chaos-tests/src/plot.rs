//! `latency-throughput.png`: the run at a glance, Jepsen `perf` style.
//!
//! Top panel: one point per completed client operation at its completion time, latency in ms on
//! a log scale, coloured by outcome (ok blue, fail red, info orange). Bottom panel: completed
//! operations per second (ok and all). Nemesis intervals (from each fault's start event to its
//! end event, or to `heal`) are shaded in both panels.
//!
//! Drawn with plotters' bitmap backend. Text needs a TrueType font, read at run time (pure-Rust
//! `ab_glyph`; DejaVu Sans from Debian's `fonts-dejavu-core` by default); without one the chart
//! is drawn without any text rather than not at all.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::history::{History, OpType, Process, Value};

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

static FONT: OnceLock<bool> = OnceLock::new();

fn font() -> bool {
    *FONT.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// A nemesis interval `(start s, end s, label)`.
pub type Interval = (f64, f64, String);

/// Fault intervals from a history's nemesis events.
pub fn intervals(history: &History) -> Vec<Interval> {
    let mut open: HashMap<i64, (f64, String)> = HashMap::new();
    let mut out = Vec::new();
    let mut end = 0f64;
    for op in history.ops() {
        let t = op.time.unwrap_or(0) as f64 / 1e9;
        end = end.max(t);
        if op.process != Process::nemesis() {
            continue;
        }
        if op.f.as_str() == "heal" {
            for (_, (s, l)) in open.drain() {
                out.push((s, t, l));
            }
            continue;
        }
        let Value::Map(m) = &op.value else { continue };
        let (Some(Value::Int(id)), Some(Value::Str(mode))) = (m.get("fault"), m.get("mode")) else {
            continue;
        };
        if m.contains_key("error") && !open.contains_key(id) {
            continue;
        }
        match open.remove(id) {
            Some((s, l)) => out.push((s, t, l)),
            None => {
                open.insert(*id, (t, mode.clone()));
            }
        }
    }
    for (_, (s, l)) in open {
        out.push((s, end, l));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Draws the chart to `path`.
pub fn render(history: &History, title: &str, path: &Path) -> Result<(), String> {
    render_with(history, title, path, font())
}

/// Draws the chart, with or without text.
fn render_with(history: &History, title: &str, path: &Path, text: bool) -> Result<(), String> {
    let ops = history.ops();
    let pairs = history.pairs().map_err(|e| e.to_string())?;
    let mut points: Vec<(f64, f64, OpType)> = Vec::new();
    let mut end = 1f64;
    for p in &pairs {
        let Some(c) = p.complete else { continue };
        let (i, d) = (&ops[p.invoke], &ops[c]);
        let (Some(t0), Some(t1)) = (i.time, d.time) else {
            continue;
        };
        let lat = ((t1.saturating_sub(t0)) as f64 / 1e6).max(0.01);
        points.push((t1 as f64 / 1e9, lat, d.kind));
        end = end.max(t1 as f64 / 1e9);
    }
    let spans = intervals(history);
    let buckets = end.ceil() as usize + 1;
    let mut ok_rate = vec![0u32; buckets];
    let mut all_rate = vec![0u32; buckets];
    for (t, _, k) in &points {
        let b = (*t as usize).min(buckets - 1);
        all_rate[b] += 1;
        if *k == OpType::Ok {
            ok_rate[b] += 1;
        }
    }
    let max_rate = all_rate.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let max_lat = points.iter().map(|p| p.1).fold(10.0, f64::max) * 1.5;
    let min_lat = points.iter().map(|p| p.1).fold(max_lat, f64::min).max(0.01) / 1.5;
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(560);
    let shade = |i: usize| {
        let palette = [
            RGBColor(200, 200, 200),
            RGBColor(255, 210, 160),
            RGBColor(190, 220, 255),
            RGBColor(220, 200, 255),
        ];
        palette[i % palette.len()].mix(0.5)
    };
    let kinds: Vec<String> = {
        let mut k: Vec<String> = spans
            .iter()
            .map(|s| s.2.split('-').next().unwrap_or("").to_owned())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let color_of = |label: &str| {
        let kind = label.split('-').next().unwrap_or("");
        shade(kinds.iter().position(|k| k == kind).unwrap_or(0))
    };
    // Latency panel.
    {
        let mut b = ChartBuilder::on(&top);
        b.margin(10)
            .x_label_area_size(if text { 30 } else { 0 })
            .y_label_area_size(if text { 60 } else { 0 });
        if text {
            b.caption(format!("{title}: latency (ms, log)"), ("sans-serif", 20));
        }
        let mut chart = b
            .build_cartesian_2d(0f64..end, (min_lat..max_lat).log_scale())
            .map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.y_desc("latency (ms)").x_desc("time (s)");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| err(&e))?;
        for (s, e, l) in &spans {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(*s, min_lat), (*e, max_lat)],
                    color_of(l).filled(),
                )))
                .map_err(|e| err(&e))?;
        }
        for (kind, color) in [
            (OpType::Ok, RGBColor(40, 90, 200)),
            (OpType::Info, RGBColor(240, 140, 0)),
            (OpType::Fail, RGBColor(220, 30, 30)),
        ] {
            let s = chart
                .draw_series(
                    points
                        .iter()
                        .filter(|p| p.2 == kind)
                        .map(|p| Circle::new((p.0, p.1), 2, color.filled())),
                )
                .map_err(|e| err(&e))?;
            if text {
                s.label(kind.as_str())
                    .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
            }
        }
        if text {
            for k in &kinds {
                let c = color_of(k);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.0, min_lat), (0.0, min_lat)],
                        c.filled(),
                    )))
                    .map_err(|e| err(&e))?
                    .label(k.clone())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x - 5, y - 5), (x + 5, y + 5)], c.filled())
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    // Throughput panel.
    {
        let mut b = ChartBuilder::on(&bottom);
        b.margin(10)
            .x_label_area_size(if text { 30 } else { 0 })
            .y_label_area_size(if text { 60 } else { 0 });
        if text {
            b.caption("throughput (completed ops/s)", ("sans-serif", 20));
        }
        let mut chart = b
            .build_cartesian_2d(0f64..end, 0f64..max_rate)
            .map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.y_desc("ops/s").x_desc("time (s)");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| err(&e))?;
        for (s, e, l) in &spans {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(*s, 0.0), (*e, max_rate)],
                    color_of(l).filled(),
                )))
                .map_err(|e| err(&e))?;
        }
        for (series, color, label) in [
            (&all_rate, RGBColor(120, 120, 120), "all"),
            (&ok_rate, RGBColor(40, 90, 200), "ok"),
        ] {
            let s = chart
                .draw_series(LineSeries::new(
                    series
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| (i as f64 + 0.5, n as f64)),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?;
            if text {
                s.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x - 8, y), (x + 8, y)], color.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{F, Op};
    use std::collections::BTreeMap;

    fn nem(f: &str, id: i64, t: u64) -> Op {
        Op::new(
            Process::nemesis(),
            OpType::Info,
            F::from(f),
            Value::Map(BTreeMap::from([
                ("fault".to_owned(), Value::Int(id)),
                ("mode".to_owned(), Value::Str("kill-one".into())),
            ])),
        )
        .at(t * 1_000_000_000)
    }

    #[test]
    fn intervals_pair_start_and_end_events() {
        let h = History::from_ops(vec![
            nem("kill", 1, 2),
            nem("start", 1, 5),
            nem("kill", 2, 8),
            Op::new(
                Process::nemesis(),
                OpType::Info,
                F::from("heal"),
                Value::Null,
            )
            .at(10_000_000_000),
        ]);
        let iv = intervals(&h);
        assert_eq!(iv.len(), 2);
        assert_eq!((iv[0].0, iv[0].1), (2.0, 5.0));
        assert_eq!((iv[1].0, iv[1].1), (8.0, 10.0));
    }

    #[test]
    fn renders_a_png() {
        let mut h = History::new();
        for i in 0..50u64 {
            let p = Process::Client(i % 3);
            h.push(Op::new(p.clone(), OpType::Invoke, F::Read, Value::Null).at(i * 100_000_000));
            let kind = if i % 7 == 0 { OpType::Info } else { OpType::Ok };
            h.push(Op::new(p, kind, F::Read, Value::Null).at(i * 100_000_000 + 3_000_000));
        }
        h.push(nem("kill", 1, 1));
        h.push(nem("start", 1, 3));
        let dir = std::env::temp_dir().join(format!("skiff-chaos-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.png");
        render(&h, "test", &path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
        // Without a font the chart is still drawn, without text.
        let bare = dir.join("bare.png");
        render_with(&h, "test", &bare, false).unwrap();
        assert!(std::fs::metadata(&bare).unwrap().len() > 1000);
        let _ = std::fs::remove_dir_all(dir);
    }
}
