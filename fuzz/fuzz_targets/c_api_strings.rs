//! The C ABI driven exactly as C would drive it, with fuzzed strings (NUL-terminated, invalid
//! UTF-8 included), fuzzed params structs (sizes, enum values, NaN/Inf floats, special ids) and
//! fuzzed buffers/capacities, on models loaded once:
//! * `tiny`: tests/fixtures/tiny-diffugpt (GPT-2 tokenizer, 50257 tokens, 256 positions);
//! * `small`: the DiffuGPT f32 parity fixture (97 tokens, 32 positions) + fuzz/data/tiny_wordlevel.json;
//! * `gpt2`: the GPT-2 f32 parity fixture + the same tokenizer.
//!
//! Each input is a short program of calls (`dgpt_tokenize`, `dgpt_detokenize`, `dgpt_generate`,
//! `dgpt_generate_tokens`, `dgpt_model_load` with fuzzed params, NULL-argument probes). A panic
//! anywhere aborts (libfuzzer-sys installs an aborting panic hook, so even a panic the library
//! turns into DGPT_ERR_PANIC is reported); every result and model is freed (LeakSanitizer).
//! Canvases and step counts are kept small (or bounded through the step callback) so one run
//! stays in milliseconds.
#![no_main]

mod common;

use std::ffi::{c_char, c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use diffugpt::ffi::dgpt_status::*;
use diffugpt::ffi::*;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

struct Loaded {
    model: *mut dgpt_model,
    session: *mut dgpt_session,
    info: dgpt_model_info,
    /// Canvas / step caps keeping one call fast on this model.
    max_canvas: u32,
    /// decode(encode(text)) == text holds (byte-level BPE).
    lossless: bool,
}

struct Models([Loaded; 3]);
// SAFETY: the models are immutable after loading and the fuzzer runs one thread.
unsafe impl Send for Models {}
unsafe impl Sync for Models {}

fn c(path: &std::path::Path) -> Vec<u8> {
    let mut v = path.to_str().unwrap().as_bytes().to_vec();
    v.push(0);
    v
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(dgpt_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn load_fixture(dir: &str, tokenizer: Option<&str>, max_canvas: u32, lossless: bool) -> Loaded {
    let path = c(&common::fixture(dir));
    let tok = tokenizer.map(|t| c(&common::data(t)));
    let mut p = dgpt_model_default_params();
    p.n_threads = 1;
    if let Some(t) = &tok {
        p.tokenizer_path = t.as_ptr() as *const c_char;
    }
    let mut model = null_mut();
    let st = unsafe { dgpt_model_load(path.as_ptr() as *const c_char, &p, &mut model) };
    assert_eq!(st, DGPT_OK, "loading {dir}: {}", last_error());
    let mut info = dgpt_model_info::default();
    assert_eq!(unsafe { dgpt_model_get_info(model, &mut info) }, DGPT_OK);
    let mut session = null_mut();
    assert_eq!(unsafe { dgpt_session_new(model, &mut session) }, DGPT_OK);
    Loaded {
        model,
        session,
        info,
        max_canvas,
        lossless,
    }
}

fn models() -> &'static Models {
    static M: OnceLock<Models> = OnceLock::new();
    M.get_or_init(|| {
        common::one_thread();
        Models([
            load_fixture("tiny-diffugpt", None, 8, true),
            load_fixture(
                "parity/diffugpt-f32",
                Some("tiny_wordlevel.json"),
                40,
                false,
            ),
            load_fixture("parity/gpt2-f32", Some("tiny_wordlevel.json"), 40, false),
        ])
    })
}

/// Arbitrary bytes up to the first NUL, NUL-terminated.
fn c_bytes(u: &mut Unstructured) -> Result<Vec<u8>> {
    if u.ratio(1, 8)? {
        // Words the small tokenizers know (arbitrary bytes rarely hit them).
        let s: &str = u.choose(&[
            "the cat sat.",
            "hello world!",
            "<|endoftext|>",
            "Hello, world",
            "\u{e9}\u{1f600} x",
        ])?;
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        return Ok(v);
    }
    let len = u.int_in_range(0..=300usize)?;
    let raw = u.bytes(len.min(u.len()))?;
    let mut v: Vec<u8> = raw.iter().copied().take_while(|&b| b != 0).collect();
    v.push(0);
    Ok(v)
}

/// Half the time the default, so that a struct with several fuzzed floats still validates often
/// enough to reach the decoder.
fn float(u: &mut Unstructured, default: f32) -> Result<f32> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => f32::from_bits(u.arbitrary()?),
        1 => u.int_in_range(0..=255u8)? as f32 / 64.0,
        2 => *u.choose(&[
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e30,
            1e-30,
            f32::MIN_POSITIVE,
            f32::MAX,
            1.0 + f32::EPSILON,
            1.0 - f32::EPSILON / 2.0,
        ])?,
        _ => default,
    })
}

