//! The demo's chart (SVG): input and processing rate, lag and parallelism over time, with the
//! autoscaler's decisions marked on every panel.

use std::path::Path;

use plotters::prelude::*;

use super::{Decision, Point};

/// Why the chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {reason}")]
pub struct ChartError {
    path: String,
    reason: String,
}

/// A panel: title, y-axis top, and its lines (name, colour, points).
type Panel<'a> = (&'a str, f64, Vec<(&'a str, RGBColor, Vec<(f64, f64)>)>);

/// Draws `points` and `decisions` to an SVG file at `path`.
pub fn draw(path: &Path, points: &[Point], decisions: &[Decision]) -> Result<(), ChartError> {
    let error = |e: &dyn std::fmt::Display| ChartError {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let end = points.last().map_or(1.0, |p| p.t).max(1.0);
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let panels = root.split_evenly((3, 1));
    let rate_max = points
        .iter()
        .flat_map(|p| [Some(p.target_rate), p.arrival_rate, p.processing_rate])
        .flatten()
        .fold(1.0, f64::max)
        * 1.1;
    let lag_max = points.iter().filter_map(|p| p.lag).fold(1.0, f64::max) * 1.1;
    let parallelism_max = f64::from(points.iter().map(|p| p.parallelism).max().unwrap_or(1) + 1);
    let series: [Panel<'_>; 3] = [
        (
            "records per second",
            rate_max,
            vec![
                (
                    "load generator target",
                    RGBColor(150, 150, 150),
                    points.iter().map(|p| (p.t, p.target_rate)).collect(),
                ),
                (
                    "arrival (end offsets)",
                    BLUE,
                    points
                        .iter()
                        .filter_map(|p| Some((p.t, p.arrival_rate?)))
                        .collect(),
                ),
                (
                    "processed (positions)",
                    RGBColor(0, 140, 0),
                    points
                        .iter()
                        .filter_map(|p| Some((p.t, p.processing_rate?)))
                        .collect(),
                ),
            ],
        ),
        (
            "lag (records)",
            lag_max,
            vec![(
                "lag",
                RED,
                points.iter().filter_map(|p| Some((p.t, p.lag?))).collect(),
            )],
        ),
        (
            "parallelism (slots)",
            parallelism_max,
            vec![(
                "parallelism",
                BLACK,
                points
                    .iter()
                    .map(|p| (p.t, f64::from(p.parallelism)))
                    .collect(),
            )],
        ),
    ];
    for (panel, (title, y_max, lines)) in panels.iter().zip(series) {
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, 0.0..y_max)
            .map_err(|e| error(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(|e| error(&e))?;
        for d in decisions {
            let color = if d.result == "ScaleUp" {
                RGBColor(255, 140, 0)
            } else {
                MAGENTA
            };
            chart
                .draw_series(LineSeries::new(
                    [(d.t, 0.0), (d.t, y_max)],
                    color.stroke_width(1),
                ))
                .map_err(|e| error(&e))?
                .label(format!("{} {}→{} at {:.0}s", d.result, d.from, d.to, d.t))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
        }
        for (name, color, data) in lines {
            chart
                .draw_series(LineSeries::new(data, color.stroke_width(2)))
                .map_err(|e| error(&e))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| error(&e))?;
    }
    root.present().map_err(|e| error(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_an_svg_with_every_series_and_decision() {
        let dir = std::env::temp_dir().join(format!("sluice-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        let points: Vec<Point> = (0..30)
            .map(|i| Point {
                t: f64::from(i),
                target_rate: 100.0,
                arrival_rate: Some(99.0),
                processing_rate: Some(98.0),
                lag: Some(f64::from(i)),
                parallelism: 1 + i / 10,
            })
            .collect();
        let decisions = [Decision {
            t: 10.0,
            result: "ScaleUp".into(),
            reason: "r".into(),
            from: 1,
            to: 2,
        }];
        draw(&path, &points, &decisions).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for text in [
            "lag (records)",
            "parallelism (slots)",
            "ScaleUp 1→2 at 10s",
            "processed (positions)",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
