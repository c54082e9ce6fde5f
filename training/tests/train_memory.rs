//! A training step must not grow memory: the heap bytes alive after the last step equal those
//! after step 10 (within a small slack for the progress bar and the loss list). Before the gradients
//! were detached, every step kept the previous steps' whole autograd graphs (activations and
//! vocabulary-sized logits) reachable through AdamW's moments: tens of MB per step here.
//!
//! The live-byte count comes from a counting global allocator, so the test measures exactly what
//! the process holds, independent of glibc's caching of freed pages (RSS would not shrink).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use diffugpt_training::config::{BackendKind, Init, Pipeline};
use diffugpt_training::data::Kind;
use diffugpt_training::prepare::PadVariant;
use diffugpt_training::train::{train_observed, StopAt};

mod common;
use common::{config, prep};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap bytes after each of `steps` steps of `pipeline` on the fixture corpus.
fn live_bytes_per_step(
    pipeline: Pipeline,
    kind: Kind,
    steps: usize,
    backend: BackendKind,
) -> Vec<isize> {
    let tmp = tempfile::tempdir().unwrap();
    let data = prep(&tmp.path().join("data"), kind, PadVariant::EosPad);
    let mut cfg = config(
        pipeline,
        Init::Scratch {
            n_layer: 2,
            n_head: 2,
            n_embd: 32,
            n_positions: 64,
        },
        &data,
        &tmp.path().join("run"),
        steps,
    );
    // Validation every 10 steps runs too (it must not keep anything either).
    cfg.eval_every = 10;
    cfg.backend = backend;
    let mut live = Vec::new();
    train_observed(&cfg, None, false, StopAt::default(), &mut |_| {
        live.push(LIVE.load(Ordering::Relaxed))
    })
    .unwrap();
    live
}

fn assert_flat(live: &[isize], what: &str) {
    // One step's graph here holds > 10 MB (logits of ~100 masked rows x 50258 ids, twice over for
    // the gradient); 1 MB of slack is far below one leaked step.
    let (at10, last) = (live[9], *live.last().unwrap());
    let growth = last - at10;
    assert!(
        growth < 1 << 20,
        "{what}: {growth} more live heap bytes after step {} than after step 10 (per step: {:?})",
        live.len(),
        live
    );
}

/// One test for both pipelines, one after the other: the live-byte counter is process-wide, so a
/// second test running in parallel would count its own allocations into this one's.
#[test]
fn training_keeps_memory_flat() {
    // Both backends: the engine (flat by construction) and candle's autograd (the leak's home).
    for backend in [BackendKind::Engine, BackendKind::Candle] {
        let live = live_bytes_per_step(Pipeline::Diffusion, Kind::Padded, 30, backend);
        assert_flat(&live, &format!("diffusion, {backend:?}"));
        let live = live_bytes_per_step(Pipeline::MaskEos, Kind::MaskEos, 20, backend);
        assert_flat(&live, &format!("mask-eos, {backend:?}"));
    }
}
