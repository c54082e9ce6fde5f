//! Criterion benches on a DiffuGPT-S-shaped model with random weights (no file needed):
//! forward latency per canvas size (throughput in positions) and fixed vs EoS-first decoding
//! (throughput in useful answer tokens). `cargo bench --bench forward`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use diffugpt::bench::{decode_params, forward_once, random_small_model};
use diffugpt::{LengthMode, LengthPredictor, Session};

fn forward(c: &mut Criterion) {
    let model = random_small_model(0).expect("random model");
    let mut g = c.benchmark_group("forward");
    g.sample_size(10);
    for t in [64usize, 256, 1024] {
        g.throughput(Throughput::Elements(t as u64));
        g.bench_with_input(BenchmarkId::from_parameter(t), &t, |b, &t| {
            b.iter(|| forward_once(&model, t, t).expect("forward"))
        });
    }
    g.finish();

    let prompt: Vec<u32> = (100..132).collect();
    let answer = 32usize;
    let mut g = c.benchmark_group("decode-512x64");
    g.sample_size(10);
    g.throughput(Throughput::Elements(answer as u64));
    let fixed = decode_params(512, 64, false);
    g.bench_function("fixed", |b| {
        b.iter(|| {
            Session::new(&model)
                .generate(&prompt, &fixed, None)
                .expect("decode")
        })
    });
    let mut eos = decode_params(512, 64, true);
    eos.length = LengthMode::EosFirst {
        predictor: LengthPredictor::Oracle(answer),
        margin: 8,
        margin_ratio: 0.25,
        grow: false,
    };
    g.bench_function("eosfirst", |b| {
        b.iter(|| {
            Session::new(&model)
                .generate(&prompt, &eos, None)
                .expect("decode")
        })
    });
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
