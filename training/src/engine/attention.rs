//! Multi-head attention forward and backward straight on the fused `qkv` activations
//! (`[b * t, 3 * e]`: q | k | v, heads contiguous inside each), one rayon task per (sequence,
//! head), its products on strided views through the `gemm` crate (no q/k/v copies). The
//! probabilities are kept (`[b, heads, t, t]`) for the backward.

use diffugpt::cpu_kernels::softmax_row;
use rayon::prelude::*;

use super::linalg::gemm_strided;
use crate::objective::Mask;

/// A raw pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only its own sequence's rows of its own head's columns.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// A method (not a field access) so closures capture the whole `Send` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy)]
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub e: usize,
}

/// `att = softmax(q k^T / sqrt(d) + mask)` per head (stored), `y = att @ v` with heads merged.
pub fn forward(att: &mut [f32], y: &mut [f32], qkv: &[f32], d: Dims, mask: &Mask) {
    let Dims { b, t, heads, e } = d;
    let hd = e / heads;
    let e3 = 3 * e;
    assert!(att.len() == b * heads * t * t && y.len() == b * t * e && qkv.len() == b * t * e3);
    if let Mask::Bias(bias) = mask {
        assert_eq!(bias.len(), b * t * t);
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let yp = Shared(y.as_mut_ptr());
    att.par_chunks_mut(t * t).enumerate().for_each(|(task, p)| {
        let (bi, h) = (task / heads, task % heads);
        let base = qkv[bi * t * e3..].as_ptr();
        // SAFETY: q, k, v of this sequence and head lie inside qkv (t rows of 3e from the
        // sequence's start); p is this task's own t x t block.
        unsafe {
            gemm_strided(
                t,
                t,
                hd,
                p.as_mut_ptr(),
                t,
                false,
                base.add(h * hd),
                (e3, 1),
                base.add(e + h * hd),
                (1, e3),
                false,
            )
        };
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            match mask {
                Mask::Bidirectional => softmax_row(row, scale),
                Mask::Causal => {
                    softmax_row(&mut row[..=i], scale);
                    row[i + 1..].fill(0.0);
                }
                Mask::Bias(bias) => {
                    let bias = &bias[(bi * t + i) * t..][..t];
                    row.iter_mut().zip(bias).for_each(|(s, b)| *s += b);
                    softmax_row(row, scale);
                }
            }
        }
        // SAFETY: this task alone writes its head's hd columns of its sequence's rows of y.
        unsafe {
            gemm_strided(
                t,
                hd,
                t,
                yp.get().add(bi * t * e + h * hd),
                e,
                false,
                p.as_ptr(),
                (t, 1),
                base.add(2 * e + h * hd),
                (e3, 1),
                false,
            )
        };
    });
}

/// The backward of [`forward`]: `dqkv` (overwritten) from `dy` (`[b * t, e]`).
pub fn backward(dqkv: &mut [f32], dy: &[f32], att: &[f32], qkv: &[f32], d: Dims) {
    let Dims { b, t, heads, e } = d;
    let hd = e / heads;
    let e3 = 3 * e;
    assert!(att.len() == b * heads * t * t && dy.len() == b * t * e && qkv.len() == b * t * e3);
    assert_eq!(dqkv.len(), qkv.len());
    let scale = 1.0 / (hd as f32).sqrt();
    let dp = Shared(dqkv.as_mut_ptr());
    att.par_chunks(t * t).enumerate().for_each_init(
        || vec![0f32; t * t],
        |ds, (task, p)| {
            let (bi, h) = (task / heads, task % heads);
            let base = qkv[bi * t * e3..].as_ptr();
            let dyb = dy[bi * t * e + h * hd..].as_ptr();
            let out = dp.get();
            // SAFETY (all four products): reads stay inside qkv, dy and this task's blocks;
            // writes go to this sequence's rows of this head's q, k and v columns of dqkv,
            // which no other task writes.
            unsafe {
                // dP = dy v^T
                gemm_strided(
                    t,
                    t,
                    hd,
                    ds.as_mut_ptr(),
                    t,
                    false,
                    dyb,
                    (e, 1),
                    base.add(2 * e + h * hd),
                    (1, e3),
                    false,
                );
                // dv = P^T dy
                gemm_strided(
                    t,
                    hd,
                    t,
                    out.add(bi * t * e3 + 2 * e + h * hd),
                    e3,
                    false,
                    p.as_ptr(),
                    (1, t),
                    dyb,
                    (e, 1),
                    false,
                );
            }
            // dS = P * (dP - rowsum(P * dP)), times the scale of the scores.
            for (dr, pr) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                let s: f32 = dr.iter().zip(pr).map(|(d, p)| d * p).sum();
                dr.iter_mut()
                    .zip(pr)
                    .for_each(|(d, &p)| *d = p * (*d - s) * scale);
            }
            unsafe {
                // dq = dS k
                gemm_strided(
                    t,
                    hd,
                    t,
                    out.add(bi * t * e3 + h * hd),
                    e3,
                    false,
                    ds.as_ptr(),
                    (t, 1),
                    base.add(e + h * hd),
                    (e3, 1),
                    false,
                );
                // dk = dS^T q
                gemm_strided(
                    t,
                    hd,
                    t,
                    out.add(bi * t * e3 + e + h * hd),
                    e3,
                    false,
                    ds.as_ptr(),
                    (1, t),
                    base.add(h * hd),
                    (e3, 1),
                    false,
                );
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffugpt::rng::Rng;

    /// `sum(y * r)` for fixed random `r`, in f64 for the finite differences.
    fn objective(qkv: &[f32], r: &[f32], d: Dims, mask: &Mask) -> f64 {
        let mut att = vec![0f32; d.b * d.heads * d.t * d.t];
        let mut y = vec![0f32; d.b * d.t * d.e];
        forward(&mut att, &mut y, qkv, d, mask);
        y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    #[test]
    fn backward_matches_finite_differences_for_every_mask() {
        let d = Dims {
            b: 2,
            t: 5,
            heads: 2,
            e: 8,
        };
        let mut rng = Rng::new(7);
        let n = d.b * d.t * 3 * d.e;
        let qkv: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let r: Vec<f32> = (0..d.b * d.t * d.e).map(|_| rng.normal()).collect();
        let mut bias = vec![0f32; d.b * d.t * d.t];
        for (i, v) in bias.iter_mut().enumerate() {
            let (q, k) = ((i / d.t) % d.t, i % d.t);
            if k > q && rng.below(2) == 0 {
                *v = f32::NEG_INFINITY;
            }
        }
        for mask in [Mask::Bidirectional, Mask::Causal, Mask::Bias(bias)] {
            let mut att = vec![0f32; d.b * d.heads * d.t * d.t];
            let mut y = vec![0f32; d.b * d.t * d.e];
            forward(&mut att, &mut y, &qkv, d, &mask);
            let mut dqkv = vec![0f32; n];
            backward(&mut dqkv, &r, &att, &qkv, d);
            for i in 0..n {
                let h = 1e-2;
                let (mut up, mut down) = (qkv.clone(), qkv.clone());
                up[i] += h;
                down[i] -= h;
                let num = (objective(&up, &r, d, &mask) - objective(&down, &r, d, &mask))
                    / (2.0 * h as f64);
                assert!(
                    (dqkv[i] as f64 - num).abs() < 2e-3 * (1.0 + num.abs()),
                    "{mask:?} element {i}: {} vs {num}",
                    dqkv[i]
                );
            }
        }
    }
}
