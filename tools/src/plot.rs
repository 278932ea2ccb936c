//! Plots written as PNG or SVG with plotters: top-k retrieval accuracy against k (one line
//! per system), and training curves (loss, and dev accuracy at each evaluation, by step).
//!
//! plotters draws text with `ab_glyph`, which needs a TrueType font registered at run
//! time: DejaVu Sans is loaded from the usual system locations (the `fonts-dejavu-core`
//! package on Debian and Ubuntu), or from the file named by `REALM_DB_FONT`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The environment variable naming a TrueType font file to draw text with.
const FONT_ENV: &str = "REALM_DB_FONT";

/// Where DejaVu Sans (or, last, a similar sans-serif font) usually lives.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// The font family name plotters' text styles below refer to.
const FAMILY: &str = "sans-serif";

/// Line colors, cycled (the Tableau 10 palette).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The values of k marked with a dot on every line (the usual reported cut-offs).
const MARKED_K: [usize; 4] = [1, 5, 20, 100];

const SIZE: (u32, u32) = (1000, 640);

/// One system's accuracy curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// `(k, accuracy)` with k ≥ 1 and the accuracy a fraction in [0, 1] (as
    /// `TopKAccuracy::curve` gives it); plotted in percent.
    pub points: Vec<(usize, f64)>,
}

/// Draws accuracy (%) against k, from 1 to the largest k of any series, on a logarithmic
/// k axis: one line per series, with a legend. The format follows `path`'s extension:
/// `.png` or `.svg`.
///
/// # Errors
///
/// When the extension is neither, `series` is empty, a series has no points, a k is 0, an
/// accuracy is outside [0, 1], no font can be loaded, or the file cannot be written.
pub fn plot_accuracy(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let format = format_of(path)?;
    let series = checked(series)?;
    ensure_font()?;
    let drawn = match format {
        Format::Png => draw(
            BitMapBackend::new(path, SIZE).into_drawing_area(),
            title,
            &series,
        ),
        Format::Svg => draw(
            SVGBackend::new(path, SIZE).into_drawing_area(),
            title,
            &series,
        ),
    };
    drawn.with_context(|| format!("cannot draw the accuracy plot {}", path.display()))
}

enum Format {
    Png,
    Svg,
}

/// A dev evaluation: `(step, top-1, top-5, top-20)`.
pub type EvalPoint = (u64, f64, f64, f64);

/// A training run's curves: loss by step, and dev accuracy (fractions) at each evaluation.
#[derive(Debug, Clone, Default)]
pub struct TrainingCurves {
    pub loss: Vec<(u64, f64)>,
    /// `(step, top-1, top-5, top-20)`.
    pub accuracy: Vec<EvalPoint>,
    /// Phrase exact match at each evaluation: `(step, all, in corpus)` (phrase query-side
    /// runs, which have no passage accuracy).
    pub exact_match: Vec<(u64, f64, Option<f64>)>,
    /// Steps at which a new generation was published (drawn as vertical lines).
    pub refreshes: Vec<u64>,
}

impl TrainingCurves {
    /// The lower chart's lines: top-1/5/20 accuracy, else phrase exact match; each
    /// `(name, [(step, fraction)])`.
    fn dev_series(&self) -> Vec<(&'static str, Vec<(u64, f64)>)> {
        if !self.accuracy.is_empty() {
            let pick =
                |f: fn(&EvalPoint) -> f64| self.accuracy.iter().map(|p| (p.0, f(p))).collect();
            return vec![
                ("top-1", pick(|p| p.1)),
                ("top-5", pick(|p| p.2)),
                ("top-20", pick(|p| p.3)),
            ];
        }
        if self.exact_match.is_empty() {
            return Vec::new();
        }
        let mut series = vec![(
            "phrase EM",
            self.exact_match.iter().map(|p| (p.0, p.1)).collect(),
        )];
        let in_corpus: Vec<(u64, f64)> = self
            .exact_match
            .iter()
            .filter_map(|p| Some((p.0, p.2?)))
            .collect();
        if !in_corpus.is_empty() {
            series.push(("phrase EM, in corpus", in_corpus));
        }
        series
    }
}

