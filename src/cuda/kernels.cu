// DiffuGPT forward kernels, compiled at run time with NVRTC (src/cuda/kernels.rs), so a `cuda`
// build needs no nvcc. Self-contained on purpose: no #include, not even cuda_bf16.h (NVRTC would
// need the toolkit's headers on the target machine); bf16 is handled as raw 16-bit patterns.
//
// Conventions (see src/cuda/forward.rs):
// * the residual stream and every GEMM output are f32; tensors that feed a GEMM (LayerNorm output,
//   attention output, GELU output) and the weights are of the compute type T (f32 or bf16);
// * every kernel comes in two instantiations, suffixed _f32 and _bf16 (the type T);
// * row-major everywhere; one CUDA block per row for the row-wise kernels.

typedef unsigned short bf16_t;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16_t x) { return __uint_as_float(((unsigned int)x) << 16); }
__device__ __forceinline__ void store(float *p, float v) { *p = v; }
// Round to nearest even, as torch and half::bf16::from_f32 do; NaN stays a (quiet) NaN.
__device__ __forceinline__ void store(bf16_t *p, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        *p = (bf16_t)((u >> 16) | 0x40u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    *p = (bf16_t)(u >> 16);
}

#define NEG_INF (__int_as_float(0xff800000))

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024). `sh` holds >= 32 floats. Every thread
// gets the result.
__device__ float block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = lane < nw ? sh[lane] : 0.0f;
    r = warp_sum(r);
    return r;
}

// ---------------------------------------------------------------------------------------------
// Embedding: x[t, :] = wte[ids[t], :] + wpe[t, :]   (x is the f32 residual stream)
template <typename T>
__device__ void embed_impl(float *x, const unsigned int *ids, const T *wte, const T *wpe, int C) {
    int t = blockIdx.x;
    const T *e = wte + (size_t)ids[t] * C;
    const T *p = wpe + (size_t)t * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) x[(size_t)t * C + c] = to_f(e[c]) + to_f(p[c]);
}

// ---------------------------------------------------------------------------------------------
// Residual add fused with LayerNorm, one block per row:
//   x += add + add_bias   (when `add` is not NULL: the f32 output of a projection GEMM, bias apart)
//   out = LayerNorm(x) * w + b   (two-pass mean / variance over the row, held in registers' reach
//   by re-reading x: C <= 8 * blockDim.x keeps it in L1)
template <typename T>
__device__ void add_ln_impl(float *x, const float *add, const T *add_bias, const T *w, const T *b,
                            T *out, int C, float eps) {
    __shared__ float sh[32];
    size_t row = blockIdx.x;
    float *xr = x + row * C;
    float s = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = xr[c];
        if (add != 0) {
            v += add[row * C + c] + to_f(add_bias[c]);
            xr[c] = v;
        }
        s += v;
    }
    float mean = block_sum(s, sh) / C;
    float s2 = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = xr[c] - mean;
        s2 += d * d;
    }
    float rstd = rsqrtf(block_sum(s2, sh) / C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        store(&out[row * C + c], (xr[c] - mean) * rstd * to_f(w[c]) + to_f(b[c]));
}

// ---------------------------------------------------------------------------------------------
// MLP activation: out = gelu_new(in + bias), tanh form (GPT-2's gelu_new), written as
// y * sigmoid(2u) = y / (1 + exp(-2u)) like the CPU kernel. n = rows * N elements.
// 64-bit indices throughout (rows * N exceeds 2^31 for long canvases of wide models).
template <typename T>
__device__ void bias_gelu_impl(const float *in, const T *bias, T *out, size_t n, size_t N) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float y = in[i] + to_f(bias[i % N]);
        float u = 0.7978845608028654f * (y + 0.044715f * y * y * y);
        store(&out[i], y / (1.0f + __expf(-2.0f * u)));
    }
}

