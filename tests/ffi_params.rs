//! Every field of the C params structs reaches the library: each test loads a hand-built model
//! with known logits (`common::Table`) through `dgpt_model_load`, generates with
//! `dgpt_generate_tokens`, and checks an output that changes when the field is ignored or
//! swapped with another (the margin pair, the predictor value and the oracle length, the
//! strategy constants).

use std::ffi::{c_void, CStr, CString};
use std::path::Path;
use std::ptr::null_mut;

use diffugpt::ffi::dgpt_status::*;
use diffugpt::ffi::*;

mod common;
use common::{
    ids_table, oracle_model, ramp_table, ranked_table, sampling_table, save_model, Table, EOS,
    MASK, PROMPT, RANKED_ORDER,
};

fn last_error() -> String {
    // SAFETY: dgpt_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(dgpt_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn saved(table: &Table) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    save_model(&table.build(), dir.path());
    dir
}

fn load(dir: &Path, p: &dgpt_model_params) -> Result<*mut dgpt_model, (dgpt_status, String)> {
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    let mut m = null_mut();
    // SAFETY: valid path, params and out pointer.
    let st = unsafe { dgpt_model_load(path.as_ptr(), p, &mut m) };
    if st == DGPT_OK {
        Ok(m)
    } else {
        Err((st, last_error()))
    }
}

/// What one generation reports.
#[derive(Debug)]
struct Out {
    tokens: Vec<u32>,
    stats: dgpt_stats,
    /// The canvas after each step (from the step callback).
    canvases: Vec<Vec<u32>>,
}

unsafe extern "C" fn record(
    _step: u32,
    _total: u32,
    canvas: *const u32,
    len: usize,
    user: *mut c_void,
) -> bool {
    let seen = &mut *(user as *mut Vec<Vec<u32>>);
    seen.push(std::slice::from_raw_parts(canvas, len).to_vec());
    true
}

/// Generates from `prompt` with `p` (its step callback records every canvas).
fn generate_on(
    m: *mut dgpt_model,
    prompt: &[u32],
    p: &dgpt_generate_params,
) -> Result<Out, (dgpt_status, String)> {
    let mut canvases: Vec<Vec<u32>> = Vec::new();
    let mut p = *p;
    p.step_callback = Some(record);
    p.step_user_data = &mut canvases as *mut _ as *mut c_void;
    let mut s = null_mut();
    let mut r = null_mut();
    // SAFETY: `m` comes from dgpt_model_load; every pointer is valid for the calls; the result
    // and session are freed here.
    unsafe {
        assert_eq!(dgpt_session_new(m, &mut s), DGPT_OK, "{}", last_error());
        let st = dgpt_generate_tokens(s, prompt.as_ptr(), prompt.len(), &p, &mut r);
        dgpt_session_free(s);
        if st != DGPT_OK {
            return Err((st, last_error()));
        }
        let mut n = 0;
        let t = dgpt_result_tokens(r, &mut n);
        let tokens = std::slice::from_raw_parts(t, n).to_vec();
        let mut stats = dgpt_stats::default();
        assert_eq!(dgpt_result_stats(r, &mut stats), DGPT_OK);
        dgpt_result_free(r);
        Ok(Out {
            tokens,
            stats,
            canvases,
        })
    }
}

/// Loads `dir` with default model params and generates from [`PROMPT`] with `p`.
fn generate(dir: &Path, p: &dgpt_generate_params) -> Out {
    let m = load(dir, &dgpt_model_default_params()).unwrap();
    let out = generate_on(m, &PROMPT, p).unwrap_or_else(|e| panic!("{e:?}"));
    // SAFETY: from dgpt_model_load.
    unsafe { dgpt_model_free(m) };
    out
}

fn params(canvas: u32) -> dgpt_generate_params {
    dgpt_generate_params {
        canvas_len: canvas,
        ..dgpt_generate_default_params()
    }
}

fn fixed(canvas: u32) -> dgpt_generate_params {
    dgpt_generate_params {
        length_mode: DGPT_LENGTH_FIXED,
        ..params(canvas)
    }
}

