//! EoS-first length prediction: after the first denoising step, read where the model puts the end.
//!
//! Input per masked slot j (in canvas order): `p_end[j]`, the probability of an end id (eos, or pad
//! when the model has one), and whether the slot's argmax is an end id. Output: the number of answer
//! tokens before the end, or `None` when the model puts no end inside the canvas.

use crate::error::{Error, Result};

/// How to turn the first step's end probabilities into a length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LengthPredictor {
    /// The first slot whose argmax is an end id.
    ArgmaxFirst,
    /// The first slot whose end probability is at least tau.
    Threshold(f32),
    /// The q-quantile of the distribution of the first end position, treating slots as
    /// independent: P(first end = j) = p_j * prod_{i<j} (1 - p_i). A high q gives an upper bound.
    Quantile(f32),
    /// A length known in advance (the oracle baseline for evaluation, and benchmarks on models
    /// with random weights, which predict no end).
    Oracle(usize),
}

impl LengthPredictor {
    pub fn validate(&self) -> Result<()> {
        match *self {
            LengthPredictor::ArgmaxFirst | LengthPredictor::Oracle(_) => Ok(()),
            LengthPredictor::Threshold(t) if t > 0.0 && t <= 1.0 => Ok(()),
            LengthPredictor::Quantile(q) if q > 0.0 && q < 1.0 => Ok(()),
            LengthPredictor::Threshold(t) => Err(Error::Param(format!(
                "threshold tau must be in (0, 1], got {t}"
            ))),
            LengthPredictor::Quantile(q) => Err(Error::Param(format!(
                "quantile q must be in (0, 1), got {q}"
            ))),
        }
    }

    /// Parses `argmax`, `threshold:0.5`, `quantile:0.9`.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        let num = |d: f32| -> Result<f32> {
            if arg.is_empty() {
                Ok(d)
            } else {
                arg.parse()
                    .map_err(|_| Error::Param(format!("bad number in length predictor `{s}`")))
            }
        };
        let p = match name {
            "argmax" | "argmax-first" => LengthPredictor::ArgmaxFirst,
            "threshold" => LengthPredictor::Threshold(num(0.5)?),
            "quantile" => LengthPredictor::Quantile(num(0.9)?),
            "oracle" => LengthPredictor::Oracle(arg.parse().map_err(|_| {
                Error::Param(format!("oracle needs a length, e.g. oracle:12, got `{s}`"))
            })?),
            _ => {
                return Err(Error::Param(format!(
                    "unknown length predictor `{s}` (argmax, threshold:TAU, quantile:Q, oracle:N)"
                )))
            }
        };
        p.validate()?;
        Ok(p)
    }

    pub fn label(&self) -> String {
        match self {
            LengthPredictor::ArgmaxFirst => "argmax".into(),
            LengthPredictor::Threshold(t) => format!("threshold:{t}"),
            LengthPredictor::Quantile(q) => format!("quantile:{q}"),
            LengthPredictor::Oracle(n) => format!("oracle:{n}"),
        }
    }

    /// Predicted answer length (tokens before the end).
    pub fn predict(&self, p_end: &[f32], argmax_is_end: &[bool]) -> Option<usize> {
        match *self {
            LengthPredictor::ArgmaxFirst => argmax_is_end.iter().position(|&e| e),
            LengthPredictor::Oracle(n) => (n < p_end.len()).then_some(n),
            LengthPredictor::Threshold(t) => p_end.iter().position(|&p| p >= t),
            LengthPredictor::Quantile(q) => {
                let mut survive = 1.0f64; // P(no end before j)
                let mut cdf = 0.0f64;
                for (j, &p) in p_end.iter().enumerate() {
                    let p = (p as f64).clamp(0.0, 1.0);
                    cdf += survive * p;
                    survive *= 1.0 - p;
                    if cdf >= q as f64 {
                        return Some(j);
                    }
                }
                None
            }
        }
    }
}

/// The first slot that may hold an end: the first slot whose end probability reaches `q`, or 0
/// when `q` is 0 (off) or no slot reaches it.
///
/// Models fine-tuned on padded blocks (eos-pad, eos-eos) fill every slot after the end with an end
/// id, so their first-step `p_end[j]` reads as P(end <= j), the CDF of the answer's length, and
/// this slot is its q-quantile. Why a floor: confidence decoding reveals the surest slots first,
/// and for such a model those are the far padding; each revealed pad makes the slot before it
/// look more like padding, so the ends creep inward until the answer is a few tokens long (the
/// measured failure in docs/results.md). Banning ends before the floor keeps the length the model
/// itself predicted when it had seen only the prompt. A model trained on streams (one end id, then
/// the next document) rarely reaches `q` anywhere and gets no floor.
pub fn length_floor(q: f32, p_end: &[f32]) -> usize {
    if q <= 0.0 {
        return 0;
    }
    p_end.iter().position(|&p| p >= q).unwrap_or(0)
}

