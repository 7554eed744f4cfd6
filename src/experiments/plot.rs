//! Sweep plot: joint and average task accuracy (percent) against forward FLOPs (G
//! multiply-accumulates per image), one point per stop, endpoints and ensemble marked. Written as
//! SVG and PNG with plotters; the font (DejaVu Sans, assets/) is embedded.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::Row;

static FONT: Once = Once::new();

fn ensure_font() {
    FONT.call_once(|| {
        let _ = register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../../assets/DejaVuSans.ttf"),
        );
    });
}

pub use crate::error::PlotError;

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    rows: &[Row],
    title: &str,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let e = |x: &dyn std::fmt::Display| PlotError(x.to_string());
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let gf = |r: &Row| r.flops as f64 / 1e9;
    // the axes fit the data: FLOPs from just below the cheapest row to just above the dearest
    let (xlo, xhi) = rows
        .iter()
        .map(gf)
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let span = (xhi - xlo).max(1e-3);
    let (xmin, xmax) = ((xlo - 0.08 * span).max(0.0), xhi + 0.08 * span);
    let (ylo, yhi) = rows
        .iter()
        .flat_map(|r| [r.accuracy.joint, r.accuracy.avg])
        .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let (ymin, ymax) = ((ylo - 5.0).max(0.0).floor(), (yhi + 5.0).min(100.0).ceil());
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(xmin..xmax, ymin..ymax)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("forward FLOPs per image (G multiply-accumulates)")
        .y_desc("accuracy (%)")
        .x_label_formatter(&|x| format!("{x:.3}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|x| e(&x))?;
    let merged: Vec<&Row> = rows.iter().filter(|r| r.stop.is_some()).collect();
    let mut merged_sorted = merged.clone();
    merged_sorted.sort_by(|a, b| gf(a).total_cmp(&gf(b)));
    let endpoints: Vec<&Row> = rows
        .iter()
        .filter(|r| r.stop.is_none() && r.label != "Ensemble" && r.label != "ensemble")
        .collect();
    let ensemble: Vec<&Row> = rows
        .iter()
        .filter(|r| r.stop.is_none() && (r.label == "Ensemble" || r.label == "ensemble"))
        .collect();
    let dx = 0.012 * (xmax - xmin);
    for (name, color, f) in [
        (
            "joint",
            BLUE,
            (|r: &Row| r.accuracy.joint) as fn(&Row) -> f64,
        ),
        ("avg (task known)", RED, |r: &Row| r.accuracy.avg),
    ] {
        chart
            .draw_series(LineSeries::new(
                merged_sorted.iter().map(|r| (gf(r), f(r))),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(format!("merged, {name}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                merged_sorted
                    .iter()
                    .map(|r| Circle::new((gf(r), f(r)), 4, color.filled())),
            )
            .map_err(|x| e(&x))?;
        // stop names to the right of their points (points sharing FLOPs do not overlap)
        chart
            .draw_series(merged_sorted.iter().map(|r| {
                Text::new(
                    r.stop.clone().unwrap_or_default(),
                    (gf(r) + dx, f(r) + 0.8),
                    ("sans-serif", 12).into_font().color(&color.mix(0.9)),
                )
            }))
            .map_err(|x| e(&x))?;
        let c = color.mix(0.6);
        chart
            .draw_series(
                endpoints
                    .iter()
                    .map(|r| TriangleMarker::new((gf(r), f(r)), 7, c.filled())),
            )
            .map_err(|x| e(&x))?
            .label(format!(
                "endpoints ({}), {name}",
                endpoints
                    .iter()
                    .map(|r| r.label.trim_start_matches("Model "))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, c.filled()));
        chart
            .draw_series(ensemble.iter().map(|r| {
                Rectangle::new(
                    [
                        (gf(r) - dx * 0.5, f(r) - 0.6),
                        (gf(r) + dx * 0.5, f(r) + 0.6),
                    ],
                    c.filled(),
                )
            }))
            .map_err(|x| e(&x))?
            .label(format!("ensemble, {name}"))
            .legend(move |(x, y)| Rectangle::new([(x + 5, y - 5), (x + 15, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Writes the sweep plot as SVG and PNG (each through a temporary file renamed into place),
/// titled `title` (the method and settings).
///
/// # Errors
/// [`PlotError`] when drawing or writing fails.
pub fn sweep_plot(rows: &[Row], title: &str, svg: &Path, png: &Path) -> Result<(), PlotError> {
    ensure_font();
    let dir = svg
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|x| PlotError(format!("{}: {x}", dir.display())))?;
    let tmp_svg = dir.join(".sweep.svg.tmp");
    let tmp_png = dir.join(".sweep.png.tmp.png");
    draw(
        SVGBackend::new(&tmp_svg, (900, 600)).into_drawing_area(),
        rows,
        title,
    )?;
    draw(
        BitMapBackend::new(&tmp_png, (900, 600)).into_drawing_area(),
        rows,
        title,
    )?;
    std::fs::rename(&tmp_svg, svg).map_err(|x| PlotError(format!("{}: {x}", svg.display())))?;
    std::fs::rename(&tmp_png, png).map_err(|x| PlotError(format!("{}: {x}", png.display())))?;
    Ok(())
}

/// Axis label of a heat-map cell: the grid value at the segment's centre.
fn seg_label(v: &SegmentValue<usize>, values: &[f64]) -> String {
    match v {
        SegmentValue::CenterOf(i) => values.get(*i).map_or(String::new(), |x| format!("{x}")),
        _ => String::new(),
    }
}

/// The heat map's colour of `t` in [0, 1] (low: orange-red, high: blue-green).
fn heat(t: f64) -> RGBColor {
    RGBColor(
        (255.0 * (1.0 - t)) as u8,
        (120.0 + 100.0 * t) as u8,
        (255.0 * t) as u8,
    )
}

/// Writes a heat map of joint accuracy over the (alpha, beta) grid as PNG, titled `title`,
/// with a colour bar and the `best` (alpha, beta) cell outlined.
///
/// # Errors
/// [`PlotError`] when drawing or writing fails.
pub fn grid_heatmap(
    cells: &[(f64, f64, f64)],
    alphas: &[f64],
    betas: &[f64],
    best: Option<(f64, f64)>,
    title: &str,
    png: &Path,
) -> Result<(), PlotError> {
    ensure_font();
    let e = |x: &dyn std::fmt::Display| PlotError(x.to_string());
    let dir = png
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|x| PlotError(format!("{}: {x}", dir.display())))?;
    let tmp = dir.join(".grid.png.tmp.png");
    {
        let whole = BitMapBackend::new(&tmp, (900, 650)).into_drawing_area();
        whole.fill(&WHITE).map_err(|x| e(&x))?;
        let (root, bar) = whole.split_horizontally(790);
        let (lo, hi) = cells
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), c| (l.min(c.2), h.max(c.2)));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (0..betas.len().saturating_sub(1).max(1)).into_segmented(),
                (0..alphas.len().saturating_sub(1).max(1)).into_segmented(),
            )
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("beta")
            .y_desc("alpha")
            .x_labels(betas.len() + 1)
            .y_labels(alphas.len() + 1)
            .x_label_formatter(&|v| seg_label(v, betas))
            .y_label_formatter(&|v| seg_label(v, alphas))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|x| e(&x))?;
        for (al, be, v) in cells {
            let (Some(i), Some(j)) = (
                betas.iter().position(|b| b == be),
                alphas.iter().position(|a| a == al),
            ) else {
                continue;
            };
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 1.0 };
            let color = heat(t);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(i), SegmentValue::Exact(j)),
                        (SegmentValue::Exact(i + 1), SegmentValue::Exact(j + 1)),
                    ],
                    color.filled(),
                )))
                .map_err(|x| e(&x))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{v:.1}"),
                    (SegmentValue::CenterOf(i), SegmentValue::CenterOf(j)),
                    ("sans-serif", 14).into_font().color(&BLACK),
                )))
                .map_err(|x| e(&x))?;
            if best == Some((*al, *be)) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [
                            (SegmentValue::Exact(i), SegmentValue::Exact(j)),
                            (SegmentValue::Exact(i + 1), SegmentValue::Exact(j + 1)),
                        ],
                        BLACK.stroke_width(4),
                    )))
                    .map_err(|x| e(&x))?;
            }
        }
        // the colour bar: the scale of the cells' values
        let (blo, bhi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 1.0, lo + 1.0)
        };
        let mut cb = ChartBuilder::on(&bar)
            .margin_top(60)
            .margin_bottom(60)
            .margin_right(10)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..1.0, blo..bhi)
            .map_err(|x| e(&x))?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|x| e(&x))?;
        let steps = 60;
        cb.draw_series((0..steps).map(|k| {
            let y0 = blo + (bhi - blo) * k as f64 / steps as f64;
            let y1 = blo + (bhi - blo) * (k + 1) as f64 / steps as f64;
            let t = (k as f64 + 0.5) / steps as f64;
            Rectangle::new([(0.0, y0), (1.0, y1)], heat(t).filled())
        }))
        .map_err(|x| e(&x))?;
        whole.present().map_err(|x| e(&x))?;
    }
    std::fs::rename(&tmp, png).map_err(|x| PlotError(format!("{}: {x}", png.display())))?;
    Ok(())
}