// ---------------------------------------------------------------------------------------------
// Attention for one sequence, all heads, straight from the fused QKV GEMM output
// qkv [T, 3C] (f32, bias not yet added; q | k | v, head h at columns h*HD .. h*HD+HD of each).
// out [T, C] (type T) = softmax(q k^T / sqrt(HD) (+ causal mask)) v per head.
//
// Flash-attention style: one thread per query row keeps q and the output accumulator in
// registers; the block walks the keys in tiles of ATT_BQ keys staged in shared memory (every thread
// reads the same key: a broadcast, no bank conflicts), with an online softmax rescaled once per
// chunk of 16 keys. Scores never touch global memory. Grid: (ceil(T / ATT_BQ), n_head).
#define ATT_BQ 64
#define ATT_CH 16
template <int HD, typename T>
__device__ void attention_impl(const float *qkv, const T *bias, T *out, int Tn, int C, int causal) {
    __shared__ float ks[ATT_BQ][HD];
    __shared__ float vs[ATT_BQ][HD];
    int h = blockIdx.y;
    int q_idx = blockIdx.x * ATT_BQ + threadIdx.x;
    bool active = q_idx < Tn;
    const float scale = rsqrtf((float)HD);
    float q[HD], acc[HD];
    size_t ld = 3 * (size_t)C;
    if (active) {
        const float *qr = qkv + q_idx * ld + h * HD;
#pragma unroll
        for (int d = 0; d < HD; d++) {
            q[d] = (qr[d] + to_f(bias[h * HD + d])) * scale;
            acc[d] = 0.0f;
        }
    }
    float m = NEG_INF, l = 0.0f;
    // Causal: this block's queries see keys up to its last query.
    int k_end = causal ? min(Tn, (int)(blockIdx.x + 1) * ATT_BQ) : Tn;
    for (int k0 = 0; k0 < k_end; k0 += ATT_BQ) {
        __syncthreads();
        // Stage the tile: ATT_BQ keys x HD dims of K and V, bias added.
        for (int i = threadIdx.x; i < ATT_BQ * HD; i += blockDim.x) {
            int kk = i / HD, d = i % HD;
            int key = k0 + kk;
            float kv = 0.0f, vv = 0.0f;
            if (key < Tn) {
                const float *r = qkv + key * ld + h * HD + d;
                kv = r[C] + to_f(bias[C + h * HD + d]);
                vv = r[2 * C] + to_f(bias[2 * C + h * HD + d]);
            }
            ks[kk][d] = kv;
            vs[kk][d] = vv;
        }
        __syncthreads();
        if (!active) continue;
        int n_keys = min(ATT_BQ, k_end - k0);
        for (int c0 = 0; c0 < n_keys; c0 += ATT_CH) {
            float s[ATT_CH];
            float cm = NEG_INF;
#pragma unroll
            for (int j = 0; j < ATT_CH; j++) {
                int key = k0 + c0 + j;
                float v = NEG_INF;
                if (c0 + j < n_keys && (!causal || key <= q_idx)) {
                    v = 0.0f;
#pragma unroll
                    for (int d = 0; d < HD; d++) v += q[d] * ks[c0 + j][d];
                }
                s[j] = v;
                cm = fmaxf(cm, v);
            }
            if (cm == NEG_INF) continue; // every key of the chunk masked
            float m_new = fmaxf(m, cm);
            float corr = __expf(m - m_new); // m = -inf at the start: exp(-inf) = 0
            l *= corr;
#pragma unroll
            for (int d = 0; d < HD; d++) acc[d] *= corr;
#pragma unroll
            for (int j = 0; j < ATT_CH; j++) {
                float p = __expf(s[j] - m_new); // masked: exp(-inf) = 0
                l += p;
                if (p != 0.0f) {
#pragma unroll
                    for (int d = 0; d < HD; d++) acc[d] += p * vs[c0 + j][d];
                }
            }
            m = m_new;
        }
    }
    if (active) {
        float inv = 1.0f / l;
        T *o = out + (size_t)q_idx * C + h * HD;
#pragma unroll
        for (int d = 0; d < HD; d++) store(&o[d], acc[d] * inv);
    }
}

