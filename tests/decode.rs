//! Decoding tests on a hand-built "positional oracle" model whose logits at row r have a chosen
//! argmax T(r) regardless of the tokens (all blocks are identity, the token embedding is zero,
//! position r is the one-hot e_r and the untied head maps e_r to T(r)). With it the DiffuGPT shift,
//! the EoS-first cut, growth and the step schedule have exact expected outputs.

use std::path::PathBuf;

use candle_core::Device;
use diffugpt::config::{ModelConfig, SpecialIds};
use diffugpt::{
    ConfidenceKind, Error, GenerateParams, Gpt2, LengthMode, LengthPredictor, LoadOptions, Model,
    SamplingParams, StepInfo, Steps, Strategy,
};

const V: usize = 97;
const E: usize = 32;
const EOS: u32 = 96;
const MASK: u32 = 95;
const PAD: u32 = 94;

/// `targets[r]` is the argmax token of logits row r (rows beyond the list: token 0).
fn oracle_model(targets: &[u32], pad: Option<u32>) -> Gpt2 {
    let cfg = ModelConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: E,
        n_inner: 4 * E,
        n_positions: E,
        vocab_size: V,
        ..ModelConfig::tiny(V)
    };
    let ids = SpecialIds {
        eos: EOS,
        mask: MASK,
        pad,
    };
    Gpt2::from_fill(cfg, ids, true, &Device::Cpu, |name, data| match name {
        "wpe.weight" => (0..E).for_each(|r| data[r * E + r] = 10.0),
        "lm_head.weight" => {
            for (r, &t) in targets.iter().enumerate() {
                data[t as usize * E + r] = 10.0;
            }
        }
        n if n.contains("ln") && n.ends_with("weight") => data.fill(1.0),
        _ => {}
    })
    .unwrap()
}

/// Prompt [1, 2, 3] -> prefix [EOS, 1, 2, 3]: canvas slot j is read from row 3 + j.
/// Answer: 10, 11, 12, 13, 14, then `end` for the rest.
fn answer_targets(end: u32) -> Vec<u32> {
    let mut t = vec![0u32; E];
    for j in 0..E - 3 {
        t[3 + j] = if j < 5 { 10 + j as u32 } else { end };
    }
    t
}

const PROMPT: [u32; 3] = [1, 2, 3];
const ANSWER: [u32; 5] = [10, 11, 12, 13, 14];

fn params(canvas: usize, steps: usize, length: LengthMode) -> GenerateParams {
    GenerateParams {
        canvas_len: canvas,
        steps: Steps::Fixed(steps),
        strategy: Strategy::Confidence(ConfidenceKind::Prob),
        sampling: SamplingParams::default(),
        length,
        seed: 0,
        ban_mask: true,
        memory_limit: diffugpt::decode::DEFAULT_MEMORY_LIMIT,
    }
}

fn eos_first(predictor: LengthPredictor, margin: usize, grow: bool) -> LengthMode {
    LengthMode::EosFirst {
        predictor,
        margin,
        margin_ratio: 0.0,
        grow,
    }
}

#[test]
fn fixed_length_applies_the_diffugpt_shift() {
    let m = oracle_model(&answer_targets(EOS), None);
    let g = m_session(&m)
        .generate(&PROMPT, &params(8, 8, LengthMode::Fixed), None)
        .unwrap();
    assert_eq!(g.canvas, vec![10, 11, 12, 13, 14, EOS, EOS, EOS]);
    assert_eq!(g.tokens, ANSWER);
    assert_eq!(g.stats.final_len, 5);
    assert_eq!(g.stats.predicted_len, None);
    assert_eq!(g.stats.forward_sizes, vec![12; 8]);
}

fn m_session(m: &Gpt2) -> diffugpt::Session<'_> {
    diffugpt::Session::new(m)
}

