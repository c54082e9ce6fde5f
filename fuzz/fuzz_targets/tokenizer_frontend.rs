//! Tokenizer front end. The first input byte picks the mode, the rest is the payload:
//! * 0: `Tokenizer::from_bytes(payload)` (an arbitrary tokenizer.json), then encode/decode with it;
//! * 1: encode the payload (lossy UTF-8) with the real GPT-2 tokenizer and decode it back, which
//!   must give the text again (byte-level BPE loses nothing);
//! * 2: decode arbitrary u32 ids (little-endian quads; out of range ones included) with GPT-2;
//! * 3: decode ids folded into 0..50300 (real tokens, partial UTF-8 sequences, a few unknown ids).
//!
//! Errors are fine; panics, out-of-bounds accesses and huge allocations are not.
#![no_main]

mod common;

use std::sync::OnceLock;

use diffugpt::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

/// The GPT-2 tokenizer and its vocabulary size (`Tokenizer::vocab_size` rebuilds the whole
/// vocabulary map on every call, so it is read once).
fn gpt2() -> &'static (Tokenizer, usize) {
    static T: OnceLock<(Tokenizer, usize)> = OnceLock::new();
    T.get_or_init(|| {
        common::one_thread();
        let t = Tokenizer::from_file(&common::fixture("tiny-diffugpt/tokenizer.json"))
            .expect("GPT-2 tokenizer fixture");
        let v = t.vocab_size();
        (t, v)
    })
}

fn ids_from(payload: &[u8]) -> Vec<u32> {
    payload
        .chunks(4)
        .map(|c| {
            let mut q = [0u8; 4];
            q[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(q)
        })
        .collect()
}

fn exercise(tok: &Tokenizer, ids: &[u32]) {
    for skip in [false, true] {
        if let Ok(text) = tok.decode(ids, skip) {
            // Decoded text goes back through encode in the C API's round trips.
            let _ = tok.encode(&text);
        }
    }
}

/// Mode 0: an arbitrary tokenizer.json.
fn arbitrary_tokenizer(payload: &[u8]) {
    let Ok(tok) = Tokenizer::from_bytes(payload) else {
        return;
    };
    // Ids may be sparse: the bound that must fit the model is the largest id + 1, not the count.
    // (The token count may be above or below it: ids can repeat as well as skip,
    // regressions/tokenizer_frontend/duplicate-ids-count-above-bound.bin.)
    let v = tok.id_bound();
    tok.check_against_model(v)
        .expect("a model with id_bound rows fits the tokenizer");
    assert!(tok.check_against_model(v.saturating_sub(1)).is_err() || v == 0);
    for s in [
        "",
        "hello world",
        "The cat sat.",
        " \u{e9}\u{1f600}\0x<|endoftext|>",
    ] {
        if let Ok(ids) = tok.encode(s) {
            // check_against_model(v) passed, so a model with v rows must accept them
            // (regressions/tokenizer_frontend/sparse-ids-pass-check-against-model.bin: a
            // 12-token vocabulary with id 500 once passed a check by token count).
            assert!(
                ids.iter().all(|&i| (i as usize) < v),
                "tokenizer with id bound {v} (check_against_model({v}) passed) emitted {ids:?}"
            );
            exercise(&tok, &ids);
        }
    }
    let all: Vec<u32> = (0..(v.min(512) as u32 + 2)).collect();
    exercise(&tok, &all);
    exercise(&tok, &[u32::MAX, 0, u32::MAX - 1]);
}

fuzz_target!(|data: &[u8]| {
    let (g, g_vocab) = gpt2();
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            // `Tokenizer` catches panics of the tokenizers crate (it panics on some malformed
            // files, e.g. tests/fixtures/fuzz/tokenizer-truncated-decoder.bin); only a panic
            // escaping the library fails here.
            common::allowing_caught_panics(|| arbitrary_tokenizer(payload));
        }
        1 => {
            let text = String::from_utf8_lossy(payload);
            let ids = g.encode(&text).expect("GPT-2 encodes any text");
            assert!(ids.iter().all(|&i| (i as usize) < *g_vocab));
            let back = g.decode(&ids, false).expect("GPT-2 decodes its own ids");
            assert_eq!(back, text, "GPT-2 byte-level round trip lost text");
            let _ = g.decode(&ids, true);
        }
        2 => exercise(g, &ids_from(payload)),
        _ => {
            let ids: Vec<u32> = ids_from(payload).into_iter().map(|i| i % 50300).collect();
            exercise(g, &ids);
        }
    }
});
