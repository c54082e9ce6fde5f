//! The kernel switch `DIFFUGPT_CPU_KERNELS` forces a CPU path: `generic` (candle's GEMM, the
//! scalar row kernels, no weight packing), `avx2` (the AVX2+FMA kernels, also on an AVX-512 CPU),
//! `avx512`. A test binary of its own: the switch is read once per process, so nothing may touch
//! the kernels before the variable is set. Run with the variable set it checks that value (CI
//! runs it under `generic` and `avx2`, with `tests/parity.rs` and `tests/decode.rs` checking the
//! same path against the golden logits); unset, it forces `generic`. `DIFFUGPT_CPU_GEMM`
//! (`panel`, `blocked`) likewise forces the loops of the many-row products; CI runs this test,
//! the parity and decoding tests under each with the widest kernels.

use std::path::PathBuf;

use diffugpt::cpu_gemm::{driver, isa, Driver, Isa, GEMM_ENV, KERNELS_ENV};
use diffugpt::{AttnMask, LoadOptions, Model};

#[test]
fn the_switch_forces_its_path() {
    let asked = std::env::var(KERNELS_ENV).unwrap_or_else(|_| {
        std::env::set_var(KERNELS_ENV, "generic");
        "generic".into()
    });
    let asked = match asked.as_str() {
        "generic" => Isa::Generic,
        "avx2" => Isa::Avx2,
        "avx512" | "auto" | "" => Isa::Avx512,
        other => panic!("{KERNELS_ENV}={other:?}: run this test with generic, avx2 or avx512"),
    };
    // Never more than the CPU has.
    let best = *Isa::supported().last().unwrap();
    let want = asked.min(best);
    assert_eq!(
        isa(),
        want,
        "asked for {asked:?} on a CPU whose best is {best:?}"
    );
    match std::env::var(GEMM_ENV).as_deref() {
        Ok("panel") => assert_eq!(driver(), Driver::Panel),
        Ok("blocked") => assert_eq!(driver(), Driver::Blocked),
        _ => {}
    }
    eprintln!("kernels: {}, loops: {}", isa().name(), driver().name());

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-diffugpt");
    let m = Model::load(&dir, LoadOptions::default()).unwrap();
    assert_eq!(
        m.gpt.is_packed(),
        want != Isa::Generic,
        "weights are packed exactly when kernels of our own run"
    );
    // The forced path against candle's plain ops (tolerance as tests/parity.rs: 1e-5 of the
    // largest logit), on canvases long enough for every kernel (>= MIN_ROWS rows) and for the
    // many-row loops (>= 128 rows).
    let mut reference = m.gpt.clone();
    reference.reference_ops = true;
    for (len, mask) in [
        (40u32, AttnMask::Bidirectional),
        (40, AttnMask::Causal),
        (150, AttnMask::Bidirectional),
    ] {
        let ids: Vec<u32> = (0..len).map(|i| (i * 7919) % 50257).collect();
        let got: Vec<f32> = m
            .gpt
            .forward_logits(&ids, &mask)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = reference
            .forward_logits(&ids, &mask)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err <= 1e-5 * scale,
            "{len} rows {mask:?}: max err {err} (scale {scale})"
        );
    }
}
