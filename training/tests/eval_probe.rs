//! `eval probe` end to end on the tiny random-weight fixture: the probe is fitted (its training
//! loss falls: the loss is convex in the probe's weights), evaluated on the same test cases as
//! the model's own scores, and reported.

mod common;

use diffugpt_training::data::Kind;
use diffugpt_training::eval::eos::VisiblePolicy;
use diffugpt_training::eval::probe::{run, ProbeArgs};
use diffugpt_training::prepare::PadVariant;

#[test]
fn probe_fits_and_reports_against_the_zero_shot_predictors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::prep(&tmp.path().join("data"), Kind::Padded, PadVariant::EosPad);
    let out = tmp.path().join("probe");
    let args = ProbeArgs {
        model: common::root().join("tests/fixtures/tiny-diffugpt"),
        train_data: data.join("train"),
        data: data.join("test"),
        out: out.clone(),
        train_examples: 24,
        max_examples: 8,
        visible: VisiblePolicy::Uniform,
        predictors: vec!["argmax".into(), "quantile:0.9".into()],
        epochs: 60,
        lr: 0.05,
        l2: 0.0,
        seed: 0,
    };
    let r = run(&args).unwrap();
    assert_eq!(r.train_cases, 24);
    assert!(r.test_cases >= 1 && r.test_cases <= 8);
    assert_eq!(r.features, 32 + 2);
    assert!(
        r.train_loss_end < r.train_loss_start,
        "{} -> {}",
        r.train_loss_end,
        r.train_loss_start
    );
    assert!(r.test_loss.is_finite() && r.test_loss_zero_shot.is_finite());
    assert_eq!(r.rows.len(), 2);
    for row in &r.rows {
        assert_eq!(row.zero_shot.n, r.test_cases);
        assert_eq!(row.probe.n, r.test_cases);
        assert!((0.0..=1.0).contains(&row.probe.upper_bound));
    }
    assert_eq!(r.sweep_probe.len(), r.sweep_zero_shot.len());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| quantile:0.9 | probe |"), "{md}");
    assert!(out.join("report.json").is_file());
    // Bad parameters are errors, not panics.
    let e = run(&ProbeArgs { epochs: 0, ..args })
        .unwrap_err()
        .to_string();
    assert!(e.contains("--epochs"), "{e}");
}
