//! The DiffuGPT forward on the GPU: weights uploaded once per model ([`CudaModel`]), buffers
//! preallocated once per session for the longest canvas ([`CudaSession`]).
//!
//! Per layer (pre-LN GPT-2 block), with T the compute dtype (f32 or bf16) and the residual stream
//! x in f32:
//!
//! ```text
//! h    = LN1(x)                         add_ln   (fused with the previous block's MLP residual)
//! qkv  = h @ Wqkv                 f32   cuBLAS   (bias added inside the attention kernel)
//! a    = attention(qkv + bqkv)    T     one kernel, bidirectional (or causal)
//! p    = a @ Wproj                f32   cuBLAS
//! x   += p + bproj ; h = LN2(x)   T     add_ln
//! f    = h @ Wfc                  f32   cuBLAS
//! g    = gelu_new(f + bfc)        T     bias_gelu
//! p    = g @ Wmproj               f32   cuBLAS
//! x   += p + bmproj ; h = LN1'(x) T     add_ln (next block's LN1, or ln_f after the last block)
//! ```
//!
//! 12 x 8 launches per DiffuGPT-S forward. The LM head runs only for the rows the decoder asks
//! for: gather rows -> one GEMM against the (tied) embedding -> the `step_decide` kernel, so the
//! 50257-wide logits stay on the GPU unless the caller needs them on the host (sampling).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::DType;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{sys as cusys, CudaGraph, CudaSlice, CudaStream, DevicePtr};

use super::device::{cu, guarded, Gpu};
use super::kernels::{gemm, WLayout};
use crate::config::{Activation, ModelConfig, SpecialIds};
use crate::error::{Error, Result};
use crate::model::Gpt2;

/// Compute dtype of the weights and of the GEMM inputs (the residual stream and GEMM outputs are
/// always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuDtype {
    F32,
    Bf16,
}

impl GpuDtype {
    pub fn from_candle(d: DType) -> Result<Self> {
        match d {
            DType::F32 => Ok(GpuDtype::F32),
            DType::BF16 => Ok(GpuDtype::Bf16),
            other => Err(Error::Cuda(format!(
                "compute dtype {other:?} is not supported on the GPU (f32, bf16)"
            ))),
        }
    }
    pub(crate) fn index(self) -> usize {
        self as usize
    }
    pub fn size(self) -> usize {
        match self {
            GpuDtype::F32 => 4,
            GpuDtype::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GpuDtype::F32 => "f32",
            GpuDtype::Bf16 => "bf16",
        }
    }
    /// Host f32 -> the bytes of this dtype (bf16: round to nearest even, like torch).
    pub fn encode(self, xs: &[f32]) -> Vec<u8> {
        match self {
            GpuDtype::F32 => xs.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GpuDtype::Bf16 => xs
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
        }
    }
    /// Bytes of this dtype -> host f32.
    pub fn decode(self, b: &[u8]) -> Vec<f32> {
        match self {
            GpuDtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            GpuDtype::Bf16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        }
    }
}

/// One device allocation and its raw address.
pub(crate) struct DBuf {
    mem: CudaSlice<u8>,
    ptr: u64,
}

impl DBuf {
    fn zeros(s: &Arc<CudaStream>, bytes: usize) -> Result<Self> {
        let mem = cu(
            "allocating device memory",
            s.alloc_zeros::<u8>(bytes.max(1)),
        )?;
        let ptr = mem.device_ptr(s).0;
        Ok(DBuf { mem, ptr })
    }
    fn from_bytes(s: &Arc<CudaStream>, b: &[u8]) -> Result<Self> {
        let mem = cu("uploading to the GPU", s.clone_htod(b))?;
        let ptr = mem.device_ptr(s).0;
        Ok(DBuf { mem, ptr })
    }
    fn bytes(&self) -> usize {
        self.mem.len()
    }
    fn write(&mut self, s: &Arc<CudaStream>, b: &[u8]) -> Result<()> {
        if b.len() > self.bytes() {
            return Err(Error::Cuda(format!(
                "write of {} bytes into a {}-byte buffer",
                b.len(),
                self.bytes()
            )));
        }
        let mut v = self.mem.slice_mut(0..b.len());
        cu("copy to the GPU", s.memcpy_htod(b, &mut v))
    }
    fn read(&self, s: &Arc<CudaStream>, off: usize, len: usize) -> Result<Vec<u8>> {
        if off + len > self.bytes() {
            return Err(Error::Cuda(format!(
                "read of {off}+{len} bytes from a {}-byte buffer",
                self.bytes()
            )));
        }
        let mut out = vec![0u8; len];
        cu(
            "copy from the GPU",
            s.memcpy_dtoh(&self.mem.slice(off..off + len), &mut out[..]),
        )?;
        cu("synchronize", s.synchronize())?;
        Ok(out)
    }
}

