//! Where a forward's time goes, op by op: wall-clock time per kind of op (LayerNorms, the four
//! projections, attention, residual adds, the head ...), summed over the layers.
//!
//! `diffugpt bench --profile` prints it per canvas size; [`measure`] is the whole interface.
//! Profiling is per thread and only inside [`measure`]: the ops record into the calling thread's
//! counters while it runs (each op is entered on the thread that called the forward; its worker
//! threads run inside it), so concurrent forwards on other threads neither pay for it nor mix
//! into it. Outside [`measure`] an op costs one thread-local read.
//!
//! The times are wall-clock around each op as the model code calls it, so they add up to the
//! forward minus the glue between ops (reshapes, hand-offs), which the profile reports too.

use std::cell::RefCell;
use std::time::Instant;

/// The kinds of op a forward is split into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Token and position embeddings.
    Embed,
    /// Every LayerNorm (`ln_1`, `ln_2`, `ln_f`).
    LayerNorm,
    /// `c_attn`: the query, key and value projection.
    Qkv,
    /// Scores, softmax and the weighted sum of values, all heads.
    Attention,
    /// `attn.c_proj`.
    AttnProj,
    /// `mlp.c_fc` with its GELU.
    MlpUp,
    /// `mlp.c_proj`.
    MlpDown,
    /// The two residual additions per layer.
    Residual,
    /// The LM head (logits).
    Head,
}

impl Op {
    /// Every op, in the order a layer runs them (the profile's row order). A function, not an
    /// associated constant: cbindgen would export `Op` into the C header for one.
    pub const fn all() -> [Op; 9] {
        [
            Op::Embed,
            Op::LayerNorm,
            Op::Qkv,
            Op::Attention,
            Op::AttnProj,
            Op::MlpUp,
            Op::MlpDown,
            Op::Residual,
            Op::Head,
        ]
    }

    /// The name the profile prints.
    pub fn name(self) -> &'static str {
        match self {
            Op::Embed => "embed",
            Op::LayerNorm => "layer_norm",
            Op::Qkv => "qkv (c_attn)",
            Op::Attention => "attention",
            Op::AttnProj => "attn.c_proj",
            Op::MlpUp => "mlp.c_fc + gelu",
            Op::MlpDown => "mlp.c_proj",
            Op::Residual => "residual adds",
            Op::Head => "head (logits)",
        }
    }

    fn index(self) -> usize {
        Op::all().iter().position(|&o| o == self).unwrap_or(0)
    }
}

/// One op's share of what [`measure`] ran.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpTime {
    pub op: Op,
    /// Wall-clock milliseconds, all calls together.
    pub ms: f64,
    /// How many times it ran.
    pub calls: u64,
}

/// What [`measure`] recorded: the ops that ran (in [`Op::all`]'s order) and the wall-clock time
/// of the whole closure.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub ops: Vec<OpTime>,
    pub total_ms: f64,
}

impl Profile {
    /// The closure's time outside every recorded op (glue, allocation between ops).
    pub fn other_ms(&self) -> f64 {
        (self.total_ms - self.ops.iter().map(|o| o.ms).sum::<f64>()).max(0.0)
    }

    /// The record of `op`, if it ran.
    pub fn get(&self, op: Op) -> Option<&OpTime> {
        self.ops.iter().find(|o| o.op == op)
    }
}

type Counters = [(u64, u64); Op::all().len()];

thread_local! {
    /// This thread's counters (nanoseconds, calls) while [`measure`] runs; `None` otherwise.
    static ACTIVE: RefCell<Option<Counters>> = const { RefCell::new(None) };
}

/// Runs `f` with profiling on for this thread and returns its result with the profile. Nested
/// calls profile the inner closure on its own (the outer profile does not see its ops).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Profile) {
    let outer = ACTIVE.with(|a| a.borrow_mut().replace(Default::default()));
    let start = Instant::now();
    let r = f();
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let counters = ACTIVE.with(|a| std::mem::replace(&mut *a.borrow_mut(), outer));
    let ops = counters
        .unwrap_or_default()
        .iter()
        .zip(Op::all())
        .filter(|((_, calls), _)| *calls > 0)
        .map(|(&(ns, calls), op)| OpTime {
            op,
            ms: ns as f64 / 1e6,
            calls,
        })
        .collect();
    (r, Profile { ops, total_ms })
}

/// Runs one op, timing it into this thread's profile when [`measure`] is running.
#[inline]
pub(crate) fn time<R>(op: Op, f: impl FnOnce() -> R) -> R {
    if !ACTIVE.with(|a| a.borrow().is_some()) {
        return f();
    }
    let start = Instant::now();
    let r = f();
    let ns = start.elapsed().as_nanos() as u64;
    ACTIVE.with(|a| {
        if let Some(c) = a.borrow_mut().as_mut() {
            let slot = &mut c[op.index()];
            slot.0 += ns;
            slot.1 += 1;
        }
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_inside_measure_and_on_this_thread() {
        // Outside measure: nothing is kept anywhere.
        assert_eq!(time(Op::Head, || 7), 7);
        let ((), p) = measure(|| {
            time(Op::Qkv, || {
                std::thread::sleep(std::time::Duration::from_millis(2))
            });
            time(Op::Qkv, || ());
            time(Op::Head, || ());
            // Another thread's ops are not this profile's.
            std::thread::spawn(|| time(Op::Attention, || ()))
                .join()
                .unwrap();
        });
        let names: Vec<Op> = p.ops.iter().map(|o| o.op).collect();
        assert_eq!(names, vec![Op::Qkv, Op::Head]);
        let qkv = p.get(Op::Qkv).unwrap();
        assert_eq!(qkv.calls, 2);
        assert!(qkv.ms >= 2.0, "{qkv:?}");
        assert!(p.total_ms >= qkv.ms);
        assert!(p.get(Op::Attention).is_none());
        // And nothing stays switched on afterwards.
        let ((), empty) = measure(|| ());
        assert!(empty.ops.is_empty());
    }

    #[test]
    fn nested_measures_keep_their_own_ops() {
        let ((), outer) = measure(|| {
            time(Op::Embed, || ());
            let ((), inner) = measure(|| time(Op::Head, || ()));
            assert_eq!(inner.ops.len(), 1);
            assert_eq!(inner.ops[0].op, Op::Head);
            time(Op::Embed, || ());
        });
        assert_eq!(outer.ops.len(), 1);
        assert_eq!(outer.get(Op::Embed).unwrap().calls, 2);
    }
}
