//! The three matrix products of a linear layer's forward and backward, on row-major f32 slices:
//! `x @ w (+ b)` (forward; the head's `dlogits @ wte`), `dy @ w^T` (input gradients; the tied
//! head's logits) and `w_grad += x^T @ dy` (weight gradients). The first two run on the core's
//! AVX-512 kernels ([`diffugpt::cpu_gemm`]) where the CPU has them; the transposed-A product, and
//! everything on CPUs without AVX-512, on the `gemm` crate, whose strided interface reads `x^T`
//! in place and accumulates into the gradient without a temporary. All spread over rayon's pool.

use diffugpt::cpu_gemm;

/// Below this many rows the core's kernels are slower than a general GEMM (matrix-vector shapes).
const MIN_ROWS: usize = 4;

fn own_kernels(m: usize) -> bool {
    m >= MIN_ROWS && cpu_gemm::available()
}

/// Output columns per parallel task of the core's kernels on many rows (their panel width).
const PANEL: usize = 128;

/// Runs `f(x_rows, out_rows, rows)` once, or on row blocks in parallel when the product has
/// fewer column panels than there are threads: the core's kernels split the columns only, so
/// a 128-wide output (a 2 x 128 model's projections, the head's input gradient) would keep one
/// core busy.
fn by_rows(
    x: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    f: impl Fn(&[f32], &mut [f32], usize) + Sync,
) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    if n.div_ceil(PANEL) >= threads || m < 2 * PANEL {
        f(x, out, m);
        return;
    }
    let rows = m.div_ceil(threads);
    x.par_chunks(rows * k)
        .zip(out.par_chunks_mut(rows * n))
        .for_each(|(x, o)| f(x, o, x.len() / k));
}

/// `dst[m, n] = alpha * dst + lhs[m, k] @ rhs[k, n]` (alpha 0 or 1) on strided operands, via
/// the `gemm` crate. Strides in elements: `(row stride, column stride)`.
///
/// # Safety
/// Every element addressed by the shapes and strides must lie inside the given pointers'
/// allocations, and `dst` must not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    parallel: bool,
) {
    let par = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        par,
    );
}

/// `out[m, n] = x[m, k] @ w[k, n] (+ bias[n])`.
pub fn matmul(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(x.len() == m * k && w.len() == k * n && out.len() == m * n);
    if own_kernels(m) {
        by_rows(x, out, m, k, n, |x, o, m| {
            cpu_gemm::matmul_nn(x, w, bias, o, m, k, n)
        });
        return;
    }
    // SAFETY: sizes asserted above; out is exclusively borrowed.
    unsafe {
        gemm_strided(
            m,
            n,
            k,
            out.as_mut_ptr(),
            n,
            false,
            x.as_ptr(),
            (k, 1),
            w.as_ptr(),
            (n, 1),
            true,
        )
    };
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(n) {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
    }
}

/// `out[m, n] = x[m, k] @ w[n, k]^T`.
pub fn matmul_t(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(x.len() == m * k && w.len() == n * k && out.len() == m * n);
    if own_kernels(m) {
        by_rows(x, out, m, k, n, |x, o, m| {
            cpu_gemm::matmul_nt(x, w, o, m, k, n)
        });
        return;
    }
    // SAFETY: sizes asserted above.
    unsafe {
        gemm_strided(
            m,
            n,
            k,
            out.as_mut_ptr(),
            n,
            false,
            x.as_ptr(),
            (k, 1),
            w.as_ptr(),
            (1, k),
            true,
        )
    };
}

/// `dw[k, n] += x[m, k]^T @ dy[m, n]`.
pub fn matmul_tn_acc(x: &[f32], dy: &[f32], dw: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(x.len() == m * k && dy.len() == m * n && dw.len() == k * n);
    // SAFETY: sizes asserted above; dw is exclusively borrowed.
    unsafe {
        gemm_strided(
            k,
            n,
            m,
            dw.as_mut_ptr(),
            n,
            true,
            x.as_ptr(),
            (1, k),
            dy.as_ptr(),
            (n, 1),
            true,
        )
    };
}

/// `db[n] += column sums of dy[m, n]`.
pub fn col_sum_acc(dy: &[f32], db: &mut [f32]) {
    let n = db.len();
    for row in dy.chunks_exact(n) {
        db.iter_mut().zip(row).for_each(|(d, r)| *d += r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffugpt::rng::Rng;

    fn rand(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    /// Plain triple loop: `a[m, k] @ b[k, n]` with element accessors.
    fn reference(
        m: usize,
        k: usize,
        n: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn the_three_products_match_a_triple_loop() {
        let mut rng = Rng::new(3);
        // Shapes on both sides of the kernels' thresholds and with remainders.
        for (m, k, n) in [
            (1, 5, 7),
            (3, 17, 33),
            (9, 64, 40),
            (48, 32, 32),
            (48, 96, 32),
            (48, 32, 128),
            (130, 70, 150),
        ] {
            let x = rand(&mut rng, m * k);
            let w = rand(&mut rng, k * n);
            let b = rand(&mut rng, n);
            let mut out = vec![0f32; m * n];
            matmul(&x, &w, Some(&b), &mut out, m, k, n);
            let mut want = reference(m, k, n, |i, p| x[i * k + p], |p, j| w[p * n + j]);
            want.chunks_exact_mut(n)
                .for_each(|r| r.iter_mut().zip(&b).for_each(|(o, b)| *o += b));
            close(&out, &want);

            // x @ wt^T with wt [n, k]
            let wt = rand(&mut rng, n * k);
            matmul_t(&x, &wt, &mut out, m, k, n);
            close(
                &out,
                &reference(m, k, n, |i, p| x[i * k + p], |p, j| wt[j * k + p]),
            );

            // dw [k, n] += x^T @ dy, starting from a non-zero dw.
            let dy = rand(&mut rng, m * n);
            let start = rand(&mut rng, k * n);
            let mut dw = start.clone();
            matmul_tn_acc(&x, &dy, &mut dw, m, k, n);
            let mut want = reference(k, m, n, |r, i| x[i * k + r], |i, j| dy[i * n + j]);
            want.iter_mut().zip(&start).for_each(|(w, s)| *w += s);
            close(&dw, &want);
        }
    }
}