struct LayerW {
    ln1_w: DBuf,
    ln1_b: DBuf,
    attn_w: DBuf,
    attn_b: DBuf,
    proj_w: DBuf,
    proj_b: DBuf,
    ln2_w: DBuf,
    ln2_b: DBuf,
    fc_w: DBuf,
    fc_b: DBuf,
    mproj_w: DBuf,
    mproj_b: DBuf,
}

/// A model's weights on the GPU. Immutable once uploaded; shared by every session (each session
/// has its own stream and buffers).
pub struct CudaModel {
    pub gpu: Arc<Gpu>,
    pub dtype: GpuDtype,
    pub cfg: ModelConfig,
    pub ids: SpecialIds,
    wte: DBuf,
    wpe: DBuf,
    layers: Vec<LayerW>,
    lnf_w: DBuf,
    lnf_b: DBuf,
    /// Untied head; `None`: the embedding.
    head: Option<DBuf>,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModel")
            .field("gpu", &self.gpu)
            .field("dtype", &self.dtype)
            .finish()
    }
}

fn host_f32(t: &candle_core::Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

impl CudaModel {
    /// Uploads `model`'s weights in `dtype`. Checks first what the kernels support.
    pub fn upload(gpu: Arc<Gpu>, model: &Gpt2, dtype: GpuDtype) -> Result<Self> {
        // The kernels read the projections in their `[in, out]` layout.
        let plain;
        let model = if model.is_packed() {
            plain = model.unpacked()?;
            &plain
        } else {
            model
        };
        let cfg = model.cfg.clone();
        if !super::kernels::attention_supports(cfg.head_dim())
            || !cfg.n_embd.is_multiple_of(cfg.n_head)
        {
            return Err(Error::Cuda(format!(
                "head dim {} is not supported by the attention kernel (16, 32, 64)",
                cfg.head_dim()
            )));
        }
        if cfg.activation != Activation::GeluTanh {
            return Err(Error::Cuda(
                "only gelu_new (tanh GELU, GPT-2's) is implemented on the GPU".into(),
            ));
        }
        guarded("uploading the weights", || {
            let s = gpu.ctx.default_stream();
            let up = |t: &candle_core::Tensor| -> Result<DBuf> {
                DBuf::from_bytes(&s, &dtype.encode(&host_f32(t)?))
            };
            let mut layers = Vec::with_capacity(cfg.n_layer);
            for b in &model.blocks {
                layers.push(LayerW {
                    ln1_w: up(&b.ln_1.weight)?,
                    ln1_b: up(&b.ln_1.bias)?,
                    attn_w: up(&b.c_attn_w)?,
                    attn_b: up(&b.c_attn_b)?,
                    proj_w: up(&b.attn_proj_w)?,
                    proj_b: up(&b.attn_proj_b)?,
                    ln2_w: up(&b.ln_2.weight)?,
                    ln2_b: up(&b.ln_2.bias)?,
                    fc_w: up(&b.c_fc_w)?,
                    fc_b: up(&b.c_fc_b)?,
                    mproj_w: up(&b.mlp_proj_w)?,
                    mproj_b: up(&b.mlp_proj_b)?,
                });
            }
            let m = CudaModel {
                wte: up(&model.wte)?,
                wpe: up(&model.wpe)?,
                layers,
                lnf_w: up(&model.ln_f.weight)?,
                lnf_b: up(&model.ln_f.bias)?,
                head: model.lm_head.as_ref().map(up).transpose()?,
                gpu: gpu.clone(),
                dtype,
                cfg,
                ids: model.ids,
            };
            // Sessions use their own streams: the uploads must be complete before any reads.
            cu("synchronize", s.synchronize())?;
            Ok(m)
        })
    }

    /// Bytes of device memory a session for canvases up to `max_t` positions allocates.
    pub fn session_bytes(&self, max_t: usize) -> usize {
        let (c, i, v) = (self.cfg.n_embd, self.cfg.n_inner, self.cfg.vocab_size);
        let d = self.dtype.size();
        let r = ROW_CHUNK.min(max_t);
        max_t * (4 + c * 4 + c * d + 3 * c * 4 + c * d + c * 4 + i * 4 + i * d)
            + r * (4 + c * d + v * 4 + 8 + 16)
            + CUBLAS_WORKSPACE
    }
}

/// Logit rows are computed this many at a time (a 1024-slot canvas would need 206 MB of f32
/// logits at once; 256 rows are 51 MB and still one large GEMM).
const ROW_CHUNK: usize = 256;

/// What the `step_decide` kernel returns for one row (see `Sampler::choose`, greedy).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowDecision {
    /// argmax with the banned ids excluded (first index on ties).
    pub token: u32,
    /// argmax of the raw logits (the EoS-first `argmax` predictor).
    pub raw_argmax: u32,
    /// softmax probability of `token` (banned ids excluded from the softmax).
    pub prob: f32,
    /// top-1 minus top-2 probability.
    pub margin: f32,
    /// minus the entropy.
    pub neg_entropy: f32,
    /// P(eos) (+ P(pad)) under the raw softmax.
    pub p_end: f32,
}

