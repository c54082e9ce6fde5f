//! End to end on a small fixture corpus: prepare -> ARM training from scratch -> diffusion
//! adaptation -> eospad fine-tuning (vocabulary extension) -> mask-EoS fine-tuning, each for a few
//! steps with a falling validation loss; exact resume; the final model loads in the core and
//! generates. (Crash safety under SIGKILL: `crash_safety.rs`.)

use diffugpt::{GenerateParams, LoadOptions, Model};
use diffugpt_training::config::{BackendKind, Init, Pipeline, TrainConfig};
use diffugpt_training::data::Kind;
use diffugpt_training::dataset::Dataset;
use diffugpt_training::prepare::PadVariant;
use diffugpt_training::train::{evaluate, train};

mod common;
use common::{config, prep, root};

/// Validation loss of the model a config starts from vs the model it produced.
fn val_loss_before_after(cfg: &TrainConfig) -> (f64, f64) {
    let data = Dataset::open(cfg.val_data.as_ref().unwrap(), cfg.pipeline).unwrap();
    let before = {
        let d = Dataset::open(&cfg.train_data, cfg.pipeline).unwrap();
        let m = diffugpt_training::train::initial_model(cfg, &d).unwrap();
        let t = diffugpt_training::train::make_trainable(&m, cfg).unwrap();
        evaluate(&t.model, cfg.pipeline, &data, cfg, cfg.steps)
            .unwrap()
            .val_loss
    };
    let (m, _) =
        diffugpt::weights::load(&cfg.out_dir.join("final"), LoadOptions::default()).unwrap();
    let after = evaluate(&m, cfg.pipeline, &data, cfg, cfg.steps)
        .unwrap()
        .val_loss;
    (before, after)
}

