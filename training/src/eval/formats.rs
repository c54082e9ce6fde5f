//! What the CPU weight formats (bf16, int8: [`diffugpt::cpu_quant`]) do to a model, against its
//! f32 forward on the same held-out cases: top-1 agreement of every row's logits, the largest
//! logit difference, and the change of the first-step end prediction (per case, and in the
//! first-step metrics of `eval eos`).
//!
//! `diffugpt-train eval formats --model M --data D/test --out O`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;
use diffugpt::cpu_quant::WeightFormat;
use diffugpt::length::LengthPredictor;
use diffugpt::weights::LoadOptions;
use diffugpt::{AttnMask, Gpt2};
use serde::Serialize;

use super::eos::{
    cases_from_file, first_step_scores, predictions, summarize, EndMetrics, VisiblePolicy,
};
use super::report::{write_report, Environment};
use crate::data::TokenFile;

#[derive(Args, Debug)]
pub struct FormatsArgs {
    /// Model directory (model.safetensors + config.json) or weights file.
    #[arg(long)]
    pub model: PathBuf,
    /// Token-file stem of padded data (e.g. runs/data/gcide-padded/test).
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (report.json, report.md).
    #[arg(long)]
    pub out: PathBuf,
    /// Formats compared with f32 (comma-separated: bf16, int8).
    #[arg(long, value_delimiter = ',', default_value = "bf16,int8")]
    pub formats: Vec<String>,
    /// First-step length predictor whose predictions are compared.
    #[arg(long, default_value = "quantile:0.9")]
    pub predictor: String,
    /// Evaluate the first N blocks of the file.
    #[arg(long, default_value_t = 200)]
    pub max_examples: usize,
    /// Seeds the visible-prefix draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One format against f32.
#[derive(Debug, Serialize)]
pub struct FormatReport {
    pub format: &'static str,
    /// How this format's products ran (`DIFFUGPT_CPU_INT8` / `DIFFUGPT_CPU_BF16`): int8 on
    /// `vnni` or `avx2` integer kernels or `decode`d to f32, bf16 on `dot` products or `decode`d.
    pub products: &'static str,
    /// Bytes the model's weights take in this format, and as a share of f32.
    pub weight_bytes: u64,
    pub weight_ratio: f64,
    /// Rows (every position of every case's first-step input) whose argmax equals f32's.
    pub rows: usize,
    pub top1_agreement: f64,
    /// max |logit - f32 logit| / max |f32 logit|, over all cases (and its mean per case).
    pub max_rel_logit_err: f64,
    pub mean_rel_logit_err: f64,
    /// Cases whose predicted end slot differs from f32's, and the mean |difference| in slots.
    pub end_changed: f64,
    pub end_mean_abs_change: f64,
    pub metrics: EndMetrics,
}

#[derive(Debug, Serialize)]
pub struct FormatsReport {
    pub eval: &'static str,
    pub environment: Environment,
    pub model: PathBuf,
    pub data: PathBuf,
    pub predictor: String,
    pub n_examples: usize,
    /// The CPU kernels' instruction set (`DIFFUGPT_CPU_KERNELS`).
    pub cpu_kernels: &'static str,
    pub f32_metrics: EndMetrics,
    pub formats: Vec<FormatReport>,
    pub elapsed_s: f64,
}

pub fn run(args: &FormatsArgs) -> Result<()> {
    let start = Instant::now();
    let predictor = LengthPredictor::parse(&args.predictor)
        .with_context(|| format!("--predictor {}", args.predictor))?;
    let formats: Vec<WeightFormat> = args
        .formats
        .iter()
        .map(|f| {
            WeightFormat::parse(f).with_context(|| format!("unknown format `{f}` (bf16, int8)"))
        })
        .collect::<Result<_>>()?;
    let (mut base, _) = diffugpt::weights::load(&args.model, LoadOptions::default())
        .with_context(|| format!("loading model {}", args.model.display()))?;
    base.pack_for_cpu()?;
    let file = TokenFile::open(&args.data)
        .with_context(|| format!("opening token file {}", args.data.display()))?;
    ensure!(
        file.header().kind.is_blocked(),
        "{}: eval formats needs padded data",
        args.data.display()
    );
    let policy = VisiblePolicy::Auto.resolve(file.header().kind);
    let cases = cases_from_file(&file, policy, args.seed, args.max_examples);
    let ref_scores = first_step_scores(&base, &cases, None, None)?;
    ensure!(!ref_scores.scores.is_empty(), "no evaluation cases");
    let ref_preds = predictions(&ref_scores.scores, &predictor);
    let ks = [1, 2, 4];
    // The first-step inputs of the scored cases, and f32's logits for them.
    let inputs: Vec<Vec<u32>> = ref_scores
        .scores
        .iter()
        .map(|s| {
            cases[s.case]
                .first_step_input(&base, None)
                .map(|(seq, _, _)| seq)
                .map_err(|e| anyhow::anyhow!("case {} has no first-step input: {e:?}", s.case))
        })
        .collect::<Result<_>>()?;
    let logits = |m: &Gpt2, seq: &[u32]| -> Result<Vec<Vec<f32>>> {
        Ok(m.forward_logits(seq, &AttnMask::Bidirectional)?.to_vec2()?)
    };
    let ref_logits: Vec<Vec<Vec<f32>>> = inputs
        .iter()
        .map(|s| logits(&base, s))
        .collect::<Result<_>>()?;
    let f32_bytes = base.weight_bytes();

    let mut reports = Vec::new();
    for &f in &formats {
        let mut m = base.unpacked()?;
        m.pack_for_cpu_as(f)?;
        let (mut rows, mut agree, mut max_err, mut sum_err) = (0usize, 0usize, 0f64, 0f64);
        for (seq, want) in inputs.iter().zip(&ref_logits) {
            let got = logits(&m, seq)?;
            let (mut d, mut r) = (0f32, 0f32);
            for (g, w) in got.iter().zip(want) {
                rows += 1;
                agree += (argmax(g) == argmax(w)) as usize;
                for (a, b) in g.iter().zip(w) {
                    d = d.max((a - b).abs());
                    r = r.max(b.abs());
                }
            }
            let e = (d / r.max(f32::MIN_POSITIVE)) as f64;
            max_err = max_err.max(e);
            sum_err += e;
        }
        let scores = first_step_scores(&m, &cases, None, None)?;
        ensure!(
            scores.scores.len() == ref_scores.scores.len(),
            "{}: a different set of cases was scored",
            f.name()
        );
        let preds = predictions(&scores.scores, &predictor);
        let changes: Vec<f64> = preds
            .iter()
            .zip(&ref_preds)
            .map(|(p, q)| (p.effective() as f64 - q.effective() as f64).abs())
            .collect();
        let n = changes.len() as f64;
        reports.push(FormatReport {
            format: f.name(),
            products: match f {
                WeightFormat::Int8 => diffugpt::cpu_int8::path_name(),
                WeightFormat::Bf16 => diffugpt::cpu_bf16::path_name(),
                WeightFormat::F32 => "f32",
            },
            weight_bytes: m.weight_bytes(),
            weight_ratio: m.weight_bytes() as f64 / f32_bytes as f64,
            rows,
            top1_agreement: agree as f64 / rows as f64,
            max_rel_logit_err: max_err,
            mean_rel_logit_err: sum_err / inputs.len() as f64,
            end_changed: changes.iter().filter(|&&c| c > 0.0).count() as f64 / n,
            end_mean_abs_change: changes.iter().sum::<f64>() / n,
            metrics: summarize(&preds, &ks),
        });
    }
    let report = FormatsReport {
        eval: "formats",
        environment: Environment::detect(),
        model: args.model.clone(),
        data: args.data.clone(),
        predictor: predictor.label(),
        n_examples: ref_preds.len(),
        cpu_kernels: diffugpt::cpu_gemm::isa().name(),
        f32_metrics: summarize(&ref_preds, &ks),
        formats: reports,
        elapsed_s: start.elapsed().as_secs_f64(),
    };
    let md = markdown(&report);
    write_report(&args.out, &report, &md)?;
    print!("{md}");
    Ok(())
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |x| x.0)
}