/// Per-thread GPU state: a stream, a cuBLAS handle and every activation buffer, sized once for
/// `max_t` positions. Holds the model (an `Arc`), so a model's backend can keep sessions in a pool
/// across requests. Dropping a session waits for its stream first (the buffers are freed, and the
/// model's weights may be, while kernels could still be reading them).
pub struct CudaSession {
    m: Arc<CudaModel>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    max_t: usize,
    /// Positions of the last forward (0: none yet).
    t: usize,
    /// Rows per logits chunk: the capacity of every per-row buffer (ROW_CHUNK, or max_t if less).
    row_cap: usize,
    ids: DBuf,
    x: DBuf,
    h: DBuf,
    qkv: DBuf,
    att: DBuf,
    proj: DBuf,
    fc: DBuf,
    act: DBuf,
    rows: DBuf,
    hrows: DBuf,
    logits: DBuf,
    /// The decision kernel's outputs for row_cap rows, packed so one copy brings them back:
    /// tokens (u32) at 0, raw argmax (u32) at 4 * row_cap, stats (4 x f32) at 8 * row_cap.
    dec: DBuf,
    /// cuBLAS workspace, set explicitly so cuBLAS never allocates inside a graph capture.
    _workspace: DBuf,
    /// Replay the forward from CUDA graphs, one per (positions, causal); see
    /// [`Self::set_graphs`].
    use_graphs: bool,
    /// Captured graphs and when each was last launched (`tick`), at most [`GRAPH_CACHE`].
    graphs: HashMap<(usize, bool), (Graph, u64)>,
    tick: u64,
    /// Shapes that have run once without a graph: a shape is captured on its second forward,
    /// never on its first (the first cuBLAS call for a shape may allocate or pick an algorithm,
    /// which must not happen inside a capture).
    warm: HashSet<(usize, bool)>,
    /// Graphs captured so far.
    captures: usize,
    /// Why captures failed (the forwards then ran without graphs); see
    /// [`Self::take_graph_failures`].
    graph_failures: Vec<String>,
}

/// Whether sessions replay CUDA graphs by default (env `DIFFUGPT_CUDA_GRAPHS=1`).
pub fn graphs_enabled() -> bool {
    std::env::var_os("DIFFUGPT_CUDA_GRAPHS").is_some_and(|v| v == "1")
}

/// A captured forward. The decode loop's canvas length only changes at the EoS-first cut and at
/// growth, so a handful of graphs serve a whole generation.
struct Graph(CudaGraph);
// SAFETY: a graph exec is a driver object with no thread affinity; it is only launched through
// `&mut CudaSession` (one thread at a time), after binding the context.
unsafe impl Send for Graph {}

/// Captured forwards kept per session (least recently used evicted first): the decode loop's
/// canvas takes a handful of lengths per generation, a long-lived session many over time.
/// (Private: cbindgen would put a public constant into the C header.)
const GRAPH_CACHE: usize = 16;

/// cuBLAS workspace recommended on Hopper.
const CUBLAS_WORKSPACE: usize = 32 << 20;

