//! Every `diffugpt generate` flag reaches the decoder: each test runs the binary on a hand-built
//! model with known logits (`common::Table`, saved with a `t0`..`t96` word-level tokenizer) and
//! checks an output that changes when the flag's value is ignored, or swapped with another's.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;
use common::{
    ids_table, oracle_model, ramp_table, sampling_table, save_model, slot_row, Table, EOS,
    PROMPT_TEXT,
};

/// Saves `table`'s model in a fresh directory.
fn saved(table: &Table) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    save_model(&table.build(), dir.path());
    dir
}

fn run(model: &Path, args: &[&str]) -> Result<Value, String> {
    // The default prompt unless the test gives its own.
    let prompt: &[&str] = if args.contains(&"--prompt") {
        &[]
    } else {
        &["--prompt", PROMPT_TEXT]
    };
    let out = Command::new(env!("CARGO_BIN_EXE_diffugpt"))
        .args(["generate", "--json", "--model"])
        .arg(model)
        .args(prompt)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(err);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {err}"))
}

/// The JSON of a run that must succeed.
fn gen(model: &Path, args: &[&str]) -> Value {
    run(model, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn tokens(v: &Value) -> Vec<u64> {
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

fn stat(v: &Value, key: &str) -> Value {
    v["stats"][key].clone()
}

fn answer_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    save_model(&oracle_model(EOS, None), dir.path());
    dir
}

#[test]
fn margin_and_margin_ratio_set_the_cut() {
    let m = answer_model();
    let cut = |margin: &str, ratio: &str| {
        let v = gen(
            m.path(),
            &[
                "--canvas",
                "24",
                "--predictor",
                "argmax",
                "--margin",
                margin,
                "--margin-ratio",
                ratio,
            ],
        );
        assert_eq!(stat(&v, "predicted_len"), 5);
        assert_eq!(tokens(&v), [10, 11, 12, 13, 14]);
        stat(&v, "final_canvas_len")
    };
    // 5 + 1 + max(margin, ceil(ratio * 5)). Defaults (8, 0.25) or swapped values give 14, 8, 21
    // or 7 instead.
    assert_eq!(cut("3", "0"), 9);
    assert_eq!(cut("0", "1.0"), 11);
    assert_eq!(cut("2", "0.6"), 9);
}

#[test]
fn no_grow_and_length_mode() {
    let m = answer_model();
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "--canvas",
            "24",
            "--predictor",
            "oracle:1",
            "--margin",
            "0",
            "--margin-ratio",
            "0",
            // Off: the floor (at the true end, 5) would keep the cut from undershooting.
            "--end-floor",
            "0",
        ];
        a.extend_from_slice(extra);
        a
    };
    let v = gen(m.path(), &args(&[]));
    assert!(stat(&v, "grow_events").as_u64().unwrap() >= 1);
    assert_eq!(tokens(&v), [10, 11, 12, 13, 14]);
    let v = gen(m.path(), &args(&["--no-grow"]));
    assert_eq!(stat(&v, "grow_events"), 0);
    assert_eq!(stat(&v, "final_canvas_len"), 2);
    assert_eq!(tokens(&v), [10, 11]);
    let v = gen(m.path(), &args(&["--length", "fixed"]));
    assert_eq!(stat(&v, "predicted_len"), Value::Null);
    assert_eq!(stat(&v, "final_canvas_len"), 24);
    assert_eq!(stat(&v, "canvas_len"), 24);
}

#[test]
fn steps_and_steps_per_token() {
    let m = answer_model();
    let steps = |extra: &[&str]| {
        let mut a = vec!["--canvas", "8", "--length", "fixed"];
        a.extend_from_slice(extra);
        stat(&gen(m.path(), &a), "steps")
    };
    assert_eq!(steps(&[]), 8);
    assert_eq!(steps(&["--steps", "3"]), 3);
    assert_eq!(steps(&["--steps-per-token", "0.5"]), 4);
    assert_eq!(steps(&["--steps-per-token", "0.25"]), 2);
}

#[test]
fn every_predictor_form_reaches_the_decoder() {
    let m = saved(&ramp_table());
    for (pred, want) in [
        ("argmax", 5),       // the first slot whose argmax is eos (p 0.6; 0.45 < the answer's)
        ("argmax-first", 5), // alias
        ("threshold:0.4", 4),
        ("threshold:0.2", 2),
        ("threshold", 5), // tau 0.5
        ("quantile:0.4", 3),
        ("quantile:0.95", 6),
        ("quantile", 5), // q 0.9
        ("oracle:7", 7),
    ] {
        let v = gen(
            m.path(),
            &["--canvas", "12", "--predictor", pred, "--no-grow"],
        );
        assert_eq!(stat(&v, "predicted_len"), want, "{pred}");
    }
}

