//! AdamW with decoupled weight decay on >= 2-D parameters only, OneCycle (cosine) learning rate,
//! and global gradient-norm clipping. The state is plain tensors so checkpoints can hold it.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

/// OneCycle with cosine annealing, step for step PyTorch's `OneCycleLR` (`three_phase=False`):
/// the lr of optimizer step `step` (0-based) of `total`. It rises from `max_lr/div` to `max_lr`,
/// reached at step `warmup_frac * total - 1`, then falls to `max_lr/(div*final_div)`, reached at
/// the last step `total - 1`.
pub fn one_cycle_lr(
    step: usize,
    total: usize,
    max_lr: f64,
    warmup_frac: f64,
    div: f64,
    final_div: f64,
) -> f64 {
    let initial = max_lr / div;
    let min = initial / final_div;
    // PyTorch's phase ends: float(pct_start * total_steps) - 1 and total_steps - 1.
    let warm_end = total as f64 * warmup_frac - 1.0;
    let last = total as f64 - 1.0;
    let s = step as f64;
    let cos = |from: f64, to: f64, frac: f64| {
        to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
    };
    // A zero-length phase counts as done (PyTorch would divide by zero there).
    let frac = |x: f64, span: f64| if span > 0.0 { (x / span).min(1.0) } else { 1.0 };
    if s <= warm_end {
        cos(initial, max_lr, frac(s, warm_end))
    } else {
        cos(max_lr, min, frac(s - warm_end, last - warm_end))
    }
}

/// AdamW state for a list of named variables.
pub struct AdamW {
    pub vars: Vec<(String, Var)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Number of updates applied (for bias correction).
    pub t: usize,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(
        vars: Vec<(String, Var)>,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            vars,
            m,
            v,
            t: 0,
            betas,
            eps,
            weight_decay,
        })
    }

    /// The gradients of our variables from a backward pass, in `vars` order, detached.
    ///
    /// candle's `backward` returns gradients that are still nodes of the step's graph (each one
    /// refers to the activations it was computed from). Kept in `m`/`v`, or in an accumulator,
    /// they would keep every earlier step's whole graph reachable: memory grew by the size of a
    /// step's activations at every step. Detached, a gradient is plain storage.
    pub fn collect(&self, grads: &GradStore) -> Vec<Option<Tensor>> {
        self.vars
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).map(Tensor::detach))
            .collect()
    }

    /// Adds `more` into `acc` (gradient accumulation over micro-batches).
    pub fn accumulate(acc: &mut [Option<Tensor>], more: Vec<Option<Tensor>>) -> Result<()> {
        for (a, m) in acc.iter_mut().zip(more) {
            *a = match (a.take(), m) {
                (Some(x), Some(y)) => Some((x + y)?),
                (x, y) => x.or(y),
            };
        }
        Ok(())
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
        let mut sq = 0f64;
        for g in grads.iter().flatten() {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(sq.sqrt())
    }

    /// One update with learning rate `lr`; gradients (in `vars` order) are multiplied by
    /// `grad_scale` first (accumulation averaging and clipping).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = &grads[i] else { continue };
            let g = (g * grad_scale)?;
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            let mut w = var.as_tensor().clone();
            if self.weight_decay > 0.0 && var.rank() >= 2 {
                w = (w * (1.0 - lr * self.weight_decay))?;
            }
            var.set(&(w - (update * lr)?)?)?;
            // Plain storage: the state must never hold a graph across steps.
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cycle_shape() {
        let lr = |s| one_cycle_lr(s, 100, 1.0, 0.1, 25.0, 1e4);
        assert!((lr(0) - 0.04).abs() < 1e-12);
        // The peak is at pct_start * total - 1 = 9 (PyTorch), not one step later.
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!(lr(8) < 1.0 && lr(10) < 1.0);
        assert!(lr(5) > 0.04 && lr(5) < 1.0);
        assert!(lr(50) < 1.0 && lr(50) > lr(90));
        // The last step (99) runs at the minimum.
        assert!((lr(99) - 0.04 / 1e4).abs() < 1e-15);
    }

    #[test]
    fn one_cycle_matches_pytorch() {
        // torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10, pct_start=0.25,
        // anneal_strategy="cos", div_factor=25, final_div_factor=1e4): the lr of steps 0..10
        // (phase ends 1.5 and 9), written out from PyTorch's formula
        // `end + (start - end) / 2 * (1 + cos(pi * pct))`; PyTorch 2.15's scheduler gives exactly
        // these ten values (max difference 0.0, checked 2026-12-01).
        let max_lr = 1e-3;
        let initial = max_lr / 25.0;
        let min = initial / 1e4;
        let cos =
            |a: f64, b: f64, p: f64| b + (a - b) / 2.0 * (1.0 + (std::f64::consts::PI * p).cos());
        let mut expect = vec![cos(initial, max_lr, 0.0), cos(initial, max_lr, 1.0 / 1.5)];
        for s in 2..10 {
            expect.push(cos(max_lr, min, (s as f64 - 1.5) / 7.5));
        }
        for (s, e) in expect.iter().enumerate() {
            let got = one_cycle_lr(s, 10, max_lr, 0.25, 25.0, 1e4);
            assert!((got - e).abs() < 1e-15, "step {s}: {got} vs {e}");
        }
        assert_eq!(one_cycle_lr(9, 10, max_lr, 0.25, 25.0, 1e4), min);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_skips_decay_on_vectors() {
        let dev = candle_core::Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[3.0f32, -2.0]], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[5.0f32], &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            (0.9, 0.99),
            1e-8,
            0.0,
        )
        .unwrap();
        for _ in 0..300 {
            let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap()
                + b.as_tensor().sqr().unwrap().sum_all().unwrap())
            .unwrap();
            let grads = opt.collect(&loss.backward().unwrap());
            opt.step(&grads, 0.05, 1.0).unwrap();
        }
        let wv: Vec<Vec<f32>> = w.as_tensor().to_vec2().unwrap();
        assert!(wv[0].iter().all(|x| x.abs() < 0.05), "{wv:?}");
        // Pure weight decay (zero gradient): only the 2-D parameter shrinks.
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            (0.9, 0.99),
            1e-8,
            0.5,
        )
        .unwrap();
        let before_b: Vec<f32> = b.as_tensor().to_vec1().unwrap();
        w.set(&Tensor::new(&[[1.0f32, 1.0]], &dev).unwrap())
            .unwrap();
        let grads = vec![
            Some(w.as_tensor().zeros_like().unwrap()),
            Some(b.as_tensor().zeros_like().unwrap()),
        ];
        assert_eq!(AdamW::grad_norm(&grads).unwrap(), 0.0);
        opt.step(&grads, 0.1, 1.0).unwrap();
        let wv: Vec<Vec<f32>> = w.as_tensor().to_vec2().unwrap();
        assert!((wv[0][0] - 0.95).abs() < 1e-6, "{wv:?}");
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), before_b);
    }
}
