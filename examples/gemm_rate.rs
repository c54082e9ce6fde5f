use diffugpt::cpu_gemm::*;
use std::time::Instant;
fn main() {
    let isa = isa();
    for &m in &[64usize, 1024] {
        for &(k, n, what) in &[(768usize, 2304usize, "c_attn"), (768, 3072, "c_fc"), (3072, 768, "mlp_proj"), (768, 50257, "head")] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.01).collect();
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.01).collect();
            let mut out = vec![0f32; m * n];
            let head = what == "head";
            let p = if head { vec![] } else { pack_nn(&w, k, n) };
            let run = |out: &mut Vec<f32>| if head { matmul_nt_with(isa, &x, &w, out, m, k, n) } else { matmul_prepacked_with(isa, &x, &p, None, out, m, k, n) };
            run(&mut out);
            let mut best = f64::MAX;
            for _ in 0..5 { let t = Instant::now(); run(&mut out); best = best.min(t.elapsed().as_secs_f64()); }
            println!("{isa:?} m={m} {what} {k}x{n}: {:.2} ms {:.1} GFLOP/s", best * 1e3, 2.0 * (m * k * n) as f64 / best / 1e9);
        }
    }
}