// ---------------------------------------------------------------------------------------------
// Gather rows for the LM head: out[r, :] = h[rows[r], :].
template <typename T>
__device__ void gather_rows_impl(const T *h, const unsigned int *rows, T *out, int C) {
    int r = blockIdx.x;
    const T *src = h + (size_t)rows[r] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[(size_t)r * C + c] = src[c];
}

// ---------------------------------------------------------------------------------------------
// The step decision for R rows of f32 logits [R, V], one block per row; the logits never leave the
// GPU. Mirrors Sampler::choose for greedy decoding (src/sampler.rs):
// * p_end: softmax probability of the end ids (eos, optional pad: end1 < 0 = none) under the RAW
//   logits, and the raw argmax (the EoS-first `argmax` predictor reads it);
// * banned ids (up to 4; -1 = unused) count as -inf, then: token = argmax (first index on ties),
//   prob = its softmax probability, margin = top1 - top2 probability, negent = -entropy.
// Outputs: tok[r], raw_arg[r], stats[r * 4 + {0: prob, 1: margin, 2: negent, 3: p_end}].
struct ArgTop {
    float v1;
    int i1;
    float v2;
};

__device__ __forceinline__ ArgTop argtop_merge(ArgTop a, ArgTop b) {
    ArgTop r;
    bool a_first = a.v1 > b.v1 || (a.v1 == b.v1 && a.i1 < b.i1) || b.i1 < 0;
    if (a.i1 < 0) a_first = false;
    ArgTop hi = a_first ? a : b, lo = a_first ? b : a;
    r.v1 = hi.v1;
    r.i1 = hi.i1;
    r.v2 = fmaxf(hi.v2, lo.v1); // the multiset's second largest (ties give margin 0, as on the CPU)
    return r;
}

__device__ ArgTop block_argtop(ArgTop a, ArgTop *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        ArgTop b;
        b.v1 = __shfl_xor_sync(0xffffffffu, a.v1, o);
        b.i1 = __shfl_xor_sync(0xffffffffu, a.i1, o);
        b.v2 = __shfl_xor_sync(0xffffffffu, a.v2, o);
        a = argtop_merge(a, b);
    }
    __syncthreads();
    if (lane == 0) sh[warp] = a;
    __syncthreads();
    if (warp == 0) {
        ArgTop none;
        none.v1 = NEG_INF;
        none.i1 = -1;
        none.v2 = NEG_INF;
        a = lane < nw ? sh[lane] : none;
        for (int o = 16; o > 0; o >>= 1) {
            ArgTop b;
            b.v1 = __shfl_xor_sync(0xffffffffu, a.v1, o);
            b.i1 = __shfl_xor_sync(0xffffffffu, a.i1, o);
            b.v2 = __shfl_xor_sync(0xffffffffu, a.v2, o);
            a = argtop_merge(a, b);
        }
        if (lane == 0) sh[0] = a;
    }
    __syncthreads();
    ArgTop r = sh[0];
    __syncthreads();
    return r;
}

__device__ __forceinline__ void argtop_push(ArgTop &a, float v, int i) {
    if (v > a.v1 || a.i1 < 0) { // strictly greater: the first index wins ties (scan in order)
        a.v2 = a.i1 < 0 ? a.v2 : a.v1;
        a.v1 = v;
        a.i1 = i;
    } else if (v > a.v2) {
        a.v2 = v;
    }
}