#[test]
fn eos_first_cuts_the_canvas_and_scales_steps() {
    let m = oracle_model(&answer_targets(EOS), None);
    for pred in [
        LengthPredictor::ArgmaxFirst,
        LengthPredictor::Threshold(0.5),
        LengthPredictor::Quantile(0.9),
    ] {
        let g = m_session(&m)
            .generate(&PROMPT, &params(20, 20, eos_first(pred, 2, true)), None)
            .unwrap();
        assert_eq!(g.stats.predicted_len, Some(5), "{pred:?}");
        assert_eq!(g.tokens, ANSWER);
        // 5 answer slots + 1 end + margin 2.
        assert_eq!(g.stats.final_canvas_len, 8);
        // First pass on the full canvas, then 8 steps planned for the cut canvas (20 * 8 / 20).
        assert_eq!(g.stats.forward_sizes[0], 4 + 20);
        assert!(g.stats.forward_sizes[1..].iter().all(|&s| s == 4 + 8));
        assert_eq!(g.stats.forward_passes, 8);
        assert_eq!(g.stats.grow_events, 0);
    }
}

#[test]
fn pad_counts_as_an_end() {
    let m = oracle_model(&answer_targets(PAD), Some(PAD));
    let g = m_session(&m)
        .generate(
            &PROMPT,
            &params(12, 12, eos_first(LengthPredictor::ArgmaxFirst, 1, true)),
            None,
        )
        .unwrap();
    assert_eq!(g.stats.predicted_len, Some(5));
    assert_eq!(g.tokens, ANSWER);
    // Without the pad id the same model has no end: nothing is cut.
    let m = oracle_model(&answer_targets(PAD), None);
    let g = m_session(&m)
        .generate(
            &PROMPT,
            &params(12, 12, eos_first(LengthPredictor::ArgmaxFirst, 1, true)),
            None,
        )
        .unwrap();
    assert_eq!(g.stats.predicted_len, None);
    assert_eq!(g.stats.final_canvas_len, 12);
}

#[test]
fn underestimated_length_grows_the_canvas_back() {
    let m = oracle_model(&answer_targets(EOS), None);
    // Oracle says 1 token: cut to 2 slots; both fill with non-end tokens -> grow.
    let g = m_session(&m)
        .generate(
            &PROMPT,
            &params(24, 24, eos_first(LengthPredictor::Oracle(1), 0, true)),
            None,
        )
        .unwrap();
    assert_eq!(g.stats.predicted_len, Some(1));
    assert!(g.stats.grow_events >= 1);
    assert_eq!(g.tokens, ANSWER);
    assert!(g.stats.final_canvas_len > 2 && g.stats.final_canvas_len <= 24);
    // Without growth the answer is truncated to the cut canvas.
    let g = m_session(&m)
        .generate(
            &PROMPT,
            &params(24, 24, eos_first(LengthPredictor::Oracle(1), 0, false)),
            None,
        )
        .unwrap();
    assert_eq!(g.stats.grow_events, 0);
    assert_eq!(g.canvas, vec![10, 11]);
}

