//! The C ABI called from Rust exactly as C would: every entry point with NULL and invalid values,
//! generation with callbacks, the negative-size buffer convention, and one model shared by 8
//! threads each with its own session.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};

use diffugpt::ffi::dgpt_status::*;
use diffugpt::ffi::*;

/// A change to default generation params.
type Tweak = fn(&mut dgpt_generate_params);

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tiny-diffugpt\0"
);

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(dgpt_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn load() -> *mut dgpt_model {
    let mut m = null_mut();
    let st = unsafe { dgpt_model_load(FIXTURE.as_ptr() as *const c_char, null(), &mut m) };
    assert_eq!(st, DGPT_OK, "{}", last_error());
    m
}

fn small_params() -> dgpt_generate_params {
    let mut p = dgpt_generate_default_params();
    p.canvas_len = 16;
    p.steps = 8;
    p.temperature = 1.0;
    p.top_k = 40;
    p
}

#[test]
fn version_and_status_strings() {
    let v = unsafe { CStr::from_ptr(dgpt_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let s = |n| {
        unsafe { CStr::from_ptr(dgpt_status_str(n)) }
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(s(0), "ok");
    assert_eq!(s(DGPT_ERR_UTF8 as u32), "invalid UTF-8");
    assert_eq!(s(9999), "unknown status");
}

#[test]
fn null_and_invalid_arguments_return_statuses() {
    unsafe {
        let mut m = null_mut();
        assert_eq!(dgpt_model_load(null(), null(), &mut m), DGPT_ERR_NULL_ARG);
        assert!(last_error().contains("path"));
        assert_eq!(
            dgpt_model_load(FIXTURE.as_ptr() as _, null(), null_mut()),
            DGPT_ERR_NULL_ARG
        );
        let bad_utf8 = [0x66u8, 0xff, 0xfe, 0];
        assert_eq!(
            dgpt_model_load(bad_utf8.as_ptr() as _, null(), &mut m),
            DGPT_ERR_UTF8
        );
        let missing = cstr("/nonexistent/dir");
        assert_eq!(
            dgpt_model_load(missing.as_ptr(), null(), &mut m),
            DGPT_ERR_IO
        );
        assert!(m.is_null(), "out-parameters are written only on success");
        let mut mp = dgpt_model_default_params();
        mp.size = 8;
        assert_eq!(
            dgpt_model_load(FIXTURE.as_ptr() as _, &mp, &mut m),
            DGPT_ERR_ABI
        );
        let mut mp = dgpt_model_default_params();
        mp.device = 7;
        assert_eq!(
            dgpt_model_load(FIXTURE.as_ptr() as _, &mp, &mut m),
            DGPT_ERR_INVALID_ARG
        );
        let mut mp = dgpt_model_default_params();
        mp.mask_id = 1 << 40;
        assert_eq!(
            dgpt_model_load(FIXTURE.as_ptr() as _, &mp, &mut m),
            DGPT_ERR_INVALID_ARG
        );
        let mut mp = dgpt_model_default_params();
        mp.pad_id = 99_999;
        assert_eq!(
            dgpt_model_load(FIXTURE.as_ptr() as _, &mp, &mut m),
            DGPT_ERR_CONFIG
        );
        let mut mp = dgpt_model_default_params();
        let tok = cstr("/nonexistent/tokenizer.json");
        mp.tokenizer_path = tok.as_ptr();
        assert_eq!(
            dgpt_model_load(FIXTURE.as_ptr() as _, &mp, &mut m),
            DGPT_ERR_IO
        );

        let mut info = dgpt_model_info::default();
        assert_eq!(dgpt_model_get_info(null(), &mut info), DGPT_ERR_NULL_ARG);
        let mut s = null_mut();
        assert_eq!(dgpt_session_new(null(), &mut s), DGPT_ERR_NULL_ARG);
        dgpt_model_free(null_mut());
        dgpt_session_free(null_mut());
        dgpt_result_free(null_mut());

        let model = load();
        assert_eq!(dgpt_model_get_info(model, null_mut()), DGPT_ERR_NULL_ARG);
        assert_eq!(dgpt_model_get_info(model, &mut info), DGPT_OK);
        assert_eq!(
            (info.vocab_size, info.eos_id, info.mask_id, info.pad_id),
            (50257, 50256, 10541, -1)
        );
        assert_eq!(dgpt_session_new(model, null_mut()), DGPT_ERR_NULL_ARG);
        assert_eq!(dgpt_session_new(model, &mut s), DGPT_OK);

        let mut r = null_mut();
        let prompt = cstr("Hello");
        let p = small_params();
        assert_eq!(
            dgpt_generate(null_mut(), prompt.as_ptr(), &p, &mut r),
            DGPT_ERR_NULL_ARG
        );
        assert_eq!(dgpt_generate(s, null(), &p, &mut r), DGPT_ERR_NULL_ARG);
        assert_eq!(
            dgpt_generate(s, prompt.as_ptr(), &p, null_mut()),
            DGPT_ERR_NULL_ARG
        );
        assert_eq!(
            dgpt_generate(s, bad_utf8.as_ptr() as _, &p, &mut r),
            DGPT_ERR_UTF8
        );
        let cases: [(Tweak, dgpt_status); 10] = [
            (|p| p.memory_limit_bytes = 100, DGPT_ERR_MEMORY),
            (|p| p.size = 3, DGPT_ERR_ABI),
            (|p| p.size += 64, DGPT_ERR_ABI),
            (|p| p.strategy = 77, DGPT_ERR_INVALID_ARG),
            (|p| p.predictor = 77, DGPT_ERR_INVALID_ARG),
            (|p| p.length_mode = 77, DGPT_ERR_INVALID_ARG),
            (|p| p.temperature = f32::NAN, DGPT_ERR_INVALID_ARG),
            (|p| p.top_p = 1.5, DGPT_ERR_INVALID_ARG),
            (|p| p.canvas_len = 100_000, DGPT_ERR_INVALID_ARG),
            (
                |p| {
                    p.steps = 0;
                    p.steps_per_token = -1.0
                },
                DGPT_ERR_INVALID_ARG,
            ),
        ];
        for (i, (f, want)) in cases.iter().enumerate() {
            let mut p = small_params();
            f(&mut p);
            assert_eq!(
                dgpt_generate(s, prompt.as_ptr(), &p, &mut r),
                *want,
                "case {i}: {}",
                last_error()
            );
            assert!(r.is_null());
        }
        let bad_ids = [1u32, 60_000];
        assert_eq!(
            dgpt_generate_tokens(s, bad_ids.as_ptr(), 2, &p, &mut r),
            DGPT_ERR_PROMPT
        );
        assert_eq!(
            dgpt_generate_tokens(s, null(), 2, &p, &mut r),
            DGPT_ERR_NULL_ARG
        );
        // A wrong `size` is an ABI error whatever the prompt holds: the struct is read before the
        // prompt is checked (found by the c_api_strings fuzzer with a too-long prompt).
        let long_ids = vec![1u32; 4096];
        let long_text = cstr(&"Hello ".repeat(4096));
        let mut bad_size = small_params();
        bad_size.size = 121;
        assert_eq!(
            dgpt_generate_tokens(s, long_ids.as_ptr(), long_ids.len(), &bad_size, &mut r),
            DGPT_ERR_ABI,
            "{}",
            last_error()
        );
        assert_eq!(
            dgpt_generate(s, long_text.as_ptr(), &bad_size, &mut r),
            DGPT_ERR_ABI,
            "{}",
            last_error()
        );
        assert_eq!(
            dgpt_generate_tokens(s, long_ids.as_ptr(), long_ids.len(), &p, &mut r),
            DGPT_ERR_PROMPT
        );
        assert!(r.is_null());
        // The struct as it was before `end_floor` was appended is still accepted (the floor then
        // takes its default, so a garbage value there must not matter); a size inside the new
        // field is not.
        let before = std::mem::offset_of!(dgpt_generate_params, end_floor);
        let mut old = small_params();
        old.size = before;
        old.end_floor = f32::NAN;
        assert_eq!(
            dgpt_generate(s, prompt.as_ptr(), &old, &mut r),
            DGPT_OK,
            "{}",
            last_error()
        );
        dgpt_result_free(r);
        r = null_mut();
        old.size = before + 2;
        assert_eq!(
            dgpt_generate(s, prompt.as_ptr(), &old, &mut r),
            DGPT_ERR_ABI
        );
        let mut bad_floor = small_params();
        bad_floor.end_floor = 1.0;
        assert_eq!(
            dgpt_generate(s, prompt.as_ptr(), &bad_floor, &mut r),
            DGPT_ERR_INVALID_ARG
        );
        assert!(r.is_null());

        let mut stats = dgpt_stats::default();
        assert_eq!(dgpt_result_stats(null(), &mut stats), DGPT_ERR_NULL_ARG);
        assert!(dgpt_result_text(null()).is_null());
        let mut n = 5usize;
        assert!(dgpt_result_tokens(null(), &mut n).is_null());
        assert_eq!(n, 0);

        assert_eq!(
            dgpt_tokenize(null(), prompt.as_ptr(), null_mut(), 0),
            i32::MIN
        );
        assert_eq!(dgpt_tokenize(model, null(), null_mut(), 0), i32::MIN);
        assert_eq!(
            dgpt_tokenize(model, prompt.as_ptr(), null_mut(), 5),
            i32::MIN
        );
        assert_eq!(
            dgpt_tokenize(model, prompt.as_ptr(), null_mut(), -1),
            i32::MIN
        );
        assert_eq!(
            dgpt_detokenize(model, bad_ids.as_ptr(), 2, null_mut(), 0),
            i32::MIN
        );
        assert!(last_error().contains("60000"));
        assert_eq!(dgpt_detokenize(model, null(), 3, null_mut(), 0), i32::MIN);
        dgpt_session_free(s);
        dgpt_model_free(model);
    }
}

#[test]
fn tokenize_and_detokenize_use_negative_required_sizes() {
    unsafe {
        let model = load();
        let text = cstr("Hello world");
        assert_eq!(dgpt_tokenize(model, text.as_ptr(), null_mut(), 0), -2);
        let mut ids = [0u32; 1];
        assert_eq!(dgpt_tokenize(model, text.as_ptr(), ids.as_mut_ptr(), 1), -2);
        assert_eq!(ids[0], 0, "nothing written when too small");
        let mut ids = [0u32; 4];
        assert_eq!(dgpt_tokenize(model, text.as_ptr(), ids.as_mut_ptr(), 4), 2);
        assert_eq!(&ids[..2], &[15496, 995]);
        let need = dgpt_detokenize(model, ids.as_ptr(), 2, null_mut(), 0);
        assert_eq!(need, -12); // 11 bytes + NUL
        let mut buf = vec![0 as c_char; 12];
        assert_eq!(
            dgpt_detokenize(model, ids.as_ptr(), 2, buf.as_mut_ptr(), 12),
            11
        );
        assert_eq!(
            CStr::from_ptr(buf.as_ptr()).to_str().unwrap(),
            "Hello world"
        );
        dgpt_model_free(model);
    }
}

unsafe extern "C" fn count_steps(
    _s: u32,
    _t: u32,
    canvas: *const u32,
    len: usize,
    ud: *mut c_void,
) -> bool {
    assert!(!canvas.is_null() && len > 0);
    let n = &mut *(ud as *mut u32);
    *n += 1;
    *n < 3
}

unsafe extern "C" fn abort_now(_ud: *mut c_void) -> bool {
    true
}

unsafe extern "C" fn stop_loading(progress: f32, ud: *mut c_void) -> bool {
    *(ud as *mut f32) = progress;
    progress < 0.5
}

#[test]
fn progress_callback_reports_and_can_cancel_loading() {
    unsafe {
        let mut seen = 0f32;
        let mut mp = dgpt_model_default_params();
        mp.progress_callback = Some(stop_loading);
        mp.progress_user_data = &mut seen as *mut f32 as *mut c_void;
        let mut m = null_mut();
        assert_eq!(
            dgpt_model_load(FIXTURE.as_ptr() as _, &mp, &mut m),
            DGPT_ERR_ABORTED
        );
        assert!(m.is_null());
        assert_eq!(dgpt_last_status(), DGPT_ERR_ABORTED);
        assert!((0.5..0.6).contains(&seen), "{seen}");
    }
}

#[test]
fn generation_with_callbacks_stats_and_abort() {
    unsafe {
        let model = load();
        let mut s = null_mut();
        assert_eq!(dgpt_session_new(model, &mut s), DGPT_OK);
        // The session keeps the weights alive after the model handle is freed.
        dgpt_model_free(model);
        let prompt = cstr("Hello");
        let mut calls = 0u32;
        let mut p = small_params();
        p.step_callback = Some(count_steps);
        p.step_user_data = &mut calls as *mut u32 as *mut c_void;
        let mut r = null_mut();
        assert_eq!(
            dgpt_generate(s, prompt.as_ptr(), &p, &mut r),
            DGPT_OK,
            "{}",
            last_error()
        );
        let mut st = dgpt_stats::default();
        assert_eq!(dgpt_result_stats(r, &mut st), DGPT_OK);
        assert_eq!(calls, 3);
        assert!(st.cancelled);
        assert_eq!(st.steps, 3);
        assert_eq!(st.forward_passes, 3);
        assert_eq!(st.canvas_len, 16);
        dgpt_result_free(r);

        let mut p = small_params();
        p.abort_callback = Some(abort_now);
        let mut r = null_mut();
        assert_eq!(
            dgpt_generate(s, prompt.as_ptr(), &p, &mut r),
            DGPT_ERR_ABORTED
        );
        assert!(r.is_null());

        // ARM mode and unconditional token-level generation.
        let mut p = small_params();
        p.arm = true;
        p.canvas_len = 4;
        assert_eq!(
            dgpt_generate_tokens(s, null(), 0, &p, &mut r),
            DGPT_OK,
            "{}",
            last_error()
        );
        let mut n = 0usize;
        let toks = dgpt_result_tokens(r, &mut n);
        assert!(n <= 4 && (n == 0 || !toks.is_null()));
        dgpt_result_free(r);
        dgpt_session_free(s);
    }
}

struct Handle(*mut dgpt_model);
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

fn run_one(model: *const dgpt_model, seed: u64) -> (Vec<u32>, String) {
    unsafe {
        let mut s = null_mut();
        assert_eq!(dgpt_session_new(model, &mut s), DGPT_OK);
        let mut p = small_params();
        p.seed = seed;
        let prompt = cstr("Once upon a time");
        let mut r = null_mut();
        assert_eq!(
            dgpt_generate(s, prompt.as_ptr(), &p, &mut r),
            DGPT_OK,
            "{}",
            last_error()
        );
        let mut n = 0usize;
        let t = dgpt_result_tokens(r, &mut n);
        let toks = std::slice::from_raw_parts(t, n).to_vec();
        let text = CStr::from_ptr(dgpt_result_text(r))
            .to_string_lossy()
            .into_owned();
        dgpt_result_free(r);
        dgpt_session_free(s);
        (toks, text)
    }
}

#[test]
fn one_model_eight_threads_matches_serial() {
    let model = Handle(load());
    let serial: Vec<_> = (0..8).map(|i| run_one(model.0, i)).collect();
    let parallel: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let m = &model;
                sc.spawn(move || run_one(m.0, i))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(serial, parallel);
    assert!(serial.iter().any(|(t, _)| !t.is_empty()));
    unsafe { dgpt_model_free(model.0) };
}

/// Generates from ids on a fresh session; returns the status and the last error.
fn generate_ids(model: *const dgpt_model, ids: &[u32], p: &dgpt_generate_params) -> dgpt_status {
    unsafe {
        let mut s = null_mut();
        assert_eq!(dgpt_session_new(model, &mut s), DGPT_OK);
        let mut r = null_mut();
        let st = dgpt_generate_tokens(s, ids.as_ptr(), ids.len(), p, &mut r);
        dgpt_result_free(r);
        dgpt_session_free(s);
        st
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_a_prompt_error() {
    // The fixture has 256 positions: BOS + 254 prompt tokens + 1 slot is the most that fits.
    let model = load();
    let p = small_params();
    unsafe {
        let mut s = null_mut();
        assert_eq!(dgpt_session_new(model, &mut s), DGPT_OK);
        let mut r = null_mut();
        // " hello" is one token: 300 of them cannot fit whatever the canvas.
        let long = cstr(&" hello".repeat(300));
        assert_eq!(dgpt_generate(s, long.as_ptr(), &p, &mut r), DGPT_ERR_PROMPT);
        assert!(last_error().contains("300 tokens"), "{}", last_error());
        assert!(r.is_null());
        dgpt_session_free(s);
    }
    assert_eq!(generate_ids(model, &[11; 255], &p), DGPT_ERR_PROMPT);
    assert!(last_error().contains("at most 254"), "{}", last_error());
    // Too long *and* holding a bad id: still the prompt's fault.
    let mut ids = vec![11u32; 300];
    ids[0] = 60_000;
    assert_eq!(generate_ids(model, &ids, &p), DGPT_ERR_PROMPT);
    // A prompt that fits with a canvas that does not is the canvas parameter's fault.
    assert_eq!(generate_ids(model, &[11; 250], &p), DGPT_ERR_INVALID_ARG);
    assert!(last_error().contains("canvas 16"), "{}", last_error());
    let mut fits = small_params();
    fits.canvas_len = 1;
    fits.steps = 1;
    assert_eq!(
        generate_ids(model, &[11; 254], &fits),
        DGPT_OK,
        "{}",
        last_error()
    );
    unsafe { dgpt_model_free(model) };
}

#[test]
fn a_huge_prompt_is_refused_before_it_is_tokenised() {
    let model = load();
    unsafe {
        let mut s = null_mut();
        assert_eq!(dgpt_session_new(model, &mut s), DGPT_OK);
        let mut r = null_mut();
        let huge = cstr(&"word ".repeat(2 << 20)); // 10 MiB
        let st = dgpt_generate(s, huge.as_ptr(), null(), &mut r);
        assert_eq!(st, DGPT_ERR_PROMPT);
        // This message comes only from the byte-length check that runs before tokenising.
        assert!(last_error().contains("not tokenised"), "{}", last_error());
        assert!(last_error().contains("10485760 bytes"), "{}", last_error());
        dgpt_session_free(s);
        dgpt_model_free(model);
    }
}

#[test]
fn oracle_length_must_leave_room_for_the_end() {
    let model = load();
    let oracle = |len: u32| {
        let mut p = small_params();
        p.predictor = DGPT_PREDICTOR_ORACLE;
        p.oracle_len = len;
        p
    };
    for bad in [0, 16, 17, 1000] {
        assert_eq!(
            generate_ids(model, &[15496], &oracle(bad)),
            DGPT_ERR_INVALID_ARG,
            "oracle_len {bad}"
        );
        let e = last_error();
        assert!(
            e.contains("oracle_len must be between 1 and canvas_len - 1 = 15"),
            "{e}"
        );
        assert!(e.contains(&format!("got {bad}")), "{e}");
    }
    // In range: the prediction is the oracle's length.
    unsafe {
        let mut s = null_mut();
        assert_eq!(dgpt_session_new(model, &mut s), DGPT_OK);
        let mut r = null_mut();
        let ids = [15496u32];
        let p = oracle(5);
        assert_eq!(
            dgpt_generate_tokens(s, ids.as_ptr(), 1, &p, &mut r),
            DGPT_OK
        );
        let mut st = dgpt_stats::default();
        dgpt_result_stats(r, &mut st);
        assert_eq!(st.predicted_len, 5);
        dgpt_result_free(r);
        dgpt_session_free(s);
        // Fixed-length decoding ignores the oracle, so its default 0 is fine there.
        let mut p = oracle(0);
        p.length_mode = DGPT_LENGTH_FIXED;
        assert_eq!(generate_ids(model, &ids, &p), DGPT_OK, "{}", last_error());
        dgpt_model_free(model);
    }
}

/// Holds the first call's step callback until the main thread has made its own call.
struct Gate {
    entered: std::sync::Barrier,
    release: std::sync::Barrier,
    first: std::sync::atomic::AtomicBool,
}

unsafe extern "C" fn block_first_step(
    _s: u32,
    _t: u32,
    _c: *const u32,
    _l: usize,
    ud: *mut c_void,
) -> bool {
    let gate = &*(ud as *const Gate);
    if gate.first.swap(false, std::sync::atomic::Ordering::SeqCst) {
        gate.entered.wait();
        gate.release.wait();
    }
    true
}

#[test]
fn one_session_used_from_two_threads_at_once_is_busy() {
    let model = Handle(load());
    let mut s = null_mut();
    assert_eq!(unsafe { dgpt_session_new(model.0, &mut s) }, DGPT_OK);
    let session = Handle(s as *mut dgpt_model); // a Send wrapper for the raw pointer
    let gate = Gate {
        entered: std::sync::Barrier::new(2),
        release: std::sync::Barrier::new(2),
        first: std::sync::atomic::AtomicBool::new(true),
    };
    let ids = [15496u32, 995];
    std::thread::scope(|sc| {
        let (session, gate) = (&session, &gate);
        let first = sc.spawn(move || unsafe {
            let mut p = small_params();
            p.step_callback = Some(block_first_step);
            p.step_user_data = gate as *const Gate as *mut c_void;
            let mut r = null_mut();
            let st = dgpt_generate_tokens(session.0 as _, ids.as_ptr(), 2, &p, &mut r);
            dgpt_result_free(r);
            st
        });
        gate.entered.wait();
        // The first call is inside its step callback: the session is in use.
        unsafe {
            let mut r = null_mut();
            let p = small_params();
            let st = dgpt_generate_tokens(session.0 as _, ids.as_ptr(), 2, &p, &mut r);
            assert_eq!(st, DGPT_ERR_BUSY);
            assert!(r.is_null());
            assert!(last_error().contains("in use"), "{}", last_error());
            let text = cstr("Hello");
            assert_eq!(
                dgpt_generate(session.0 as _, text.as_ptr(), &p, &mut r),
                DGPT_ERR_BUSY
            );
            let st = CStr::from_ptr(dgpt_status_str(DGPT_ERR_BUSY as u32));
            assert!(st.to_str().unwrap().contains("busy"));
        }
        gate.release.wait();
        assert_eq!(first.join().unwrap(), DGPT_OK);
    });
    // Released after the call: the session works again (also after an error).
    let p = small_params();
    unsafe {
        let mut r = null_mut();
        let bad = [60_000u32];
        assert_eq!(
            dgpt_generate_tokens(session.0 as _, bad.as_ptr(), 1, &p, &mut r),
            DGPT_ERR_PROMPT
        );
        assert_eq!(
            dgpt_generate_tokens(session.0 as _, ids.as_ptr(), 2, &p, &mut r),
            DGPT_OK
        );
        dgpt_result_free(r);
        dgpt_session_free(session.0 as _);
        dgpt_model_free(model.0);
    }
}

#[test]
fn nul_bytes_are_kept_and_counted_by_detokenize_and_results() {
    let model = load();
    unsafe {
        // GPT-2's byte-level id 188 is the byte 0x00.
        let ids = [15496u32, 188, 995];
        let mut buf = vec![1 as c_char; 16];
        let n = dgpt_detokenize(model, ids.as_ptr(), 3, buf.as_mut_ptr(), 16);
        assert_eq!(n, 12);
        let bytes: Vec<u8> = buf[..13].iter().map(|&b| b as u8).collect();
        assert_eq!(bytes, b"Hello\0 world\0");
        // A result's text is the detokenised answer, byte for byte, with its length.
        let mut s = null_mut();
        assert_eq!(dgpt_session_new(model, &mut s), DGPT_OK);
        let mut r = null_mut();
        let p = small_params();
        assert_eq!(
            dgpt_generate_tokens(s, ids.as_ptr(), 3, &p, &mut r),
            DGPT_OK
        );
        let mut n_tok = 0usize;
        let toks = dgpt_result_tokens(r, &mut n_tok);
        let len = dgpt_result_text_len(r);
        let mut want = vec![0 as c_char; len + 1];
        let got = dgpt_detokenize(model, toks, n_tok, want.as_mut_ptr(), want.len() as i32);
        assert_eq!(got as usize, len);
        let text = std::slice::from_raw_parts(dgpt_result_text(r) as *const u8, len + 1);
        let want: Vec<u8> = want.iter().map(|&b| b as u8).collect();
        assert_eq!(text, &want[..]);
        dgpt_result_free(r);
        dgpt_session_free(s);
        dgpt_model_free(model);
    }
}
