//! Finding a GPU and opening a context without ever taking the process down.
//!
//! cudarc (with `dynamic-loading`) opens libcuda, libnvrtc and libcublas on first use and *panics*
//! when one is missing. So: [`probe`] checks that the libraries load (via `dlopen`, no symbol is
//! called) before anything else touches cudarc, and every call into cudarc runs inside
//! [`guarded`], which turns a panic into [`Error::Cuda`]. Callers choose what to do with the error
//! (device selection falls back to the CPU).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule};

use crate::error::{Error, Result};

/// Runs `f` (which calls into cudarc) and converts a panic into [`Error::Cuda`] naming `what`.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(Error::Cuda(format!("{what}: {msg}")))
        }
    }
}

/// Maps any cudarc error into [`Error::Cuda`] with context.
pub(crate) fn cu<T, E: std::fmt::Debug>(what: &str, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| Error::Cuda(format!("{what}: {e:?}")))
}

/// The shared library each part is loaded from: the driver's ABI name, and the CUDA 13 major
/// versions of NVRTC and cuBLAS that this build's cudarc bindings (`cuda-13000`) are written for.
fn lib_name(which: &str) -> Option<&'static str> {
    match which {
        "cuda" => Some("libcuda.so.1"),
        "nvrtc" => Some("libnvrtc.so.13"),
        "cublas" => Some("libcublas.so.13"),
        _ => None,
    }
}

/// Whether the library for `which` ([`lib_name`]) can be loaded. Only `dlopen`s that exact name:
/// nothing is resolved, nothing panics. (cudarc's own check also accepts `.so.12`, `.so.11`, ...,
/// whose ABI differs from the bindings: a CUDA 12 NVRTC would pass the probe, then fail or
/// misbehave at the first call.)
fn lib_present(which: &str) -> bool {
    let Some(name) = lib_name(which) else {
        return false;
    };
    dl_loads(name)
}

#[cfg(unix)]
fn dl_loads(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a NUL-terminated name; loading a CUDA library runs its initialisers, which any use
    // of it does anyway. The handle is released again (cudarc opens the library itself).
    unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if h.is_null() {
            return false;
        }
        libc::dlclose(h);
    }
    true
}

#[cfg(not(unix))]
fn dl_loads(_name: &str) -> bool {
    false
}

/// Whether NVRTC can be loaded (the kernel compile test needs only this, no GPU).
pub fn nvrtc_available() -> bool {
    lib_present("nvrtc")
}

/// Checks that the driver, NVRTC and cuBLAS load and that there is at least one GPU. The error
/// says which part is missing.
pub fn probe() -> Result<()> {
    for (lib, what) in [
        ("cuda", "the NVIDIA driver"),
        ("nvrtc", "NVRTC"),
        ("cublas", "cuBLAS"),
    ] {
        if !lib_present(lib) {
            let name = lib_name(lib).unwrap_or(lib);
            return Err(Error::Cuda(format!("{what} ({name}) cannot be loaded")));
        }
    }
    let n = guarded("counting devices", || {
        cu("cuInit / device count", CudaContext::device_count())
    })?;
    if n < 1 {
        return Err(Error::Cuda("the driver reports no GPU".into()));
    }
    Ok(())
}

/// True when [`probe`] passes: the tests use it to skip.
pub fn gpu_available() -> bool {
    probe().is_ok()
}

/// An opened GPU: a context and the compiled kernels. Shared by every model and session on it.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub kernels: crate::cuda::kernels::Kernels,
    /// Which image of the kernels was loaded (CUBIN, or the PTX fallback).
    pub image: crate::cuda::kernels::KernelImage,
    /// Kept alive for the kernels' functions.
    _module: Arc<CudaModule>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("image", &self.image)
            .finish()
    }
}

impl Gpu {
    /// Opens device `ordinal`: probes, creates the context, compiles and loads the kernels.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        probe()?;
        guarded("opening the GPU", || {
            let ctx = cu("creating the context", CudaContext::new(ordinal))?;
            // One stream per session and explicit synchronisation at the host boundary: cudarc's
            // per-allocation event tracking would only add work (and events inside graphs).
            // SAFETY: set before any allocation on this context; we never share a buffer
            // between streams without a synchronize in between.
            unsafe { ctx.disable_event_tracking() };
            let name = cu("device name", ctx.name())?;
            let cc = cu("compute capability", ctx.compute_capability())?;
            let compiled = crate::cuda::kernels::compile(cc)?;
            let (module, image) = crate::cuda::kernels::load_module(&ctx, compiled)?;
            let kernels = crate::cuda::kernels::Kernels::load(&module)?;
            Ok(Arc::new(Gpu {
                ctx,
                name,
                compute_capability: cc,
                kernels,
                image,
                _module: module,
            }))
        })
    }
}