impl Drop for CudaSession {
    fn drop(&mut self) {
        // Errors cannot be reported from here; a failed wait leaves nothing better to do.
        let _ = guarded("synchronize on drop", || {
            cu("binding the context", self.m.gpu.ctx.bind_to_thread())?;
            cu("synchronize", self.stream.synchronize())
        });
    }
}

impl CudaSession {
    /// How many captured forwards a session keeps ([`GRAPH_CACHE`]).
    pub fn graph_cache_capacity() -> usize {
        GRAPH_CACHE
    }

    /// Allocates the buffers for sequences up to `max_t` positions (<= the model's context).
    pub fn new(m: Arc<CudaModel>, max_t: usize) -> Result<Self> {
        let max_t = max_t.clamp(1, m.cfg.n_positions);
        guarded("creating a GPU session", || {
            let s = cu("creating a stream", m.gpu.ctx.new_stream())?;
            let blas = cu("creating the cuBLAS handle", CudaBlas::new(s.clone()))?;
            let workspace = DBuf::zeros(&s, CUBLAS_WORKSPACE)?;
            // SAFETY: a live handle and a device buffer of that size, kept in the session.
            let st = unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    workspace.ptr as *mut std::ffi::c_void,
                    CUBLAS_WORKSPACE,
                )
            };
            cu("cublasSetWorkspace", st.result())?;
            let (c, i, v) = (m.cfg.n_embd, m.cfg.n_inner, m.cfg.vocab_size);
            let d = m.dtype.size();
            let r = ROW_CHUNK.min(max_t);
            let z = |bytes: usize| DBuf::zeros(&s, bytes);
            let out = CudaSession {
                ids: z(max_t * 4)?,
                x: z(max_t * c * 4)?,
                h: z(max_t * c * d)?,
                qkv: z(max_t * 3 * c * 4)?,
                att: z(max_t * c * d)?,
                proj: z(max_t * c * 4)?,
                fc: z(max_t * i * 4)?,
                act: z(max_t * i * d)?,
                rows: z(r * 4)?,
                hrows: z(r * c * d)?,
                logits: z(r * v * 4)?,
                dec: z(r * 24)?,
                _workspace: workspace,
                // Opt-in until measured on a GPU (see README "GPU (CUDA)").
                use_graphs: graphs_enabled(),
                graphs: HashMap::new(),
                tick: 0,
                warm: HashSet::new(),
                captures: 0,
                graph_failures: Vec::new(),
                m,
                stream: s,
                blas,
                max_t,
                t: 0,
                row_cap: r,
            };
            cu("synchronize", out.stream.synchronize())?;
            Ok(out)
        })
    }

    pub fn model(&self) -> &CudaModel {
        &self.m
    }

    pub fn max_t(&self) -> usize {
        self.max_t
    }

    /// One forward over `ids` (bidirectional, or causal without a cache); the final hidden
    /// states (after ln_f) stay on the GPU for [`Self::decide`] / [`Self::logits_rows`].
    pub fn forward(&mut self, ids: &[u32], causal: bool) -> Result<()> {
        let v = self.m.cfg.vocab_size;
        let t = ids.len();
        if t == 0 || t > self.max_t {
            return Err(Error::Cuda(format!(
                "sequence of {t} positions; this GPU session holds 1..={}",
                self.max_t
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&x| x as usize >= v) {
            return Err(Error::Prompt(format!(
                "token id {bad} is outside the vocabulary of {v} tokens"
            )));
        }
        let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
        guarded("GPU forward", || {
            // cuBLAS calls below go through the raw API, which uses the thread's current
            // context: a session may move between threads (the C API allows it).
            cu("binding the context", self.m.gpu.ctx.bind_to_thread())?;
            self.ids.write(&self.stream, &bytes)?;
            if self.use_graphs {
                self.forward_graph(t, causal)?;
            } else {
                // SAFETY: every buffer was sized in `new` for max_t >= t positions.
                unsafe { self.run_layers(t, causal)? };
            }
            self.t = t;
            Ok(())
        })
    }

    /// Whether forwards replay CUDA graphs: one launch per forward instead of ~100. A shape runs
    /// directly the first time, is captured the second time and replayed from then on. Off by
    /// default (env `DIFFUGPT_CUDA_GRAPHS=1` turns it on) until measured on a GPU. The results
    /// are the same kernels on the same buffers.
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// Graphs held now, and captured in this session's life.
    pub fn graph_counts(&self) -> (usize, usize) {
        (self.graphs.len(), self.captures)
    }

    /// The capture failures since the last call (the model's backend collects them for reports).
    pub fn take_graph_failures(&mut self) -> Vec<String> {
        std::mem::take(&mut self.graph_failures)
    }

    fn forward_graph(&mut self, t: usize, causal: bool) -> Result<()> {
        let key = (t, causal);
        self.tick += 1;
        if let Some((g, used)) = self.graphs.get_mut(&key) {
            *used = self.tick;
            return cu("launching the forward graph", g.0.launch());
        }
        if self.warm.insert(key) {
            // First forward of this shape: an ordinary one.
            // SAFETY: as in `forward`.
            return unsafe { self.run_layers(t, causal) };
        }
        let mode = cusys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        let begun = cu("beginning a graph capture", self.stream.begin_capture(mode));
        let captured = begun.and_then(|()| {
            // SAFETY: as in `forward`; captured, not run.
            let body = unsafe { self.run_layers(t, causal) };
            let flags = cusys::CUgraphInstantiate_flags(0);
            let graph = cu("ending the graph capture", self.stream.end_capture(flags));
            body?;
            graph?.ok_or_else(|| Error::Cuda("the capture recorded no graph".into()))
        });
        match captured {
            Ok(g) => {
                if self.graphs.len() >= GRAPH_CACHE {
                    let oldest = self.graphs.iter().min_by_key(|(_, (_, used))| *used);
                    if let Some(&k) = oldest.map(|(k, _)| k) {
                        self.graphs.remove(&k);
                    }
                }
                self.captures += 1;
                let g = &self.graphs.entry(key).or_insert((Graph(g), self.tick)).0;
                cu("launching the forward graph", g.0.launch())
            }
            Err(e) => {
                // Say why (stderr, and the bench JSON through the backend's report), then run
                // this and later forwards of the session directly.
                let why = format!("T={t}{}: {e}", if causal { " causal" } else { "" });
                eprintln!("diffugpt: CUDA graph capture failed ({why}); running without graphs");
                self.graph_failures.push(why);
                self.use_graphs = false;
                // SAFETY: as in `forward`.
                unsafe { self.run_layers(t, causal) }
            }
        }
    }

    unsafe fn run_layers(&mut self, t: usize, causal: bool) -> Result<()> {
        let m = &*self.m;
        let k = &m.gpu.kernels;
        let s = &*self.stream;
        let d = m.dtype;
        let cfg = &m.cfg;
        let (c, i) = (cfg.n_embd, cfg.n_inner);
        let eps = cfg.layer_norm_eps as f32;
        k.embed(s, d, self.x.ptr, self.ids.ptr, m.wte.ptr, m.wpe.ptr, t, c)?;
        let n = m.layers.len();
        for (l, w) in m.layers.iter().enumerate() {
            if l == 0 {
                k.add_ln(
                    s,
                    d,
                    self.x.ptr,
                    0,
                    0,
                    w.ln1_w.ptr,
                    w.ln1_b.ptr,
                    self.h.ptr,
                    t,
                    c,
                    eps,
                )?;
            }
            gemm(
                &self.blas,
                d,
                self.h.ptr,
                w.attn_w.ptr,
                WLayout::KN,
                self.qkv.ptr,
                t,
                c,
                3 * c,
            )?;
            k.attention(
                s,
                d,
                self.qkv.ptr,
                w.attn_b.ptr,
                self.att.ptr,
                t,
                cfg.n_head,
                cfg.head_dim(),
                causal,
            )?;
            gemm(
                &self.blas,
                d,
                self.att.ptr,
                w.proj_w.ptr,
                WLayout::KN,
                self.proj.ptr,
                t,
                c,
                c,
            )?;
            k.add_ln(
                s,
                d,
                self.x.ptr,
                self.proj.ptr,
                w.proj_b.ptr,
                w.ln2_w.ptr,
                w.ln2_b.ptr,
                self.h.ptr,
                t,
                c,
                eps,
            )?;
            gemm(
                &self.blas,
                d,
                self.h.ptr,
                w.fc_w.ptr,
                WLayout::KN,
                self.fc.ptr,
                t,
                c,
                i,
            )?;
            k.bias_gelu(s, d, self.fc.ptr, w.fc_b.ptr, self.act.ptr, t, i)?;
            gemm(
                &self.blas,
                d,
                self.act.ptr,
                w.mproj_w.ptr,
                WLayout::KN,
                self.proj.ptr,
                t,
                i,
                c,
            )?;
            // The MLP residual, fused with the next LayerNorm: the next block's LN1 or ln_f.
            let (nw, nb) = if l + 1 < n {
                (m.layers[l + 1].ln1_w.ptr, m.layers[l + 1].ln1_b.ptr)
            } else {
                (m.lnf_w.ptr, m.lnf_b.ptr)
            };
            k.add_ln(
                s,
                d,
                self.x.ptr,
                self.proj.ptr,
                w.mproj_b.ptr,
                nw,
                nb,
                self.h.ptr,
                t,
                c,
                eps,
            )?;
        }
        if n == 0 {
            k.add_ln(
                s,
                d,
                self.x.ptr,
                0,
                0,
                m.lnf_w.ptr,
                m.lnf_b.ptr,
                self.h.ptr,
                t,
                c,
                eps,
            )?;
        }
        Ok(())
    }

    /// The final hidden states `[t, n_embd]` of the last forward, on the host (tests).
    pub fn hidden_to_host(&self) -> Result<Vec<f32>> {
        let c = self.m.cfg.n_embd;
        let d = self.m.dtype;
        guarded("reading hidden states", || {
            Ok(d.decode(&self.h.read(&self.stream, 0, self.t * c * d.size())?))
        })
    }

    fn check_rows(&self, rows: &[usize]) -> Result<()> {
        if self.t == 0 {
            return Err(Error::Cuda("no forward has run in this session".into()));
        }
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.t) {
            return Err(Error::Cuda(format!(
                "hidden row {bad} out of range (the last forward had {} positions)",
                self.t
            )));
        }
        Ok(())
    }

    /// Logits for one chunk of hidden rows (<= row_cap) into `self.logits`.
    unsafe fn chunk_logits(&mut self, rows: &[usize]) -> Result<()> {
        let m = &*self.m;
        let (c, v) = (m.cfg.n_embd, m.cfg.vocab_size);
        let d = m.dtype;
        if rows.len() > self.row_cap {
            return Err(Error::Cuda(format!(
                "{} rows in one chunk; the buffers hold {}",
                rows.len(),
                self.row_cap
            )));
        }
        cu("binding the context", m.gpu.ctx.bind_to_thread())?;
        let r: Vec<u8> = rows
            .iter()
            .flat_map(|&x| (x as u32).to_le_bytes())
            .collect();
        self.rows.write(&self.stream, &r)?;
        m.gpu.kernels.gather_rows(
            &self.stream,
            d,
            self.h.ptr,
            self.rows.ptr,
            self.hrows.ptr,
            rows.len(),
            c,
        )?;
        let head = m.head.as_ref().unwrap_or(&m.wte).ptr;
        gemm(
            &self.blas,
            d,
            self.hrows.ptr,
            head,
            WLayout::NK,
            self.logits.ptr,
            rows.len(),
            c,
            v,
        )
    }

    /// Step decisions for hidden rows `rows` of the last forward (the caller applies DiffuGPT's
    /// shift: slot j of the canvas is row p_len + j - 1). `ends`: end ids (<= 2); `banned`: ids
    /// the token may not be (<= 4). The logits never leave the GPU.
    pub fn decide(
        &mut self,
        rows: &[usize],
        ends: &[u32],
        banned: &[u32],
    ) -> Result<Vec<RowDecision>> {
        self.check_rows(rows)?;
        let v = self.m.cfg.vocab_size;
        let cap = self.row_cap;
        guarded("GPU step decisions", || {
            let mut out = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(cap) {
                let n = chunk.len();
                // SAFETY: chunk.len() <= row_cap rows, the size of every per-row buffer.
                unsafe {
                    self.chunk_logits(chunk)?;
                    self.m.gpu.kernels.step_decide(
                        &self.stream,
                        self.logits.ptr,
                        n,
                        v,
                        ends,
                        banned,
                        self.dec.ptr,
                        self.dec.ptr + 4 * cap as u64,
                        self.dec.ptr + 8 * cap as u64,
                    )?;
                }
                let u32s = |b: Vec<u8>| -> Vec<u32> {
                    b.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                };
                // One copy (and one synchronisation) per chunk: 24 bytes per row.
                let all = self.dec.read(&self.stream, 0, 24 * cap)?;
                let tok = u32s(all[..4 * n].to_vec());
                let raw = u32s(all[4 * cap..4 * cap + 4 * n].to_vec());
                let st = GpuDtype::F32.decode(&all[8 * cap..8 * cap + 16 * n]);
                for k in 0..n {
                    out.push(RowDecision {
                        token: tok[k],
                        raw_argmax: raw[k],
                        prob: st[4 * k],
                        margin: st[4 * k + 1],
                        neg_entropy: st[4 * k + 2],
                        p_end: st[4 * k + 3],
                    });
                }
            }
            Ok(out)
        })
    }

    /// Calls `f(k, logits)` with the f32 logits of hidden row `rows[k]`, copied to the host (the
    /// path for sampling, which runs on the CPU sampler).
    pub fn logits_rows(
        &mut self,
        rows: &[usize],
        f: &mut dyn FnMut(usize, &mut [f32]),
    ) -> Result<()> {
        self.check_rows(rows)?;
        let v = self.m.cfg.vocab_size;
        let mut host = Vec::new();
        let cap = self.row_cap;
        for (ci, chunk) in rows.chunks(cap).enumerate() {
            guarded("GPU logits", || {
                // SAFETY: chunk.len() <= row_cap.
                unsafe { self.chunk_logits(chunk)? };
                host = GpuDtype::F32.decode(&self.logits.read(
                    &self.stream,
                    0,
                    chunk.len() * v * 4,
                )?);
                Ok(())
            })?;
            for (k, row) in host.chunks_exact_mut(v).enumerate() {
                f(ci * cap + k, row);
            }
        }
        Ok(())
    }

    /// Waits for the GPU (benchmarks stop the clock after this).
    pub fn synchronize(&self) -> Result<()> {
        guarded("synchronize", || {
            cu("synchronize", self.stream.synchronize())
        })
    }
}

/// Host-in, host-out launches of each kernel on fresh buffers, for the tests that compare every
/// kernel with the CPU reference. Inputs of the compute type are rounded to it on the host first
/// (so the reference can see exactly what the GPU saw).
pub struct Harness {
    gpu: Arc<Gpu>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

/// The harness uploads exactly what it is given: a wrong length would read past a buffer.
fn want_len(name: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Cuda(format!(
            "{name}: {got} elements given, {want} expected"
        )));
    }
    Ok(())
}

