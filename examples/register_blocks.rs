//! The register blocks alone, with every operand in L1: how close to the CPU's peak the shape of a
//! block can get before memory and the drivers take their share. Copies of the f32 strip block
//! (`R` rows x 32 columns, as `cpu_gemm`'s AVX-512 `micro`) and of the int8 VNNI block (as
//! `cpu_int8`'s `block`, with and without its per-32 scale epilogue), run on one thread over the
//! same few KiB again and again. Compare with `kernel_rates` (the kernels on the forward's shapes)
//! and with the peaks `diffugpt bench` prints.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release --example register_blocks`

#[cfg(target_arch = "x86_64")]
mod blocks {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    /// `R` rows x 32 columns, `kc` deep: broadcast an activation, two FMAs per weight row.
    #[target_feature(enable = "avx512f")]
    unsafe fn f32_block<const R: usize>(
        x: *const f32,
        ldx: usize,
        w: *const f32,
        out: *mut f32,
        kc: usize,
    ) {
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        for kk in 0..kc {
            let w0 = _mm512_loadu_ps(w.add(kk * 32));
            let w1 = _mm512_loadu_ps(w.add(kk * 32 + 16));
            for i in 0..R {
                let a = _mm512_set1_ps(*x.add(i * ldx + kk));
                acc0[i] = _mm512_fmadd_ps(a, w0, acc0[i]);
                acc1[i] = _mm512_fmadd_ps(a, w1, acc1[i]);
            }
        }
        for i in 0..R {
            _mm512_storeu_ps(out.add(i * 32), acc0[i]);
            _mm512_storeu_ps(out.add(i * 32 + 16), acc1[i]);
        }
    }

