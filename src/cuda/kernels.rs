//! `kernels.cu` compiled with NVRTC, typed launch wrappers over raw device pointers, and the
//! cuBLAS GEMMs of the forward.
//!
//! Buffers are passed as raw `CUdeviceptr`s (u64) rather than cudarc slices: the forward carves
//! one preallocated arena into many views, and with event tracking off (see
//! [`Gpu::open`](super::Gpu::open)) a raw pointer is exactly what cudarc would pass anyway. The
//! callers in [`super::forward`] own the allocations and check every size before launching.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use super::device::cu;
use super::forward::GpuDtype;
use crate::error::{Error, Result};

/// The CUDA C source, embedded so the binary carries it.
pub const KERNELS_CU: &str = include_str!("kernels.cu");

/// Threads per block of the row-wise kernels (LayerNorm, gather, step decision).
const ROW_THREADS: u32 = 256;
/// Queries per attention block (`ATT_BQ` in kernels.cu: one thread per query).
const ATT_BQ: u32 = 64;

/// `kernels.cu` compiled by NVRTC for one architecture: the CUBIN (machine code for exactly that
/// compute capability, which any driver able to run the device loads) and the PTX (which the
/// driver JIT-compiles, but refuses with `CUDA_ERROR_UNSUPPORTED_PTX_VERSION` when the NVRTC is
/// newer than the driver). [`super::Gpu::open`] loads the CUBIN and keeps the PTX as the fallback.
pub struct Compiled {
    /// `sm_XY`.
    pub arch: String,
    /// The CUBIN, or why NVRTC gave none.
    pub cubin: std::result::Result<Vec<u8>, String>,
    pub ptx: Ptx,
}

/// Which image of the kernels the driver loaded (reported in `Model::backend_notes` and the bench
/// JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelImage {
    /// The CUBIN for this architecture.
    Cubin { arch: String },
    /// The PTX, JIT-compiled by the driver; `why`: why the CUBIN was not used.
    Ptx { arch: String, why: String },
}

impl std::fmt::Display for KernelImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelImage::Cubin { arch } => write!(f, "cubin {arch}"),
            KernelImage::Ptx { arch, why } => write!(f, "ptx {arch} (cubin not used: {why})"),
        }
    }
}

/// Compiles `kernels.cu` for compute capability `cc` (e.g. (9, 0) -> sm_90). A device newer than
/// this NVRTC knows gets PTX for `compute_80` instead (no CUBIN), which the driver JIT-compiles
/// forward.
pub fn compile(cc: (i32, i32)) -> Result<Compiled> {
    let arch = format!("sm_{}{}", cc.0, cc.1);
    compile_for(&arch).or_else(|e| {
        let why = e.to_string();
        let mut c = compile_for("compute_80").map_err(|_| e)?;
        c.cubin = Err(format!("NVRTC cannot compile for {arch}: {why}"));
        Ok(c)
    })
}

/// The NVRTC options: IEEE division / sqrt and no flush-to-zero (the f32 path is compared with
/// the CPU at 1e-5; `__expf` in the kernels is the deliberate fast path).
fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![
        "--ftz=false".into(),
        "--prec-sqrt=true".into(),
        "--prec-div=true".into(),
        "--fmad=true".into(),
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
    ]
}