#[test]
fn prepare_arm_diffusion_eospad_maskeos_then_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let stream = prep(&t.join("stream"), Kind::Stream, PadVariant::EosEos);
    let padded = prep(&t.join("eospad"), Kind::Padded, PadVariant::EosPad);
    let maskeos = prep(&t.join("maskeos"), Kind::MaskEos, PadVariant::EosPad);

    let scratch = Init::Scratch {
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        n_positions: 64,
    };
    let arm = config(Pipeline::Arm, scratch, &stream, &t.join("arm"), 8);
    let losses = train(&arm, None, false, None).unwrap();
    assert_eq!(losses.len(), 8);
    let (b, a) = val_loss_before_after(&arm);
    assert!(a < b, "ARM val loss {b} -> {a}");
    // Metrics were logged every step and plot to readable PNGs.
    let lines = std::fs::read_to_string(arm.out_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"loss\"")).count(), 8);
    let pngs = diffugpt_training::plot::plot_metrics(&arm.out_dir, None).unwrap();
    assert_eq!(pngs.len(), 2);
    for p in pngs {
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{}",
            p.display()
        );
    }

    let from = |c: &TrainConfig| Init::Checkpoint {
        path: c.out_dir.join("final"),
    };
    let diff = config(Pipeline::Diffusion, from(&arm), &stream, &t.join("diff"), 8);
    train(&diff, None, false, None).unwrap();
    let (b, a) = val_loss_before_after(&diff);
    assert!(a < b, "diffusion val loss {b} -> {a}");

    let pad = config(Pipeline::Diffusion, from(&diff), &padded, &t.join("pad"), 8);
    train(&pad, None, false, None).unwrap();
    let (b, a) = val_loss_before_after(&pad);
    assert!(a < b, "eospad val loss {b} -> {a}");

    let me = config(
        Pipeline::MaskEos,
        from(&pad),
        &maskeos,
        &t.join("maskeos-run"),
        8,
    );
    train(&me, None, false, None).unwrap();
    let (b, a) = val_loss_before_after(&me);
    assert!(a < b, "mask-eos val loss {b} -> {a}");

    // The final model: vocabulary extended with pad 50257, loads in the core and generates.
    let dir = me.out_dir.join("final");
    std::fs::copy(
        root().join("tests/fixtures/tiny-diffugpt/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let model = Model::load(&dir, LoadOptions::default()).unwrap();
    assert_eq!(model.gpt.cfg.vocab_size, 50258);
    assert_eq!(model.gpt.ids.pad, Some(50257));
    assert_eq!(model.gpt.ids.mask, 10541);
    let out = model
        .generate_text(
            "A fortune",
            &GenerateParams {
                canvas_len: 16,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(out.generation.stats.forward_passes >= 1);
}

#[test]
fn resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let padded = prep(&tmp.path().join("d"), Kind::Padded, PadVariant::EosEos);
    let scratch = Init::Scratch {
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        n_positions: 64,
    };
    let straight = config(
        Pipeline::Diffusion,
        scratch.clone(),
        &padded,
        &tmp.path().join("a"),
        6,
    );
    let all = train(&straight, None, false, None).unwrap();
    let split = config(
        Pipeline::Diffusion,
        scratch,
        &padded,
        &tmp.path().join("b"),
        6,
    );
    let first = train(&split, None, false, Some(3)).unwrap();
    let rest = train(&split, None, true, None).unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(
        [first, rest].concat(),
        all,
        "losses after resume must be identical"
    );
    let load = |c: &TrainConfig| {
        candle_core::safetensors::load(
            c.out_dir.join("final/model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (a, b) = (load(&straight), load(&split));
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
        assert!(va == vb, "final weights differ in {name}");
    }
}

/// A run checkpointed by one backend resumes on the other (same checkpoint format), and the two
/// backends train the same way: the first steps' losses agree closely.
#[test]
fn checkpoints_resume_across_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let padded = prep(&tmp.path().join("d"), Kind::Padded, PadVariant::EosEos);
    let scratch = Init::Scratch {
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        n_positions: 64,
    };
    for (first, then) in [
        (BackendKind::Candle, BackendKind::Engine),
        (BackendKind::Engine, BackendKind::Candle),
    ] {
        let out = tmp.path().join(format!("{first:?}"));
        let mut cfg = config(Pipeline::Diffusion, scratch.clone(), &padded, &out, 4);
        cfg.val_data = None;
        cfg.backend = first;
        let a = train(&cfg, None, false, Some(2)).unwrap();
        cfg.backend = then;
        let b = train(&cfg, None, true, None).unwrap();
        assert_eq!((a.len(), b.len()), (2, 2));
        assert!(b.iter().all(|l| l.is_finite()));
        assert!(out.join("final/model.safetensors").exists());
    }
    let losses = |backend| {
        let mut cfg = config(
            Pipeline::Diffusion,
            scratch.clone(),
            &padded,
            &tmp.path().join(format!("x{backend:?}")),
            3,
        );
        cfg.val_data = None;
        cfg.backend = backend;
        train(&cfg, None, false, None).unwrap()
    };
    let (c, e) = (losses(BackendKind::Candle), losses(BackendKind::Engine));
    for (x, y) in c.iter().zip(&e) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "candle {c:?} vs engine {e:?}"
        );
    }
}

#[test]
fn example_configs_parse_and_unknown_fields_are_rejected() {
    let dir = root().join("training/configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            TrainConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            n += 1;
        }
    }
    assert_eq!(n, 5);
    let tmp = tempfile::tempdir().unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("arm.json")).unwrap()).unwrap();
    v["optim"]["max_lr_typo"] = 1.0.into();
    let p = tmp.path().join("bad.json");
    std::fs::write(&p, v.to_string()).unwrap();
    let err = format!("{:#}", TrainConfig::load(&p).unwrap_err());
    assert!(err.contains("unknown field `max_lr_typo`"), "{err}");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("arm.json")).unwrap()).unwrap();
    v["optim"]["betas"] = serde_json::json!([0.9, 1.5]);
    std::fs::write(&p, v.to_string()).unwrap();
    let err = format!("{:#}", TrainConfig::load(&p).unwrap_err());
    assert!(err.contains("betas"), "{err}");
}
