//! Training soak benchmark: runs the trainer for hundreds of steps and prints, every 25 steps,
//! the resident set (VmRSS), its peak (VmHWM) and the step rate, so that a step that grows memory
//! shows as a rising RSS column long before it exhausts the machine.
//!
//! ```sh
//! cargo bench -p diffugpt-training --bench train_soak                       # 300 steps, 4L x 256
//! cargo bench -p diffugpt-training --bench train_soak -- --steps 100 --layers 2 --width 128
//! cargo bench -p diffugpt-training --bench train_soak -- --backend candle   # the candle path
//! cargo bench -p diffugpt-training --bench train_soak -- --corpus ../shared/data/corpus/gcide.txt
//! ```
//!
//! Data: `--corpus FILE` (blank-line separated entries; default the repository's fixture
//! fortunes), prepared as eos-pad blocks of 128 tokens with the GPT-2 tokenizer; diffusion from
//! scratch, batch 8, no gradient accumulation, validation every 100 steps. Exits non-zero when
//! RSS after the last step exceeds RSS after step 50 by more than 10 %.

use std::path::PathBuf;
use std::time::Instant;

use diffugpt_training::config::{Diffusion, Init, Optim, Pipeline, TrainConfig};
use diffugpt_training::data::Kind;
use diffugpt_training::prepare::{prepare, LongDocs, PadVariant, PrepareOptions, Splitter};
use diffugpt_training::train::{train_observed, StopAt};

/// `VmRSS` and `VmHWM` of this process in MiB (0 where /proc is not there).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let steps: usize = arg(&args, "--steps", 300);
    let backend: String = arg(&args, "--backend", "auto".to_string());
    let layers: usize = arg(&args, "--layers", 4);
    let width: usize = arg(&args, "--width", 256);
    let corpus: PathBuf = arg(
        &args,
        "--corpus",
        root.join("training/tests/fixtures/corpus/fortunes.txt"),
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let mut o = PrepareOptions::new(
        corpus.clone(),
        root.join("tests/fixtures/tiny-diffugpt/tokenizer.json"),
        data.clone(),
    );
    o.splitter = if corpus.ends_with("fortunes.txt") {
        Splitter::Percent
    } else {
        Splitter::BlankLine
    };
    o.kind = Kind::Padded;
    o.variant = PadVariant::EosPad;
    o.block_len = 128;
    o.long_docs = LongDocs::Split;
    prepare(&o).expect("prepare");
    let cfg = TrainConfig {
        pipeline: Pipeline::Diffusion,
        init: Init::Scratch {
            n_layer: layers,
            n_head: (width / 64).max(1),
            n_embd: width,
            n_positions: 128,
        },
        train_data: data.join("train"),
        val_data: Some(data.join("val")),
        seq_len: 128,
        batch_size: 8,
        grad_accum: 1,
        steps,
        optim: Optim {
            max_lr: 1e-3,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_frac: 0.1,
            div_factor: 25.0,
            final_div_factor: 1e4,
            grad_clip: 1.0,
        },
        diffusion: Diffusion::default(),
        log_every: 25,
        eval_every: 100,
        eval_batches: 2,
        save_every: 0,
        keep_last: 1,
        seed: 0,
        out_dir: tmp.path().join("run"),
        backend: serde_json::from_value(serde_json::Value::String(backend.clone()))
            .expect("--backend auto | engine | candle"),
    };
    println!(
        "train_soak: {layers}L x {width}, batch 8 x 128, {steps} steps, backend {backend}, corpus {}",
        corpus.display()
    );
    println!("| step | RSS MiB | peak MiB | s/step (last 25) |");
    println!("| ---: | ---: | ---: | ---: |");
    let mut last = Instant::now();
    let mut at50 = None;
    let mut end = 0.0;
    train_observed(&cfg, None, false, StopAt::default(), &mut |step| {
        let (rss, hwm) = rss_mib();
        if step == 50 {
            at50 = Some(rss);
        }
        end = rss;
        if step % 25 == 0 || step == 1 {
            let per = last.elapsed().as_secs_f64() / if step == 1 { 1.0 } else { 25.0 };
            println!("| {step} | {rss:.0} | {hwm:.0} | {per:.3} |");
            last = Instant::now();
        }
    })
    .expect("training");
    if let Some(base) = at50 {
        let growth = (end - base) / base;
        println!(
            "RSS after step {steps} vs step 50: {:+.1} %",
            100.0 * growth
        );
        if growth > 0.10 {
            eprintln!("memory grows with the steps");
            std::process::exit(1);
        }
    }
}
