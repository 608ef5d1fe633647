//! The SVG: MB/s against message size, both modes, each beside its bound.

use std::path::Path;

use super::{BenchError, EnvelopeRow, Report, human_size};

/// Draws MB/s against message size, both modes, with the bounds, as an SVG.
pub fn plot(r: &Report, path: &Path) -> Result<(), BenchError> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| BenchError::Plot(e.to_string());
    let measured: Vec<&EnvelopeRow> = r.envelope.iter().filter(|x| x.not_run.is_none()).collect();
    let (lo_x, hi_x) = measured.iter().fold((f64::MAX, 0f64), |(lo, hi), x| {
        (lo.min(x.size as f64), hi.max(x.size as f64))
    });
    let ys = measured
        .iter()
        .flat_map(|x| [x.mb_s, x.bound_mb_s])
        .chain([r.bounds.seal_pass_mb_s, r.bounds.aes_gcm_mb_s]);
    let (lo_y, hi_y) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if measured.is_empty() || lo_y <= 0.0 {
        return Err(BenchError::Plot("nothing measured to draw".into()));
    }
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "letterlock seal/open throughput, RSA-{}, {}",
                r.machine.bits, r.machine.cpu
            ),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (lo_x / 2.0..hi_x * 2.0).log_scale(),
            (lo_y / 2.0..hi_y * 2.0).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("message size (bytes)")
        .y_desc("MB/s (one core)")
        .x_label_formatter(&|x| human_size(*x as u64))
        .draw()
        .map_err(|e| err(&e))?;
    let series = [
        ("hybrid", "seal", RED),
        ("hybrid", "open", BLUE),
        ("asymmetric", "seal", MAGENTA),
        ("asymmetric", "open", CYAN),
    ];
    for (mode, op, color) in series {
        let points: Vec<(f64, f64)> = measured
            .iter()
            .filter(|x| x.mode == mode && x.op == op)
            .map(|x| (x.size as f64, x.mb_s))
            .collect();
        let bound: Vec<(f64, f64)> = measured
            .iter()
            .filter(|x| x.mode == mode && x.op == op)
            .map(|x| (x.size as f64, x.bound_mb_s))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{mode} {op}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(PointSeries::of_element(points, 4, color, &|c, s, st| {
                Circle::new(c, s, st.filled())
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(bound, color.mix(0.35).stroke_width(1)))
            .map_err(|e| err(&e))?
            .label(format!("{mode} {op} bound"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.35)));
    }
    for (what, v, color) in [
        (
            "single-stream sealing bound",
            r.bounds.seal_pass_mb_s,
            BLACK,
        ),
        (
            "AES-256-GCM bound",
            r.bounds.aes_gcm_mb_s,
            RGBColor(120, 120, 120),
        ),
    ] {
        chart
            .draw_series(LineSeries::new(
                [(lo_x / 2.0, v), (hi_x * 2.0, v)],
                color.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label(format!("{what} ({v:.0} MB/s)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