fn small_u32(u: &mut Unstructured, max: u32) -> Result<u32> {
    Ok(if u.ratio(1, 8)? {
        u.arbitrary()?
    } else {
        u.int_in_range(0..=max)?
    })
}

fn special_id(u: &mut Unstructured) -> Result<i64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => -1,
        1 => u.int_in_range(-3..=100i64)?,
        2 => u.arbitrary()?,
        _ => *u.choose(&[
            50255i64,
            50256,
            50257,
            10541,
            94,
            95,
            96,
            97,
            0xFFFF_FFFF,
            0x1_0000_0000,
        ])?,
    })
}

/// Callback state shared with the step/abort/progress callbacks through `user_data`.
#[derive(Default)]
struct Cb {
    vocab: u32,
    step_calls: u32,
    stop_after: u32,
    abort_calls: u32,
    abort_after: u32,
    progress_calls: u32,
    progress_stop: u32,
    last_progress: f32,
}

unsafe extern "C" fn step_cb(
    step: u32,
    total: u32,
    canvas: *const u32,
    len: usize,
    ud: *mut c_void,
) -> bool {
    let cb = &mut *(ud as *mut Cb);
    cb.step_calls += 1;
    assert!(step >= 1 && step <= total, "step {step} of {total}");
    assert!(len <= 4096, "canvas of {len}");
    if len > 0 {
        assert!(!canvas.is_null());
        let ids = std::slice::from_raw_parts(canvas, len);
        assert!(ids.iter().all(|&t| t < cb.vocab), "canvas id out of vocab");
    }
    cb.step_calls < cb.stop_after
}

unsafe extern "C" fn abort_cb(ud: *mut c_void) -> bool {
    let cb = &mut *(ud as *mut Cb);
    cb.abort_calls += 1;
    cb.abort_calls > cb.abort_after
}

unsafe extern "C" fn progress_cb(progress: f32, ud: *mut c_void) -> bool {
    let cb = &mut *(ud as *mut Cb);
    cb.progress_calls += 1;
    assert!(
        (0.0..=1.0).contains(&progress) && progress >= cb.last_progress,
        "progress {progress} after {}",
        cb.last_progress
    );
    cb.last_progress = progress;
    cb.progress_calls < cb.progress_stop
}