/// Draws a training run: loss by step above, dev top-1/5/20 accuracy by step below.
pub fn plot_training(path: &Path, title: &str, curves: &TrainingCurves) -> Result<()> {
    let format = format_of(path)?;
    let loss: Vec<(u64, f64)> = curves
        .loss
        .iter()
        .copied()
        .filter(|(_, l)| l.is_finite())
        .collect();
    if loss.is_empty() && curves.dev_series().is_empty() {
        bail!("there is nothing to plot: the run recorded no loss and no evaluation");
    }
    ensure_font()?;
    let drawn = match format {
        Format::Png => draw_training(
            BitMapBackend::new(path, SIZE).into_drawing_area(),
            title,
            &loss,
            curves,
        ),
        Format::Svg => draw_training(
            SVGBackend::new(path, SIZE).into_drawing_area(),
            title,
            &loss,
            curves,
        ),
    };
    drawn.with_context(|| format!("cannot draw the training plot {}", path.display()))
}

fn format_of(path: &Path) -> Result<Format> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => bail!(
            "cannot plot to {}: the file name must end in .png or .svg",
            path.display()
        ),
    }
}

fn draw_training<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    loss: &[(u64, f64)],
    curves: &TrainingCurves,
) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| anyhow!("{e}");
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = root.titled(title, (FAMILY, 26)).map_err(|e| fail(&e))?;
    // A run without evaluations (phrase training, or no --eval) plots its loss alone.
    let dev = curves.dev_series();
    let (upper, lower) = if dev.is_empty() {
        (root.clone(), None)
    } else {
        let (upper, lower) = root.split_vertically(SIZE.1 / 2 - 20);
        (upper, Some(lower))
    };
    let last_step = loss
        .iter()
        .map(|p| p.0)
        .chain(
            dev.iter()
                .flat_map(|(_, points)| points.iter().map(|p| p.0)),
        )
        .max()
        .unwrap_or(1)
        .max(1) as f64;

    let (lo, hi) = loss
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..last_step, (lo - pad)..(hi + pad))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc(if lower.is_none() { "training step" } else { "" })
        .y_desc("training loss")
        .axis_desc_style((FAMILY, 18))
        .label_style((FAMILY, 15))
        .x_label_formatter(&|x| format!("{}", x.round()))
        .bold_line_style(RGBColor(200, 200, 200))
        .light_line_style(RGBColor(236, 236, 236))
        .draw()
        .map_err(|e| fail(&e))?;
    for &step in &curves.refreshes {
        let x = step as f64;
        chart
            .draw_series(std::iter::once(PathElement::new(
                [(x, lo - pad), (x, hi + pad)],
                RGBColor(150, 150, 150).stroke_width(1),
            )))
            .map_err(|e| fail(&e))?;
    }
    chart
        .draw_series(LineSeries::new(
            loss.iter().map(|&(s, l)| (s as f64, l)),
            COLORS[0].stroke_width(2),
        ))
        .map_err(|e| fail(&e))?;
    let Some(lower) = lower else {
        root.present().map_err(|e| fail(&e))?;
        return Ok(());
    };

    let top = dev
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1 * 100.0))
        .fold(0.0, f64::max);
    let y_top = (((top + 5.0) / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let mut chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..last_step, 0.0..y_top)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc(if curves.accuracy.is_empty() {
            "dev exact match (%)"
        } else {
            "dev accuracy (%)"
        })
        .axis_desc_style((FAMILY, 18))
        .label_style((FAMILY, 15))
        .x_label_formatter(&|x| format!("{}", x.round()))
        .y_label_formatter(&|a| format!("{a:.0}"))
        .bold_line_style(RGBColor(200, 200, 200))
        .light_line_style(RGBColor(236, 236, 236))
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, (name, series)) in dev.into_iter().enumerate() {
        let color = COLORS[(i + 1) % COLORS.len()];
        let points: Vec<(f64, f64)> = series
            .iter()
            .map(|&(step, value)| (step as f64, value * 100.0))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .margin(10)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// The series with points sorted by k, after checking that there is something valid to
/// draw.
fn checked(series: &[Series]) -> Result<Vec<Series>> {
    if series.is_empty() {
        bail!("there is no accuracy curve to plot");
    }
    series
        .iter()
        .map(|s| {
            if s.points.is_empty() {
                bail!("the accuracy curve {:?} has no points", s.name);
            }
            for &(k, accuracy) in &s.points {
                if k == 0 {
                    bail!("the accuracy curve {:?} has a point at k = 0", s.name);
                }
                if !(0.0..=1.0).contains(&accuracy) {
                    bail!(
                        "the accuracy curve {:?} has accuracy {accuracy} at k = {k}, outside 0 to 1",
                        s.name
                    );
                }
            }
            let mut points = s.points.clone();
            points.sort_by_key(|&(k, _)| k);
            Ok(Series {
                name: s.name.clone(),
                points,
            })
        })
        .collect()
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
) -> Result<()> {
    // plotters' errors borrow the backend's error type; render them to text.
    let fail = |e: &dyn std::fmt::Display| anyhow!("{e}");

    let max_k = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(k, _)| k))
        .max()
        .unwrap_or(1)
        .max(2);
    let max_percent = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, a)| a * 100.0))
        .fold(0.0, f64::max);
    let y_top = (((max_percent + 5.0) / 10.0).ceil() * 10.0).clamp(10.0, 100.0);

    let (bold_k, light_k) = k_ticks(max_k);
    let x_range = (0.9..max_k as f64 * 1.08)
        .log_scale()
        .with_key_points(bold_k)
        .with_light_points(light_k);

    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 26))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range, 0.0..y_top)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("k (passages retrieved)")
        .y_desc("top-k accuracy (%)")
        .axis_desc_style((FAMILY, 20))
        .label_style((FAMILY, 17))
        .x_label_formatter(&|k| format!("{}", k.round()))
        .y_label_formatter(&|a| format!("{a:.0}"))
        .bold_line_style(RGBColor(200, 200, 200))
        .light_line_style(RGBColor(236, 236, 236))
        .y_max_light_lines(1)
        .draw()
        .map_err(|e| fail(&e))?;

    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line = s.points.iter().map(|&(k, a)| (k as f64, a * 100.0));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(3)))
            .map_err(|e| fail(&e))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
        let marked = s
            .points
            .iter()
            .filter(|(k, _)| MARKED_K.contains(k))
            .map(|&(k, a)| Circle::new((k as f64, a * 100.0), 5, color.filled()));
        chart.draw_series(marked).map_err(|e| fail(&e))?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 18))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .margin(12)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// Labeled ticks (1, 2, 5, 10, 20, 50, ... up to `max_k`, plus `max_k` itself when it is
