//! Decoding tests on hand-built models with known logits (`common::Table`): the positional
//! oracle, whose row r has a chosen argmax regardless of the tokens, pins the DiffuGPT shift, the
//! EoS-first cut, growth and the step schedule; a ranked model whose slots differ in top-1
//! probability, margin and entropy (and react to their left neighbour) pins the reveal order of
//! each strategy; many seeded random-keep runs pin its 1/(t+1) schedule within binomial bounds.

use std::path::PathBuf;

use diffugpt::{
    ConfidenceKind, Error, GenerateParams, Gpt2, LengthMode, LengthPredictor, LoadOptions, Model,
    SamplingParams, StepInfo, Steps, Strategy,
};

mod common;
use common::{
    answer_targets, oracle_model, ranked_table, Table, EOS, MASK, PAD, PROMPT, RANKED_ORDER,
};

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
        end_floor: 0.0,
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
    let m = oracle_model(EOS, None);
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
    let m = oracle_model(EOS, None);
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
    let m = oracle_model(PAD, Some(PAD));
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
    let m = oracle_model(PAD, None);
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
    let m = oracle_model(EOS, None);
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
    let m = oracle_model(EOS, None);
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
    let m = oracle_model(EOS, None);
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
    let m = oracle_model(EOS, None);
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
    let m = oracle_model(EOS, None);
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
    let m = oracle_model(EOS, None);
    let mut s = m_session(&m);
    let cases: Vec<(GenerateParams, &str)> = vec![
        (params(8, 0, LengthMode::Fixed), "steps"),
        (params(0, 8, LengthMode::Fixed), "canvas_len"),
        (params(80, 8, LengthMode::Fixed), "exceed"),
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

/// The canvas slots revealed at each step (in canvas order), as the step callback sees them.
fn reveal_steps(m: &Gpt2, p: &GenerateParams) -> Vec<Vec<usize>> {
    let mut before = vec![MASK; p.canvas_len];
    let mut steps = Vec::new();
    let mut cb = |i: &StepInfo| {
        let now: Vec<usize> = (0..i.canvas.len())
            .filter(|&j| i.canvas[j] != MASK && before.get(j).is_none_or(|&b| b == MASK))
            .collect();
        steps.push(now);
        before = i.canvas.to_vec();
        true
    };
    m_session(m).generate(&PROMPT, p, Some(&mut cb)).unwrap();
    steps
}

#[test]
fn each_strategy_reveals_its_surest_slot_first() {
    let m = ranked_table().build();
    let kinds = [
        ConfidenceKind::Prob,
        ConfidenceKind::Margin,
        ConfidenceKind::NegEntropy,
    ];
    for (kind, order) in kinds.into_iter().zip(RANKED_ORDER) {
        let p = GenerateParams {
            strategy: Strategy::Confidence(kind),
            ..params(6, 6, LengthMode::Fixed)
        };
        let got = reveal_steps(&m, &p);
        let want: Vec<Vec<usize>> = order.iter().map(|&j| vec![j]).collect();
        assert_eq!(got, want, "{kind:?}");
        let g = m_session(&m).generate(&PROMPT, &p, None).unwrap();
        assert_eq!(g.canvas, vec![10, 11, 12, 13, 14, 15], "{kind:?}");
    }
    // Two per step: the two surest slots go together.
    let p = params(6, 3, LengthMode::Fixed);
    assert_eq!(
        reveal_steps(&m, &p),
        vec![vec![1, 5], vec![0, 2], vec![3, 4]]
    );
}

#[test]
fn growth_adds_half_the_canvas_at_least_16_up_to_the_request() {
    // Answer of 55 tokens, then eos; the oracle predictor says 1, margin 0: cut to 2 slots.
    // Grows: 2 -> 18 (+16, the minimum) -> 34 (+16) -> 51 (+17, half) -> 60 (+9, the cap).
    // 30 steps planned for 60 slots: each growth by `add` slots re-plans ceil(30 * add / 60).
    let m = Table::argmax(&answer_targets(55, EOS)).build();
    let mut seen = Vec::new();
    let mut cb = |i: &StepInfo| {
        seen.push((i.canvas.len(), i.total_steps));
        true
    };
    let g = m_session(&m)
        .generate(
            &PROMPT,
            &params(60, 30, eos_first(LengthPredictor::Oracle(1), 0, true)),
            Some(&mut cb),
        )
        .unwrap();
    let mut want = vec![(18, 9); 8];
    want.extend([(34, 17); 8]);
    want.extend([(51, 26); 9]);
    want.extend([(60, 31); 6]);
    assert_eq!(seen, want);
    assert_eq!(g.stats.grow_events, 4);
    assert_eq!(g.stats.final_canvas_len, 60);
    assert_eq!(g.stats.steps, 31);
    assert_eq!(g.tokens, (10..65).collect::<Vec<u32>>());
    // Each pass runs on the canvas as it stood after the step before (the first on all of it).
    let mut sizes = vec![4 + 60];
    sizes.extend(want[..want.len() - 1].iter().map(|&(len, _)| 4 + len));
    assert_eq!(g.stats.forward_sizes, sizes);
}

#[test]
fn random_keep_reveals_each_masked_slot_with_probability_1_over_t_plus_1() {
    // 100 seeded runs of 60 slots in T = 4 steps. At step s (t = T - s counting down) every
    // masked slot is revealed with probability 1/(t+1); summed over runs, the reveals of a step
    // are binomial given the slots masked before it. Bound: 5 standard deviations (the seeds are
    // fixed, so the outcome is deterministic; the bound only keeps the test independent of them).
    const T: usize = 4;
    let m = oracle_model(EOS, None);
    let mut masked_before = [0usize; T];
    let mut revealed = [0usize; T];
    for seed in 0..100 {
        let p = GenerateParams {
            strategy: Strategy::RandomKeep,
            seed,
            ..params(60, T, LengthMode::Fixed)
        };
        let mut left = 60;
        let mut cb = |i: &StepInfo| {
            assert!(i.step <= T, "seed {seed}: step {} of {T}", i.step);
            masked_before[i.step - 1] += left;
            revealed[i.step - 1] += left - i.masked;
            left = i.masked;
            true
        };
        let g = m_session(&m).generate(&PROMPT, &p, Some(&mut cb)).unwrap();
        assert!(!g.canvas.contains(&MASK), "seed {seed}");
    }
    for s in 0..T - 1 {
        let (n, r) = (masked_before[s] as f64, revealed[s] as f64);
        let p = 1.0 / (T - s) as f64;
        let sd = (n * p * (1.0 - p)).sqrt();
        assert!(
            (r - n * p).abs() <= 5.0 * sd,
            "step {}: {r} of {n} revealed, expected {:.0} +- {:.0}",
            s + 1,
            n * p,
            5.0 * sd
        );
    }
    // The last step reveals everything left.
    assert!(masked_before[T - 1] > 0);
    assert_eq!(revealed[T - 1], masked_before[T - 1]);
}

/// The end floor: no end before the first slot whose step-1 end probability reaches q, however
/// sure the model is of an end there; the answer then ends at the floor at the earliest. On the
/// ramp model (p_end .02 .1 .25 .35 .45 .6 .9 .99, answer token 10 + j otherwise) greedy decoding
/// ends at slot 5 (its first end argmax); floors 0.5, 0.9 and 0.99 sit at slots 5, 6 and 7. The
/// same in both length modes.
#[test]
fn end_floor_keeps_ends_out_of_the_slots_before_it() {
    let m = common::ramp_table().build();
    let eos_first = LengthMode::EosFirst {
        predictor: LengthPredictor::Quantile(0.9),
        margin: 0,
        margin_ratio: 0.0,
        grow: false,
    };
    for length in [LengthMode::Fixed, eos_first] {
        for (q, floor, answer_len) in [(0.0, 0, 5), (0.5, 5, 5), (0.9, 6, 6), (0.99, 7, 7)] {
            let mut canvases = Vec::new();
            let mut cb = |s: &StepInfo| {
                canvases.push(s.canvas.to_vec());
                true
            };
            let p = GenerateParams {
                end_floor: q,
                ..params(8, 8, length)
            };
            let g = m_session(&m).generate(&PROMPT, &p, Some(&mut cb)).unwrap();
            let want: Vec<u32> = (10..10 + answer_len as u32).collect();
            assert_eq!(g.tokens, want, "{length:?} floor {q}");
            if length != LengthMode::Fixed {
                // The predictor's reading is reported as is; the cut keeps the floor's slot.
                assert_eq!(g.stats.predicted_len, Some(5), "floor {q}");
            }
            assert!(g.canvas.len() > floor, "floor {q}: canvas {:?}", g.canvas);
            for c in &canvases {
                assert!(
                    c[..floor.min(c.len())].iter().all(|&t| t != EOS),
                    "{length:?} floor {q}: an end before slot {floor} in {c:?}"
                );
            }
        }
    }
    // Out of range: refused.
    for q in [1.0, -0.1, f32::NAN] {
        let p = GenerateParams {
            end_floor: q,
            ..params(8, 8, LengthMode::Fixed)
        };
        assert!(matches!(
            m_session(&m).generate(&PROMPT, &p, None),
            Err(Error::Param(_))
        ));
    }
}
