//! `eval formats` end to end: a padded test split prepared from the fortunes fixture and the tiny
//! random-weight DiffuGPT fixture (widths 32 / 128: int8's blocks fit), bf16 and int8 against f32;
//! checks the report's keys, which products each format ran on, and that the logits and the
//! first-step end predictions stay close to f32 (int8 and bf16 round the weights; where their
//! dot-product kernels run, the activations as well).

mod common;

use std::fs;

use diffugpt_training::data::Kind;
use diffugpt_training::eval::formats::{run, FormatsArgs};
use diffugpt_training::prepare::PadVariant;
use serde_json::Value;

#[test]
fn eval_formats_end_to_end_on_the_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = common::prep(&tmp.path().join("data"), Kind::Padded, PadVariant::EosPad);
    let out = tmp.path().join("report");
    let args = FormatsArgs {
        model: common::root().join("tests/fixtures/tiny-diffugpt"),
        data: data_dir.join("test"),
        out: out.clone(),
        formats: vec!["bf16".into(), "int8".into()],
        predictor: "quantile:0.9".into(),
        max_examples: 6,
        seed: 5,
    };
    if !diffugpt::cpu_gemm::available() {
        // bf16 and int8 weights need the CPU kernels: a clear refusal, not a crash.
        let e = format!("{:#}", run(&args).unwrap_err());
        assert!(e.contains("kernels"), "{e}");
        return;
    }
    run(&args).unwrap();

    let r: Value = serde_json::from_slice(&fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["eval"], "formats");
    assert_eq!(r["n_examples"], 6);
    assert_eq!(r["cpu_kernels"], diffugpt::cpu_gemm::isa().name());
    let md = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| format | products |"), "{md}");

    let formats = r["formats"].as_array().unwrap();
    let names: Vec<&str> = formats
        .iter()
        .map(|f| f["format"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bf16", "int8"]);
    for f in formats {
        let name = f["format"].as_str().unwrap();
        let products = f["products"].as_str().unwrap();
        // The path the process runs, as the library reports it.
        let want = match name {
            "int8" => diffugpt::cpu_int8::path_name(),
            _ => diffugpt::cpu_bf16::path_name(),
        };
        assert_eq!(products, want, "{name}");
        // Rounded activations move the logits more (benches/README.md: up to 3.7e-2 for int8 on
        // integer kernels, 1.6e-2 for bf16 dot products on the default model).
        let rounds_activations = products != "decode";
        let tol = match (name, rounds_activations) {
            ("int8", true) => 6e-2,
            ("bf16", true) => 3e-2,
            _ => 2e-2,
        };
        let err = f["max_rel_logit_err"].as_f64().unwrap();
        assert!(
            err > 0.0 && err <= tol,
            "{name} on {products}: rel err {err}"
        );
        let ratio = f["weight_ratio"].as_f64().unwrap();
        let ceiling = if name == "int8" { 0.35 } else { 0.6 };
        assert!(
            ratio > 0.1 && ratio <= ceiling,
            "{name}: weights {ratio} of f32"
        );
        // 6 cases x 64 positions.
        assert_eq!(f["rows"], 384, "{name}");
        let top1 = f["top1_agreement"].as_f64().unwrap();
        assert!(top1 >= 0.9, "{name} on {products}: top-1 agreement {top1}");
        let changed = f["end_changed"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&changed),
            "{name}: end changed {changed}"
        );
    }
}