/// Canvas length to keep after a prediction: the answer, one slot for the end, and a safety margin
/// (the larger of `margin` tokens and `margin_ratio` x the prediction), capped at `max_len`.
pub fn cut_length(
    predicted: Option<usize>,
    margin: usize,
    margin_ratio: f32,
    max_len: usize,
) -> usize {
    match predicted {
        None => max_len,
        Some(n) => {
            // Saturating: a huge (finite) margin_ratio makes `extra` usize::MAX, which must
            // mean "keep everything", not wrap around to a cut at the prediction.
            let extra = margin.max((n as f32 * margin_ratio).ceil() as usize);
            n.saturating_add(1).saturating_add(extra).min(max_len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictors_on_known_inputs() {
        let p = [0.1, 0.3, 0.6, 0.9, 0.2];
        let am = [false, false, true, true, false];
        assert_eq!(LengthPredictor::ArgmaxFirst.predict(&p, &am), Some(2));
        assert_eq!(LengthPredictor::Threshold(0.5).predict(&p, &am), Some(2));
        assert_eq!(LengthPredictor::Threshold(0.7).predict(&p, &am), Some(3));
        assert_eq!(LengthPredictor::Threshold(0.95).predict(&p, &am), None);
        // cdf: 0.1, 0.1+0.9*0.3=0.37, 0.37+0.63*0.6=0.748, 0.748+0.252*0.9=0.9748
        assert_eq!(LengthPredictor::Quantile(0.3).predict(&p, &am), Some(1));
        assert_eq!(LengthPredictor::Quantile(0.7).predict(&p, &am), Some(2));
        assert_eq!(LengthPredictor::Quantile(0.9).predict(&p, &am), Some(3));
        assert_eq!(LengthPredictor::Quantile(0.99).predict(&p, &am), None);
        assert_eq!(LengthPredictor::ArgmaxFirst.predict(&p, &[false; 5]), None);
    }

    #[test]
    fn floor_is_the_first_slot_reaching_q() {
        let cdf = [0.0, 0.1, 0.4, 0.5, 0.9, 1.0];
        assert_eq!(length_floor(0.0, &cdf), 0);
        assert_eq!(length_floor(0.5, &cdf), 3);
        assert_eq!(length_floor(0.45, &cdf), 3);
        assert_eq!(length_floor(0.95, &cdf), 5);
        // A stream model's point-like end probabilities: nothing reaches q, no floor.
        assert_eq!(length_floor(0.5, &[0.01, 0.3, 0.02]), 0);
    }

    #[test]
    fn cut_and_parse() {
        assert_eq!(cut_length(Some(10), 4, 0.0, 100), 15);
        assert_eq!(cut_length(Some(10), 4, 1.0, 100), 21);
        assert_eq!(cut_length(Some(98), 4, 0.0, 100), 100);
        assert_eq!(cut_length(None, 4, 0.0, 100), 100);
        assert_eq!(cut_length(Some(10), 4, 2.6e32, 100), 100);
        assert_eq!(cut_length(Some(usize::MAX), usize::MAX, 0.0, 100), 100);
        assert_eq!(
            LengthPredictor::parse("quantile:0.8").unwrap(),
            LengthPredictor::Quantile(0.8)
        );
        assert_eq!(
            LengthPredictor::parse("threshold").unwrap(),
            LengthPredictor::Threshold(0.5)
        );
        assert!(LengthPredictor::parse("quantile:1.5").is_err());
        assert!(LengthPredictor::parse("median").is_err());
        assert_eq!(
            LengthPredictor::parse("oracle:7")
                .unwrap()
                .predict(&[0.0; 9], &[false; 9]),
            Some(7)
        );
        assert_eq!(
            LengthPredictor::Oracle(9).predict(&[0.0; 9], &[false; 9]),
            None
        );
        assert!(LengthPredictor::parse("oracle").is_err());
        assert!(LengthPredictor::parse("threshold:x").is_err());
    }
}
