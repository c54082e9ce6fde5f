//! Peak memory of a generation with a DiffuGPT-S-sized model (124 M parameters, stored as F16): the
//! process must stay within 1.3x the f32 weight size — no duplicate copies of the weights (the
//! 16-bit file pages are dropped after conversion) and no full-canvas logits per step.
//! Alone in its own test binary so RUSAGE_CHILDREN sees only this child.

use std::process::Command;

use diffugpt::config::{HfConfig, ModelConfig, SpecialIds};
use diffugpt::model::canonical_shapes;
use diffugpt::weights::Layout;
use safetensors::tensor::{Dtype, TensorView};

#[test]
fn generation_peak_rss_within_1_3x_f32_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::gpt2_small();
    let shapes = canonical_shapes(&cfg, false);
    let largest = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .max()
        .unwrap();
    // Small constant weights (f16 0x1400 ~ 0.001): values do not matter for memory.
    let buf: Vec<u8> = [0x00u8, 0x14].repeat(largest);
    let views: Vec<(String, TensorView)> = shapes
        .iter()
        .map(|(n, s)| {
            let bytes = 2 * s.iter().product::<usize>();
            (
                Layout::DiffuGpt.file_name(n),
                TensorView::new(Dtype::F16, s.clone(), &buf[..bytes]).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.path().join("model.safetensors"))
        .unwrap();
    drop(buf);
    let ids =
        SpecialIds::resolve(cfg.vocab_size, &HfConfig::default(), &Default::default()).unwrap();
    let hf = HfConfig::from_model(&cfg, &ids);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&hf).unwrap(),
    )
    .unwrap();
    let tok = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-diffugpt/tokenizer.json"
    );

    let status = Command::new(env!("CARGO_BIN_EXE_diffugpt"))
        .args([
            "generate",
            "--canvas",
            "256",
            "--steps",
            "2",
            "--tokenizer",
            tok,
            "--model",
        ])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall writing into a zeroed struct we own.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) },
        0
    );
    let peak = ru.ru_maxrss as f64 * 1024.0; // kilobytes on Linux
    let weights_f32 = cfg.param_count() as f64 * 4.0;
    let ratio = peak / weights_f32;
    eprintln!("peak RSS {:.0} MB = {ratio:.2} x f32 weights", peak / 1e6);
    assert!(
        ratio <= 1.3,
        "peak RSS {:.0} MB is {ratio:.2}x the f32 weights",
        peak / 1e6
    );
    assert!(
        ratio >= 0.9,
        "the child must actually have loaded the weights ({ratio:.2}x)"
    );
}