#[test]
fn margin_fields_are_not_swapped() {
    let dir = saved(&oracle_cut_table());
    let cut = |margin: u32, ratio: f32| {
        let p = dgpt_generate_params {
            predictor: DGPT_PREDICTOR_ARGMAX,
            margin,
            margin_ratio: ratio,
            ..params(24)
        };
        let o = generate(dir.path(), &p);
        assert_eq!(o.stats.predicted_len, 5);
        assert_eq!(o.tokens, [10, 11, 12, 13, 14]);
        o.stats.final_canvas_len
    };
    // 5 + 1 + max(margin, ceil(ratio * 5)); swapped: 21 and 7.
    assert_eq!(cut(3, 0.0), 9);
    assert_eq!(cut(0, 1.0), 11);
}

/// The positional oracle (answer 10..15, then eos) as a table.
fn oracle_cut_table() -> Table {
    Table::argmax(&common::answer_targets(5, EOS))
}

#[test]
fn predictor_value_and_oracle_len() {
    let dir = saved(&ramp_table());
    let predicted = |predictor: u32, value: f32, oracle_len: u32| {
        let p = dgpt_generate_params {
            predictor,
            predictor_value: value,
            oracle_len,
            grow: false,
            ..params(12)
        };
        generate(dir.path(), &p).stats.predicted_len
    };
    assert_eq!(predicted(DGPT_PREDICTOR_ARGMAX, 0.4, 7), 5);
    assert_eq!(predicted(DGPT_PREDICTOR_THRESHOLD, 0.4, 7), 4);
    assert_eq!(predicted(DGPT_PREDICTOR_THRESHOLD, 0.2, 7), 2);
    assert_eq!(predicted(DGPT_PREDICTOR_QUANTILE, 0.4, 7), 3);
    assert_eq!(predicted(DGPT_PREDICTOR_QUANTILE, 0.95, 7), 6);
    assert_eq!(predicted(DGPT_PREDICTOR_ORACLE, 0.4, 7), 7);
    assert_eq!(predicted(DGPT_PREDICTOR_ORACLE, 0.4, 3), 3);
}

#[test]
fn length_mode_grow_canvas_and_steps() {
    let dir = saved(&oracle_cut_table());
    let oracle1 = |grow: bool| dgpt_generate_params {
        predictor: DGPT_PREDICTOR_ORACLE,
        oracle_len: 1,
        margin: 0,
        margin_ratio: 0.0,
        grow,
        // Off: the floor (at the true end, 5) would keep the cut from undershooting.
        end_floor: 0.0,
        ..params(24)
    };
    let o = generate(dir.path(), &oracle1(true));
    assert!(o.stats.grow_events >= 1);
    assert_eq!(o.tokens, [10, 11, 12, 13, 14]);
    let o = generate(dir.path(), &oracle1(false));
    assert_eq!(o.stats.grow_events, 0);
    assert_eq!(o.tokens, [10, 11]);
    let o = generate(dir.path(), &fixed(24));
    assert_eq!(o.stats.predicted_len, -1);
    assert_eq!((o.stats.canvas_len, o.stats.final_canvas_len), (24, 24));
    let steps = |steps: u32, per_token: f32| {
        let p = dgpt_generate_params {
            steps,
            steps_per_token: per_token,
            ..fixed(8)
        };
        generate(dir.path(), &p).stats.steps
    };
    assert_eq!(steps(0, 1.0), 8);
    assert_eq!(steps(3, 1.0), 3);
    assert_eq!(steps(0, 0.5), 4);
    assert_eq!(steps(0, 0.25), 2);
}