    /// `R` rows x 32 columns over `nb` blocks of 32 depth rows (1152-byte weight blocks: 32
    /// scales, then 8 groups of 32 columns x 4 bytes); `SCALES`: the per-block f32 epilogue.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni_block<const R: usize, const SCALES: bool>(
        xq: *const i8,
        kq: usize,
        xd: *const f32,
        w: *const u8,
        out: *mut f32,
        nb: usize,
    ) {
        let mut f0 = [_mm512_setzero_ps(); R];
        let mut f1 = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let blk = w.add(b * 1152);
            let s0 = _mm512_loadu_ps(blk as *const f32);
            let s1 = _mm512_loadu_ps((blk as *const f32).add(16));
            let vals = blk.add(128);
            let mut a0 = [_mm512_setzero_si512(); R];
            let mut a1 = [_mm512_setzero_si512(); R];
            for g in 0..8 {
                let gp = vals.add(g * 128) as *const i32;
                let w0 = _mm512_loadu_epi32(gp);
                let w1 = _mm512_loadu_epi32(gp.add(16));
                for i in 0..R {
                    let p = xq.add(i * kq + b * 32 + g * 4) as *const i32;
                    let xv = _mm512_set1_epi32(p.read_unaligned());
                    a0[i] = _mm512_dpbusd_epi32(a0[i], w0, xv);
                    a1[i] = _mm512_dpbusd_epi32(a1[i], w1, xv);
                }
            }
            for i in 0..R {
                if SCALES {
                    let d = _mm512_set1_ps(*xd.add(i * nb + b));
                    f0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0[i]), _mm512_mul_ps(s0, d), f0[i]);
                    f1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1[i]), _mm512_mul_ps(s1, d), f1[i]);
                } else {
                    // Integer sums only (no scales): what the block would cost with coarser ones.
                    f0[i] =
                        _mm512_castsi512_ps(_mm512_add_epi32(a0[i], _mm512_castps_si512(f0[i])));
                    f1[i] =
                        _mm512_castsi512_ps(_mm512_add_epi32(a1[i], _mm512_castps_si512(f1[i])));
                }
            }
        }
        for i in 0..R {
            _mm512_storeu_ps(out.add(i * 32), f0[i]);
            _mm512_storeu_ps(out.add(i * 32 + 16), f1[i]);
        }
    }

    /// `R` rows x `8 C` columns, `kc` deep, AVX2+FMA: broadcast an activation, `C` FMAs per
    /// weight row (`R x C` accumulators of the 16 registers).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // register arrays indexed in step
    unsafe fn avx2_block<const R: usize, const C: usize>(
        x: *const f32,
        ldx: usize,
        w: *const f32,
        out: *mut f32,
        kc: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for kk in 0..kc {
            let wv: [__m256; C] =
                std::array::from_fn(|j| _mm256_loadu_ps(w.add(kk * 8 * C + 8 * j)));
            for i in 0..R {
                let a = _mm256_broadcast_ss(&*x.add(i * ldx + kk));
                for j in 0..C {
                    acc[i][j] = _mm256_fmadd_ps(a, wv[j], acc[i][j]);
                }
            }
        }
        for i in 0..R {
            for j in 0..C {
                _mm256_storeu_ps(out.add(i * 8 * C + 8 * j), acc[i][j]);
            }
        }
    }

    fn avx2_row<const R: usize, const C: usize>() {
        let kc = 128;
        let (x, w) = (vec![0.01f32; R * kc], vec![0.02f32; kc * 8 * C]);
        let mut o = vec![0f32; R * 8 * C];
        let r = time((2 * R * kc * 8 * C) as f64, || {
            // SAFETY: AVX2 and FMA detected by the caller; sizes as allocated above.
            unsafe {
                avx2_block::<R, C>(
                    black_box(x.as_ptr()),
                    kc,
                    black_box(w.as_ptr()),
                    black_box(o.as_mut_ptr()),
                    kc,
                )
            }
        });
        println!(
            "| f32 FMA (AVX2) | {R} x {} | {kc} deep | {r:.1} GFLOP/s |",
            8 * C
        );
    }

    fn time(ops_per_call: f64, mut call: impl FnMut()) -> f64 {
        let reps = (2e9 / ops_per_call).max(1.0) as usize;
        call();
        let t = Instant::now();
        for _ in 0..reps {
            call();
        }
        ops_per_call * reps as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    fn f32_row<const R: usize>() {
        let kc = 128;
        let (x, w) = (vec![0.01f32; R * kc], vec![0.02f32; kc * 32]);
        let mut o = vec![0f32; R * 32];
        let r = time((2 * R * kc * 32) as f64, || {
            // SAFETY: AVX-512F detected by the caller; sizes as allocated above.
            unsafe {
                f32_block::<R>(
                    black_box(x.as_ptr()),
                    kc,
                    black_box(w.as_ptr()),
                    black_box(o.as_mut_ptr()),
                    kc,
                )
            }
        });
        println!("| f32 FMA | {R} x 32 | {kc} deep | {r:.1} GFLOP/s |");
    }

    fn vnni_row<const R: usize, const SCALES: bool>() {
        let nb = 8;
        let kq = nb * 32;
        let (xq, xd, w) = (
            vec![1i8; R * kq],
            vec![0.5f32; R * nb],
            vec![3u8; nb * 1152],
        );
        let mut o = vec![0f32; R * 32];
        let r = time((2 * R * kq * 32) as f64, || {
            // SAFETY: AVX-512F and VNNI detected by the caller; sizes as allocated above.
            unsafe {
                vnni_block::<R, SCALES>(
                    black_box(xq.as_ptr()),
                    kq,
                    xd.as_ptr(),
                    black_box(w.as_ptr()),
                    black_box(o.as_mut_ptr()),
                    nb,
                )
            }
        });
        let what = if SCALES {
            "with per-32 scales"
        } else {
            "integer sums only"
        };
        println!("| int8 vpdpbusd | {R} x 32 | {kq} deep, {what} | {r:.1} GOP/s |");
    }

    pub fn run() {
        println!("| instructions | rows x columns | depth | one thread |");
        println!("| --- | --- | --- | ---: |");
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            avx2_row::<6, 2>();
            avx2_row::<4, 3>();
            avx2_row::<3, 4>();
            avx2_row::<5, 2>();
        }
        if !std::is_x86_feature_detected!("avx512f") {
            println!("no AVX-512 on this CPU: nothing more to measure");
            return;
        }
        f32_row::<8>();
        f32_row::<12>();
        f32_row::<14>();
        if std::is_x86_feature_detected!("avx512vnni") {
            vnni_row::<4, true>();
            vnni_row::<4, false>();
            vnni_row::<6, true>();
            vnni_row::<6, false>();
        }
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    blocks::run();
    #[cfg(not(target_arch = "x86_64"))]
    println!("x86-64 only");
}
