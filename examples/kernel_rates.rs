//! The CPU kernels alone, on GPT-2 small's five matrix shapes: every instruction set this CPU
//! runs (`cpu_gemm::Isa::supported`), at the short canvas EoS-first decoding runs after its cut
//! (64 rows) and a full one (1024), best of five. Separates the kernels' rate from the rest of the
//! forward that `diffugpt bench` times.
//!
//! Where the int8 integer kernels run (`cpu_int8::kernel`: VNNI or AVX2), their rates follow
//! (GOP/s), and where
//! the bf16 products do (AMX tiles or `vdpbf16ps`, `cpu_bf16::active`), theirs.
//!
//! `cargo run --release --example kernel_rates` (`RAYON_NUM_THREADS=1` for one core;
//! `KERNEL_RATES=f32,int8,bf16` picks the sections, all by default; `DIFFUGPT_CPU_GEMM=panel` or
//! `blocked` the loops of the 1024-row projections, printed above the table).

use std::time::Instant;

use diffugpt::cpu_gemm::{matmul_nt_with, matmul_prepacked_with, pack_nn, Isa};

fn main() {
    let want = |what: &str| {
        std::env::var("KERNEL_RATES").map_or(true, |v| v.split(',').any(|s| s.trim() == what))
    };
    let shapes = [
        (768usize, 2304usize, "c_attn"),
        (768, 768, "attn.c_proj"),
        (768, 3072, "c_fc"),
        (3072, 768, "mlp.c_proj"),
        (768, 50257, "head (strips)"),
    ];
    println!(
        "loops of the projections from 128 rows: {}\n",
        diffugpt::cpu_gemm::driver().name()
    );
    println!("| isa | rows | matrix | k x n | ms | GFLOP/s |");
    println!("| --- | ---: | --- | --- | ---: | ---: |");
    let isas = if want("f32") {
        Isa::supported()
    } else {
        Vec::new()
    };
    for isa in isas.into_iter().filter(|&i| i != Isa::Generic) {
        for m in [64usize, 1024] {
            for (k, n, what) in shapes {
                // Deterministic, unremarkable values (no denormals, no zeros).
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.01).collect();
                let w: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.01).collect();
                // The head's `[N, K]` rows: as the f32 forward holds them (the strips of the
                // `[K, N]` weight, `Rows::F32Strips`) and, below, through the rows' dot tiles.
                let head = n == 50257;
                let packed = if head {
                    diffugpt::cpu_quant::rows_to_f32_strips(&w, k, n)
                } else {
                    pack_nn(&w, k, n)
                };
                let mut out = vec![0f32; m * n];
                let mut run = || matmul_prepacked_with(isa, &x, &packed, None, &mut out, m, k, n);
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
                if head {
                    let best = best_of_five(|| matmul_nt_with(isa, &x, &w, &mut out, m, k, n));
                    let gflops = 2.0 * (m * k * n) as f64 / best / 1e9;
                    println!(
                        "| {} | {m} | head (rows, dot tiles) | {k} x {n} | {:.2} | {gflops:.1} |",
                        isa.name(),
                        best * 1e3
                    );
                }
            }
        }
    }
    // int8 weights on the integer kernels (GOP/s: two operations per byte multiply-add), where
    // they run.
    if want("int8") && diffugpt::cpu_int8::active() {
        int8_rates(&shapes);
    }
    if want("bf16") && diffugpt::cpu_bf16::active() {
        bf16_rates(&shapes);
    }
}

/// Best of five runs of `run`, in seconds, after one warm-up.
fn best_of_five(mut run: impl FnMut()) -> f64 {
    run();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        run();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// bf16 weights on the bf16 products in use, AMX tiles or `vdpbf16ps` (GFLOP/s).
fn bf16_rates(shapes: &[(usize, usize, &str)]) {
    for m in [64usize, 1024] {
        for &(k, n, what) in shapes {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 13) as f32 * 0.01 - 0.06)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5) % 11) as f32 * 0.01 - 0.05)
                .collect();
            let head = n == 50257;
            let b = if head {
                diffugpt::cpu_quant::rows_to_bf16_strips(&w, k, n)
            } else {
                diffugpt::cpu_quant::strips_to_bf16(&pack_nn(&w, k, n), k, n)
            };
            let mut out = vec![0f32; m * n];
            let best = best_of_five(|| {
                if head {
                    diffugpt::cpu_bf16::matmul_head_bf16(&x, &b, &mut out, m, k, n)
                } else {
                    diffugpt::cpu_bf16::matmul_strips_bf16(&x, &b, None, &mut out, m, k, n)
                }
            });
            let gflops = 2.0 * (m * k * n) as f64 / best / 1e9;
            println!(
                "| bf16 {} | {m} | {what} | {k} x {n} | {:.2} | {gflops:.1} |",
                diffugpt::cpu_bf16::path_name(),
                best * 1e3
            );
        }
    }
}

/// int8 weights on the integer kernels of this process (GOP/s: two operations per byte
/// multiply-add).
fn int8_rates(shapes: &[(usize, usize, &str)]) {
    for m in [64usize, 1024] {
        for &(k, n, what) in shapes {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 13) as f32 * 0.01 - 0.06)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5) % 11) as f32 * 0.01 - 0.05)
                .collect();
            let head = n == 50257;
            // The head's rows are [N, K]; the same values serve as such (only the rate matters).
            let q = if head {
                diffugpt::cpu_quant::rows_to_int8_strips(&w, k, n)
            } else {
                diffugpt::cpu_quant::strips_to_int8(&pack_nn(&w, k, n), k, n)
            };
            let mut out = vec![0f32; m * n];
            let best = best_of_five(|| {
                if head {
                    diffugpt::cpu_int8::matmul_head_q8(&x, &q, &mut out, m, k, n)
                } else {
                    diffugpt::cpu_int8::matmul_strips_q8(&x, &q, None, &mut out, m, k, n)
                }
            });
            let gops = 2.0 * (m * k * n) as f64 / best / 1e9;
            println!(
                "| int8 {} | {m} | {what} | {k} x {n} | {:.2} | {gops:.1} (GOP/s) |",
                diffugpt::cpu_int8::path_name(),
                best * 1e3
            );
        }
    }
}