/// One line of [`tasks_plot`]: a method and its `(tasks merged, average normalized accuracy
/// %)` points, with the standard deviation over seeds.
pub type TasksSeries = (String, Vec<(f64, f64, f64)>);

/// The TIES paper's scaling figure: average normalized accuracy (%) against the number of tasks
/// merged, one line per method (error bars: std over seeds), written as PNG at `png`.
///
/// # Errors
/// [`PlotError`] when drawing or writing fails.
pub fn tasks_plot(series: &[TasksSeries], title: &str, png: &Path) -> Result<(), PlotError> {
    ensure_font();
    let e = |x: &dyn std::fmt::Display| PlotError(x.to_string());
    let dir = png
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(".tasks.png.tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let pts = series.iter().flat_map(|(_, p)| p.iter());
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y, s) in pts {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymin = ymin.min(y - s);
            ymax = ymax.max(y + s);
        }
        let (ylo, yhi) = ((ymin - 2.0).floor(), (ymax + 2.0).ceil().min(105.0));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((xmin - 0.2)..(xmax + 0.2), ylo..yhi)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("tasks merged")
            .y_desc("average normalized accuracy (%)")
            .x_labels((xmax - xmin) as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|x| e(&x))?;
        for (i, (name, p)) in series.iter().enumerate() {
            // ColorBrewer Set1 without its yellow (unreadable on white)
            const SET1: [(u8, u8, u8); 8] = [
                (228, 26, 28),
                (55, 126, 184),
                (77, 175, 74),
                (152, 78, 163),
                (255, 127, 0),
                (166, 86, 40),
                (247, 129, 191),
                (90, 90, 90),
            ];
            let (r, g, b) = SET1[i % SET1.len()];
            let color = RGBColor(r, g, b).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    p.iter().map(|&(x, y, _)| (x, y)),
                    color.stroke_width(2),
                ))
                .map_err(|x| e(&x))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    p.iter()
                        .map(|&(x, y, s)| PathElement::new(vec![(x, y - s), (x, y + s)], color)),
                )
                .map_err(|x| e(&x))?;
            chart
                .draw_series(
                    p.iter()
                        .map(|&(x, y, _)| Circle::new((x, y), 4, color.filled())),
                )
                .map_err(|x| e(&x))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    std::fs::rename(&tmp, png).map_err(|x| PlotError(format!("{}: {x}", png.display())))
}

