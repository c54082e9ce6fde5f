//! Fused element-wise and row kernels of the engine, forward and backward: LayerNorm, tanh-GELU,
//! softmax + weighted cross-entropy over the loss rows, and the AdamW update. Each row kernel is
//! compiled twice, once for AVX-512 (the default x86-64 target has no SSE4.1, so without it
//! `floor` in the polynomial `exp` is a libm call and nothing vectorises) and once portable, and
//! picks at run time. Rows are split across rayon's pool.

use diffugpt::cpu_kernels::exp_f32;
use rayon::prelude::*;

/// Whether the AVX-512 builds of the kernels below can run.
fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `pub fn $name` with `$body` compiled for AVX-512 + FMA (used when the CPU has them) and
/// for the baseline target.
macro_rules! simd_fn {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,fma")]
                unsafe fn fast($($arg: $ty),*) -> $ret $body
                if simd() {
                    // SAFETY: the CPU has the features `fast` is compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            $body
        }
    };
}

/// Rows per parallel task: enough work per task to amortise scheduling.
pub fn rows_per_task(row_len: usize) -> usize {
    (8192 / row_len.max(1)).max(1)
}

const GELU_C: f32 = 0.797_884_6; // sqrt(2/pi)
const GELU_A: f32 = 0.044715;

simd_fn! {
    /// One LayerNorm row: `out = (x - mean) * rstd * w + b`; returns `(mean, rstd)`.
    fn layernorm_row(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
            *o = (v - mean) * rstd * w + b;
        }
        (mean, rstd)
    }
}

/// LayerNorm over rows of `e`: `out`, and each row's mean and 1/std for the backward.
pub fn layernorm_fwd(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
) {
    let e = w.len();
    let r = rows_per_task(e);
    out.par_chunks_mut(e * r)
        .zip(x.par_chunks(e * r))
        .zip(mean.par_chunks_mut(r).zip(rstd.par_chunks_mut(r)))
        .for_each(|((o, x), (m, s))| {
            for (((o, x), m), s) in o.chunks_exact_mut(e).zip(x.chunks_exact(e)).zip(m).zip(s) {
                (*m, *s) = layernorm_row(o, x, w, b, eps);
            }
        });
}

simd_fn! {
    /// One LayerNorm row backward: `dx += ...`, `dw += dout * norm`, `db += dout`.
    fn layernorm_bwd_row(
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        dout: &[f32],
        x: &[f32],
        w: &[f32],
        mean: f32,
        rstd: f32,
    ) -> () {
        let n = x.len() as f32;
        let (mut s_d, mut s_dn) = (0f32, 0f32);
        for ((&d, &v), &w) in dout.iter().zip(x).zip(w) {
            let dnorm = d * w;
            s_d += dnorm;
            s_dn += dnorm * (v - mean) * rstd;
        }
        let (m_d, m_dn) = (s_d / n, s_dn / n);
        for (i, (&d, &v)) in dout.iter().zip(x).enumerate() {
            let norm = (v - mean) * rstd;
            dw[i] += d * norm;
            db[i] += d;
            dx[i] += rstd * (d * w[i] - m_d - norm * m_dn);
        }
    }
}