/// Fuzzed generation params for model `m`; installs the callbacks on `cb` when asked or when
/// the step count could be large.
fn gen_params(u: &mut Unstructured, m: &Loaded, cb: &mut Cb) -> Result<dgpt_generate_params> {
    let mut p = dgpt_generate_default_params();
    if u.ratio(1, 16)? {
        p.size = *u.choose(&[
            0,
            8,
            p.size - 8,
            p.size - 1,
            p.size + 1,
            p.size + 8,
            usize::MAX,
        ])?;
    }
    let n_pos = m.info.n_positions;
    p.canvas_len = match u.int_in_range(0..=7u8)? {
        // Around the context limit (BOS + prompt + canvas <= n_positions) on the small models
        // (on the GPT-2-vocabulary one a full canvas costs ~1 s a step under ASan).
        0 if n_pos <= 64 => n_pos - u.int_in_range(0..=3u32)?,
        1 => *u.choose(&[0, n_pos, n_pos + 1, u32::MAX, u32::MAX / 2])?,
        _ => u.int_in_range(0..=m.max_canvas.min(n_pos))?,
    };
    p.steps = small_u32(u, 40)?;
    p.steps_per_token = float(u, 1.0)?;
    p.strategy = small_u32(u, 4)?;
    p.temperature = float(u, 0.0)?;
    p.top_k = small_u32(u, 120)?;
    p.top_p = float(u, 1.0)?;
    p.repetition_penalty = float(u, 1.0)?;
    p.seed = u.arbitrary()?;
    p.length_mode = small_u32(u, 2)?;
    p.predictor = small_u32(u, 4)?;
    p.predictor_value = float(u, 0.9)?;
    p.oracle_len = small_u32(u, 48)?;
    p.margin = small_u32(u, 48)?;
    p.margin_ratio = float(u, 0.25)?;
    p.end_floor = float(u, 0.5)?;
    p.grow = u.arbitrary()?;
    p.ban_mask = u.arbitrary()?;
    p.arm = u.ratio(1, 4)?;
    p.memory_limit_bytes = match u.int_in_range(0..=5u8)? {
        0 => u.arbitrary()?,
        1 => u.int_in_range(1..=1u64 << 24)?,
        _ => 0,
    };

    cb.vocab = m.info.vocab_size;
    cb.stop_after = u.int_in_range(1..=48u32)?;
    cb.abort_after = u.int_in_range(0..=48u32)?;
    let big = p.canvas_len > m.max_canvas
        || p.steps > 32
        || !(p.steps_per_token.is_finite() && p.steps_per_token <= 2.0);
    let with_step = big || u.ratio(1, 3)?;
    if big {
        cb.stop_after = cb.stop_after.min(if m.max_canvas < 16 { 2 } else { 8 });
    }
    let ud = cb as *mut Cb as *mut c_void;
    if with_step {
        p.step_callback = Some(step_cb);
        p.step_user_data = ud;
    }
    if u.ratio(1, 4)? {
        p.abort_callback = Some(abort_cb);
        p.abort_user_data = ud;
    }
    Ok(p)
}

/// Checks a generate call's outcome and frees the result.
unsafe fn check_result(
    st: dgpt_status,
    out: *mut dgpt_result,
    m: &Loaded,
    p: &dgpt_generate_params,
) {
    assert_ne!(st, DGPT_ERR_PANIC, "{}", last_error());
    if common::verbose() {
        eprintln!("generate: {st:?} {}", last_error());
    }
    if st != DGPT_OK {
        assert!(out.is_null(), "out written on failure");
        assert_eq!(dgpt_last_status(), st);
        return;
    }
    assert!(!out.is_null());
    let mut n = usize::MAX;
    let toks = dgpt_result_tokens(out, &mut n);
    assert!(
        n <= p.canvas_len as usize,
        "{n} tokens from a canvas of {}",
        p.canvas_len
    );
    let ids = if n == 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts(toks, n)
    };
    let (eos, mask) = (m.info.eos_id, m.info.mask_id);
    for &t in ids {
        assert!(t < m.info.vocab_size, "token {t} outside the vocabulary");
        assert_ne!(t, eos, "end id inside the answer");
        assert!(
            m.info.pad_id < 0 || i64::from(t) != m.info.pad_id,
            "pad inside the answer"
        );
        // With ban_mask off the sampler may pick the mask id; once revealed it is an ordinary
        // token (tests/fuzz_regressions.rs: revealing_the_mask_id_ends).
        assert!(
            !p.ban_mask || t != mask,
            "mask id inside the answer with ban_mask on"
        );
    }
    let text = dgpt_result_text(out);
    assert!(!text.is_null());
    CStr::from_ptr(text)
        .to_str()
        .expect("result text must be UTF-8");
    let mut stats = dgpt_stats::default();
    assert_eq!(dgpt_result_stats(out, &mut stats), DGPT_OK);
    assert_eq!(stats.final_len as usize, n);
    assert!(stats.final_canvas_len <= p.canvas_len as u64);
    dgpt_result_free(out);
}

