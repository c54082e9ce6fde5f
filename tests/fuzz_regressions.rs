//! Inputs that crashed a fuzz target (fuzz/regressions/), replayed through the public API in the
//! ordinary test suite: each must now give an error or a result, never a panic.

use std::path::PathBuf;

use diffugpt::config::HfConfig;
use diffugpt::tokenizer::Tokenizer;
use diffugpt::{Error, LoadOptions};

fn regression(path: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(path),
    )
    .unwrap()
}

/// `n_embd` near 2^62 overflowed `4 * n_embd` (the default n_inner) while resolving the config.
#[test]
fn huge_n_embd_is_a_config_error() {
    let cfg = regression("config_json/n_embd-times-4-overflow.json");
    assert!(HfConfig::parse(std::str::from_utf8(&cfg).unwrap()).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/diffugpt-f32");
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.path().join("config.json"), &cfg).unwrap();
    match diffugpt::weights::load(dir.path(), LoadOptions::default()) {
        Err(Error::Config(_)) | Err(Error::WrongShape { .. }) => {}
        other => panic!(
            "expected a config/shape error, got {:?}",
            other.map(|(m, _)| m.cfg)
        ),
    }
}

/// A tokenizer.json with a truncated decoder section made the tokenizers crate panic; the
/// wrapper turns that into Error::Tokenizer. The input (`{"decoder":{"type":"ByteLevel",`) no
/// longer parses at all, so the error it must give is pinned, and the decode path the panic was
/// in is replayed on the same decoder section completed into a parseable file.
#[test]
fn malformed_decoder_never_panics() {
    // Kept out of fuzz/regressions/: libFuzzer's panic hook aborts even on a panic the library
    // catches, so this input is replayed here instead.
    let input = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz/tokenizer-truncated-decoder.bin"),
    )
    .unwrap();
    // Mode byte 0 of the fuzz target: the rest is the tokenizer.json.
    match Tokenizer::from_bytes(&input[1..]) {
        Err(Error::Tokenizer(m)) => assert!(m.contains("malformed tokenizer.json"), "{m}"),
        other => panic!("expected a malformed-tokenizer error, got {other:?}"),
    }
    // The same decoder in a minimal complete file: loads, and decoding ids it does not know
    // gives text or an error, never a panic.
    let complete = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":null,"post_processor":null,
        "decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
        "model":{"type":"WordLevel","vocab":{"a":0,"b":1},"unk_token":"a"}}"#;
    let tok = Tokenizer::from_bytes(complete.as_bytes()).unwrap();
    let ids: Vec<u32> = (0..64).collect();
    for skip in [false, true] {
        let text = tok.decode(&ids, skip).unwrap();
        assert_eq!(text, "ab");
        assert_eq!(tok.encode(&text).unwrap(), [0]);
    }
}

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A 12-token tokenizer whose "cat" has id 500 passed `check_against_model(12)` (a check by
/// token count): ids must fit the model's rows, so the bound is the largest id + 1.
#[test]
fn sparse_tokenizer_ids_are_checked_by_their_largest_id() {
    let tok = Tokenizer::from_file(&fixture("fuzz/sparse_ids_wordlevel.json")).unwrap();
    assert_eq!(tok.vocab_size(), 12);
    assert_eq!(tok.id_bound(), 501);
    assert!(matches!(
        tok.check_against_model(12),
        Err(Error::Tokenizer(m)) if m.contains("id 500")
    ));
    assert!(tok.check_against_model(500).is_err());
    tok.check_against_model(501).unwrap();
    assert!(tok.encode("cat").unwrap().iter().all(|&i| i < 501));
    // Loading it next to a model with fewer rows is refused.
    let opts = LoadOptions {
        tokenizer: Some(fixture("fuzz/sparse_ids_wordlevel.json")),
        ..Default::default()
    };
    match diffugpt::Model::load(&fixture("parity/diffugpt-f32"), opts) {
        Err(Error::Tokenizer(m)) => assert!(m.contains("id 500"), "{m}"),
        other => panic!("expected a tokenizer error, got ok={}", other.is_ok()),
    }
}

/// Ids can also repeat (two tokens share id 5): the token count is then above the largest id + 1,
/// and the bound, not the count, is what a model must cover.
#[test]
fn duplicate_tokenizer_ids_are_bounded_by_the_largest_id() {
    let tok = Tokenizer::from_file(&fixture("fuzz/duplicate_ids_wordlevel.json")).unwrap();
    // The largest id is 10 ("?" and "<|endoftext|>"; the added token reuses the vocab's id).
    assert_eq!(tok.id_bound(), 11);
    assert!(tok.vocab_size() > tok.id_bound(), "{}", tok.vocab_size());
    tok.check_against_model(11).unwrap();
    assert!(matches!(
        tok.check_against_model(10),
        Err(Error::Tokenizer(m)) if m.contains("id 10")
    ));
    let ids = tok.encode("the cat sat <|endoftext|>").unwrap();
    assert!(!ids.is_empty() && ids.iter().all(|&i| i < 11), "{ids:?}");
}

/// A huge (finite, hence accepted) margin ratio overflowed the cut length; it must keep the
/// whole canvas instead.
#[test]
fn huge_margin_ratio_keeps_the_whole_canvas() {
    use diffugpt::{GenerateParams, LengthMode, LengthPredictor, Steps};
    let model = diffugpt::Model::load(&fixture("tiny-diffugpt"), LoadOptions::default()).unwrap();
    let ids = model.gpt.ids;
    for ratio in [2.6e32f32, f32::MAX] {
        let params = GenerateParams {
            canvas_len: 12,
            steps: Steps::Fixed(3),
            // Oracle 2: the prediction is known, so only the margin decides the cut.
            length: LengthMode::EosFirst {
                predictor: LengthPredictor::Oracle(2),
                margin: 0,
                margin_ratio: ratio,
                grow: false,
            },
            ..Default::default()
        };
        let g = model.session().generate(&[ids.eos], &params, None).unwrap();
        assert_eq!(g.stats.predicted_len, Some(2));
        assert_eq!(g.canvas.len(), 12, "ratio {ratio} cut the canvas");
    }
}

/// With `ban_mask` off the sampler may reveal the mask id itself; the decoder looked for the
/// mask id to find masked slots and never ended. A revealed slot is revealed whatever its token.
#[test]
fn revealing_the_mask_id_ends() {
    use diffugpt::{ConfidenceKind, GenerateParams, LengthMode, SamplingParams, Steps, Strategy};
    let model = diffugpt::Model::load(&fixture("tiny-diffugpt"), LoadOptions::default()).unwrap();
    let ids = model.gpt.ids;
    let mut hit = 0;
    for seed in 0..8u64 {
        let params = GenerateParams {
            canvas_len: 16,
            steps: Steps::Fixed(4),
            strategy: Strategy::Confidence(ConfidenceKind::NegEntropy),
            // A penalty below 1 boosts seen ids; the prompt is full of mask ids, so the mask
            // id wins many rows.
            sampling: SamplingParams {
                repetition_penalty: 0.05,
                ..Default::default()
            },
            length: LengthMode::Fixed,
            ban_mask: false,
            seed,
            ..Default::default()
        };
        let prompt = vec![ids.mask; 4];
        let mut steps = 0;
        let mut cb = |_: &diffugpt::StepInfo| {
            steps += 1;
            // A backstop so a regression fails instead of hanging the test suite.
            steps < 1000
        };
        let g = model
            .session()
            .generate(&prompt, &params, Some(&mut cb))
            .unwrap();
        assert!(!g.stats.cancelled, "seed {seed}: no end after 1000 steps");
        assert_eq!(g.stats.steps, 4, "seed {seed}");
        if g.canvas.contains(&ids.mask) {
            hit += 1;
            // The answer runs to the first end token; a revealed mask id is an ordinary token.
            let end = g
                .canvas
                .iter()
                .position(|&t| ids.is_end(t))
                .unwrap_or(g.canvas.len());
            assert_eq!(g.tokens.len(), end, "seed {seed}");
        }
    }
    // The test must exercise the path it guards.
    assert!(hit > 0, "no seed revealed the mask id");
}
