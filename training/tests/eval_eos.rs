//! `eval eos` end to end: a padded test split prepared from the fortunes fixture, the tiny
//! random-weight DiffuGPT fixture, first-step metrics for four predictors and generation metrics on
//! three examples; checks the files and the report's keys and ranges.

use std::fs;
use std::path::{Path, PathBuf};

use diffugpt_training::data::{Kind, TokenFile};
use diffugpt_training::eval::eos::{run, EosEvalArgs};
use diffugpt_training::prepare::{prepare, PrepareOptions, Splitter};
use serde_json::Value;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory under cargo's test tmpdir, removed on drop.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(name: &str) -> TmpDir {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("eval-eos-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn in_unit(v: &Value, what: &str) {
    match v.as_f64() {
        Some(x) => assert!((0.0..=1.0).contains(&x), "{what} = {x}"),
        None => assert!(v.is_null(), "{what} is {v}"),
    }
}

fn finite_nonneg(v: &Value, what: &str) {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is {v}"));
    assert!(x.is_finite() && x >= 0.0, "{what} = {x}");
}

#[test]
fn eval_eos_end_to_end_on_the_tiny_model() {
    let tmp = TmpDir::new("e2e");
    let data_dir = tmp.0.join("data");
    let mut o = PrepareOptions::new(
        manifest().join("tests/fixtures/corpus/fortunes.txt"),
        manifest().join("../tests/fixtures/tiny-diffugpt/tokenizer.json"),
        data_dir.clone(),
    );
    o.splitter = Splitter::Percent;
    o.kind = Kind::Padded;
    o.block_len = 64;
    o.val_frac = 0.05;
    o.test_frac = 0.1;
    o.seed = 3;
    prepare(&o).unwrap();
    let stem = data_dir.join("test");
    assert!(TokenFile::open(&stem).unwrap().n_blocks() >= 8);

    let out = tmp.0.join("report");
    let mut args = EosEvalArgs::new(
        manifest().join("../tests/fixtures/tiny-diffugpt"),
        stem,
        out.clone(),
    );
    args.max_examples = 8;
    args.generate = true;
    // Four tokens per step: the debug-built decoder is slow on a 50k vocabulary.
    args.steps_per_token = 0.25;
    args.generate_examples = 3;
    args.seed = 11;
    run(&args).unwrap();

    for f in [
        "report.json",
        "report.md",
        "pareto.png",
        "accuracy_by_visible.png",
    ] {
        let p = out.join(f);
        assert!(
            p.is_file() && fs::metadata(&p).unwrap().len() > 0,
            "{f} missing"
        );
    }
    let png = fs::read(out.join("pareto.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    let r: Value = serde_json::from_slice(&fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["eval"], "eos");
    assert_eq!(r["data_kind"], "padded");
    assert_eq!(r["visible_policy"], "uniform");
    assert_eq!(r["block_len"], 64);
    assert_eq!(r["n_examples"], 8);
    assert_eq!(r["n_cases"], 8);
    assert!(r["environment"]["diffugpt_version"].is_string());
    assert_eq!(r["ks"], serde_json::json!([1, 2, 4]));

    let preds = r["predictors"].as_array().unwrap();
    let labels: Vec<&str> = preds.iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        ["argmax", "threshold:0.5", "quantile:0.5", "quantile:0.9"]
    );
    for p in preds {
        let l = p["label"].as_str().unwrap();
        let o = &p["overall"];
        assert_eq!(o["n"], 8, "{l}");
        for k in [
            "exact",
            "upper_bound",
            "saved_mean",
            "saved_pooled",
            "no_end",
            "mean_p_end_at_true",
        ] {
            in_unit(&o[k], &format!("{l} {k}"));
        }
        let within = o["within"].as_array().unwrap();
        assert_eq!(within.len(), 3);
        for w in within {
            in_unit(&w["accuracy"], &format!("{l} within {}", w["k"]));
        }
        for k in ["rmse", "mae", "mean_rank", "median_rank"] {
            finite_nonneg(&o[k], &format!("{l} {k}"));
        }
        assert!(o["mean_rank"].as_f64().unwrap() >= 1.0);
        let quartiles = p["quartiles"].as_array().unwrap();
        assert!(!quartiles.is_empty() && quartiles.len() <= 4);
        let n: u64 = quartiles
            .iter()
            .map(|b| b["metrics"]["n"].as_u64().unwrap())
            .sum();
        assert_eq!(n, 8, "{l}: quartiles partition the examples");
        let n: u64 = p["curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["metrics"]["n"].as_u64().unwrap())
            .sum();
        assert_eq!(n, 8, "{l}: the curve partitions the examples");
        let cases = p["predictions"].as_array().unwrap();
        assert_eq!(cases.len(), 8);
        for c in cases {
            let (t, canvas) = (
                c["true_end"].as_u64().unwrap(),
                c["canvas"].as_u64().unwrap(),
            );
            assert!(t < canvas);
            assert_eq!(
                c["visible"].as_u64().unwrap() + canvas + 1,
                64,
                "canvas = rest of the block"
            );
        }
    }
    assert_eq!(r["sweep"]["quantile"].as_array().unwrap().len(), 12);
    assert_eq!(r["sweep"]["threshold"].as_array().unwrap().len(), 16);

    let g = &r["generation"];
    assert_eq!(g["examples"], 3);
    let modes = g["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 2);
    assert_eq!(modes[0]["mode"], "fixed");
    assert_eq!(modes[1]["mode"], "eos-first");
    for m in modes {
        let o = &m["overall"];
        assert_eq!(o["n"], 3);
        for k in ["precision", "recall", "f1"] {
            in_unit(&o[k], &format!("{} {k}", m["mode"]));
        }
        for k in [
            "final_len_mae",
            "final_len_rmse",
            "mean_forward_passes",
            "mean_positions_processed",
        ] {
            finite_nonneg(&o[k], &format!("{} {k}", m["mode"]));
        }
        assert_eq!(m["records"].as_array().unwrap().len(), 3);
    }
    finite_nonneg(&g["positions_ratio"], "positions_ratio");

    let md = fs::read_to_string(out.join("report.md")).unwrap();
    for s in [
        "## Overall",
        "## By visible-token quartile",
        "### quantile:0.9",
        "## Generation",
        "![pareto.png](pareto.png)",
    ] {
        assert!(md.contains(s), "report.md lacks {s:?}");
    }
}