/// not near one of them) and minor grid lines (every integer up to 10, every ten up to
/// 100, ...) for a logarithmic k axis.
fn k_ticks(max_k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut bold = Vec::new();
    let mut light = Vec::new();
    let mut decade = 1usize;
    while decade <= max_k {
        for m in [1, 2, 5] {
            let k = decade * m;
            if k <= max_k {
                bold.push(k as f64);
            }
        }
        for m in 1..10 {
            let k = decade * m;
            if k <= max_k {
                light.push(k as f64);
            }
        }
        decade = match decade.checked_mul(10) {
            Some(d) => d,
            None => break,
        };
    }
    let last = bold.last().copied().unwrap_or(1.0);
    if max_k as f64 / last > 1.3 {
        bold.push(max_k as f64);
    }
    (bold, light)
}

/// Registers the font plotters draws text with, once per process.
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(load_font)
        .as_ref()
        .map(|_| ())
        .map_err(|e| anyhow!("{e}"))
}

fn load_font() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
        // An explicit choice is the only one tried.
        Some(p) if !p.is_empty() => vec![PathBuf::from(p)],
        _ => FONT_PATHS.iter().map(PathBuf::from).collect(),
    };
    register_first_font(candidates)
}

/// Registers the first of `candidates` that is a usable font file and returns its path.
fn register_first_font(candidates: Vec<PathBuf>) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    for path in candidates {
        match std::fs::read(&path) {
            Ok(bytes) => {
                // plotters keeps registered fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                match plotters::style::register_font(FAMILY, FontStyle::Normal, bytes) {
                    Ok(()) => return Ok(path),
                    Err(_) => {
                        tried.push(format!("{} (not a usable TrueType font)", path.display()))
                    }
                }
            }
            Err(e) => tried.push(format!("{} ({e})", path.display())),
        }
    }
    Err(format!(
        "no font to draw the plot's text with; tried {}. Install DejaVu Sans \
         (apt-get install fonts-dejavu-core) or set {FONT_ENV} to a TrueType font file",
        tried.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curves() -> Vec<Series> {
        let curve = |name: &str, scale: f64| Series {
            name: name.to_owned(),
            points: (1..=100)
                .map(|k| (k, scale * (k as f64).ln_1p() / 101f64.ln()))
                .collect(),
        };
        vec![
            curve("BM25", 0.55),
            curve("MiniLM", 0.65),
            curve("REALM", 0.7),
        ]
    }

    #[test]
    fn draws_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("accuracy.png");
        plot_accuracy(&png, "nq-open-dev: top-k retrieval accuracy", &curves()).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

        let svg = dir.path().join("accuracy.SVG");
        plot_accuracy(&svg, "accuracy", &curves()).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("<svg"), "not an SVG");
        assert!(text.contains("MiniLM"), "the legend is missing");
    }

    #[test]
    fn a_run_without_evaluations_plots_its_loss_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut curves = TrainingCurves {
            loss: (1..=50).map(|s| (s, 10.0 / s as f64)).collect(),
            ..TrainingCurves::default()
        };
        let path = dir.path().join("loss.svg");
        plot_training(&path, "loss only", &curves).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("training loss") && text.contains("training step"));
        assert!(!text.contains("dev accuracy"), "an empty accuracy panel");
        curves.accuracy.push((50, 0.1, 0.2, 0.3));
        plot_training(&path, "with accuracy", &curves).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("dev accuracy") && text.contains("top-20"));
    }

    #[test]
    fn small_k_ranges_draw_too() {
        let dir = tempfile::tempdir().unwrap();
        let one = Series {
            name: "one point".to_owned(),
            points: vec![(1, 0.5)],
        };
        let path = dir.path().join("one.png");
        plot_accuracy(&path, "k = 1", &[one]).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
    }

    #[test]
    fn rejects_other_extensions_and_bad_series() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["plot.jpg", "plot", "plot.png.txt"] {
            let err = plot_accuracy(&dir.path().join(name), "t", &curves()).unwrap_err();
            assert!(err.to_string().contains(".png or .svg"), "{err}");
        }
        let path = dir.path().join("plot.png");
        assert!(plot_accuracy(&path, "t", &[]).is_err());
        let bad = |points: Vec<(usize, f64)>| Series {
            name: "bad".to_owned(),
            points,
        };
        for s in [
            bad(vec![]),
            bad(vec![(0, 0.5)]),
            bad(vec![(1, 1.5)]),
            bad(vec![(1, f64::NAN)]),
        ] {
            assert!(plot_accuracy(&path, "t", &[s]).is_err());
        }
        assert!(!path.exists());
    }

    #[test]
    fn missing_fonts_are_reported_with_the_paths_tried() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.ttf");
        let garbage = dir.path().join("garbage.ttf");
        std::fs::write(&garbage, b"not a font").unwrap();
        let err = register_first_font(vec![missing.clone(), garbage.clone()]).unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains(&garbage.display().to_string()), "{err}");
        assert!(err.contains("not a usable TrueType font"), "{err}");
        assert!(err.contains(FONT_ENV), "{err}");
    }

    #[test]
    fn k_ticks_cover_the_range() {
        let (bold, light) = k_ticks(100);
        assert_eq!(bold, [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(light.len(), 19);
        let (bold, _) = k_ticks(40);
        assert_eq!(bold, [1.0, 2.0, 5.0, 10.0, 20.0, 40.0]);
        let (bold, _) = k_ticks(2);
        assert_eq!(bold, [1.0, 2.0]);
    }

    #[test]
    fn training_curves_draw_and_empty_runs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let curves = TrainingCurves {
            loss: (1..=50).map(|s| (s, 3.0 / (s as f64).sqrt())).collect(),
            accuracy: vec![
                (0, 0.1, 0.2, 0.3),
                (25, 0.15, 0.3, 0.4),
                (50, 0.2, 0.35, 0.5),
            ],
            exact_match: Vec::new(),
            refreshes: vec![25, 50],
        };
        let png = dir.path().join("train.png");
        plot_training(&png, "training", &curves).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        let svg = dir.path().join("train.svg");
        plot_training(&svg, "training", &curves).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("top-20"));
        // A phrase query-side run plots its phrase exact match instead.
        let phrase = TrainingCurves {
            loss: curves.loss.clone(),
            exact_match: vec![(0, 0.02, Some(0.05)), (50, 0.03, Some(0.07))],
            ..TrainingCurves::default()
        };
        plot_training(&svg, "phrase query-side", &phrase).unwrap();
        let drawn = std::fs::read_to_string(&svg).unwrap();
        assert!(drawn.contains("phrase EM, in corpus") && !drawn.contains("top-20"));
        assert!(drawn.contains("dev exact match"));
        let err = plot_training(&png, "t", &TrainingCurves::default()).unwrap_err();
        assert!(err.to_string().contains("nothing to plot"), "{err}");
    }
}