unsafe fn op_tokenize(u: &mut Unstructured, m: &Loaded) -> Result<()> {
    let text = c_bytes(u)?;
    let cap: i32 = match u.int_in_range(0..=3u8)? {
        0 => u.int_in_range(-3..=4)?,
        1 => u.arbitrary::<i32>()?.min(1 << 14),
        _ => u.int_in_range(0..=400)?,
    };
    let null_buf = u.ratio(1, 8)?;
    const CANARY: u32 = 0xDEAD_BEEF;
    let mut buf = vec![CANARY; cap.clamp(0, 1 << 14) as usize];
    let bp = if null_buf {
        null_mut()
    } else {
        buf.as_mut_ptr()
    };
    let r = dgpt_tokenize(m.model, text.as_ptr() as *const c_char, bp, cap);
    let utf8 = std::str::from_utf8(&text[..text.len() - 1]);
    if r == i32::MIN {
        let st = dgpt_last_status();
        assert_ne!(st, DGPT_OK);
        assert_ne!(st, DGPT_ERR_PANIC, "{}", last_error());
        if utf8.is_err() {
            assert_eq!(st, DGPT_ERR_UTF8);
        }
        assert!(buf.iter().all(|&x| x == CANARY), "buffer written on error");
        return Ok(());
    }
    assert!(utf8.is_ok(), "invalid UTF-8 accepted");
    assert!(
        !(null_buf && cap > 0),
        "NULL buffer accepted with cap {cap}"
    );
    if r < 0 {
        assert!(-r > cap, "asked for {} with cap {cap}", -r);
        assert!(
            buf.iter().all(|&x| x == CANARY),
            "buffer written when too small"
        );
        return Ok(());
    }
    let n = r as usize;
    assert!(r <= cap);
    assert!(
        buf[n..].iter().all(|&x| x == CANARY),
        "wrote past the count"
    );
    let ids = &buf[..n];
    assert!(ids.iter().all(|&t| t < m.info.vocab_size));
    if m.lossless {
        // Round trip through dgpt_detokenize.
        let mut out = vec![0x55u8; text.len() + 1];
        let k = dgpt_detokenize(
            m.model,
            ids.as_ptr(),
            n,
            out.as_mut_ptr() as *mut c_char,
            out.len() as i32,
        );
        assert!(k >= 0, "detokenize of our own ids failed: {}", last_error());
        assert_eq!(&out[..k as usize], &text[..text.len() - 1], "round trip");
        assert_eq!(out[k as usize], 0);
    }
    Ok(())
}

unsafe fn op_detokenize(u: &mut Unstructured, m: &Loaded) -> Result<()> {
    let n = u.int_in_range(0..=64usize)?;
    let fold = u.ratio(3, 4)?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let t: u32 = u.arbitrary()?;
        ids.push(if fold { t % (m.info.vocab_size + 2) } else { t });
    }
    let null_tokens = u.ratio(1, 16)?;
    let n_tokens = if null_tokens && u.arbitrary()? {
        u.arbitrary::<usize>()?
    } else {
        n
    };
    // A NULL `tokens` may come with any count; a real one only with its own length.
    let (tp, n_tokens) = if null_tokens {
        (null(), n_tokens)
    } else {
        (ids.as_ptr(), n)
    };
    let cap: i32 = match u.int_in_range(0..=3u8)? {
        0 => u.int_in_range(-3..=4)?,
        1 => u.arbitrary::<i32>()?.min(1 << 16),
        _ => u.int_in_range(0..=2000)?,
    };
    let null_buf = u.ratio(1, 8)?;
    let mut buf = vec![0x55u8; cap.clamp(0, 1 << 16) as usize];
    let bp = if null_buf {
        null_mut()
    } else {
        buf.as_mut_ptr() as *mut c_char
    };
    let r = dgpt_detokenize(m.model, tp, n_tokens, bp, cap);
    if r == i32::MIN {
        let st = dgpt_last_status();
        assert_ne!(st, DGPT_OK);
        assert_ne!(st, DGPT_ERR_PANIC, "{}", last_error());
        assert!(buf.iter().all(|&x| x == 0x55), "buffer written on error");
        return Ok(());
    }
    assert!(
        !(null_tokens && n_tokens > 0),
        "NULL tokens accepted with n {n_tokens}"
    );
    assert!(
        !(null_buf && cap > 0),
        "NULL buffer accepted with cap {cap}"
    );
    assert!(
        ids[..n_tokens.min(n)]
            .iter()
            .all(|&t| t < m.info.vocab_size),
        "out-of-vocabulary id accepted"
    );
    if r < 0 {
        assert!(-r > cap, "asked for {} with cap {cap}", -r);
        assert!(
            buf.iter().all(|&x| x == 0x55),
            "buffer written when too small"
        );
        return Ok(());
    }
    let k = r as usize;
    assert!(r < cap, "wrote {r} bytes + NUL into {cap}");
    assert_eq!(buf[k], 0, "missing NUL");
    std::str::from_utf8(&buf[..k]).expect("detokenized text must be UTF-8");
    assert!(
        buf[k + 1..].iter().all(|&x| x == 0x55),
        "wrote past the NUL"
    );
    Ok(())
}

