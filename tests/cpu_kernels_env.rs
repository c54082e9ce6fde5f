//! `DIFFUGPT_CPU_KERNELS=generic` forces the portable CPU path (candle's GEMM, the scalar row
//! kernels, no weight packing) on a machine with AVX-512. A test binary of its own: the switch is
//! read once per process, so nothing may touch the kernels before the variable is set. CI also
//! runs `tests/parity.rs` and `tests/decode.rs` with it (`.ci/run`), checking that path against
//! the golden logits.

use std::path::PathBuf;

use diffugpt::{AttnMask, LoadOptions, Model};

#[test]
fn generic_forces_the_portable_kernels() {
    std::env::set_var(diffugpt::cpu_gemm::KERNELS_ENV, "generic");
    assert!(!diffugpt::cpu_gemm::available());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-diffugpt");
    let m = Model::load(&dir, LoadOptions::default()).unwrap();
    assert!(
        !m.gpt.is_packed(),
        "weights packed for kernels that are switched off"
    );
    // The forward runs (and is checked against goldens by tests/parity.rs under the same switch).
    let logits = m
        .gpt
        .forward_logits(&[50256, 15496, 11, 995], &AttnMask::Bidirectional)
        .unwrap();
    assert_eq!(logits.dims()[0], 4);
}
