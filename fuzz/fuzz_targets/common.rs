//! Helpers shared by the fuzz targets (each target includes this file with `mod common;`).
#![allow(dead_code)]

use std::path::PathBuf;

/// `tests/fixtures/<rel>` of the repository this fuzz crate lives in.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

/// `fuzz/data/<rel>`.
pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(rel)
}

/// A per-process scratch directory (under $TMPDIR), created once; `scripts/fuzz.sh` points
/// TMPDIR into fuzz/target so nothing is left in /tmp.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dgpt-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Compute on one thread: the fuzzer is single-job and the machines are shared. Call it first
/// in every target: it claims rayon's global pool, so a fuzzed `dgpt_model_params.n_threads`
/// (up to 4096) cannot spawn thousands of threads later, and candle/gemm read the variable.
pub fn one_thread() {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
}

/// Runs a forward pass over a few valid ids on a loaded model; with random or fuzzed weights
/// the numbers are meaningless, the point is that nothing panics or reads out of bounds.
pub fn smoke_forward(gpt: &diffugpt::model::Gpt2) {
    use diffugpt::model::AttnMask;
    let n = gpt.cfg.n_positions.min(3);
    let ids: Vec<u32> = [gpt.ids.eos, gpt.ids.mask, 0][..n].to_vec();
    let _ = gpt.forward_logits(&ids, &AttnMask::Bidirectional);
    let _ = gpt.forward_logits(&ids, &AttnMask::Causal);
}

/// `DGPT_FUZZ_VERBOSE=1` prints each outcome (to check that seeds reach deep paths).
pub fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("DGPT_FUZZ_VERBOSE").is_some())
}

/// Runs `f` under a silent panic hook, for library calls that deliberately catch panics of a
/// dependency (`Tokenizer` turns panics of the tokenizers crate into `Error::Tokenizer`).
/// libfuzzer-sys's own hook aborts on every panic, even a caught one; here only a panic that
/// escapes `f` is a failure.
pub fn allowing_caught_panics<T>(f: impl FnOnce() -> T) -> T {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(prev);
    match r {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!("panic escaped the library call (or a harness assertion failed): {msg}");
            std::process::abort()
        }
    }
}