fn markdown(r: &FormatsReport) -> String {
    let mut s = format!(
        "# Weight formats against f32\n\nmodel `{}`, data `{}`, {} cases, predictor {}, CPU `{}` (kernels: {}), {:.0} s\n\n",
        r.model.display(),
        r.data.display(),
        r.n_examples,
        r.predictor,
        r.environment.cpu,
        r.cpu_kernels,
        r.elapsed_s
    );
    s += "| format | products | weights (x f32) | rows | top-1 = f32 | max rel logit err | mean | end changed | mean abs change (slots) | exact | within 2 | upper bound | saved |\n";
    s += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    let m = &r.f32_metrics;
    s += &format!(
        "| f32 | f32 | 1.00 | - | - | - | - | - | - | {:.1}% | {:.1}% | {:.1}% | {:.1}% |\n",
        100.0 * m.exact,
        100.0 * m.within(2).unwrap_or(f64::NAN),
        100.0 * m.upper_bound,
        100.0 * m.saved_mean
    );
    for f in &r.formats {
        let m = &f.metrics;
        s += &format!(
            "| {} | {} | {:.2} | {} | {:.2}% | {:.2e} | {:.2e} | {:.1}% | {:.2} | {:.1}% | {:.1}% | {:.1}% | {:.1}% |\n",
            f.format,
            f.products,
            f.weight_ratio,
            f.rows,
            100.0 * f.top1_agreement,
            f.max_rel_logit_err,
            f.mean_rel_logit_err,
            100.0 * f.end_changed,
            f.end_mean_abs_change,
            100.0 * m.exact,
            100.0 * m.within(2).unwrap_or(f64::NAN),
            100.0 * m.upper_bound,
            100.0 * m.saved_mean
        );
    }
    s
}