#[test]
fn special_ids_and_allow_mask() {
    let m = saved(&ids_table(None));
    let run_ids = |extra: &[&str]| {
        let mut a = vec!["--canvas", "12", "--predictor", "argmax", "--no-grow"];
        a.extend_from_slice(extra);
        let v = gen(m.path(), &a);
        (stat(&v, "predicted_len"), tokens(&v))
    };
    let answer = |first| vec![first, 11, 12, 13, 14];
    let with = |mut a: Vec<u64>, more: &[u64]| {
        a.extend_from_slice(more);
        a
    };
    assert_eq!(run_ids(&[]), (7.into(), with(answer(20), &[94, 93])));
    assert_eq!(run_ids(&["--pad-id", "94"]), (5.into(), answer(20)));
    assert_eq!(
        run_ids(&["--eos-id", "93"]),
        (6.into(), with(answer(20), &[94]))
    );
    assert_eq!(
        run_ids(&["--allow-mask"]),
        (7.into(), with(answer(95), &[94, 93]))
    );
    // Mask 11: 95 is an ordinary token now, and slot 1's 11 is banned (its runner-up: id 0).
    assert_eq!(
        run_ids(&["--mask-id", "11"]),
        (7.into(), vec![95, 0, 12, 13, 14, 94, 93])
    );
}

#[test]
fn sampling_flags() {
    let m = saved(&sampling_table());
    let canvas = |extra: &[&str]| {
        let mut a = vec!["--canvas", "8", "--length", "fixed"];
        a.extend_from_slice(extra);
        tokens(&gen(m.path(), &a))
    };
    let greedy = vec![20; 8];
    assert_eq!(canvas(&[]), greedy);
    assert_eq!(canvas(&["--temperature", "0"]), greedy);
    // Temperature 5 flattens the row: 20 has 2% of the mass.
    let hot = canvas(&["--temperature", "5", "--seed", "1"]);
    assert_ne!(hot, greedy);
    assert_eq!(canvas(&["--temperature", "5", "--seed", "1"]), hot);
    assert_ne!(canvas(&["--temperature", "5", "--seed", "2"]), hot);
    // top-k 1 and a tiny nucleus keep only 20.
    assert_eq!(canvas(&["--temperature", "5", "--top-k", "1"]), greedy);
    assert_eq!(canvas(&["--temperature", "5", "--top-p", "0.01"]), greedy);
    // The penalty 2 halves 20's logit once 20 is in the prompt: 21 wins the first slot.
    let v = gen(
        m.path(),
        &[
            "--canvas",
            "8",
            "--length",
            "fixed",
            "--prompt",
            "t20 t2 t3",
            "--repetition-penalty",
            "2",
        ],
    );
    assert_eq!(tokens(&v)[0], 21);
    let v = gen(
        m.path(),
        &[
            "--canvas",
            "8",
            "--length",
            "fixed",
            "--prompt",
            "t20 t2 t3",
        ],
    );
    assert_eq!(tokens(&v), greedy);
}

#[test]
fn strategy_sets_the_reveal_order() {
    // Slot j: its token 10 + j with the logit below and 0 elsewhere; one reveal per step.
    let logits = [4.0, 7.0, 5.0, 6.0];
    let mut rows = vec![vec![]; slot_row(4)];
    for (j, &l) in logits.iter().enumerate() {
        rows[slot_row(j)] = vec![(10 + j as u32, l)];
    }
    let m = saved(&Table {
        rows,
        ..Default::default()
    });
    let stream = |strategy: &str| -> Vec<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_diffugpt"))
            .args(["generate", "--prompt", PROMPT_TEXT, "--length", "fixed"])
            .args([
                "--canvas",
                "4",
                "--stream",
                "--strategy",
                strategy,
                "--model",
            ])
            .arg(m.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err.lines()
            .filter(|l| l.starts_with("[step "))
            .map(|l| l.split_once("] ").map_or("", |x| x.1).trim().to_string())
            .collect()
    };
    // Masked slots are not shown: each line lists the revealed tokens in canvas order.
    let surest_first = ["t11", "t11 t13", "t11 t12 t13", "t10 t11 t12 t13"];
    for s in ["confidence", "margin", "entropy"] {
        assert_eq!(stream(s), surest_first, "{s}");
    }
    assert_ne!(stream("random"), surest_first);
}

#[test]
fn dtype_is_checked() {
    let m = answer_model();
    let f32_tokens = tokens(&gen(m.path(), &["--canvas", "4", "--dtype", "f32"]));
    // On the CPU bf16 and int8 are weight formats: the same answer from this sharp model where
    // the kernels run (int8 only for widths in multiples of 32), a clear refusal otherwise.
    for d in ["bf16", "int8"] {
        match run(m.path(), &["--canvas", "4", "--dtype", d]) {
            Ok(v) => assert_eq!(tokens(&v), f32_tokens, "{d}"),
            Err(err) => assert!(
                err.contains("kernels") || err.contains("multiples of 32"),
                "{d}: {err}"
            ),
        }
    }
    let err = run(
        m.path(),
        &["--canvas", "4", "--device", "cuda", "--dtype", "int8"],
    )
    .unwrap_err();
    assert!(err.contains("CPU only"), "{err}");
    let err = run(m.path(), &["--canvas", "4", "--dtype", "f8"]).unwrap_err();
    assert!(err.contains("unknown dtype"), "{err}");
}