#[test]
fn strategy_constants_pick_their_order() {
    let dir = saved(&ranked_table());
    for (strategy, order) in [
        DGPT_STRATEGY_CONFIDENCE,
        DGPT_STRATEGY_MARGIN,
        DGPT_STRATEGY_ENTROPY,
    ]
    .into_iter()
    .zip(RANKED_ORDER)
    {
        let p = dgpt_generate_params {
            strategy,
            steps: 6,
            ..fixed(6)
        };
        let o = generate(dir.path(), &p);
        let mut before = vec![MASK; 6];
        let got: Vec<usize> = o
            .canvases
            .iter()
            .map(|c| {
                let j = (0..6).find(|&j| c[j] != MASK && before[j] == MASK).unwrap();
                before = c.clone();
                j
            })
            .collect();
        assert_eq!(got, order, "strategy {strategy}");
    }
    // Random keep reveals a different number of slots per step than the one-per-step schedule.
    let p = dgpt_generate_params {
        strategy: DGPT_STRATEGY_RANDOM,
        steps: 6,
        seed: 3,
        ..fixed(6)
    };
    let o = generate(dir.path(), &p);
    let masked: Vec<usize> = o
        .canvases
        .iter()
        .map(|c| c.iter().filter(|&&t| t == MASK).count())
        .collect();
    assert_ne!(masked, [5, 4, 3, 2, 1, 0]);
}

#[test]
fn sampling_fields() {
    let dir = saved(&sampling_table());
    let tokens = |f: &dyn Fn(&mut dgpt_generate_params), prompt: &[u32]| {
        let mut p = fixed(8);
        f(&mut p);
        let m = load(dir.path(), &dgpt_model_default_params()).unwrap();
        let o = generate_on(m, prompt, &p).unwrap();
        // SAFETY: from dgpt_model_load.
        unsafe { dgpt_model_free(m) };
        o.tokens
    };
    let greedy = vec![20u32; 8];
    assert_eq!(tokens(&|_| {}, &PROMPT), greedy);
    let hot = |seed: u64| {
        move |p: &mut dgpt_generate_params| {
            p.temperature = 5.0;
            p.seed = seed;
        }
    };
    let a = tokens(&hot(1), &PROMPT);
    assert_ne!(a, greedy);
    assert_eq!(tokens(&hot(1), &PROMPT), a);
    assert_ne!(tokens(&hot(2), &PROMPT), a);
    let top_k = |p: &mut dgpt_generate_params| {
        hot(1)(p);
        p.top_k = 1;
    };
    assert_eq!(tokens(&top_k, &PROMPT), greedy);
    let top_p = |p: &mut dgpt_generate_params| {
        hot(1)(p);
        p.top_p = 0.01;
    };
    assert_eq!(tokens(&top_p, &PROMPT), greedy);
    let penalised = tokens(&|p| p.repetition_penalty = 2.0, &[20, 2, 3]);
    assert_eq!(penalised[0], 21);
    assert_eq!(tokens(&|_| {}, &[20, 2, 3]), greedy);
}

#[test]
fn ban_mask_arm_and_memory_limit() {
    let dir = saved(&ids_table(None));
    let p = dgpt_generate_params {
        length_mode: DGPT_LENGTH_FIXED,
        ..params(12)
    };
    assert_eq!(generate(dir.path(), &p).tokens[0], 20);
    let allow = dgpt_generate_params {
        ban_mask: false,
        ..p
    };
    assert_eq!(generate(dir.path(), &allow).tokens[0], 95);
    // ARM: the prefix once, then one position per token (causal, KV cache).
    let dir = tempfile::tempdir().unwrap();
    save_model(&oracle_model(EOS, None), dir.path());
    let arm = dgpt_generate_params { arm: true, ..p };
    let o = generate(dir.path(), &arm);
    assert_eq!(o.tokens, [10, 11, 12, 13, 14]);
    assert_eq!(o.stats.positions_processed, 4 + 5);
    let m = load(dir.path(), &dgpt_model_default_params()).unwrap();
    let tight = dgpt_generate_params {
        memory_limit_bytes: 1000,
        ..p
    };
    assert_eq!(
        generate_on(m, &PROMPT, &tight).unwrap_err().0,
        DGPT_ERR_MEMORY
    );
    // SAFETY: from dgpt_model_load.
    unsafe { dgpt_model_free(m) };
}