/// A search's fitness plot: every evaluation's fitness (%) against its number, the best so far
/// as a line, and each reference (`(label, fitness)`: the default recipe, the grid's best) as a
/// dashed horizontal line, written as PNG at `png` (atomically).
///
/// # Errors
/// [`PlotError`] when drawing or writing fails.
pub fn fitness_plot(
    points: &[(f64, f64)],
    refs: &[(String, f64)],
    title: &str,
    png: &Path,
) -> Result<(), PlotError> {
    ensure_font();
    let e = |x: &dyn std::fmt::Display| PlotError(x.to_string());
    let dir = png
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(".fitness.png.tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let ys = points.iter().map(|p| p.1).chain(refs.iter().map(|r| r.1));
        let (ymin, ymax) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let (ylo, yhi) = if ymin <= ymax {
            (
                (ymin - 2.0).floor().max(0.0),
                (ymax + 2.0).ceil().min(100.0),
            )
        } else {
            (0.0, 100.0)
        };
        let xmax = points.iter().map(|p| p.0).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..xmax + 1.0, ylo..yhi)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("evaluations")
            .y_desc("fitness on validation (%)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|x| e(&x))?;
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, grey.filled())))
            .map_err(|x| e(&x))?
            .label("candidate")
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, grey.filled()));
        let mut top = f64::MIN;
        let best: Vec<(f64, f64)> = points
            .iter()
            .map(|&(x, y)| {
                top = top.max(y);
                (x, top)
            })
            .collect();
        let blue = RGBColor(55, 126, 184);
        chart
            .draw_series(LineSeries::new(best, blue.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label("best so far")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
            });
        const REF: [(u8, u8, u8); 3] = [(228, 26, 28), (77, 175, 74), (152, 78, 163)];
        for (i, (label, y)) in refs.iter().enumerate() {
            let (r, g, b) = REF[i % REF.len()];
            let c = RGBColor(r, g, b);
            let y = *y;
            let dashes: Vec<PathElement<(f64, f64)>> = (0..40)
                .map(|k| {
                    let x0 = (xmax + 1.0) * k as f64 / 40.0;
                    PathElement::new(
                        vec![(x0, y), (x0 + (xmax + 1.0) / 80.0, y)],
                        c.stroke_width(2),
                    )
                })
                .collect();
            chart
                .draw_series(dashes)
                .map_err(|x| e(&x))?
                .label(format!("{label}: {y:.2}"))
                .legend(move |(x, yy)| {
                    PathElement::new(vec![(x, yy), (x + 20, yy)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    std::fs::rename(&tmp, png).map_err(|x| e(&x))
}

/// One curve of [`interpolation_plot`]: its label and `(t, joint %, avg %, loss)` points.
pub type Curve = (String, Vec<(f64, f64, f64, f64)>);

/// The interpolation figure: joint and average accuracy (top) and loss (bottom) against t,
/// one line per curve `(label, [(t, joint, avg, loss)])`, written as PNG at `png` (atomically).
///
/// # Errors
/// [`PlotError`] when drawing or writing fails.
pub fn interpolation_plot(curves: &[Curve], title: &str, png: &Path) -> Result<(), PlotError> {
    ensure_font();
    let e = |x: &dyn std::fmt::Display| PlotError(x.to_string());
    let dir = png
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(".interpolate.png.tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let root = root.titled(title, ("sans-serif", 18)).map_err(|x| e(&x))?;
        let (top, bottom) = root.split_vertically(420);
        let pts = || curves.iter().flat_map(|(_, p)| p.iter());
        let (amin, amax) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(p.1.min(p.2)), b.max(p.1.max(p.2)))
        });
        let (lmin, lmax) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.3), b.max(p.3)));
        let (alo, ahi) = ((amin - 3.0).max(0.0), (amax + 3.0).min(100.0));
        let pad = ((lmax - lmin) * 0.08).max(0.01);
        const COLORS: [(u8, u8, u8); 3] = [(228, 26, 28), (55, 126, 184), (77, 175, 74)];
        let mut acc = ChartBuilder::on(&top)
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..1.0, alo..ahi)
            .map_err(|x| e(&x))?;
        acc.configure_mesh()
            .x_desc("t (0: model A, 1: aligned model B)")
            .y_desc("accuracy (%)")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|x| e(&x))?;
        let mut loss = ChartBuilder::on(&bottom)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..1.0, (lmin - pad)..(lmax + pad))
            .map_err(|x| e(&x))?;
        loss.configure_mesh()
            .x_desc("t")
            .y_desc("test loss (nats, mean over tasks)")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|x| e(&x))?;
        for (i, (label, p)) in curves.iter().enumerate() {
            let (r, g, b) = COLORS[i % COLORS.len()];
            let c = RGBColor(r, g, b);
            acc.draw_series(LineSeries::new(
                p.iter().map(|q| (q.0, q.1)),
                c.stroke_width(3),
            ))
            .map_err(|x| e(&x))?
            .label(format!("{label}: joint"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
            acc.draw_series(LineSeries::new(
                p.iter().map(|q| (q.0, q.2)),
                c.stroke_width(1),
            ))
            .map_err(|x| e(&x))?
            .label(format!("{label}: avg"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
            loss.draw_series(LineSeries::new(
                p.iter().map(|q| (q.0, q.3)),
                c.stroke_width(3),
            ))
            .map_err(|x| e(&x))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        }
        acc.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|x| e(&x))?;
        loss.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    std::fs::rename(&tmp, png).map_err(|x| e(&x))
}
