//! What a killed or damaged run leaves behind is made consistent by the next `train` call: the
//! metrics log is cut back to the checkpoint resumed from (no torn lines, no step logged twice),
//! stale temporaries of killed writes are removed (and nothing else), the run directory's own
//! config survives being passed as the config, and a `latest` pointer naming a missing directory
//! is reported instead of being silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use diffugpt_training::config::{Diffusion, Pipeline, TrainConfig};
use diffugpt_training::data::Kind;
use diffugpt_training::prepare::PadVariant;
use diffugpt_training::train::train;

mod common;
use common::tiny_scratch;

/// A tiny diffusion run logging every step and validating every second one.
fn config(data: &Path, out: &Path, steps: usize) -> TrainConfig {
    TrainConfig {
        batch_size: 2,
        grad_accum: 1,
        diffusion: Diffusion::default(),
        eval_every: 2,
        eval_batches: 1,
        seed: 5,
        ..common::config(Pipeline::Diffusion, tiny_scratch(), data, out, steps)
    }
}

fn prep(out: &Path) -> PathBuf {
    common::prep(out, Kind::Padded, PadVariant::EosEos)
}

/// (step, kind) -> number of lines; every line must be complete JSON.
fn metric_lines(path: &Path) -> BTreeMap<(u64, &'static str), usize> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let kind = if v.get("val_loss").is_some() {
            "val"
        } else {
            "train"
        };
        *out.entry((v["step"].as_u64().unwrap(), kind)).or_default() += 1;
    }
    out
}

#[test]
fn resume_cleans_up_after_a_killed_invocation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prep(&tmp.path().join("data"));
    let out = tmp.path().join("run");
    let cfg = config(&data, &out, 6);
    // The run directory's own copy is the config passed (`train RUN/config.json --resume`).
    std::fs::create_dir_all(&out).unwrap();
    let cfg_path = out.join("config.json");
    let cfg_text = serde_json::to_vec_pretty(&cfg).unwrap();
    std::fs::write(&cfg_path, &cfg_text).unwrap();
    train(&cfg, Some(&cfg_path), false, Some(3)).unwrap();
    assert_eq!(std::fs::read(&cfg_path).unwrap(), cfg_text);

    // What an invocation resumed from step 3 and killed after logging steps 4 and 5 (and half
    // of step 6) leaves, plus temporaries of killed atomic writes in every directory.
    let metrics = out.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\":4,\"loss\":777777.0}\n{\"step\":4,\"val_loss\":777777.0}\n");
    text.push_str("{\"step\":5,\"loss\":777777.0}\n{\"step\":6,\"lo");
    std::fs::write(&metrics, text).unwrap();
    let ckpts = out.join("checkpoints");
    let final_dir = out.join("final");
    std::fs::create_dir_all(ckpts.join(".step-00000004.tmp")).unwrap();
    std::fs::write(ckpts.join(".step-00000004.tmp/model.safetensors"), b"").unwrap();
    std::fs::create_dir_all(&final_dir).unwrap();
    let stale = [
        ckpts.join(".latest.tmp4242"),
        out.join(".metrics.jsonl.tmp4242"),
        out.join(".config.json.tmp4242"),
        final_dir.join(".model.safetensors.tmp4242"),
        final_dir.join(".config.json.tmp17"),
    ];
    let unrelated = [
        out.join("notes.tmp"),
        out.join(".metrics.jsonl.tmp"),
        ckpts.join(".mine.tmp1"),
        final_dir.join("tokenizer.json"),
    ];
    for p in stale.iter().chain(&unrelated) {
        std::fs::write(p, b"x").unwrap();
    }

    let rest = train(&cfg, Some(&cfg_path), true, None).unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(std::fs::read(&cfg_path).unwrap(), cfg_text);
    assert!(!ckpts.join(".step-00000004.tmp").exists());
    for p in &stale {
        assert!(!p.exists(), "{} was not removed", p.display());
    }
    for p in &unrelated {
        assert!(p.exists(), "{} was removed", p.display());
    }
    // Each step logged once, each validation once, no torn or stale lines.
    let lines = metric_lines(&metrics);
    let mut expect: BTreeMap<(u64, &str), usize> = (1..=6).map(|s| ((s, "train"), 1)).collect();
    expect.extend([2, 4, 6].map(|s| ((s, "val"), 1)));
    assert_eq!(lines, expect);
    assert!(!std::fs::read_to_string(&metrics)
        .unwrap()
        .contains("777777"));
}

#[test]
fn a_dangling_latest_is_reported_and_a_fresh_start_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prep(&tmp.path().join("data"));
    let out = tmp.path().join("run");
    let mut cfg = config(&data, &out, 4);
    cfg.save_every = 1;
    train(&cfg, None, false, Some(2)).unwrap();
    let ckpts = out.join("checkpoints");
    std::fs::write(ckpts.join("latest"), "step-00000009").unwrap();

    let err = format!("{:#}", train(&cfg, None, true, None).unwrap_err());
    let missing = ckpts.join("step-00000009");
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    // The intact checkpoints were not used instead, nor touched.
    assert_eq!(metric_lines(&out.join("metrics.jsonl")).len(), 3);
    assert!(ckpts.join("step-00000002").is_dir());

    // Starting over is the explicit way out: the old run is moved aside whole (nothing lost, and
    // its step-2 cannot crowd the new run out of keep-last-N), the log starts over.
    let losses = train(&cfg, None, false, Some(1)).unwrap();
    assert_eq!(losses.len(), 1);
    assert_eq!(
        diffugpt_training::checkpoint::latest(&ckpts).unwrap(),
        Some(ckpts.join("step-00000001"))
    );
    assert!(!ckpts.join("step-00000002").exists());
    let old = out.join("checkpoints.previous-1");
    assert!(old.join("step-00000002").is_dir(), "the old run is kept");
    assert_eq!(
        std::fs::read_to_string(old.join("latest")).unwrap(),
        "step-00000009"
    );
    assert_eq!(
        metric_lines(&out.join("metrics.jsonl")),
        BTreeMap::from([((1, "train"), 1)])
    );
    train(&cfg, None, true, None).unwrap();
    let lines = metric_lines(&out.join("metrics.jsonl"));
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert!(lines.values().all(|&n| n == 1), "{lines:?}");
}