/// Compiles `kernels.cu` for a real architecture such as `sm_90`, returning its CUBIN and PTX
/// from the one compilation; needs only libnvrtc (no GPU): the no-GPU test calls it to prove the
/// source compiles.
pub fn compile_for(arch: &str) -> Result<Compiled> {
    use cudarc::nvrtc::{result as nv, sys as nvsys};
    super::device::guarded("NVRTC", || {
        let err = |what: &str, e: &dyn std::fmt::Debug| {
            Error::Cuda(format!("compiling kernels.cu for {arch}: {what}: {e:?}"))
        };
        let src = std::ffi::CString::new(KERNELS_CU).map_err(|e| err("source", &e))?;
        let prog = nv::create_program(&src, Some(c"kernels.cu")).map_err(|e| err("create", &e))?;
        // Destroys the program however this returns.
        struct Prog(nvsys::nvrtcProgram);
        impl Drop for Prog {
            fn drop(&mut self) {
                // SAFETY: created above, destroyed once.
                let _ = unsafe { nv::destroy_program(self.0) };
            }
        }
        let prog = Prog(prog);
        // SAFETY: a live program (until `prog` drops).
        if let Err(e) = unsafe { nv::compile_program(prog.0, &nvrtc_options(arch)) } {
            // SAFETY: as above.
            let log = unsafe { nv::get_program_log(prog.0) }
                .map(|l| {
                    let b: Vec<u8> = l
                        .iter()
                        .take_while(|&&c| c != 0)
                        .map(|&c| c as u8)
                        .collect();
                    String::from_utf8_lossy(&b).into_owned()
                })
                .unwrap_or_default();
            return Err(Error::Cuda(format!(
                "compiling kernels.cu for {arch}: {e:?}: {log}"
            )));
        }
        // SAFETY: a compiled program.
        let ptx = unsafe { nv::get_ptx(prog.0) }.map_err(|e| err("PTX", &e))?;
        let ptx_src: Vec<u8> = ptx
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let ptx = Ptx::from_src(String::from_utf8_lossy(&ptx_src).into_owned());
        // SAFETY: a compiled program; the buffer has the size NVRTC reports.
        let cubin = unsafe {
            let mut size = 0usize;
            match nvsys::nvrtcGetCUBINSize(prog.0, &mut size).result() {
                Err(e) => Err(format!("nvrtcGetCUBINSize: {e:?}")),
                Ok(()) if size == 0 => Err("NVRTC made no CUBIN".to_string()),
                Ok(()) => {
                    let mut buf = vec![0u8; size];
                    nvsys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr() as *mut std::ffi::c_char)
                        .result()
                        .map(|()| buf)
                        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))
                }
            }
        };
        Ok(Compiled {
            arch: arch.to_string(),
            cubin,
            ptx,
        })
    })
}

/// Loads the compiled kernels into `ctx`: the CUBIN first; the PTX when there is no CUBIN or the
/// driver refuses it. The error, when both fail, names both reasons.
pub fn load_module(
    ctx: &Arc<cudarc::driver::CudaContext>,
    c: Compiled,
) -> Result<(Arc<CudaModule>, KernelImage)> {
    let why = match c.cubin {
        Ok(bin) => match ctx.load_module(Ptx::from_binary(bin)) {
            Ok(m) => return Ok((m, KernelImage::Cubin { arch: c.arch })),
            Err(e) => format!("the driver refused it: {e:?}"),
        },
        Err(e) => e,
    };
    match ctx.load_module(c.ptx) {
        Ok(m) => Ok((m, KernelImage::Ptx { arch: c.arch, why })),
        Err(e) => Err(Error::Cuda(format!(
            "loading the kernels for {}: CUBIN: {why}; PTX: {e:?}",
            c.arch
        ))),
    }
}

/// Per-dtype kernel handles, indexed by [`GpuDtype::index`].
pub struct Kernels {
    embed: [CudaFunction; 2],
    add_ln: [CudaFunction; 2],
    bias_gelu: [CudaFunction; 2],
    gather_rows: [CudaFunction; 2],
    /// Head dims 16, 32, 64.
    attention: [[CudaFunction; 2]; 3],
    step_decide: CudaFunction,
}

impl Kernels {
    pub(crate) fn load(m: &Arc<CudaModule>) -> Result<Self> {
        let f = |n: &str| cu(&format!("kernel {n}"), m.load_function(n));
        let pair = |n: &str| -> Result<[CudaFunction; 2]> {
            Ok([f(&format!("{n}_f32"))?, f(&format!("{n}_bf16"))?])
        };
        Ok(Kernels {
            embed: pair("embed")?,
            add_ln: pair("add_ln")?,
            bias_gelu: pair("bias_gelu")?,
            gather_rows: pair("gather_rows")?,
            attention: [
                pair("attention16")?,
                pair("attention32")?,
                pair("attention64")?,
            ],
            step_decide: f("step_decide")?,
        })
    }
}

/// Head dims the attention kernel is instantiated for (one thread holds q and the accumulator in
/// registers: 64 is GPT-2's and the largest that fits without spilling).
pub fn attention_supports(head_dim: usize) -> bool {
    matches!(head_dim, 16 | 32 | 64)
}

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launch_err(name: &str, r: std::result::Result<(), cudarc::driver::DriverError>) -> Result<()> {
    cu(&format!("launching {name}"), r)
}

