//! Memory of a generation:
//! * the logits buffers, measured directly: on a 1024-slot canvas the decoder's peak heap must
//!   stay within `Gpt2::forward_bytes` (which counts `LOGIT_CHUNK` rows of logits), far below
//!   the 206 MB that 1024 x 50257 f32 logits would take (a counting global allocator);
//! * the process: with a DiffuGPT-S-sized model (124 M parameters, stored as F16) the peak RSS
//!   must stay within 1.3x the f32 weight size: no duplicate copies of the weights (the 16-bit
//!   file pages are dropped after conversion).
//!
//! Alone in its own test binary so RUSAGE_CHILDREN sees only this child and the allocator only
//! these tests, which take turns (`SERIAL`) so neither's buffers count against the other.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use candle_core::Device;
use diffugpt::{ConfidenceKind, GenerateParams, Gpt2, LengthMode, SamplingParams, Steps, Strategy};

use diffugpt::config::{HfConfig, ModelConfig, SpecialIds};
use diffugpt::model::canonical_shapes;
use diffugpt::weights::Layout;
use safetensors::tensor::{Dtype, TensorView};

/// Live heap bytes and their peak, over all threads.
struct PeakAlloc;

static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

fn grew(n: usize) {
    let live = LIVE.fetch_add(n as u64, Relaxed) + n as u64;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: forwards to the system allocator; the counters are plain atomics.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        grew(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

#[test]
fn decoding_a_1024_slot_canvas_never_holds_all_its_logits() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // GPT-2's vocabulary and context on a 16-wide, 1-layer model: the logits dominate.
    let cfg = ModelConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        n_inner: 64,
        n_positions: 1025,
        ..ModelConfig::gpt2_small()
    };
    let ids =
        SpecialIds::resolve(cfg.vocab_size, &HfConfig::default(), &Default::default()).unwrap();
    let m = Gpt2::random(cfg, ids, 0, &Device::Cpu).unwrap();
    // One step: the confidence strategy scores all 1024 masked slots at once.
    let p = GenerateParams {
        canvas_len: 1024,
        steps: Steps::Fixed(1),
        strategy: Strategy::Confidence(ConfidenceKind::Prob),
        sampling: SamplingParams::default(),
        length: LengthMode::Fixed,
        ..Default::default()
    };
    let mut session = diffugpt::Session::new(&m);
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let g = session.generate(&[], &p, None).unwrap();
    let peak = PEAK.load(Relaxed) - base;
    assert_eq!(g.canvas.len(), 1024);
    let full_logits = 1024 * m.cfg.vocab_size as u64 * 4;
    let budget = m.forward_bytes(1, 1025) + (16 << 20);
    eprintln!(
        "decoder peak heap {:.0} MB (budget {:.0} MB; all logits would be {:.0} MB)",
        peak as f64 / 1e6,
        budget as f64 / 1e6,
        full_logits as f64 / 1e6
    );
    assert!(
        peak <= budget,
        "the decoder held {peak} bytes, over its estimate {budget}: are all {full_logits} bytes of logits materialised?"
    );
}

#[test]
fn generation_peak_rss_within_1_3x_f32_weights() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
