//! The CPU kernels alone, on GPT-2 small's four matrix shapes: every instruction set this CPU
//! runs (`cpu_gemm::Isa::supported`), at the short canvas EoS-first decoding runs after its cut
//! (64 rows) and a full one (1024), best of five. Separates the kernels' rate from the rest of the
//! forward that `diffugpt bench` times.
//!
//! `cargo run --release --example kernel_rates` (`RAYON_NUM_THREADS=1` for one core).

use std::time::Instant;

use diffugpt::cpu_gemm::{matmul_nt_with, matmul_prepacked_with, pack_nn, Isa};

fn main() {
    let shapes = [
        (768usize, 2304usize, "c_attn"),
        (768, 3072, "c_fc"),
        (3072, 768, "mlp.c_proj"),
        (768, 50257, "head (nt)"),
    ];
    println!("| isa | rows | matrix | k x n | ms | GFLOP/s |");
    println!("| --- | ---: | --- | --- | ---: | ---: |");
    for isa in Isa::supported().into_iter().filter(|&i| i != Isa::Generic) {
        for m in [64usize, 1024] {
            for (k, n, what) in shapes {
                // Deterministic, unremarkable values (no denormals, no zeros).
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.01).collect();
                let w: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.01).collect();
                let head = n == 50257;
                let packed = if head { Vec::new() } else { pack_nn(&w, k, n) };
                let mut out = vec![0f32; m * n];
                let mut run = || {
                    if head {
                        matmul_nt_with(isa, &x, &w, &mut out, m, k, n)
                    } else {
                        matmul_prepacked_with(isa, &x, &packed, None, &mut out, m, k, n)
                    }
                };
                run();
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t = Instant::now();
                    run();
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let gflops = 2.0 * (m * k * n) as f64 / best / 1e9;
                println!(
                    "| {} | {m} | {what} | {k} x {n} | {:.2} | {gflops:.1} |",
                    isa.name(),
                    best * 1e3
                );
            }
        }
    }
}