/// Raw-pointer launches. Every function is `unsafe`: the pointers must be live device
/// allocations of the documented sizes on `stream`'s context.
impl Kernels {
    /// x[t, :] (f32) = wte[ids[t], :] + wpe[t, :], t < n; ids in range (checked by the caller).
    ///
    /// # Safety
    /// Pointers valid for the sizes above.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn embed(
        &self,
        s: &CudaStream,
        d: GpuDtype,
        x: u64,
        ids: u64,
        wte: u64,
        wpe: u64,
        n: usize,
        c: usize,
    ) -> Result<()> {
        let c = c as i32;
        let mut b = s.launch_builder(&self.embed[d.index()]);
        b.arg(&x).arg(&ids).arg(&wte).arg(&wpe).arg(&c);
        launch_err("embed", b.launch(rows_cfg(n)).map(|_| ()))
    }

    /// Per row: x += add + add_bias (when `add` != 0), out = LayerNorm(x; w, b).
    ///
    /// # Safety
    /// x, add: f32 [rows, c]; add_bias, w, b: T [c]; out: T [rows, c].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn add_ln(
        &self,
        s: &CudaStream,
        d: GpuDtype,
        x: u64,
        add: u64,
        add_bias: u64,
        w: u64,
        bias: u64,
        out: u64,
        rows: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        let c = c as i32;
        let mut b = s.launch_builder(&self.add_ln[d.index()]);
        b.arg(&x)
            .arg(&add)
            .arg(&add_bias)
            .arg(&w)
            .arg(&bias)
            .arg(&out)
            .arg(&c)
            .arg(&eps);
        launch_err("add_ln", b.launch(rows_cfg(rows)).map(|_| ()))
    }

    /// out (T) = gelu_new(inp (f32) + bias (T, per column)), rows x n_cols elements.
    ///
    /// # Safety
    /// inp: f32 [rows, n_cols]; bias: T [n_cols]; out: T [rows, n_cols].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn bias_gelu(
        &self,
        s: &CudaStream,
        d: GpuDtype,
        inp: u64,
        bias: u64,
        out: u64,
        rows: usize,
        n_cols: usize,
    ) -> Result<()> {
        // size_t on the device side (64-bit indices).
        let n = (rows * n_cols) as u64;
        let nc = n_cols as u64;
        // Grid-stride loop: enough blocks to fill an H100/H200 several times over.
        let blocks = (rows * n_cols).div_ceil(256).clamp(1, 132 * 16) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&self.bias_gelu[d.index()]);
        b.arg(&inp).arg(&bias).arg(&out).arg(&n).arg(&nc);
        launch_err("bias_gelu", b.launch(cfg).map(|_| ()))
    }

    /// Multi-head attention of one sequence of `t` positions from the QKV GEMM output.
    ///
    /// # Safety
    /// qkv: f32 [t, 3c] (bias not added); bias: T [3c]; out: T [t, c]; c = n_head * head_dim.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attention(
        &self,
        s: &CudaStream,
        d: GpuDtype,
        qkv: u64,
        bias: u64,
        out: u64,
        t: usize,
        n_head: usize,
        head_dim: usize,
        causal: bool,
    ) -> Result<()> {
        let which = match head_dim {
            16 => 0,
            32 => 1,
            64 => 2,
            _ => {
                return Err(Error::Cuda(format!(
                    "attention kernel supports head dims 16, 32, 64, not {head_dim}"
                )))
            }
        };
        let (tn, c, causal) = (t as i32, (n_head * head_dim) as i32, causal as i32);
        let cfg = LaunchConfig {
            grid_dim: (t.div_ceil(ATT_BQ as usize) as u32, n_head as u32, 1),
            block_dim: (ATT_BQ, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&self.attention[which][d.index()]);
        b.arg(&qkv)
            .arg(&bias)
            .arg(&out)
            .arg(&tn)
            .arg(&c)
            .arg(&causal);
        launch_err("attention", b.launch(cfg).map(|_| ()))
    }

    /// out[r, :] = h[rows[r], :] for r < n.
    ///
    /// # Safety
    /// h: T [>= max(rows) + 1, c]; rows: u32 [n]; out: T [n, c].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gather_rows(
        &self,
        s: &CudaStream,
        d: GpuDtype,
        h: u64,
        rows: u64,
        out: u64,
        n: usize,
        c: usize,
    ) -> Result<()> {
        let c = c as i32;
        let mut b = s.launch_builder(&self.gather_rows[d.index()]);
        b.arg(&h).arg(&rows).arg(&out).arg(&c);
        launch_err("gather_rows", b.launch(rows_cfg(n)).map(|_| ()))
    }

    /// Step decisions for `n` rows of f32 logits `[n, v]` (see kernels.cu `step_decide`).
    /// `ends`: up to 2 end ids; `banned`: up to 4 banned ids.
    ///
    /// # Safety
    /// logits: f32 [n, v]; tok, raw: u32 [n]; stats: f32 [n, 4].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn step_decide(
        &self,
        s: &CudaStream,
        logits: u64,
        n: usize,
        v: usize,
        ends: &[u32],
        banned: &[u32],
        tok: u64,
        raw: u64,
        stats: u64,
    ) -> Result<()> {
        if ends.len() > 2 || banned.len() > 4 {
            return Err(Error::Cuda(format!(
                "step_decide takes <= 2 end ids and <= 4 banned ids, got {} and {}",
                ends.len(),
                banned.len()
            )));
        }
        let id = |xs: &[u32], i: usize| xs.get(i).map_or(-1, |&x| x as i32);
        let (e0, e1) = (id(ends, 0), id(ends, 1));
        let (b0, b1, b2, b3) = (id(banned, 0), id(banned, 1), id(banned, 2), id(banned, 3));
        let vi = v as i32;
        let mut b = s.launch_builder(&self.step_decide);
        b.arg(&logits)
            .arg(&vi)
            .arg(&e0)
            .arg(&e1)
            .arg(&b0)
            .arg(&b1)
            .arg(&b2)
            .arg(&b3)
            .arg(&tok)
            .arg(&raw)
            .arg(&stats);
        launch_err("step_decide", b.launch(rows_cfg(n)).map(|_| ()))
    }
}