/// Loads `dir` with `f` applied to the default model params and generates (argmax predictor).
fn with_ids(dir: &Path, f: impl Fn(&mut dgpt_model_params)) -> (i64, Vec<u32>) {
    let mut mp = dgpt_model_default_params();
    f(&mut mp);
    let m = load(dir, &mp).unwrap_or_else(|e| panic!("{e:?}"));
    let p = dgpt_generate_params {
        predictor: DGPT_PREDICTOR_ARGMAX,
        grow: false,
        ..params(12)
    };
    let o = generate_on(m, &PROMPT, &p).unwrap();
    // SAFETY: from dgpt_model_load.
    unsafe { dgpt_model_free(m) };
    (o.stats.predicted_len, o.tokens)
}

#[test]
fn model_params_special_ids() {
    let dir = saved(&ids_table(None));
    let answer = |first: u32, more: &[u32]| {
        let mut a = vec![first, 11, 12, 13, 14];
        a.extend_from_slice(more);
        a
    };
    assert_eq!(with_ids(dir.path(), |_| {}), (7, answer(20, &[94, 93])));
    assert_eq!(
        with_ids(dir.path(), |p| p.pad_id = 94),
        (5, answer(20, &[]))
    );
    assert_eq!(
        with_ids(dir.path(), |p| p.eos_id = 93),
        (6, answer(20, &[94]))
    );
    assert_eq!(
        with_ids(dir.path(), |p| p.mask_id = 11),
        (7, vec![95, 0, 12, 13, 14, 94, 93])
    );
    // A model that declares pad 94: -1 keeps it, -2 removes it.
    let dir = saved(&ids_table(Some(94)));
    assert_eq!(with_ids(dir.path(), |_| {}), (5, answer(20, &[])));
    assert_eq!(
        with_ids(dir.path(), |p| p.pad_id = -1),
        (5, answer(20, &[]))
    );
    assert_eq!(
        with_ids(dir.path(), |p| p.pad_id = -2),
        (7, answer(20, &[94, 93]))
    );
}

#[test]
fn model_params_tokenizer_check_finite_and_dtype() {
    let dir = saved(&oracle_cut_table());
    let missing = CString::new(dir.path().join("absent.json").to_str().unwrap()).unwrap();
    let mut p = dgpt_model_default_params();
    p.tokenizer_path = missing.as_ptr();
    let (_, msg) = load(dir.path(), &p).unwrap_err();
    assert!(msg.contains("absent.json"), "{msg}");
    // Unknown dtypes, and int8 on the GPU, are refused, not ignored.
    let mut p = dgpt_model_default_params();
    p.dtype = 3;
    let (_, msg) = load(dir.path(), &p).unwrap_err();
    assert!(msg.contains("dtype 3"), "{msg}");
    p.dtype = 2;
    p.device = 1;
    let (_, msg) = load(dir.path(), &p).unwrap_err();
    assert!(msg.contains("dtype 2"), "{msg}");
    // bf16 on the CPU: bf16 weights where our kernels run, a clear refusal where they do not.
    let mut p = dgpt_model_default_params();
    p.dtype = 1;
    match load(dir.path(), &p) {
        // SAFETY: from dgpt_model_load.
        Ok(m) => unsafe { dgpt_model_free(m) },
        Err((_, msg)) => {
            assert!(!diffugpt::cpu_gemm::available(), "{msg}");
            assert!(msg.contains("kernels"), "{msg}");
        }
    }
    // A NaN weight loads unless check_finite asks for the scan.
    let mut t = oracle_cut_table();
    t.rows[0].push((7, f32::NAN));
    let dir = saved(&t);
    let mut p = dgpt_model_default_params();
    let m = load(dir.path(), &p).unwrap();
    // SAFETY: from dgpt_model_load.
    unsafe { dgpt_model_free(m) };
    p.check_finite = true;
    let (_, msg) = load(dir.path(), &p).unwrap_err();
    assert!(msg.to_lowercase().contains("nan"), "{msg}");
}
