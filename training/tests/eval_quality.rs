//! `eval lambada`, `eval ppl` and `eval compare` end to end on the fixture model (random weights:
//! accuracy near 0, perplexity near or above the vocabulary size). Checks the files, the keys and
//! the ranges of the reports.

use std::path::{Path, PathBuf};

use diffugpt_training::data::Kind;
use diffugpt_training::eval::lambada::{self, LambadaArgs};
use diffugpt_training::eval::quality::{run_compare, run_ppl, CompareArgs, PplArgs, PplMode};
use diffugpt_training::prepare::{prepare, PrepareOptions, Splitter};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn model() -> PathBuf {
    root().join("tests/fixtures/tiny-diffugpt")
}

fn report(dir: &Path) -> Value {
    assert!(dir.join("report.md").is_file(), "no report.md in {dir:?}");
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

fn lambada_args(out: PathBuf) -> LambadaArgs {
    LambadaArgs {
        model: model(),
        input: None,
        from_text: None,
        n: 5,
        min_context_words: 10,
        out,
        seed: 0,
        max_examples: None,
    }
}

#[test]
fn lambada_on_the_sample_file_and_on_held_out_text() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lambada");
    let args = LambadaArgs {
        input: Some(root().join("training/tests/fixtures/lambada/lambada_sample.jsonl")),
        ..lambada_args(out.clone())
    };
    lambada::run(&args).unwrap();
    let r = report(&out);
    assert_eq!(r["task"], "lambada");
    assert_eq!(r["n"], 8);
    assert_eq!(r["skipped"], 0);
    let acc = num(&r, "accuracy");
    assert!((0.0..=1.0).contains(&acc));
    assert!((0.0..=1.0).contains(&num(&r, "accuracy_word")));
    assert_eq!(num(&r, "hits"), acc * 8.0);
    // " lamp", " tomatoes", ...: GPT-2 BPE gives 1-3 tokens per word.
    let avg = num(&r, "avg_target_tokens");
    assert!((1.0..=3.0).contains(&avg), "{avg}");
    let hits = r["hit_examples"].as_array().unwrap();
    let misses = r["miss_examples"].as_array().unwrap();
    assert!(hits.len() <= 5 && misses.len() <= 5 && hits.len() + misses.len() >= 5);
    let first = hits.iter().chain(misses).next().unwrap();
    for key in [
        "context",
        "target",
        "target_ids",
        "predicted_ids",
        "predicted",
    ] {
        assert!(!first[key].is_null(), "{key}");
    }
    // The oracle length: as many predicted ids as target ids.
    assert_eq!(
        first["predicted_ids"].as_array().unwrap().len(),
        first["target_ids"].as_array().unwrap().len()
    );
    assert!(r["environment"]["threads"].as_u64().unwrap() >= 1);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("accuracy (target tokens)"));

    // The set may be limited.
    let out2 = tmp.path().join("lambada-max");
    lambada::run(&LambadaArgs {
        max_examples: Some(3),
        out: out2.clone(),
        ..args
    })
    .unwrap();
    assert_eq!(report(&out2)["n"], 3);

    // LAMBADA-style set from held-out text.
    let out3 = tmp.path().join("from-text");
    lambada::run(&LambadaArgs {
        from_text: Some(root().join("training/tests/fixtures/corpus/fortunes.txt")),
        ..lambada_args(out3.clone())
    })
    .unwrap();
    let r = report(&out3);
    assert_eq!(r["n"], 5);
    assert!(r["source"].as_str().unwrap().starts_with("from-text:"));
    assert!((0.0..=1.0).contains(&num(&r, "accuracy")));

    // Neither or both inputs: refused.
    assert!(lambada::run(&lambada_args(tmp.path().join("none"))).is_err());
}

fn ppl_args(data: PathBuf, mode: PplMode, out: PathBuf) -> PplArgs {
    PplArgs {
        model: model(),
        data,
        mode,
        levels: 4,
        max_seqs: 3,
        seq_len: 48,
        seed: 0,
        out,
    }
}

