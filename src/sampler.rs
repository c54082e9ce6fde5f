//! Turning one row of logits into a token, a confidence score and the probability of the end.
//!
//! Processing order (the same on every backend): end probability from the raw logits (the model's
//! own belief, untouched by sampling knobs) -> banned ids -> repetition penalty -> greedy argmax, or
//! temperature -> top-k -> top-p -> a draw from the seeded generator.

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Token choice knobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    pub top_p: f32,
    /// CTRL-style penalty (> 1 discourages tokens already in the prompt or canvas; 1 = off).
    pub repetition_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Param(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Param(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::Param(format!(
                "repetition_penalty must be a finite number > 0, got {}",
                self.repetition_penalty
            )));
        }
        Ok(())
    }
}

/// How sure the model is about a slot; larger is surer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfidenceKind {
    /// Probability of the chosen token.
    Prob,
    /// top-1 minus top-2 probability.
    Margin,
    /// Negative entropy of the distribution.
    NegEntropy,
}

/// The outcome for one row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowChoice {
    pub token: u32,
    pub confidence: f32,
    /// Probability (raw softmax) of the end ids: eos + pad.
    pub p_end: f32,
}

/// Reusable per-session sampler state (scratch buffers, the "seen" set).
#[derive(Clone, Debug)]
pub struct Sampler {
    pub params: SamplingParams,
    pub confidence: ConfidenceKind,
    end_ids: Vec<u32>,
    banned: Vec<u32>,
    seen: Vec<bool>,
    seen_list: Vec<u32>,
    scratch: Vec<f32>,
    idx: Vec<u32>,
}

impl Sampler {
    pub fn new(
        params: SamplingParams,
        confidence: ConfidenceKind,
        vocab: usize,
        end_ids: Vec<u32>,
        banned: Vec<u32>,
    ) -> Self {
        Sampler {
            params,
            confidence,
            end_ids,
            banned,
            seen: vec![false; vocab],
            seen_list: Vec::new(),
            scratch: Vec::with_capacity(vocab),
            idx: Vec::with_capacity(vocab),
        }
    }

    /// The end ids (eos, pad).
    pub fn end_ids(&self) -> &[u32] {
        &self.end_ids
    }

    /// The ids never chosen (the mask id unless allowed).
    pub fn banned(&self) -> &[u32] {
        &self.banned
    }

    /// Marks tokens as present (for the repetition penalty).
    pub fn mark_seen(&mut self, ids: &[u32]) {
        if self.params.repetition_penalty == 1.0 {
            return;
        }
        for &t in ids {
            if let Some(s) = self.seen.get_mut(t as usize) {
                if !*s {
                    *s = true;
                    self.seen_list.push(t);
                }
            }
        }
    }

    pub fn clear_seen(&mut self) {
        for &t in &self.seen_list {
            self.seen[t as usize] = false;
        }
        self.seen_list.clear();
    }

    /// Probability of the end ids under the raw softmax of `logits`.
    pub fn end_prob(&self, logits: &[f32]) -> f32 {
        let m = max(logits);
        let z: f32 = logits.iter().map(|&l| (l - m).exp()).sum();
        let e: f32 = self
            .end_ids
            .iter()
            .filter_map(|&i| logits.get(i as usize))
            .map(|&l| (l - m).exp())
            .sum();
        e / z
    }

    /// Chooses a token for one row. `logits` is modified in place (it is scratch to the caller).
    pub fn choose(&mut self, logits: &mut [f32], rng: &mut Rng) -> RowChoice {
        self.choose_with(logits, rng, true)
    }

