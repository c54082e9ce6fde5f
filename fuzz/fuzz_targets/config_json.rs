//! The input (lossily decoded as UTF-8) is a config.json. Checks, none of which may panic or
//! allocate without bound:
//! * `HfConfig::parse`;
//! * the numbers the loader would derive from it (`ModelConfig::validate`, `param_count`,
//!   `SpecialIds::resolve`), and `HfConfig::from_model` -> JSON -> `parse` round trip for a
//!   config that validates;
//! * `weights::load_file` with the parsed config against two small committed checkpoints (the
//!   DiffuGPT f32 and GPT-2 bf16 parity fixtures), and a forward pass when that succeeds.
#![no_main]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use diffugpt::config::{
    Activation, HfConfig, ModelConfig, SpecialIdOverrides, SpecialIds, MAX_PARAMS,
};
use diffugpt::weights::{load_file, LoadOptions};
use libfuzzer_sys::fuzz_target;

fn weights() -> &'static [PathBuf; 2] {
    static W: OnceLock<[PathBuf; 2]> = OnceLock::new();
    W.get_or_init(|| {
        common::one_thread();
        [
            common::fixture("parity/diffugpt-f32/model.safetensors"),
            common::fixture("parity/gpt2-bf16/model.safetensors"),
        ]
    })
}

/// A ModelConfig from the config alone, with the loader's defaults where a key is missing.
fn derive(hf: &HfConfig, vocab_rows: usize) -> Option<ModelConfig> {
    let n_embd = hf.n_embd.unwrap_or(768);
    Some(ModelConfig {
        n_layer: hf.n_layer.unwrap_or(12),
        n_head: hf.n_head.unwrap_or(n_embd / 64),
        n_embd,
        n_inner: hf.n_inner.unwrap_or(n_embd.saturating_mul(4)),
        n_positions: hf.n_positions.unwrap_or(1024),
        vocab_size: vocab_rows,
        layer_norm_eps: hf.layer_norm_epsilon.unwrap_or(1e-5),
        activation: match &hf.activation_function {
            Some(a) => Activation::from_hf(a).ok()?,
            None => Activation::GeluTanh,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let files = weights();
    let text = String::from_utf8_lossy(data);
    let Ok(hf) = HfConfig::parse(&text) else {
        return;
    };

    // Numbers only (no tensors): everything the config can ask for must be validated or refused.
    let rows = hf.vocab_size.unwrap_or(50257);
    if let Some(cfg) = derive(&hf, rows) {
        let count = cfg.param_count();
        if cfg.validate().is_ok() {
            assert!(count <= MAX_PARAMS, "validate accepted {count} parameters");
            assert!(cfg.n_head > 0 && cfg.n_embd % cfg.n_head == 0);
            let _ = cfg.head_dim();
            if let Ok(ids) =
                SpecialIds::resolve(cfg.vocab_size, &hf, &SpecialIdOverrides::default())
            {
                assert!(
                    (ids.eos as usize) < cfg.vocab_size && (ids.mask as usize) < cfg.vocab_size
                );
                assert_ne!(ids.eos, ids.mask);
                // What `weights::save` writes must parse back to the same model.
                let back = HfConfig::from_model(&cfg, &ids);
                let json = serde_json::to_string_pretty(&back).expect("HfConfig serialises");
                let again = HfConfig::parse(&json).expect("our own config.json must parse");
                let mut cfg2 = derive(&again, cfg.vocab_size).expect("our own activation name");
                // serde_json (without `float_roundtrip`) may read an f64 back 1 ulp off.
                let (a, b) = (cfg.layer_norm_eps, cfg2.layer_norm_eps);
                assert!((a - b).abs() <= a.abs() * 1e-15, "eps {a} came back as {b}");
                cfg2.layer_norm_eps = a;
                assert_eq!(cfg, cfg2, "config.json round trip changed the model");
                let ids2 =
                    SpecialIds::resolve(cfg.vocab_size, &again, &SpecialIdOverrides::default())
                        .expect("our own ids must resolve");
                assert_eq!(ids, ids2, "config.json round trip changed the special ids");
            }
        }
    }
    let _ = SpecialIds::resolve(rows, &hf, &SpecialIdOverrides::default());

    // The loader path with real tensors.
    for w in files {
        let opts = LoadOptions {
            check_finite: true,
            ..Default::default()
        };
        let res = load_file(w, &hf, true, opts);
        if common::verbose() {
            eprintln!("{}: {:?}", w.display(), res.as_ref().err());
        }
        if let Ok((gpt, _)) = res {
            gpt.cfg
                .validate()
                .expect("loader returned an invalid config");
            gpt.ids
                .validate(gpt.cfg.vocab_size)
                .expect("loader returned bad special ids");
            common::smoke_forward(&gpt);
        }
    }
});