unsafe fn op_generate(u: &mut Unstructured, m: &Loaded, from_text: bool) -> Result<()> {
    let mut cb = Cb::default();
    let p = gen_params(u, m, &mut cb)?;
    // NULL params mean the defaults (canvas 64, 64 steps): only where that canvas is refused
    // (32 positions), as it is too slow for fuzzing on the 256-position model.
    let null_params = m.info.n_positions < 64 && u.ratio(1, 16)?;
    let pp: *const dgpt_generate_params = if null_params { null() } else { &p };
    if common::verbose() {
        eprintln!(
            "generate on vocab {} (eos {} mask {} pad {}): null_params={null_params} size_ok={} \
             canvas={} steps={} spt={} strategy={} T={} top_k={} top_p={} rep={} seed={} \
             length={} predictor={}({}, oracle {}) margin={}/{} grow={} ban_mask={} arm={} \
             step_cb={} abort_cb={} mem={}",
            m.info.vocab_size,
            m.info.eos_id,
            m.info.mask_id,
            m.info.pad_id,
            p.size == std::mem::size_of::<dgpt_generate_params>(),
            p.canvas_len,
            p.steps,
            p.steps_per_token,
            p.strategy,
            p.temperature,
            p.top_k,
            p.top_p,
            p.repetition_penalty,
            p.seed,
            p.length_mode,
            p.predictor,
            p.predictor_value,
            p.oracle_len,
            p.margin,
            p.margin_ratio,
            p.grow,
            p.ban_mask,
            p.arm,
            p.step_callback.is_some(),
            p.abort_callback.is_some(),
            p.memory_limit_bytes
        );
    }
    let mut out: *mut dgpt_result = null_mut();
    let st = if from_text {
        let prompt = c_bytes(u)?;
        let st = dgpt_generate(m.session, prompt.as_ptr() as *const c_char, pp, &mut out);
        if std::str::from_utf8(&prompt[..prompt.len() - 1]).is_err() {
            assert_eq!(st, DGPT_ERR_UTF8, "invalid UTF-8 prompt: {}", last_error());
        }
        st
    } else {
        let n = u.int_in_range(0..=(m.info.n_positions as usize + 2))?;
        let fold = u.ratio(7, 8)?;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let t: u32 = u.arbitrary()?;
            ids.push(if fold { t % m.info.vocab_size } else { t });
        }
        let tp = if ids.is_empty() && u.arbitrary()? {
            null()
        } else {
            ids.as_ptr()
        };
        dgpt_generate_tokens(m.session, tp, ids.len(), pp, &mut out)
    };
    // The full struct, or the one from before `end_floor` was appended (still accepted).
    let before_floor = std::mem::offset_of!(dgpt_generate_params, end_floor);
    let size_ok = null_params
        || p.size == std::mem::size_of::<dgpt_generate_params>()
        || p.size == before_floor;
    if !size_ok && st != DGPT_ERR_UTF8 && st != DGPT_ERR_NULL_ARG {
        assert_eq!(
            st,
            DGPT_ERR_ABI,
            "bad size {} accepted: {}",
            p.size,
            last_error()
        );
    }
    let eff = if null_params {
        dgpt_generate_default_params()
    } else if p.size == before_floor {
        dgpt_generate_params {
            end_floor: dgpt_generate_default_params().end_floor,
            ..p
        }
    } else {
        p
    };
    check_result(st, out, m, &eff);
    Ok(())
}

