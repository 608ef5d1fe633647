//! The SVG: MB/s against message size, both modes, each beside its bound. Sizes are labelled in
//! B, KiB, MiB, GiB at the sizes measured; rates in kB/s, MB/s, GB/s at powers of ten. Bounds are
//! dashed lines with their name written at their end, so no bound reads as a grid line.

use std::path::Path;

use super::{BenchError, EnvelopeRow, Report, human_size};

/// Refuses a plot path that exists (unless `force`), whose folder does not, or where no file can
/// be written: checked before the run, so a run of minutes does not end in an error or replace
/// a file silently.
pub fn check_plot_path(path: &Path, force: bool) -> Result<(), BenchError> {
    let plot = |why: String| Err(BenchError::Plot(why));
    if path.is_dir() {
        return plot(format!("{} is a folder; give a file name", path.display()));
    }
    // The plot is SVG: a name that says another image or document type (`out.png`) would hold
    // SVG under a name that viewers misread (found by a trial run). Any other name, with a dot
    // or not, is the user's choice.
    if let Some(ext) = path.extension()
        && OTHER_IMAGE_TYPES
            .iter()
            .any(|other| ext.eq_ignore_ascii_case(other))
    {
        return plot(format!(
            "{} does not end in .svg, and the plot is an SVG image; name it {}",
            path.display(),
            path.with_extension("svg").display()
        ));
    }
    if path.exists() && !force {
        return plot(format!(
            "{} exists; pass --force to replace it, or choose another name",
            path.display()
        ));
    }
    let parent = letterlock::files::folder_of(path);
    if !parent.is_dir() {
        return plot(format!(
            "the folder {} does not exist; create it first",
            parent.display()
        ));
    }
    // A folder that exists may still refuse new files (permissions, a read-only mount,
    // /proc): try the very file the plot is first written to, and remove it again.
    temp_beside(path).map_err(|e| cannot_write(path, &os_reason(&e)))?;
    Ok(())
}

/// Extensions of image and document types the plot is not (it is SVG).
const OTHER_IMAGE_TYPES: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "tiff", "pdf", "eps", "ps", "html",
];

/// The temporary file the plot is drawn into, in the folder of `path` (so that renaming it onto
/// `path` is atomic); removed when dropped unless persisted. Made as any new file is (0666 less
/// the umask), not owner-only as tempfile makes it: a plot is for sharing (found by a trial
/// run: the plot came out 0600).
fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(".letterlock-plot")
        .suffix(".svg")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(letterlock::files::folder_of(path))
}

/// The plot cannot be written at `path`: said with the user's path and the system's reason,
/// never the name of our temporary file (tempfile adds it to its errors).
fn cannot_write(path: &Path, e: &dyn std::fmt::Display) -> BenchError {
    BenchError::Plot(format!(
        "cannot write {}: {e}; choose a folder you can write to",
        path.display()
    ))
}

/// The system's reason in an I/O error from `tempfile`, without the temporary path it appends
/// (`… (os error 2) at path "/proc/.letterlock-plotgyLyVg.svg"`: its error type is private and
/// gives no other way to the reason alone).
fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.split_once(" at path ") {
        Some((reason, _)) => reason.to_owned(),
        None => text,
    }
}

/// A rate as `120 kB/s`, `3 MB/s`, `1.5 GB/s` (decimal, as every MB/s of the bench).
fn human_rate(mb_s: f64) -> String {
    let trim = |x: f64| {
        let s = format!("{x:.1}");
        s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
    };
    if mb_s >= 1000.0 {
        format!("{} GB/s", trim(mb_s / 1000.0))
    } else if mb_s >= 1.0 {
        format!("{} MB/s", trim(mb_s))
    } else {
        format!("{} kB/s", trim(mb_s * 1000.0))
    }
}

/// Draws MB/s against message size, both modes, with the bounds, as an SVG; written beside
/// `path` and renamed onto it, replacing an existing file only with `force`. Every error names
/// `path`.
pub fn plot(r: &Report, path: &Path, force: bool) -> Result<(), BenchError> {
    let temp = temp_beside(path).map_err(|e| cannot_write(path, &os_reason(&e)))?;
    draw(r, temp.path()).map_err(|why| BenchError::Plot(format!("{}: {why}", path.display())))?;
    if force {
        temp.persist(path)
            .map_err(|e| cannot_write(path, &os_reason(&e.error)))?;
    } else {
        temp.persist_noclobber(path).map_err(|e| {
            BenchError::Plot(format!(
                "{} appeared during the run; not replaced ({}): pass --force to replace it",
                path.display(),
                e.error
            ))
        })?;
    }
    Ok(())
}

/// Draws the plot into the file `path`; `Err` says why not.
fn draw(r: &Report, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let err = |e: &dyn std::fmt::Display| e.to_string();
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
        return Err("nothing measured to draw".into());
    }
    let (x0, x1) = (lo_x / 2.0, hi_x * 2.0);
    let (y0, y1) = (lo_y / 2.0, hi_y * 4.0);
    // Ticks at the sizes measured, and at every power of ten of MB/s in range.
    let mut x_keys: Vec<f64> = measured.iter().map(|x| x.size as f64).collect();
    x_keys.sort_by(f64::total_cmp);
    x_keys.dedup();
    let y_keys: Vec<f64> = (-6..=6)
        .map(|e| 10f64.powi(e))
        .filter(|y| (y0..=y1).contains(y))
        .collect();
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
            (x0..x1).log_scale().with_key_points(x_keys),
            (y0..y1).log_scale().with_key_points(y_keys),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("message size")
        .y_desc("throughput, one core (MB = 10^6 bytes)")
        .x_label_formatter(&|x| human_size(x.round() as u64))
        .y_label_formatter(&|y| human_rate(*y))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(235, 235, 235))
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
        let end = bound.last().copied();
        chart
            .draw_series(DashedLineSeries::new(
                bound,
                6,
                4,
                color.mix(0.5).stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label(format!("{mode} {op} bound (dashed)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.5)));
        // The name ends where its line ends (it never runs past the plot's right edge), a seal
        // bound's just above its line and an open bound's just below: the two bounds of a
        // mode meet at large sizes, where labels side by side drew over each other.
        if let Some((x, y)) = end {
            let (above, v) = if op == "seal" {
                (VPos::Bottom, y * 1.06)
            } else {
                (VPos::Top, y / 1.06)
            };
            let style = ("sans-serif", 11)
                .into_font()
                .color(&color.mix(0.8))
                .pos(Pos::new(HPos::Right, above));
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{mode} {op} bound"),
                    (x, v),
                    style,
                )))
                .map_err(|e| err(&e))?;
        }
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
            .draw_series(DashedLineSeries::new(
                [(x0, v), (x1, v)],
                10,
                5,
                color.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label(format!("{what} ({})", human_rate(v)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        // Standing on its line, not struck through by it: the text's foot just above the line.
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{what}: {}", human_rate(v)),
                (x0 * 1.1, v * 1.06),
                ("sans-serif", 12)
                    .into_font()
                    .color(&color)
                    .pos(Pos::new(HPos::Left, VPos::Bottom)),
            )))
            .map_err(|e| err(&e))?;
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