impl Harness {
    pub fn new(gpu: Arc<Gpu>) -> Result<Self> {
        guarded("kernel harness", || {
            let stream = cu("creating a stream", gpu.ctx.new_stream())?;
            let blas = cu("creating the cuBLAS handle", CudaBlas::new(stream.clone()))?;
            Ok(Harness { gpu, stream, blas })
        })
    }

    fn up(&self, d: GpuDtype, xs: &[f32]) -> Result<DBuf> {
        DBuf::from_bytes(&self.stream, &d.encode(xs))
    }

    fn down(&self, d: GpuDtype, b: &DBuf, n: usize) -> Result<Vec<f32>> {
        Ok(d.decode(&b.read(&self.stream, 0, n * d.size())?))
    }

    /// Returns (x + add + add_bias, LayerNorm of it).
    #[allow(clippy::too_many_arguments)]
    pub fn add_ln(
        &self,
        d: GpuDtype,
        x: &[f32],
        add: Option<(&[f32], &[f32])>,
        w: &[f32],
        b: &[f32],
        rows: usize,
        c: usize,
        eps: f32,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        want_len("x", x.len(), rows * c)?;
        want_len("w", w.len(), c)?;
        want_len("b", b.len(), c)?;
        if let Some((a, ab)) = add {
            want_len("add", a.len(), rows * c)?;
            want_len("add_bias", ab.len(), c)?;
        }
        guarded("add_ln", || {
            let f = GpuDtype::F32;
            let xb = self.up(f, x)?;
            let (ab, bb) = match add {
                Some((a, bias)) => (Some(self.up(f, a)?), Some(self.up(d, bias)?)),
                None => (None, None),
            };
            let (wb, bbias) = (self.up(d, w)?, self.up(d, b)?);
            let out = DBuf::zeros(&self.stream, rows * c * d.size())?;
            // SAFETY: sizes as documented, all allocated above.
            unsafe {
                self.gpu.kernels.add_ln(
                    &self.stream,
                    d,
                    xb.ptr,
                    ab.as_ref().map_or(0, |b| b.ptr),
                    bb.as_ref().map_or(0, |b| b.ptr),
                    wb.ptr,
                    bbias.ptr,
                    out.ptr,
                    rows,
                    c,
                    eps,
                )?;
            }
            Ok((self.down(f, &xb, rows * c)?, self.down(d, &out, rows * c)?))
        })
    }

