//! The `diffugpt` binary end to end on the built-in fixture model.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_diffugpt"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn generate_json_on_the_builtin_default_model() {
    let (ok, out, err) = run(&["generate", "--prompt", "Hello", "--canvas", "12", "--json"]);
    assert!(ok, "{err}");
    assert!(err.contains("built-in default model"), "{err}");
    assert!(err.contains("models/default"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["prompt"], "Hello");
    assert_eq!(v["stats"]["canvas_len"], 12);
    assert!(v["stats"]["forward_passes"].as_u64().unwrap() >= 1);
    assert!(v["text"].is_string());
}

#[test]
fn generate_stream_arm_and_fixed_modes() {
    let (ok, _, err) = run(&[
        "generate",
        "--canvas",
        "6",
        "--stream",
        "--length",
        "fixed",
        "--strategy",
        "random",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("[step 1/"), "{err}");
    let (ok, out, err) = run(&["generate", "--arm", "--max-new-tokens", "5", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["tokens"].as_array().unwrap().len() <= 5);
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let (ok, _, err) = run(&["generate", "--canvas", "100000"]);
    assert!(!ok);
    assert!(err.contains("exceed"), "{err}");
    let (ok, _, err) = run(&["generate", "--predictor", "median"]);
    assert!(!ok);
    assert!(err.contains("unknown length predictor"), "{err}");
    let (ok, _, err) = run(&["generate", "--model", "/nonexistent/model"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/model"), "{err}");
}

/// The built-in default is the trained model of `training/recipes/default`: DiffuGPT's layout,
/// the corpus vocabulary (8 192 ids + the pad row), its own end, mask and pad ids.
#[test]
fn inspect_reports_layout_and_ids() {
    let (ok, out, err) = run(&["inspect"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["layout"], "diffugpt");
    assert_eq!(v["eos_id"], 0);
    assert_eq!(v["mask_id"], 1);
    assert_eq!(v["pad_id"], 8192);
    assert_eq!(v["vocab_size"], 8193);
    assert_eq!(v["tokenizer_vocab"], 8192);
    // The fixture (GPT-2 vocabulary) is still a model the CLI loads.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-diffugpt");
    let (ok, out, err) = run(&["inspect", "--model", fixture]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mask_id"], 10541);
    assert_eq!(v["eos_id"], 50256);
    assert_eq!(v["vocab_size"], 50257);
    assert_eq!(v["parameters"], 1_641_888);
}

#[test]
fn bench_json_has_forward_times() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-diffugpt");
    let (ok, out, err) = run(&[
        "bench",
        "--model",
        fixture,
        "--forward-lens",
        "8,16",
        "--reps",
        "1",
        "--canvas",
        "16",
        "--steps",
        "4",
        "--prompt-len",
        "4",
        "--answer-len",
        "3",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["forward_ms"]["8"].as_f64().unwrap() > 0.0);
    assert!(v["forward_ms"]["16"].as_f64().unwrap() > 0.0);
    // The arithmetic rate is the model's forward FLOPs over the measured time.
    let model = diffugpt::Model::load(
        std::path::Path::new(fixture),
        diffugpt::LoadOptions::default(),
    )
    .unwrap();
    let want = model.gpt.cfg.forward_flops(8, 8) / 1e9;
    let got =
        v["forward_gflops"]["8"].as_f64().unwrap() * v["forward_ms"]["8"].as_f64().unwrap() / 1e3;
    assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    if cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("fma") {
        assert!(v["fma_peak_gflops"].as_f64().unwrap() > 1.0, "{out}");
    }
    let rows = v["rows"].as_array().unwrap();
    assert!(rows
        .iter()
        .all(|r| r["test"].as_str().unwrap().starts_with("forward-") == r["gflops"].is_number()));
    assert!(rows.iter().any(|r| r["test"] == "fixed-16"));
    let eos = rows
        .iter()
        .find(|r| r["test"] == "eosfirst-16-ans3")
        .unwrap();
    // oracle 3 + end + margin 8 = 12 of 16 slots, 4 steps scaled to 3 + the first step.
    assert!(eos["forward_passes"].as_u64().unwrap() <= 4);
    let (ok, out, _) = bench_fixture_t8(&[], &[]);
    assert!(ok);
    assert!(out.contains("| forward-8 |"), "{out}");
    assert!(out.contains("| GFLOP/s |"), "{out}");
}

/// `diffugpt PRE bench --model <fixture> --forward-lens 8 --reps 1 --canvas 0 POST`.
fn bench_fixture_t8(pre: &[&str], post: &[&str]) -> (bool, String, String) {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-diffugpt");
    let mid = [
        "bench",
        "--model",
        fixture,
        "--forward-lens",
        "8",
        "--reps",
        "1",
        "--canvas",
        "0",
    ];
    run(&[pre, &mid[..], post].concat())
}

#[test]
fn threads_sizes_the_pool_and_the_bench_reports_it() {
    let bench = |threads: &str| bench_fixture_t8(&["--threads", threads], &["--format", "json"]);
    for n in [1u64, 3] {
        let (ok, out, err) = bench(&n.to_string());
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["threads"].as_u64(), Some(n), "{out}");
    }
    // A global option: accepted after the subcommand too.
    let (ok, out, err) = run(&["inspect", "--threads", "2"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"layout\""), "{out}");
    let (ok, _, err) = bench("0");
    assert!(!ok);
    assert!(err.contains("--threads"), "{err}");
}

/// `generate --compare` decodes the same prompt both ways and reports each: the fixed run keeps
/// the whole canvas at every step, the EoS-first run never processes more positions than it.
#[test]
fn generate_compare_shows_fixed_and_eos_first_side_by_side() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-diffugpt");
    let args = [
        "generate", "--model", fixture, "--prompt", "Hello", "--canvas", "16",
    ];
    let (ok, out, err) = run(&[&args[..], &["--compare", "--json"]].concat());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (f, e) = (&v["fixed"]["stats"], &v["eos_first"]["stats"]);
    assert_eq!(f["canvas_len"], 16);
    assert_eq!(f["final_canvas_len"], 16);
    assert!(f["predicted_len"].is_null());
    assert_eq!(e["canvas_len"], 16);
    let positions = |s: &serde_json::Value| -> u64 {
        s["forward_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    // Every fixed-length pass covers BOS, the prompt and the whole canvas.
    let sizes = f["forward_sizes"].as_array().unwrap();
    assert!(
        sizes.iter().all(|n| n == &sizes[0]) && sizes[0].as_u64().unwrap() > 16,
        "{v}"
    );
    if e["grow_events"] == 0 {
        assert!(positions(e) <= positions(f), "{v}");
    }
    // The table: a header and one row per mode, after both texts.
    let (ok, out, err) = run(&[&args[..], &["--compare"]].concat());
    assert!(ok, "{err}");
    assert!(
        out.contains("--- fixed ---") && out.contains("--- eos-first ---"),
        "{out}"
    );
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| ---"))
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows[1].starts_with("| fixed | - |"), "{out}");
    assert!(rows[2].starts_with("| eos-first |"), "{out}");
    // Not with ARM decoding or an explicit length mode.
    let (ok, _, err) = run(&[&args[..], &["--compare", "--arm"]].concat());
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}

#[test]
fn bench_profile_splits_the_forward_by_op() {
    let (ok, out, err) =
        bench_fixture_t8(&[], &["--arm-tokens", "0", "--profile", "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v["forward_profile"][0];
    assert_eq!(p["dtype"], "f32");
    assert_eq!(p["t"], 8);
    let cfg = diffugpt::Model::load(
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-diffugpt"
        )),
        diffugpt::LoadOptions::default(),
    )
    .unwrap()
    .gpt
    .cfg
    .clone();
    let calls = |name: &str| {
        p["ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["op"] == name)
            .unwrap_or_else(|| panic!("no {name} in {p}"))["calls"]
            .as_u64()
            .unwrap()
    };
    let l = cfg.n_layer as u64;
    // Per forward: every layer's two LayerNorms and ln_f, one of each projection per layer,
    // two residual adds per layer, one head.
    assert_eq!(calls("layer_norm"), 2 * l + 1);
    assert_eq!(calls("qkv (c_attn)"), l);
    assert_eq!(calls("attention"), l);
    assert_eq!(calls("mlp.c_proj"), l);
    assert_eq!(calls("residual adds"), 2 * l);
    assert_eq!(calls("head (logits)"), 1);
    let ops_ms: f64 = p["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["ms"].as_f64().unwrap())
        .sum();
    let total = p["total_ms"].as_f64().unwrap();
    assert!(
        ops_ms > 0.0 && ops_ms <= total * 1.0001,
        "{ops_ms} vs {total}"
    );
    // Markdown: the table with a column per op and the matrix ops' rates under it.
    let (ok, out, err) = bench_fixture_t8(&[], &["--arm-tokens", "0", "--profile"]);
    assert!(ok, "{err}");
    assert!(out.contains("Forward profile"), "{out}");
    assert!(out.contains("| f32 | 8 |"), "{out}");
    assert!(out.contains("GFLOP/s |"), "{out}");
}