#[test]
fn confidence_schedule_reveals_evenly_and_callback_sees_it() {
    let m = oracle_model(&answer_targets(EOS), None);
    let mut masked = Vec::new();
    let mut totals = Vec::new();
    let mut cb = |i: &StepInfo| {
        masked.push(i.masked);
        totals.push((i.step, i.total_steps));
        assert_eq!(i.canvas.len(), 8);
        true
    };
    let g = m_session(&m)
        .generate(&PROMPT, &params(8, 4, LengthMode::Fixed), Some(&mut cb))
        .unwrap();
    assert_eq!(masked, vec![6, 4, 2, 0]);
    assert_eq!(totals, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert_eq!(g.stats.steps, 4);
}

#[test]
fn callback_can_cancel() {
    let m = oracle_model(&answer_targets(EOS), None);
    let mut cb = |i: &StepInfo| i.step < 2;
    let g = m_session(&m)
        .generate(&PROMPT, &params(8, 8, LengthMode::Fixed), Some(&mut cb))
        .unwrap();
    assert!(g.stats.cancelled);
    assert_eq!(g.stats.steps, 2);
    assert!(g.canvas.contains(&MASK));
}

#[test]
fn random_keep_reaches_the_same_greedy_answer_in_at_most_the_steps() {
    let m = oracle_model(&answer_targets(EOS), None);
    for seed in 0..5 {
        let mut p = params(10, 6, LengthMode::Fixed);
        p.strategy = Strategy::RandomKeep;
        p.seed = seed;
        let g = m_session(&m).generate(&PROMPT, &p, None).unwrap();
        assert_eq!(g.tokens, ANSWER);
        assert!(g.stats.forward_passes <= 6);
    }
}

#[test]
fn arm_generation_with_kv_cache() {
    let m = oracle_model(&answer_targets(EOS), None);
    let g = m_session(&m)
        .generate_causal(&PROMPT, 20, SamplingParams::default(), 0, None)
        .unwrap();
    assert_eq!(g.tokens, ANSWER);
    // One pass for the prefix, then one per token (the eos ends it).
    assert_eq!(g.stats.forward_sizes, vec![4, 1, 1, 1, 1, 1]);
    let g = m_session(&m)
        .generate_causal(&PROMPT, 3, SamplingParams::default(), 0, None)
        .unwrap();
    assert_eq!(g.tokens, &ANSWER[..3]);
}

#[test]
fn bad_parameters_are_refused() {
    let m = oracle_model(&answer_targets(EOS), None);
    let mut s = m_session(&m);
    let cases: Vec<(GenerateParams, &str)> = vec![
        (params(8, 0, LengthMode::Fixed), "steps"),
        (params(0, 8, LengthMode::Fixed), "canvas_len"),
        (params(40, 8, LengthMode::Fixed), "exceed"),
        (
            GenerateParams {
                sampling: SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                ..params(8, 8, LengthMode::Fixed)
            },
            "temperature",
        ),
        (
            GenerateParams {
                sampling: SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                ..params(8, 8, LengthMode::Fixed)
            },
            "top_p",
        ),
        (
            GenerateParams {
                steps: Steps::PerToken(f32::INFINITY),
                ..params(8, 8, LengthMode::Fixed)
            },
            "steps per token",
        ),
        (
            params(8, 8, eos_first(LengthPredictor::Quantile(1.0), 0, true)),
            "quantile",
        ),
    ];
    for (p, key) in cases {
        match s.generate(&PROMPT, &p, None) {
            Err(Error::Param(msg)) => assert!(msg.contains(key), "{msg} vs {key}"),
            other => panic!("{key}: expected a Param error, got {other:?}"),
        }
    }
    assert!(matches!(
        s.generate(&[500], &params(8, 8, LengthMode::Fixed), None),
        Err(Error::Prompt(_))
    ));
    assert!(matches!(
        s.generate_causal(&PROMPT, 0, SamplingParams::default(), 0, None),
        Err(Error::Param(_))
    ));
}

fn fixture_model() -> Model {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-diffugpt");
    Model::load(&p, LoadOptions::default()).unwrap()
}

fn sampled(seed: u64) -> GenerateParams {
    GenerateParams {
        canvas_len: 24,
        steps: Steps::Fixed(12),
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.2,
        },
        seed,
        ..Default::default()
    }
}

#[test]
fn seeded_sampling_is_reproducible_on_the_fixture_model() {
    let m = fixture_model();
    let a = m.generate_text("Hello world", &sampled(7)).unwrap();
    let b = m.generate_text("Hello world", &sampled(7)).unwrap();
    let c = m.generate_text("Hello world", &sampled(8)).unwrap();
    assert_eq!(a.generation.canvas, b.generation.canvas);
    assert_eq!(a.text, b.text);
    assert_ne!(a.generation.canvas, c.generation.canvas);
    // Empty prompt: unconditional generation from the BOS alone.
    let u = m.session().generate(&[], &sampled(1), None).unwrap();
    assert_eq!(u.canvas.len(), 24);
    assert!(!u.canvas.contains(&m.gpt.ids.mask));
}

#[test]
fn shared_model_across_threads_matches_serial() {
    let m = fixture_model();
    let serial: Vec<_> = (0..4)
        .map(|s| {
            m.session()
                .generate(&[15496, 995], &sampled(s), None)
                .unwrap()
                .canvas
        })
        .collect();
    let parallel: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|s| {
                let m = &m;
                sc.spawn(move || {
                    m.session()
                        .generate(&[15496, 995], &sampled(s), None)
                        .unwrap()
                        .canvas
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(serial, parallel);
}

#[test]
fn tokenizer_fixture_has_gpt2_ids() {
    let m = fixture_model();
    let t = m.tokenizer().unwrap();
    assert_eq!(t.encode("Hello world").unwrap(), vec![15496, 995]);
    assert_eq!(t.decode(&[15496, 995], true).unwrap(), "Hello world");
    assert_eq!(t.vocab_size(), 50257);
}