    pub fn bias_gelu(
        &self,
        d: GpuDtype,
        inp: &[f32],
        bias: &[f32],
        rows: usize,
        n: usize,
    ) -> Result<Vec<f32>> {
        want_len("inp", inp.len(), rows * n)?;
        want_len("bias", bias.len(), n)?;
        guarded("bias_gelu", || {
            let ib = self.up(GpuDtype::F32, inp)?;
            let bb = self.up(d, bias)?;
            let out = DBuf::zeros(&self.stream, rows * n * d.size())?;
            // SAFETY: sizes as documented.
            unsafe {
                self.gpu
                    .kernels
                    .bias_gelu(&self.stream, d, ib.ptr, bb.ptr, out.ptr, rows, n)?
            };
            self.down(d, &out, rows * n)
        })
    }

    /// qkv `[t, 3c]` (f32) + bias `[3c]` -> attention output `[t, c]`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        d: GpuDtype,
        qkv: &[f32],
        bias: &[f32],
        t: usize,
        n_head: usize,
        head_dim: usize,
        causal: bool,
    ) -> Result<Vec<f32>> {
        let c = n_head * head_dim;
        want_len("qkv", qkv.len(), t * 3 * c)?;
        want_len("bias", bias.len(), 3 * c)?;
        guarded("attention", || {
            let qb = self.up(GpuDtype::F32, qkv)?;
            let bb = self.up(d, bias)?;
            let out = DBuf::zeros(&self.stream, t * c * d.size())?;
            // SAFETY: sizes as documented.
            unsafe {
                self.gpu.kernels.attention(
                    &self.stream,
                    d,
                    qb.ptr,
                    bb.ptr,
                    out.ptr,
                    t,
                    n_head,
                    head_dim,
                    causal,
                )?
            };
            self.down(d, &out, t * c)
        })
    }

    /// y `[m, n]` (f32) = x `[m, k]` times w (`[k, n]` or `[n, k]`, see [`WLayout`]).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        d: GpuDtype,
        x: &[f32],
        w: &[f32],
        wl: WLayout,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Vec<f32>> {
        want_len("x", x.len(), m * k)?;
        want_len("w", w.len(), k * n)?;
        guarded("gemm", || {
            let (xb, wb) = (self.up(d, x)?, self.up(d, w)?);
            let y = DBuf::zeros(&self.stream, m * n * 4)?;
            // SAFETY: sizes as documented.
            unsafe { gemm(&self.blas, d, xb.ptr, wb.ptr, wl, y.ptr, m, k, n)? };
            self.down(GpuDtype::F32, &y, m * n)
        })
    }

    /// Step decisions for `n` rows of f32 logits `[n, v]`.
    pub fn step_decide(
        &self,
        logits: &[f32],
        n: usize,
        v: usize,
        ends: &[u32],
        banned: &[u32],
    ) -> Result<Vec<RowDecision>> {
        want_len("logits", logits.len(), n * v)?;
        guarded("step_decide", || {
            let lb = self.up(GpuDtype::F32, logits)?;
            let tok = DBuf::zeros(&self.stream, n * 4)?;
            let raw = DBuf::zeros(&self.stream, n * 4)?;
            let st = DBuf::zeros(&self.stream, n * 16)?;
            // SAFETY: sizes as documented.
            unsafe {
                self.gpu.kernels.step_decide(
                    &self.stream,
                    lb.ptr,
                    n,
                    v,
                    ends,
                    banned,
                    tok.ptr,
                    raw.ptr,
                    st.ptr,
                )?
            };
            let u = |b: &DBuf| -> Result<Vec<u32>> {
                Ok(b.read(&self.stream, 0, n * 4)?
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            };
            let (tk, rw) = (u(&tok)?, u(&raw)?);
            let s = self.down(GpuDtype::F32, &st, n * 4)?;
            Ok((0..n)
                .map(|k| RowDecision {
                    token: tk[k],
                    raw_argmax: rw[k],
                    prob: s[4 * k],
                    margin: s[4 * k + 1],
                    neg_entropy: s[4 * k + 2],
                    p_end: s[4 * k + 3],
                })
                .collect())
        })
    }
}