/// How the second GEMM operand is laid out.
#[derive(Clone, Copy, Debug)]
pub enum WLayout {
    /// `w` is `[k, n]` row-major (HF Conv1D): y = x @ w.
    KN,
    /// `w` is `[n, k]` row-major (the embedding as LM head): y = x @ w^T.
    NK,
}

/// y `[m, n]` f32 = x `[m, k]` (dtype d) times w (dtype d, see [`WLayout`]), accumulating in f32
/// (CUBLAS_COMPUTE_32F: no TF32, so the f32 path matches the CPU to ~1e-6).
///
/// cuBLAS is column-major: a row-major `[r, c]` matrix is its column-major transpose, so
/// y^T (n x m) = w' (n x k) * x^T (k x m) with w' = w^T for KN (no transpose op, ld n) or
/// op T on the column-major `[k, n]` view of NK (ld k).
///
/// # Safety
/// Pointers valid for the sizes above on the handle's stream.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    blas: &CudaBlas,
    d: GpuDtype,
    x: u64,
    w: u64,
    wl: WLayout,
    y: u64,
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    let ty = match d {
        GpuDtype::F32 => cudaDataType::CUDA_R_32F,
        GpuDtype::Bf16 => cudaDataType::CUDA_R_16BF,
    };
    let (opa, lda) = match wl {
        WLayout::KN => (cublasOperation_t::CUBLAS_OP_N, n),
        WLayout::NK => (cublasOperation_t::CUBLAS_OP_T, k),
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    let r = cudarc::cublas::result::gemm_ex(
        *blas.handle(),
        opa,
        cublasOperation_t::CUBLAS_OP_N,
        n as i32,
        m as i32,
        k as i32,
        &alpha as *const f32 as *const c_void,
        w as *const c_void,
        ty,
        lda as i32,
        x as *const c_void,
        ty,
        k as i32,
        &beta as *const f32 as *const c_void,
        y as *mut c_void,
        cudaDataType::CUDA_R_32F,
        n as i32,
        cublasComputeType_t::CUBLAS_COMPUTE_32F,
        cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
    );
    cu("cublasGemmEx", r)
}
