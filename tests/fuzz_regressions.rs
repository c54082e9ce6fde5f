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

/// A tokenizer.json with a truncated decoder section made the tokenizers crate panic while
/// decoding; the wrapper turns that into Error::Tokenizer.
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
    let Ok(tok) = Tokenizer::from_bytes(&input[1..]) else {
        return;
    };
    let ids: Vec<u32> = (0..64).collect();
    for skip in [false, true] {
        if let Ok(text) = tok.decode(&ids, skip) {
            let _ = tok.encode(&text);
        }
    }
    let _ = tok.encode("hello world");
}
