//! PNG line charts (plotters, bitmap backend) for training metrics and evaluation reports.
//!
//! Text needs a TrueType font: `$DIFFUGPT_FONT`, else DejaVu Sans from the usual system locations
//! (Debian: `fonts-dejavu-core`). It is read once and registered with plotters.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
];

static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();

fn ensure_font() -> Result<()> {
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("DIFFUGPT_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            format!("no TrueType font found (set DIFFUGPT_FONT; tried {candidates:?})")
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable font", path.display()))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` as lines (with markers) into a 900x540 PNG at `out`.
pub fn line_chart(
    out: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    ensure_font()?;
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        bail!("nothing to plot for {title}");
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let root = BitMapBackend::new(out, (900, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", out.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Plots a run's `metrics.jsonl`: `loss.png` (training and validation loss) and `lr.png`, in
/// `out_dir` (default: the run directory). Returns the files written.
pub fn plot_metrics(run_dir: &Path, out_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let path = run_dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (mut train, mut val, mut lr, mut eos) = (vec![], vec![], vec![], vec![]);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        let step = v["step"].as_f64().unwrap_or(f64::NAN);
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        }
        if let Some(l) = v["lr"].as_f64() {
            lr.push((step, l));
        }
        if let Some(l) = v["val_loss"].as_f64() {
            val.push((step, l));
        }
        if let (Some(e), Some(n)) = (v["eos_exact"].as_f64(), v["examples"].as_u64()) {
            if n > 0 {
                eos.push((step, e));
            }
        }
    }
    let out = out_dir.unwrap_or(run_dir);
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    let mut losses = vec![Series {
        name: "train loss".into(),
        points: train,
    }];
    if !val.is_empty() {
        losses.push(Series {
            name: "validation loss".into(),
            points: val,
        });
    }
    let p = out.join("loss.png");
    line_chart(&p, "Loss", "optimizer step", "loss", &losses)?;
    written.push(p);
    if !lr.is_empty() {
        let p = out.join("lr.png");
        line_chart(
            &p,
            "Learning rate (OneCycle)",
            "optimizer step",
            "lr",
            &[Series {
                name: "lr".into(),
                points: lr,
            }],
        )?;
        written.push(p);
    }
    if !eos.is_empty() {
        let p = out.join("eos.png");
        line_chart(
            &p,
            "First-step end position: exact accuracy",
            "optimizer step",
            "accuracy",
            &[Series {
                name: "argmax-first exact".into(),
                points: eos,
            }],
        )?;
        written.push(p);
    }
    Ok(written)
}