unsafe fn op_load(u: &mut Unstructured) -> Result<()> {
    let path: Vec<u8> = match u.int_in_range(0..=5u8)? {
        0 => c(&common::fixture("parity/diffugpt-f32")),
        1 => c(&common::fixture("parity/gpt2-bf16/model.safetensors")),
        2 => c(&common::fixture("parity/diffugpt-f16")),
        3 => c(&common::fixture("parity/gpt2-f32/config.json")),
        4 => c(&common::fixture("parity")),
        _ => c_bytes(u)?,
    };
    let tok: Option<Vec<u8>> = match u.int_in_range(0..=5u8)? {
        0 | 1 => None,
        2 => Some(c(&common::data("tiny_wordlevel.json"))),
        3 => Some(c(&common::data("tiny_bytelevel_bpe.json"))),
        // 12 tokens, but "cat" has id 500: must be refused by a 97-row model
        // (regressions/tokenizer_frontend/sparse-ids-pass-check-against-model.bin).
        4 => Some(c(&common::data("sparse_ids_wordlevel.json"))),
        _ => Some(c_bytes(u)?),
    };
    let mut cb = Cb {
        progress_stop: u.int_in_range(1..=40u32)?,
        ..Default::default()
    };
    let mut p = dgpt_model_default_params();
    if u.ratio(1, 16)? {
        p.size = *u.choose(&[0, 8, p.size - 8, p.size + 8, usize::MAX])?;
    }
    p.device = if u.ratio(1, 8)? { u.arbitrary()? } else { 0 };
    p.n_threads = small_u32(u, 4)?;
    p.dtype = if u.ratio(1, 8)? { u.arbitrary()? } else { 0 };
    if let Some(t) = &tok {
        p.tokenizer_path = t.as_ptr() as *const c_char;
    }
    p.eos_id = special_id(u)?;
    p.mask_id = special_id(u)?;
    p.pad_id = special_id(u)?;
    p.check_finite = u.arbitrary()?;
    if u.ratio(1, 3)? {
        p.progress_callback = Some(progress_cb);
        p.progress_user_data = &mut cb as *mut Cb as *mut c_void;
    }
    let null_params = u.ratio(1, 16)?;
    let pp: *const dgpt_model_params = if null_params { null() } else { &p };
    let mut model: *mut dgpt_model = null_mut();
    let st = dgpt_model_load(path.as_ptr() as *const c_char, pp, &mut model);
    assert_ne!(st, DGPT_ERR_PANIC, "{}", last_error());
    if st != DGPT_OK {
        assert!(model.is_null(), "out written on failure");
        return Ok(());
    }
    assert!(!model.is_null());
    let mut info = dgpt_model_info::default();
    assert_eq!(dgpt_model_get_info(model, &mut info), DGPT_OK);
    assert!(info.eos_id < info.vocab_size && info.mask_id < info.vocab_size);
    assert_ne!(info.eos_id, info.mask_id);
    assert!(info.pad_id < info.vocab_size as i64 && info.pad_id != info.mask_id as i64);
    let mut session = null_mut();
    assert_eq!(dgpt_session_new(model, &mut session), DGPT_OK);
    // Sessions keep the weights alive after dgpt_model_free.
    let free_first = u.arbitrary()?;
    let loaded = Loaded {
        model,
        session,
        info,
        max_canvas: 24,
        lossless: false,
    };
    if free_first {
        dgpt_model_free(model);
    }
    // Generate with the fuzzed special ids (tokens: the model may have no tokenizer).
    let r = op_generate(u, &loaded, false);
    if !free_first {
        if u.arbitrary()? {
            let _ = op_tokenize(u, &loaded);
        }
        dgpt_model_free(model);
    }
    dgpt_session_free(session);
    r
}