    /// `choose`, with the end ids banned when `allow_end` is false (a slot before the answer's
    /// shortest length). `p_end` is still the raw probability of the end.
    pub fn choose_with(&mut self, logits: &mut [f32], rng: &mut Rng, allow_end: bool) -> RowChoice {
        let p_end = self.end_prob(logits);
        if !allow_end {
            for &e in &self.end_ids {
                if let Some(l) = logits.get_mut(e as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        for &b in &self.banned {
            if let Some(l) = logits.get_mut(b as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let pen = self.params.repetition_penalty;
        if pen != 1.0 {
            for &t in &self.seen_list {
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 { *l / pen } else { *l * pen };
            }
        }
        let p = self.params;
        // A subnormal temperature has no finite inverse: its limit is greedy too.
        if p.temperature == 0.0 || !(1.0 / p.temperature).is_finite() {
            // Greedy: the distribution at temperature 1 scores the confidence.
            let (best, _) = argmax(logits);
            let confidence = self.score(logits, best);
            return RowChoice {
                token: best as u32,
                confidence,
                p_end,
            };
        }
        let inv_t = 1.0 / p.temperature;
        let m = max(logits);
        if (m * inv_t).is_finite() {
            logits.iter_mut().for_each(|l| *l *= inv_t);
        } else if m.is_finite() {
            // A tiny temperature (say 1e-38) overflows the scaled logits to +-inf and the
            // softmax to NaN; shifted by the maximum first, the largest logit stays 0 and the
            // rest go to -inf at worst: the limit of sampling, which is greedy.
            logits.iter_mut().for_each(|l| *l = (*l - m) * inv_t);
        }
        if p.top_k > 0 && p.top_k < logits.len() {
            self.scratch.clear();
            self.scratch.extend_from_slice(logits);
            let k = p.top_k;
            let (_, kth, _) = self
                .scratch
                .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let kth = *kth;
            // Ties at the threshold may keep a few more than k; harmless and deterministic.
            logits
                .iter_mut()
                .filter(|l| **l < kth)
                .for_each(|l| *l = f32::NEG_INFINITY);
        }
        softmax_in_place(logits);
        if p.top_p < 1.0 {
            self.nucleus(logits, p.top_p);
        }
        // Inverse-CDF draw over the (renormalised) probabilities.
        let total: f32 = logits.iter().sum();
        let mut u = rng.next_f32() * total;
        let mut token = None;
        let mut last_nonzero = 0;
        for (i, &q) in logits.iter().enumerate() {
            if q > 0.0 {
                last_nonzero = i;
                if u < q {
                    token = Some(i);
                    break;
                }
                u -= q;
            }
        }
        let token = token.unwrap_or(last_nonzero);
        let confidence = self.score_probs(logits, token, total);
        RowChoice {
            token: token as u32,
            confidence,
            p_end,
        }
    }

    /// Zeroes every probability outside the nucleus. Exact without sorting the whole vocabulary:
    /// tokens above a threshold form a prefix of the sorted order, so once their mass reaches
    /// `top_p` the nucleus lies inside them and only they need sorting.
    fn nucleus(&mut self, probs: &mut [f32], top_p: f32) {
        let pmax = max(probs);
        let mut theta = pmax * 1e-3;
        loop {
            self.idx.clear();
            self.idx.extend(
                probs
                    .iter()
                    .enumerate()
                    .filter(|(_, &q)| q >= theta && q > 0.0)
                    .map(|(i, _)| i as u32),
            );
            let mass: f32 = self.idx.iter().map(|&i| probs[i as usize]).sum();
            if mass >= top_p || theta == 0.0 {
                break;
            }
            theta = if theta < 1e-30 { 0.0 } else { theta * 1e-3 };
        }
        self.idx.sort_unstable_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        let mut cum = 0.0f32;
        let mut keep = self.idx.len();
        for (n, &i) in self.idx.iter().enumerate() {
            cum += probs[i as usize];
            if cum >= top_p {
                keep = n + 1;
                break;
            }
        }
        self.scratch.clear();
        self.scratch.resize(probs.len(), 0.0);
        for &i in &self.idx[..keep] {
            self.scratch[i as usize] = probs[i as usize];
        }
        probs.copy_from_slice(&self.scratch);
    }

    /// Confidence of `token` under softmax(logits).
    fn score(&self, logits: &[f32], token: usize) -> f32 {
        let m = max(logits);
        if self.confidence == ConfidenceKind::NegEntropy {
            return neg_entropy(logits, m);
        }
        let z: f32 = logits.iter().map(|&l| (l - m).exp()).sum();
        match self.confidence {
            ConfidenceKind::Prob => (logits[token] - m).exp() / z,
            ConfidenceKind::Margin => {
                let (p1, p2) = top2(logits);
                ((p1 - m).exp() - (p2 - m).exp()) / z
            }
            ConfidenceKind::NegEntropy => unreachable!("handled above"),
        }
    }

    /// Confidence of `token` under already normalised (up to `total`) probabilities.
    fn score_probs(&self, probs: &[f32], token: usize, total: f32) -> f32 {
        match self.confidence {
            ConfidenceKind::Prob => probs[token] / total,
            ConfidenceKind::Margin => {
                let (p1, p2) = top2(probs);
                (p1 - p2) / total
            }
            ConfidenceKind::NegEntropy => probs
                .iter()
                .filter(|&&q| q > 0.0)
                .map(|&q| {
                    let q = q / total;
                    q * q.ln()
                })
                .sum(),
        }
    }
}

/// Minus the entropy of softmax(logits) (`m`: the largest logit), accumulated in f64.
///
/// Rows of a 50257-token vocabulary can be close to uniform (an untrained or tiny model): their
/// entropies then differ in the fifth significant digit, while a sequential f32 sum over 50257
/// terms is off by up to ~1e-4 and would rank such rows by rounding noise. In f64 the sum is
/// exact to ~1e-12 here, so the ranking is the distribution's own (and any backend that sums
/// accurately, such as the GPU's blockwise reduction, ranks peaked rows the same way).
fn neg_entropy(logits: &[f32], m: f32) -> f32 {
    let m = m as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
    let lz = z.ln();
    let h: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| {
            let lp = l as f64 - m - lz;
            -lp.exp() * lp
        })
        .sum();
    -h as f32
}

pub(crate) fn max(xs: &[f32]) -> f32 {
    xs.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Index and value of the largest element (first one on ties).
pub fn argmax(xs: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &x) in xs.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best
}

fn top2(xs: &[f32]) -> (f32, f32) {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in xs {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    (a, b)
}

pub fn softmax_in_place(xs: &mut [f32]) {
    let m = max(xs);
    let mut z = 0.0;
    for x in xs.iter_mut() {
        *x = (*x - m).exp();
        z += *x;
    }
    let inv = 1.0 / z;
    xs.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams, conf: ConfidenceKind) -> Sampler {
        Sampler::new(params, conf, 6, vec![5], vec![4])
    }

    #[test]
    fn greedy_ban_end_prob_and_confidences() {
        let logits = [1.0f32, 3.0, 2.0, 0.0, 10.0, 2.5];
        let mut s = sampler(SamplingParams::default(), ConfidenceKind::Prob);
        let mut rng = Rng::new(0);
        let c = s.choose(&mut logits.clone(), &mut rng);
        // id 4 is banned even though it is the argmax.
        assert_eq!(c.token, 1);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((c.p_end - 2.5f32.exp() / z).abs() < 1e-6);
        let z2: f32 = [1.0f32, 3.0, 2.0, 0.0, 2.5].iter().map(|l| l.exp()).sum();
        assert!((c.confidence - 3.0f32.exp() / z2).abs() < 1e-6);
        let mut m = sampler(SamplingParams::default(), ConfidenceKind::Margin);
        let c = m.choose(&mut logits.clone(), &mut rng);
        assert!((c.confidence - (3.0f32.exp() - 2.5f32.exp()) / z2).abs() < 1e-6);
        let mut e = sampler(SamplingParams::default(), ConfidenceKind::NegEntropy);
        let c = e.choose(&mut logits.clone(), &mut rng);
        let h: f32 = [1.0f32, 3.0, 2.0, 0.0, 2.5]
            .iter()
            .map(|l| {
                let p = l.exp() / z2;
                -p * p.ln()
            })
            .sum();
        assert!((c.confidence + h).abs() < 1e-5);
    }

    /// Minus the entropy of softmax(logits) with compensated (Neumaier) f64 sums: the reference
    /// for the ranking tests below.
    fn neg_entropy_ref(logits: &[f32]) -> f64 {
        fn ksum(xs: impl Iterator<Item = f64>) -> f64 {
            let (mut s, mut c) = (0.0f64, 0.0f64);
            for x in xs {
                let t = s + x;
                c += if s.abs() >= x.abs() {
                    (s - t) + x
                } else {
                    (x - t) + s
                };
                s = t;
            }
            s + c
        }
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lz = ksum(logits.iter().map(|&l| (l as f64 - m).exp())).ln();
        ksum(logits.iter().map(|&l| {
            let lp = l as f64 - m - lz;
            lp.exp() * lp
        }))
    }

    /// The old f32 score: a sequential f32 sum of 50257 terms.
    fn neg_entropy_f32(logits: &[f32]) -> f32 {
        let m = max(logits);
        let lz = logits.iter().map(|&l| (l - m).exp()).sum::<f32>().ln();
        logits
            .iter()
            .map(|&l| {
                let lp = l - m - lz;
                lp.exp() * lp
            })
            .sum()
    }

    /// Slots ranked by negative entropy over a GPT-2-sized vocabulary. Peaked rows (a clear
    /// top token over noise, as a trained model gives) and near-uniform rows (an untrained or
    /// tiny model: the CUDA parity fixture) both rank as the exact entropies do; on the
    /// near-uniform rows the old f32 sum is off by more than the gaps it has to resolve.
    #[test]
    fn neg_entropy_ranks_rows_as_the_exact_entropy() {
        let v = 50257;
        let mut rng = Rng::new(17);
        let mut noise = |std: f32| -> Vec<f32> { (0..v).map(|_| rng.normal() * std).collect() };
        for (case, rows) in [
            // Peaked: top logit 8 + k / 8 over N(0, 1) noise; the gaps are ~1e-2 and more.
            (
                "peaked",
                (0..12)
                    .map(|k| {
                        let mut r = noise(1.0);
                        r[100 + k] = 8.0 + k as f32 / 8.0;
                        r
                    })
                    .collect::<Vec<_>>(),
            ),
            // Near-uniform, the fixture's regime (entropy ~ ln 50257): one N(0, 0.05) row scaled
            // by 1 + k / 200, so the entropies fall with k in steps of ~1.2e-5.
            ("near-uniform", {
                let base = noise(0.05);
                (0..12)
                    .map(|k| base.iter().map(|&x| x * (1.0 + k as f32 / 200.0)).collect())
                    .collect()
            }),
        ] {
            let mut s = Sampler::new(
                SamplingParams::default(),
                ConfidenceKind::NegEntropy,
                v,
                vec![],
                vec![],
            );
            let exact: Vec<f64> = rows.iter().map(|r| neg_entropy_ref(r)).collect();
            let got: Vec<f32> = rows
                .iter()
                .map(|r| s.choose(&mut r.clone(), &mut Rng::new(0)).confidence)
                .collect();
            let rank = |xs: &[f64]| {
                let mut idx: Vec<usize> = (0..xs.len()).collect();
                idx.sort_by(|&a, &b| xs[b].total_cmp(&xs[a]));
                idx
            };
            let got64: Vec<f64> = got.iter().map(|&g| g as f64).collect();
            // Rows closer than f32's resolution of the result may swap: none here do.
            let min_gap = {
                let mut e = exact.clone();
                e.sort_by(f64::total_cmp);
                e.windows(2).map(|w| w[1] - w[0]).fold(f64::MAX, f64::min)
            };
            assert!(
                min_gap > 4.0 * f32::EPSILON as f64 * 11.0,
                "{case}: gap {min_gap:e}"
            );
            assert_eq!(rank(&got64), rank(&exact), "{case}");
            for (g, e) in got64.iter().zip(&exact) {
                assert!(
                    (g - e).abs() <= 2e-6 * e.abs().max(1.0),
                    "{case}: {g} vs {e}"
                );
            }
            if case == "near-uniform" {
                // What the f64 sum fixes: the f32 one errs by more than the smallest gap.
                let worst = rows
                    .iter()
                    .zip(&exact)
                    .map(|(r, e)| (neg_entropy_f32(r) as f64 - e).abs())
                    .fold(0.0, f64::max);
                assert!(
                    worst > min_gap,
                    "{case}: f32 error {worst:e}, gap {min_gap:e}"
                );
            }
        }
    }

    #[test]
    fn repetition_penalty_changes_greedy_choice() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut s = sampler(p, ConfidenceKind::Prob);
        s.mark_seen(&[1]);
        let c = s.choose(&mut [1.0, 3.0, 2.0, 0.0, 0.0, 0.0], &mut Rng::new(0));
        assert_eq!(c.token, 2); // 3.0 / 2 = 1.5 < 2.0
        s.clear_seen();
        let c = s.choose(&mut [1.0, 3.0, 2.0, 0.0, 0.0, 0.0], &mut Rng::new(0));
        assert_eq!(c.token, 1);
    }

    /// Fuzzer finding: temperature 1e-38 overflowed the scaled logits, the softmax gave NaN and
    /// the draw fell back to token 0 (even when banned). Tiny temperatures now act as greedy.
    #[test]
    fn tiny_temperatures_are_greedy_not_nan() {
        for t in [1e-38f32, 1e-45, 1e-30, 1e-20] {
            let p = SamplingParams {
                temperature: t,
                ..Default::default()
            };
            let mut s = sampler(p, ConfidenceKind::Prob);
            for seed in 0..20 {
                let c = s.choose(&mut [5.0, 1.0, 9.0, -3.0, 0.0, 8.5], &mut Rng::new(seed));
                assert_eq!(c.token, 2, "temperature {t}");
                assert!(
                    c.confidence.is_finite(),
                    "temperature {t}: {}",
                    c.confidence
                );
            }
        }
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let base = [0.0f32, 1.0, 2.0, 3.0, -50.0, 0.5];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        };
        let mut s = sampler(p, ConfidenceKind::Prob);
        let mut rng = Rng::new(3);
        let mut seen = [0usize; 6];
        for _ in 0..2000 {
            seen[s.choose(&mut base.clone(), &mut rng).token as usize] += 1;
        }
        assert_eq!(seen[0] + seen[1] + seen[4] + seen[5], 0);
        // P(3)/P(2) = e ~ 2.72
        let ratio = seen[3] as f32 / seen[2] as f32;
        assert!((2.2..3.3).contains(&ratio), "{ratio}");
        // top_p 0.5: token 3 alone has p ~ 0.6 -> always chosen.
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut s = sampler(p, ConfidenceKind::Prob);
        for _ in 0..200 {
            let c = s.choose(&mut base.clone(), &mut rng);
            assert_eq!(c.token, 3);
            assert!((c.confidence - 1.0).abs() < 1e-6);
        }
        // top_p 0.9: tokens 3 and 2 (0.6 + 0.22 = 0.82 < 0.9) and 1 (0.08) -> support {1, 2, 3}.
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            ..Default::default()
        };
        let mut s = sampler(p, ConfidenceKind::Prob);
        let mut seen = [0usize; 6];
        for _ in 0..3000 {
            seen[s.choose(&mut base.clone(), &mut rng).token as usize] += 1;
        }
        assert!(seen[1] > 0 && seen[2] > 0 && seen[3] > 0);
        assert_eq!(seen[0] + seen[4] + seen[5], 0, "{seen:?}");
    }

    #[test]
    fn invalid_params_are_rejected() {
        let bad = [
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ];
        for b in bad {
            assert!(matches!(b.validate(), Err(Error::Param(_))), "{b:?}");
        }
        SamplingParams::default().validate().unwrap();
    }
}