extern "C" __global__ void step_decide(const float *logits, int V, int end0, int end1, int ban0,
                                       int ban1, int ban2, int ban3, unsigned int *tok,
                                       unsigned int *raw_arg, float *stats) {
    __shared__ ArgTop sh_top[32];
    __shared__ float sh[32];
    size_t r = blockIdx.x;
    const float *x = logits + r * (size_t)V;
    ArgTop raw, mod;
    raw.v1 = mod.v1 = NEG_INF;
    raw.v2 = mod.v2 = NEG_INF;
    raw.i1 = mod.i1 = -1;
    // Pass 1: raw and banned-aware top-2 with argmax. Each thread walks a strided subsequence in
    // increasing index order, so its local "first index on ties" is right; the merge keeps it.
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = x[i];
        argtop_push(raw, v, i);
        bool banned = i == ban0 || i == ban1 || i == ban2 || i == ban3;
        argtop_push(mod, banned ? NEG_INF : v, i);
    }
    raw = block_argtop(raw, sh_top);
    mod = block_argtop(mod, sh_top);
    // Pass 2: the partition functions (raw, banned) and the entropy sum.
    float m_raw = raw.v1, m = mod.v1;
    float z_raw = 0.0f, z = 0.0f, ez = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = x[i];
        z_raw += __expf(v - m_raw);
        bool banned = i == ban0 || i == ban1 || i == ban2 || i == ban3;
        if (!banned) {
            float d = v - m;
            float e = __expf(d);
            z += e;
            if (e > 0.0f) ez += e * d;
        }
    }
    z_raw = block_sum(z_raw, sh);
    z = block_sum(z, sh);
    ez = block_sum(ez, sh);
    if (threadIdx.x == 0) {
        float pe = 0.0f;
        // Single evaluations: the accurate expf (the margin below is a difference of two
        // probabilities and would magnify __expf's error when top-1 and top-2 are close).
        if (end0 >= 0 && end0 < V) pe += expf(x[end0] - m_raw);
        if (end1 >= 0 && end1 < V) pe += expf(x[end1] - m_raw);
        tok[r] = (unsigned int)(mod.i1 < 0 ? 0 : mod.i1);
        raw_arg[r] = (unsigned int)(raw.i1 < 0 ? 0 : raw.i1);
        stats[r * 4 + 0] = 1.0f / z;                          // exp(m - m) / z
        stats[r * 4 + 1] = (1.0f - expf(mod.v2 - m)) / z;     // (p1 - p2)
        stats[r * 4 + 2] = ez / z - logf(z);                  // sum p log p = -H
        stats[r * 4 + 3] = pe / z_raw;
    }
}

// ---------------------------------------------------------------------------------------------
// Instantiations. Names are looked up by src/cuda/kernels.rs.
#define INST_T(T, S)                                                                                \
    extern "C" __global__ void embed_##S(float *x, const unsigned int *ids, const T *wte,          \
                                         const T *wpe, int C) {                                     \
        embed_impl<T>(x, ids, wte, wpe, C);                                                         \
    }                                                                                               \
    extern "C" __global__ void add_ln_##S(float *x, const float *add, const T *add_bias,           \
                                          const T *w, const T *b, T *out, int C, float eps) {       \
        add_ln_impl<T>(x, add, add_bias, w, b, out, C, eps);                                        \
    }                                                                                               \
    extern "C" __global__ void bias_gelu_##S(const float *in, const T *bias, T *out, size_t n,     \
                                             size_t N) {                                            \
        bias_gelu_impl<T>(in, bias, out, n, N);                                                     \
    }                                                                                               \
    extern "C" __global__ void gather_rows_##S(const T *h, const unsigned int *rows, T *out,      \
                                               int C) {                                             \
        gather_rows_impl<T>(h, rows, out, C);                                                       \
    }                                                                                               \
    extern "C" __global__ void attention16_##S(const float *qkv, const T *bias, T *out, int Tn,    \
                                               int C, int causal) {                                 \
        attention_impl<16, T>(qkv, bias, out, Tn, C, causal);                                       \
    }                                                                                               \
    extern "C" __global__ void attention32_##S(const float *qkv, const T *bias, T *out, int Tn,    \
                                               int C, int causal) {                                 \
        attention_impl<32, T>(qkv, bias, out, Tn, C, causal);                                       \
    }                                                                                               \
    extern "C" __global__ void attention64_##S(const float *qkv, const T *bias, T *out, int Tn,    \
                                               int C, int causal) {                                 \
        attention_impl<64, T>(qkv, bias, out, Tn, C, causal);                                       \
    }

INST_T(float, f32)
INST_T(bf16_t, bf16)