/// LayerNorm backward over rows: `dx += d(loss)/dx`, `dw += ..`, `db += ..` (the parameter
/// gradients summed per task, then across tasks).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
) {
    let e = w.len();
    let r = rows_per_task(e).max(16);
    // Per-task partial sums, added in task order: a reduction tree shaped by work stealing
    // would make the sums (and a resumed run) differ in the last bits from run to run.
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(e * r)
        .zip(dout.par_chunks(e * r).zip(x.par_chunks(e * r)))
        .zip(mean.par_chunks(r).zip(rstd.par_chunks(r)))
        .map(|((dx, (dout, x)), (m, s))| {
            let (mut dw, mut db) = (vec![0f32; e], vec![0f32; e]);
            for ((((dx, dout), x), &m), &s) in dx
                .chunks_exact_mut(e)
                .zip(dout.chunks_exact(e))
                .zip(x.chunks_exact(e))
                .zip(m)
                .zip(s)
            {
                layernorm_bwd_row(dx, &mut dw, &mut db, dout, x, w, m, s);
            }
            (dw, db)
        })
        .collect();
    for (pw, pb) in &partial {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
}

/// gelu_new(y) = 0.5 y (1 + tanh(u)) = y * sigmoid(2u), u = sqrt(2/pi) (y + 0.044715 y^3).
#[inline(always)]
fn sigmoid_2u(y: f32) -> f32 {
    let u = GELU_C * (y + GELU_A * y * y * y);
    1.0 / (1.0 + exp_f32(-2.0 * u))
}

simd_fn! {
    fn gelu_chunk(out: &mut [f32], pre: &[f32]) -> () {
        for (o, &y) in out.iter_mut().zip(pre) {
            *o = y * sigmoid_2u(y);
        }
    }
}

simd_fn! {
    /// `d *= gelu'(pre)`: s + y s (1 - s) 2 u'(y) with s = sigmoid(2u).
    fn gelu_bwd_chunk(d: &mut [f32], pre: &[f32]) -> () {
        for (d, &y) in d.iter_mut().zip(pre) {
            let s = sigmoid_2u(y);
            let du = GELU_C * (1.0 + 3.0 * GELU_A * y * y);
            *d *= s + 2.0 * y * s * (1.0 - s) * du;
        }
    }
}

const ELEMS_PER_TASK: usize = 16_384;

/// `out = gelu_new(pre)` element-wise.
pub fn gelu_fwd(out: &mut [f32], pre: &[f32]) {
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(pre.par_chunks(ELEMS_PER_TASK))
        .for_each(|(o, p)| gelu_chunk(o, p));
}

/// `d *= gelu_new'(pre)` element-wise (the GELU backward, in place on the output gradient).
pub fn gelu_bwd(d: &mut [f32], pre: &[f32]) {
    d.par_chunks_mut(ELEMS_PER_TASK)
        .zip(pre.par_chunks(ELEMS_PER_TASK))
        .for_each(|(d, p)| gelu_bwd_chunk(d, p));
}

simd_fn! {
    /// Softmax cross-entropy of one row of logits against `target`, in place: returns
    /// `-log softmax(row)[target]` and leaves `coef * (softmax(row) - onehot(target))` in `row`
    /// (the gradient of `coef * loss`).
    fn softmax_ce_row(row: &mut [f32], target: usize, coef: f32) -> f64 {
        let mut m = [f32::NEG_INFINITY; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                m[i] = m[i].max(c[i]);
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .copied()
            .fold(m.iter().copied().fold(f32::NEG_INFINITY, f32::max), f32::max);
        let mut acc = [0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            for i in 0..16 {
                c[i] = exp_f32(c[i] - max);
                acc[i] += c[i];
            }
        }
        let mut sum = 0f32;
        for v in chunks.into_remainder() {
            *v = exp_f32(*v - max);
            sum += *v;
        }
        sum += acc.iter().sum::<f32>();
        // row[target] now holds exp(l_t - max), so -log p_t = ln(sum) - (l_t - max).
        let loss = (sum as f64).ln() - (row[target] as f64).ln();
        let k = coef / sum;
        row.iter_mut().for_each(|v| *v *= k);
        row[target] -= coef;
        loss
    }
}

simd_fn! {
    /// AdamW on one parameter tensor, with candle's operation order (`optim::AdamW::step`).
    fn adamw_chunk(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        grad_scale: f32,
        b1: f32,
        b2: f32,
        inv_bc1: f32,
        inv_bc2: f32,
        eps: f32,
        lr: f32,
        decay: f32,
    ) -> () {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * grad_scale;
            *m = *m * b1 + g * (1.0 - b1);
            *v = *v * b2 + g * g * (1.0 - b2);
            let update = (*m * inv_bc1) / ((*v * inv_bc2).sqrt() + eps);
            *p = *p * decay - update * lr;
        }
    }
}

simd_fn! {
    fn sum_sq_chunk(x: &[f32]) -> f64 {
        let mut acc = [0f32; 16];
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                acc[i] += c[i] * c[i];
            }
        }
        let rest: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        acc.iter().map(|&a| a as f64).sum::<f64>() + rest as f64
    }
}

/// Sum of squares (the gradient norm), f32 within a task and f64 across, in task order
/// (deterministic).
pub fn sum_sq(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x.par_chunks(1 << 16).map(sum_sq_chunk).collect();
    parts.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_derivative_matches_finite_differences() {
        for &y in &[-4.0f32, -1.3, -0.2, 0.0, 0.3, 1.1, 3.7] {
            let f = |y: f64| {
                0.5 * y
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (y + 0.044715 * y * y * y)).tanh())
            };
            let mut out = [0f32];
            gelu_chunk(&mut out, &[y]);
            assert!((out[0] as f64 - f(y as f64)).abs() < 1e-6, "gelu({y})");
            let h = 1e-4;
            let want = (f(y as f64 + h) - f(y as f64 - h)) / (2.0 * h);
            let mut d = [1f32];
            gelu_bwd_chunk(&mut d, &[y]);
            assert!(
                (d[0] as f64 - want).abs() < 1e-5,
                "gelu'({y}) = {} vs {want}",
                d[0]
            );
        }
    }

    #[test]
    fn softmax_ce_row_gives_the_loss_and_its_gradient() {
        let logits: Vec<f32> = (0..37).map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.0).collect();
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        let mut row = logits.clone();
        let loss = softmax_ce_row(&mut row, 5, 0.5);
        assert!((loss - (lse - logits[5] as f64)).abs() < 1e-6);
        for (i, (&g, &l)) in row.iter().zip(&logits).enumerate() {
            let p = ((l as f64) - lse).exp();
            let want = 0.5 * (p - f64::from(u8::from(i == 5)));
            assert!((g as f64 - want).abs() < 1e-6, "{i}: {g} vs {want}");
        }
    }
}