unsafe fn op_misc(u: &mut Unstructured, m: &Loaded) -> Result<()> {
    let s = dgpt_status_str(u.arbitrary()?);
    assert!(!s.is_null());
    CStr::from_ptr(s).to_str().unwrap();
    CStr::from_ptr(dgpt_version()).to_str().unwrap();
    let mut out: *mut dgpt_result = null_mut();
    let prompt = b"hi\0";
    match u.int_in_range(0..=9u8)? {
        0 => assert_eq!(
            dgpt_generate(
                null_mut(),
                prompt.as_ptr() as *const c_char,
                null(),
                &mut out
            ),
            DGPT_ERR_NULL_ARG
        ),
        1 => assert_eq!(
            dgpt_generate(m.session, null(), null(), &mut out),
            DGPT_ERR_NULL_ARG
        ),
        2 => assert_eq!(
            dgpt_generate(
                m.session,
                prompt.as_ptr() as *const c_char,
                null(),
                null_mut()
            ),
            DGPT_ERR_NULL_ARG
        ),
        3 => assert_eq!(
            dgpt_generate_tokens(m.session, null(), 3, null(), &mut out),
            DGPT_ERR_NULL_ARG
        ),
        4 => assert_eq!(dgpt_model_get_info(null(), null_mut()), DGPT_ERR_NULL_ARG),
        5 => assert_eq!(dgpt_session_new(m.model, null_mut()), DGPT_ERR_NULL_ARG),
        6 => {
            assert_eq!(
                dgpt_tokenize(null(), prompt.as_ptr() as *const c_char, null_mut(), 0),
                i32::MIN
            );
            assert_eq!(dgpt_last_status(), DGPT_ERR_NULL_ARG);
        }
        7 => {
            let mut n = 7usize;
            assert!(dgpt_result_tokens(null(), &mut n).is_null());
            assert_eq!(n, 0);
            assert!(dgpt_result_text(null()).is_null());
            assert_eq!(dgpt_result_stats(null(), null_mut()), DGPT_ERR_NULL_ARG);
            dgpt_result_free(null_mut());
            dgpt_session_free(null_mut());
            dgpt_model_free(null_mut());
        }
        8 => {
            let mut p = dgpt_model_default_params();
            p.size = u.arbitrary()?;
            let mut mm = null_mut();
            let path = b"/nonexistent-dgpt-fuzz\0";
            let st = dgpt_model_load(path.as_ptr() as *const c_char, &p, &mut mm);
            assert_ne!(st, DGPT_OK);
            assert!(mm.is_null());
        }
        _ => {
            let mut p = dgpt_generate_default_params();
            p.size = u.arbitrary()?;
            p.canvas_len = 2;
            p.steps = 1;
            let st = dgpt_generate(m.session, prompt.as_ptr() as *const c_char, &p, &mut out);
            if p.size != std::mem::size_of::<dgpt_generate_params>() {
                assert_eq!(st, DGPT_ERR_ABI);
            }
            check_result(st, out, m, &p);
            out = null_mut();
        }
    }
    assert!(out.is_null(), "out written on failure");
    CStr::from_ptr(dgpt_last_error()).to_str().unwrap();
    Ok(())
}

fn run(u: &mut Unstructured) -> Result<()> {
    let ms = &models().0;
    for _ in 0..4 {
        if u.is_empty() {
            break;
        }
        let op = u.int_in_range(0..=9u8)?;
        // Generation on the GPT-2-vocabulary model is ~100x dearer (its 50257-row head, under
        // coverage instrumentation), and the decoding code is the same for every model: mostly
        // generate on the small ones.
        let m = if (4..=6).contains(&op) && !u.ratio(1, 8)? {
            u.choose(&ms[1..])?
        } else {
            u.choose(ms)?
        };
        // SAFETY: every pointer handed to the C API is NULL or valid for what it promises.
        unsafe {
            match op {
                0 | 1 => op_tokenize(u, m)?,
                2 | 3 => op_detokenize(u, m)?,
                4 => op_generate(u, m, true)?,
                5 | 6 => op_generate(u, m, false)?,
                7 => op_load(u)?,
                _ => op_misc(u, m)?,
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