#[test]
fn ppl_diffusion_and_causal_on_a_stream_split_and_on_raw_text() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = PrepareOptions::new(
        root().join("training/tests/fixtures/corpus/fortunes.txt"),
        root().join("tests/fixtures/tiny-diffugpt/tokenizer.json"),
        tmp.path().join("data"),
    );
    o.splitter = Splitter::Percent;
    o.kind = Kind::Stream;
    o.val_frac = 0.1;
    o.test_frac = 0.1;
    prepare(&o).unwrap();
    let ln_v = (50257f64).ln();

    let out = tmp.path().join("diff");
    run_ppl(&ppl_args(
        tmp.path().join("data/test"),
        PplMode::Diffusion,
        out.clone(),
    ))
    .unwrap();
    let r = report(&out);
    assert_eq!(r["task"], "ppl");
    assert_eq!(r["mode"], "diffusion");
    assert_eq!(r["source_kind"], "stream");
    assert_eq!(r["is_bound"], true);
    assert_eq!(r["n_seqs"], 3);
    assert_eq!(r["n_tokens"], 3 * 47);
    let levels = r["per_level"].as_array().unwrap();
    assert_eq!(levels.len(), 4);
    assert_eq!(levels[3]["t"], 1.0);
    assert_eq!(levels[3]["masked"], 3 * 47);
    // Random weights: close to uniform, so about ln V per masked token.
    for l in levels {
        let ce = num(l, "ce_per_masked");
        assert!((ce - ln_v).abs() < 1.0, "{ce}");
    }
    let nll = num(&r, "nll_per_token");
    assert!(nll > 0.5 * ln_v && nll < 2.0 * ln_v, "{nll}");
    assert!((num(&r, "ppl") - nll.exp()).abs() < 1e-6 * nll.exp());
    let mean_term = levels.iter().map(|l| num(l, "term_per_token")).sum::<f64>() / 4.0;
    assert!((mean_term - nll).abs() < 1e-9 * nll);

    let out = tmp.path().join("causal");
    run_ppl(&ppl_args(
        tmp.path().join("data/test"),
        PplMode::Causal,
        out.clone(),
    ))
    .unwrap();
    let r = report(&out);
    assert_eq!(r["mode"], "causal");
    assert_eq!(r["is_bound"], false);
    assert!(r["per_level"].as_array().unwrap().is_empty());
    let nll = num(&r, "nll_per_token");
    assert!((nll - ln_v).abs() < 1.0, "{nll}");
    let ppl = num(&r, "ppl");
    assert!(ppl > 10_000.0 && ppl < 200_000.0, "{ppl}");

    // Raw text (passages split at `%` lines) and the header path itself.
    let out = tmp.path().join("text");
    run_ppl(&ppl_args(
        root().join("training/tests/fixtures/corpus/fortunes.txt"),
        PplMode::Causal,
        out.clone(),
    ))
    .unwrap();
    let r = report(&out);
    assert_eq!(r["source_kind"], "text");
    assert_eq!(r["n_seqs"], 3);
    let out = tmp.path().join("header");
    run_ppl(&ppl_args(
        tmp.path().join("data/test.json"),
        PplMode::Causal,
        out.clone(),
    ))
    .unwrap();
    assert_eq!(report(&out)["source_kind"], "stream");

    assert!(run_ppl(&ppl_args(
        tmp.path().join("nothing"),
        PplMode::Causal,
        tmp.path().join("x"),
    ))
    .is_err());
}

#[test]
fn compare_eos_first_and_fixed_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "The capital of France is\n\nOnce upon a time\nA third prompt left out\n",
    )
    .unwrap();
    let out = tmp.path().join("compare");
    run_compare(&CompareArgs {
        model: model(),
        prompts,
        canvas: 12,
        steps: 6,
        predictor: "quantile:0.9".into(),
        end_floor: 0.0,
        levels: 2,
        seed: 1,
        out: out.clone(),
        max_prompts: Some(2),
    })
    .unwrap();
    let r = report(&out);
    assert_eq!(r["task"], "compare");
    assert_eq!(r["n_prompts"], 2);
    let rows = r["prompts"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["prompt"], "The capital of France is");
    assert_eq!(rows[1]["prompt"], "Once upon a time");
    for mode in ["fixed", "eos_first"] {
        let t = &r[mode];
        let len = num(t, "mean_final_len");
        assert!((0.0..=12.0).contains(&len));
        assert!(t["forward_passes"].as_u64().unwrap() >= 2);
        for row in rows {
            let o = &row[mode];
            assert!(o["text"].is_string());
            let n = o["final_len"].as_u64().unwrap() as usize;
            assert_eq!(o["tokens"].as_array().unwrap().len(), n);
            if n > 0 {
                let v = num(o, "nll_per_token");
                assert!(v.is_finite() && v > 0.0, "{v}");
            } else {
                assert!(o["nll"].is_null());
            }
        }
    }
    // The fixed canvas is never cut: 6 steps on BOS + prompt + 12 slots.
    for row in rows {
        assert_eq!(row["fixed"]["forward_passes"], 6);
        assert_eq!(row["fixed"]["final_canvas_len"], 12);
        let (a, b) = (
            row["fixed"]["final_len"].as_u64().unwrap(),
            row["eos_first"]["final_len"].as_u64().unwrap(),
        );
        assert_eq!(row["same_len"], a == b);
        assert_eq!(row["len_abs_diff"], a.abs_diff(b));
    }
    let agree = num(&r, "length_agreement");
    assert!((0.0..=1.0).contains(&agree));
    assert!(num(&r, "mean_abs_len_diff") >= 0.0);
    assert!((0.0..=1.0).contains(&num(&r, "identical_answers")));
}
