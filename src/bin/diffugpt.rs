//! `diffugpt`: generate, inspect, dump logits and benchmark from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use diffugpt::bench;
use diffugpt::config::{ModelConfig, SpecialIdOverrides, SpecialIds};
use diffugpt::cpu_quant::WeightFormat;
use diffugpt::weights::{self, Layout, SaveDtype};
use diffugpt::{
    AttnMask, ComputeDevice, GenerateParams, Gpt2, LengthMode, LengthPredictor, LoadOptions, Model,
    SamplingParams, StepInfo, Steps, Strategy,
};

/// The built-in default model: the one place that says which it is. `source_dir` is its
/// directory in the source tree (relative to the repository root); `note` is printed on stderr
/// when it is used (None: nothing to warn about).
const DEFAULT_MODEL: DefaultModel = DefaultModel {
    source_dir: "models/default",
    note: None,
};

struct DefaultModel {
    source_dir: &'static str,
    note: Option<&'static str>,
}

/// Environment variable naming the model to use when `--model` is not given.
const MODEL_ENV: &str = "DIFFUGPT_MODEL";

/// Where the model comes from when `--model` is not given, in this order:
/// 1. `$DIFFUGPT_MODEL` (when set, it is used as is: a bad path is an error, not skipped);
/// 2. an installed copy next to the executable: `<exe dir>/../share/diffugpt/models/default`
///    (a `bin/` + `share/` prefix layout), then `<exe dir>/models/default`;
/// 3. the built-in default in the source tree the binary was built from.
///
/// The first directory holding `model.safetensors` wins; when there is none the error lists
/// every place looked at.
fn find_default_model(
    env: Option<std::ffi::OsString>,
    exe: Option<&Path>,
    source_root: &Path,
) -> Result<PathBuf> {
    if let Some(p) = env {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        candidates.push(dir.join("../share/diffugpt/models/default"));
        candidates.push(dir.join("models/default"));
    }
    candidates.push(source_root.join(DEFAULT_MODEL.source_dir));
    if let Some(found) = candidates
        .iter()
        .find(|d| d.join("model.safetensors").is_file())
    {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    bail!(
        "no model given and no default model found; looked in: ${MODEL_ENV} (unset), {}. Pass --model DIR or set {MODEL_ENV}=DIR",
        looked.join(", ")
    )
}

#[derive(Parser)]
#[command(
    name = "diffugpt",
    version,
    about = "DiffuGPT with EoS-first variable-length decoding"
)]
struct Cli {
    /// CPU worker threads for every command (default: one per core, or RAYON_NUM_THREADS)
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text (diffusion, or causal with --arm).
    // Negative numbers are values (`--temperature -1` gets the range error), not unknown flags.
    #[command(allow_negative_numbers = true)]
    Generate(GenerateArgs),
    /// One forward pass; writes the raw logits [T, vocab] (row i from hidden state i) as .npy.
    Logits(LogitsArgs),
    /// Print layout, config, special ids, dtypes and parameter count.
    Inspect(ModelArgs),
    /// Forward latency and fixed vs EoS-first decoding throughput on a DiffuGPT-S-shaped model
    /// with random weights.
    Bench(BenchArgs),
    /// Write a model with random weights (for tests and fixtures).
    InitRandom(InitArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// model.safetensors or a directory with it (+ config.json, tokenizer.json).
    /// Default: $DIFFUGPT_MODEL, else the built-in default model (installed next to the
    /// executable, else in the source tree; see README)
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// tokenizer.json (default: next to the weights)
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Override the eos id
    #[arg(long)]
    eos_id: Option<u32>,
    /// Override the mask id
    #[arg(long)]
    mask_id: Option<u32>,
    /// Set the pad id (an extra end id)
    #[arg(long)]
    pad_id: Option<u32>,
    /// Reject weights holding NaN or Inf
    #[arg(long)]
    check_finite: bool,
    /// cpu or cuda (diffusion forwards on the first GPU; falls back to the CPU with a message
    /// when there is no usable GPU or the build lacks the `cuda` feature)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or int8. On cuda: the compute dtype (bf16 by default; int8 is refused). On the
    /// CPU: how projections and head are stored, products summed in f32 (bf16: half the memory,
    /// on AMX tiles or vdpbf16ps where the CPU has them; int8: 0.28x, one scale per 32 weights);
    /// f32 by default
    #[arg(long)]
    dtype: Option<String>,
}

/// `--dtype` for a model load: the GPU compute dtype and the CPU weight format.
fn parse_load_dtype(
    s: Option<&str>,
    device: ComputeDevice,
) -> Result<(
    Option<candle_core::DType>,
    diffugpt::cpu_quant::WeightFormat,
)> {
    use diffugpt::cpu_quant::WeightFormat;
    Ok(match (s, device) {
        (Some("int8" | "q8_0"), ComputeDevice::Cuda) => {
            bail!("int8 weights run on the CPU only (--device cpu)")
        }
        (Some("int8" | "q8_0"), ComputeDevice::Cpu) => (None, WeightFormat::Int8),
        (s, _) => (parse_dtype(s)?, WeightFormat::F32),
    })
}

fn parse_dtype(s: Option<&str>) -> Result<Option<candle_core::DType>> {
    Ok(match s {
        None => None,
        Some("f32") => Some(candle_core::DType::F32),
        Some("bf16") => Some(candle_core::DType::BF16),
        Some(o) => bail!("unknown dtype `{o}` (f32, bf16, int8)"),
    })
}

impl ModelArgs {
    fn load(&self) -> Result<Model> {
        let path = match &self.model {
            Some(p) => p.clone(),
            None => {
                let exe = std::env::current_exe().ok();
                let p = find_default_model(
                    std::env::var_os(MODEL_ENV),
                    exe.as_deref(),
                    Path::new(env!("CARGO_MANIFEST_DIR")),
                )?;
                // A model named by the environment is the user's choice, not the built-in one.
                if std::env::var_os(MODEL_ENV).is_none() {
                    let note = DEFAULT_MODEL.note.map(|n| format!("; {n}"));
                    eprintln!(
                        "note: using the built-in default model ({}){}",
                        p.display(),
                        note.unwrap_or_default()
                    );
                }
                p
            }
        };
        let device = ComputeDevice::parse(&self.device)?;
        let (dtype, cpu_weights) = parse_load_dtype(self.dtype.as_deref(), device)?;
        let opts = LoadOptions {
            special_ids: SpecialIdOverrides {
                eos: self.eos_id,
                mask: self.mask_id,
                pad: self.pad_id.map(Some),
            },
            check_finite: self.check_finite,
            tokenizer: self.tokenizer.clone(),
            device,
            dtype,
            cpu_weights,
            ..Default::default()
        };
        Model::load(&path, opts).with_context(|| format!("loading {}", path.display()))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LengthArg {
    Fixed,
    EosFirst,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt
    #[arg(long, short, default_value = "The meaning of life is")]
    prompt: String,
    /// Canvas length: masked slots after the prompt (the longest answer)
    #[arg(long, default_value_t = 64)]
    canvas: usize,
    /// Denoising steps for the full canvas (default: one per canvas token)
    #[arg(long, conflicts_with = "steps_per_token")]
    steps: Option<usize>,
    /// Steps per canvas token
    #[arg(long)]
    steps_per_token: Option<f32>,
    /// Unmasking strategy: random (DiffuGPT's random keep), confidence, margin, entropy
    #[arg(long, default_value = "confidence")]
    strategy: String,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// fixed (DiffuGPT) or eos-first (cut the canvas after step 1)
    #[arg(long, value_enum, default_value = "eos-first")]
    length: LengthArg,
    /// Length predictor: argmax, threshold:TAU, quantile:Q, oracle:N
    #[arg(long, default_value = "quantile:0.9")]
    predictor: String,
    /// Safety margin (slots) kept after the predicted end
    #[arg(long, default_value_t = 8)]
    margin: usize,
    /// Safety margin as a share of the predicted length (the larger margin wins)
    #[arg(long, default_value_t = 0.25)]
    margin_ratio: f32,
    /// Do not grow the canvas back when the answer is longer than predicted
    #[arg(long)]
    no_grow: bool,
    /// No end before this quantile of the length predicted at step 1, in both length modes (0 =
    /// off, DiffuGPT's plain decoding; keeps a pad-trained model from ending after a few tokens)
    #[arg(long, default_value_t = diffugpt::decode::DEFAULT_END_FLOOR)]
    end_floor: f32,
    /// Allow the mask id to be generated (DiffuGPT-S's mask is a real token)
    #[arg(long)]
    allow_mask: bool,
    /// Causal (ARM) generation with a KV cache instead of diffusion
    #[arg(long)]
    arm: bool,
    /// ARM: maximum new tokens (default: --canvas)
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Show the canvas denoising on stderr
    #[arg(long)]
    stream: bool,
    /// Print the text and the statistics as JSON on stdout
    #[arg(long)]
    json: bool,
    /// Decode the prompt twice, fixed-length and EoS-first (same seed and steps), and show
    /// both side by side: text, predicted and final length, forward passes, positions, time
    #[arg(long, conflicts_with_all = ["arm", "length"])]
    compare: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Diffusion,
    Causal,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids, e.g. 50256,464,3290
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    #[arg(long, value_enum, default_value = "diffusion")]
    mode: ModeArg,
    /// Output .npy file (f32 [T, vocab])
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Md,
    Json,
}

#[derive(Args)]
struct BenchArgs {
    /// Canvas sizes (positions) for the forward benchmark
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
    forward_lens: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Decoding benchmark canvas (0 skips it)
    #[arg(long, default_value_t = 512)]
    canvas: usize,
    #[arg(long, default_value_t = 64)]
    steps: usize,
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Answer length of the EoS-first workload
    #[arg(long, default_value_t = 32)]
    answer_len: usize,
    #[arg(long, value_enum, default_value = "md")]
    format: Format,
    /// Seed of the random weights
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Benchmark this checkpoint instead of a random DiffuGPT-S-shaped model
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu or cuda (falls back to the CPU with a message when no GPU is usable)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// On cuda: the compute dtype, bf16 (default) or f32. On the CPU: the weight formats to
    /// run, a comma-separated list of f32, bf16, int8 (default f32)
    #[arg(long)]
    dtype: Option<String>,
    /// One-row KV-cache decoding steps of the ARM benchmark (CPU; 0 skips it), reported against
    /// the memory-bandwidth floor
    #[arg(long, default_value_t = 32)]
    arm_tokens: usize,
    /// Also time each forward op by op (LayerNorms, projections, attention, head, ...; CPU):
    /// a table of ms per forward per canvas size, from separate profiled forwards
    #[arg(long)]
    profile: bool,
}

#[derive(Args)]
struct InitArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 2)]
    n_layer: usize,
    #[arg(long, default_value_t = 2)]
    n_head: usize,
    #[arg(long, default_value_t = 32)]
    n_embd: usize,
    #[arg(long, default_value_t = 256)]
    n_positions: usize,
    #[arg(long, default_value_t = 50257)]
    vocab: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Copy this tokenizer.json next to the weights
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text an outer message
/// already quotes (the library's messages include their source: "cannot read X: <io error>").
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if out.contains(&c) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&c);
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        // Before any parallel work: the global pool is sized once, on first use.
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.into())
            .build_global()
            .context("--threads: could not start the worker threads")?;
    }
    match cli.cmd {
        Cmd::Generate(a) => generate(a),
        Cmd::Logits(a) => logits(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Bench(a) => bench_cmd(a),
        Cmd::InitRandom(a) => init_random(a),
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
    // Checked here so that the messages name the flags, not the library's fields.
    if a.canvas == 0 {
        bail!("--canvas must be at least 1");
    }
    if a.max_new_tokens == Some(0) {
        bail!("--max-new-tokens must be at least 1");
    }
    let model = a.model.load()?;
    let tok = model.tokenizer()?;
    let prompt = model.encode_prompt(&a.prompt)?;
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
    };
    // Masks show as "_" where the vocabulary has that token (GPT-2's, the default model's); a
    // vocabulary without it shows only the revealed tokens.
    let underscore = match tok.encode("_").ok().as_deref() {
        Some(&[id]) if tok.decode(&[id], false).ok().as_deref() == Some("_") => Some(id),
        _ => None,
    };
    let mut stream = |info: &StepInfo| {
        let shown: Vec<u32> = info
            .canvas
            .iter()
            .filter_map(|&t| match (t == model.gpt.ids.mask, underscore) {
                (false, _) => Some(t),
                (true, u) => u,
            })
            .collect();
        let text = tok.decode(&shown, false).unwrap_or_default();
        eprintln!(
            "[step {}/{}] {}",
            info.step,
            info.total_steps,
            text.replace('\n', " ")
        );
        true
    };
    let cb: Option<&mut dyn FnMut(&StepInfo) -> bool> =
        if a.stream { Some(&mut stream) } else { None };
    let mut session = model.session();
    if a.compare {
        let mut runs = Vec::new();
        for length in [LengthArg::Fixed, LengthArg::EosFirst] {
            let g = session.generate(&prompt, &diffusion_params(&a, sampling, length)?, None)?;
            let text = tok.decode(&g.tokens, true)?;
            runs.push((length, text, g));
        }
        return print_comparison(&a, &runs);
    }
    let g = if a.arm {
        session.generate_causal(
            &prompt,
            a.max_new_tokens.unwrap_or(a.canvas),
            sampling,
            a.seed,
            cb,
        )?
    } else {
        session.generate(&prompt, &diffusion_params(&a, sampling, a.length)?, cb)?
    };
    let text = tok.decode(&g.tokens, true)?;
    if a.json {
        let out = serde_json::json!({
            "prompt": a.prompt,
            "text": text,
            "tokens": g.tokens,
            "stats": g.stats,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}{}", a.prompt, text);
        let s = &g.stats;
        eprintln!(
            "predicted_len={} final_len={} canvas={}->{} steps={} forward_passes={} positions={} grow_events={} elapsed={:.3}s",
            s.predicted_len.map_or("-".to_string(), |p| p.to_string()),
            s.final_len,
            s.canvas_len,
            s.final_canvas_len,
            s.steps,
            s.forward_passes,
            s.positions_processed(),
            s.grow_events,
            s.elapsed_s
        );
    }
    Ok(())
}

/// The diffusion decoding parameters of `generate` for one length mode.
fn diffusion_params(
    a: &GenerateArgs,
    sampling: SamplingParams,
    length: LengthArg,
) -> Result<GenerateParams> {
    Ok(GenerateParams {
        canvas_len: a.canvas,
        steps: match (a.steps, a.steps_per_token) {
            (Some(n), _) => Steps::Fixed(n),
            (None, Some(r)) => Steps::PerToken(r),
            (None, None) => Steps::PerToken(1.0),
        },
        strategy: Strategy::parse(&a.strategy)?,
        sampling,
        length: match length {
            LengthArg::Fixed => LengthMode::Fixed,
            LengthArg::EosFirst => LengthMode::EosFirst {
                predictor: LengthPredictor::parse(&a.predictor)?,
                margin: a.margin,
                margin_ratio: a.margin_ratio,
                grow: !a.no_grow,
            },
        },
        seed: a.seed,
        ban_mask: !a.allow_mask,
        memory_limit: diffugpt::decode::DEFAULT_MEMORY_LIMIT,
        end_floor: a.end_floor,
    })
}

/// `generate --compare`: both texts, then one table row per decoding mode.
fn print_comparison(
    a: &GenerateArgs,
    runs: &[(LengthArg, String, diffugpt::Generation)],
) -> Result<()> {
    let name = |l: LengthArg| match l {
        LengthArg::Fixed => "fixed",
        LengthArg::EosFirst => "eos-first",
    };
    if a.json {
        let mut out = serde_json::Map::new();
        out.insert("prompt".into(), a.prompt.clone().into());
        for (l, text, g) in runs {
            out.insert(
                name(*l).replace('-', "_"),
                serde_json::json!({"text": text, "tokens": g.tokens, "stats": g.stats}),
            );
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (l, text, _) in runs {
        println!("--- {} ---\n{}{}\n", name(*l), a.prompt, text);
    }
    println!("| decoding | predicted len | final len | canvas | forward passes | positions | time (s) | tokens/s |");
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |");
    for (l, _, g) in runs {
        let s = &g.stats;
        println!(
            "| {} | {} | {} | {} -> {} | {} | {} | {:.3} | {:.1} |",
            name(*l),
            s.predicted_len.map_or("-".to_string(), |p| p.to_string()),
            s.final_len,
            s.canvas_len,
            s.final_canvas_len,
            s.forward_passes,
            s.positions_processed(),
            s.elapsed_s,
            s.final_len as f64 / s.elapsed_s.max(1e-9)
        );
    }
    Ok(())
}

fn logits(a: LogitsArgs) -> Result<()> {
    let model = a.model.load()?;
    let mask = match a.mode {
        ModeArg::Diffusion => AttnMask::Bidirectional,
        ModeArg::Causal => AttnMask::Causal,
    };
    let l = model.gpt.forward_logits(&a.ids, &mask)?;
    l.write_npy(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {:?} f32 logits to {}", l.dims(), a.out.display());
    Ok(())
}

fn inspect(a: ModelArgs) -> Result<()> {
    let m = a.load()?;
    let c = &m.gpt.cfg;
    let ids = &m.gpt.ids;
    let out = serde_json::json!({
        "layout": m.info.layout.name(),
        "config_source": if m.info.config_from_file { "config.json" } else { "inferred from tensor shapes" },
        "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "n_inner": c.n_inner,
        "n_positions": c.n_positions, "vocab_size": c.vocab_size,
        "layer_norm_epsilon": c.layer_norm_eps, "activation": c.activation.hf_name(),
        "lm_head": if m.info.untied_head { "untied" } else { "tied to the token embedding" },
        "eos_id": ids.eos, "mask_id": ids.mask, "pad_id": ids.pad,
        "file_dtypes": m.info.file_dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect::<Vec<_>>(),
        "compute_dtype": "f32", "device": m.backend(),
        "parameters": m.gpt.param_count(),
        "tokenizer_vocab": m.tokenizer.as_ref().map(|t| t.vocab_size()),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be positive");
    }
    let device = ComputeDevice::parse(&a.device)?;
    // The CPU weight formats to run (one model each, built and dropped in turn).
    let formats: Vec<WeightFormat> = match (&a.dtype, device) {
        (Some(list), ComputeDevice::Cpu) => list
            .split(',')
            .map(|d| {
                WeightFormat::parse(d.trim())
                    .with_context(|| format!("unknown dtype `{d}` (f32, bf16, int8)"))
            })
            .collect::<Result<_>>()?,
        _ => vec![WeightFormat::F32],
    };
    let load = |format: WeightFormat| -> Result<(diffugpt::model::Gpt2, String)> {
        Ok(match &a.model {
            Some(p) => (
                Model::load(
                    p,
                    LoadOptions {
                        cpu_weights: format,
                        ..Default::default()
                    },
                )?
                .gpt,
                p.display().to_string(),
            ),
            None => (
                bench::random_small_model_as(a.seed, format)?,
                "diffugpt-s-shaped (random)".to_string(),
            ),
        })
    };
    // The threads the kernels actually run on (--threads, RAYON_NUM_THREADS or one per core).
    let threads = rayon::current_num_threads();
    // The f32 FMA peak is probed before the rows as well as after them, and the higher reading
    // kept: on a shared host a neighbour can hold a core through all seven tries of one probe
    // (seen: a peak read at half the usual, forward rows at "105 %" of it).
    let peak_before = (device == ComputeDevice::Cpu)
        .then(bench::fma_peak_gflops)
        .flatten();
    let dtype = match device {
        ComputeDevice::Cuda => parse_dtype(a.dtype.as_deref())?,
        ComputeDevice::Cpu => None,
    };
    let (model, name) = load(formats[0])?;
    let cfg = model.cfg.clone();
    let params = model.param_count();
    let mut weight_mb = Vec::new();
    let decode = (a.canvas > 0).then_some((a.prompt_len, a.canvas, a.steps, a.answer_len));
    let on_device = bench::bench_on_device(&model, device, dtype, &a.forward_lens, a.reps, decode)?;
    // Per (dtype, T): where the CPU forward's time goes (--profile).
    let mut profiles: Vec<(&str, usize, diffugpt::forward_profile::Profile)> = Vec::new();
    if a.profile && on_device.is_some() {
        eprintln!("note: --profile times the CPU forward only; the GPU rows have no profile");
    }
    let (rows, backend, report) = match on_device {
        Some(r) => r,
        None => {
            let mut rows = Vec::new();
            let mut model = Some(model);
            for &format in &formats {
                let m = match model.take() {
                    Some(m) => m,
                    None => load(format)?.0,
                };
                weight_mb.push((format.name(), m.weight_bytes() as f64 / 1e6));
                rows.extend(bench::bench_forward(&m, &a.forward_lens, a.reps)?);
                if a.profile {
                    for &t in &a.forward_lens {
                        profiles.push((format.name(), t, bench::profile_forward(&m, t, a.reps)?));
                    }
                }
                if a.arm_tokens > 0 {
                    rows.push(bench::bench_arm(&m, a.prompt_len, a.arm_tokens, a.reps)?);
                }
                if a.canvas > 0 {
                    let dec = bench::bench_decode(
                        &m,
                        a.prompt_len,
                        a.canvas,
                        a.steps,
                        a.answer_len,
                        a.reps,
                    )?;
                    rows.extend(dec.into_iter().map(|mut r| {
                        r.dtype = format.name();
                        r
                    }));
                }
            }
            (rows, "cpu".to_string(), diffugpt::BackendReport::default())
        }
    };
    // The ceilings the rows are measured against (CPU only: a GPU has its own): the f32 FMA
    // peak for forwards (every format computes in f32), memory bandwidth for the one-row steps.
    let peak = if backend == "cpu" {
        match (peak_before, bench::fma_peak_gflops()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    } else {
        None
    };
    // int8 forwards on the integer kernels: against their measured dot-product peak instead.
    let int8_peak = (backend == "cpu" && rows.iter().any(|r| r.dtype == "int8"))
        .then(bench::int8_peak_gops)
        .flatten();
    // bf16 forwards on AMX tiles or the vdpbf16ps kernels: against the measured peak of those
    // instructions; where they decode into the f32 kernels, the vdpbf16ps rate is printed as
    // the reason.
    let bf16_path_now = diffugpt::cpu_bf16::path();
    let bf16_peak = (backend == "cpu" && rows.iter().any(|r| r.dtype == "bf16"))
        .then(|| match bf16_path_now {
            diffugpt::cpu_bf16::Bf16Path::Amx => bench::amx_bf16_peak_gflops(),
            _ => bench::bf16_dot_peak_gflops(),
        })
        .flatten();
    let bf16_peak_name = match bf16_path_now {
        diffugpt::cpu_bf16::Bf16Path::Amx => "AMX tile (tdpbf16ps)",
        _ => "bf16 dot-product (vdpbf16ps)",
    };
    let bandwidth = (backend == "cpu" && a.arm_tokens > 0).then(bench::memory_bandwidth_gbs);
    let mb_of = |d: &str| weight_mb.iter().find(|(n, _)| *n == d).map(|w| w.1);
    // tokens/s if a one-row step cost only the reading of its weights once.
    let floor = |r: &bench::BenchRow| -> Option<f64> {
        r.test.starts_with("arm-").then_some(())?;
        Some(bandwidth? * 1e3 / mb_of(r.dtype)?)
    };
    // Which CPU kernels ran (DIFFUGPT_CPU_KERNELS can force the portable ones).
    let kernels = diffugpt::cpu_gemm::isa().name();
    let loops = diffugpt::cpu_gemm::driver().name();
    // The AVX-512 register block's rows (14 on Intel, 8 elsewhere; DIFFUGPT_CPU_AVX512_ROWS).
    let rows_note = if diffugpt::cpu_gemm::isa() == diffugpt::cpu_gemm::Isa::Avx512 {
        format!("{}-row blocks, ", diffugpt::cpu_gemm::avx512_rows())
    } else {
        String::new()
    };
    // How int8 projections multiply (VNNI or AVX2 integer dot products, or decoded to f32;
    // DIFFUGPT_CPU_INT8).
    let int8_path = diffugpt::cpu_int8::path_name();
    // And bf16 ones (vdpbf16ps, or decoded to f32; DIFFUGPT_CPU_BF16).
    let bf16_path = diffugpt::cpu_bf16::path_name();
    let bf16_dot = diffugpt::cpu_bf16::active();
    match a.format {
        Format::Json => {
            // Keys: "64" for f32, "64/bf16" for another format.
            let key = |r: &bench::BenchRow| -> Option<String> {
                let t = r.test.strip_prefix("forward-")?;
                Some(match r.dtype {
                    "f32" => t.to_string(),
                    d => format!("{t}/{d}"),
                })
            };
            let forward: serde_json::Map<String, serde_json::Value> = rows
                .iter()
                .filter_map(|r| Some((key(r)?, r.mean_ms.into())))
                .collect();
            let gflops: serde_json::Map<String, serde_json::Value> = rows
                .iter()
                .filter_map(|r| Some((key(r)?, r.gflops?.into())))
                .collect();
            let arm: Vec<serde_json::Value> = rows
                .iter()
                .filter(|r| r.test.starts_with("arm-"))
                .map(|r| {
                    serde_json::json!({"dtype": r.dtype, "tokens_per_s": r.per_s,
                        "floor_tokens_per_s": floor(r), "weight_mb": mb_of(r.dtype)})
                })
                .collect();
            let out = serde_json::json!({
                "model": name, "params": params, "backend": backend, "threads": threads,
                "forward_ms": forward, "forward_gflops": gflops, "fma_peak_gflops": peak,
                "int8_peak_gops": int8_peak, "bf16_peak_gflops": bf16_peak,
                "bf16_peak_instructions": bf16_peak_name,
                "memory_bandwidth_gbs": bandwidth, "arm": arm,
                "weight_mb": weight_mb.iter().map(|(d, mb)| (d.to_string(), (*mb).into())).collect::<serde_json::Map<String, serde_json::Value>>(),
                "cpu_kernels": kernels,
                "cpu_gemm_loops": loops,
                "cpu_avx512_rows": (kernels == "avx512").then(diffugpt::cpu_gemm::avx512_rows),
                "cpu_int8": int8_path,
                "cpu_bf16": bf16_path,
                // The accelerator's kernel image and graph capture failures (null / empty on
                // the CPU).
                "device_kernels": report.kernels, "graphs": report.graphs,
                "graph_capture_failures": report.graph_failures,
                "rows": rows,
                "forward_profile": profiles.iter().map(|(d, t, p)| serde_json::json!({
                    "dtype": d, "t": t, "total_ms": p.total_ms, "other_ms": p.other_ms(),
                    "ops": p.ops.iter().map(|o| serde_json::json!({
                        "op": o.op.name(), "ms": o.ms, "calls": o.calls})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Md => {
            let mut o = std::io::stdout().lock();
            writeln!(
                o,
                "| model | params | backend | dtype | threads | test | steps | fwd passes | ms | t/s | GFLOP/s | % of peak |"
            )?;
            writeln!(
                o,
                "| --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
            )?;
            for r in &rows {
                let gf = r.gflops.map_or("-".to_string(), |g| format!("{g:.1}"));
                // Forwards against the FMA peak, one-row steps against the bandwidth floor.
                let share = match (r.gflops, peak, floor(r)) {
                    (Some(g), _, _) if r.dtype == "int8" && int8_peak.is_some() => {
                        format!("{:.0}% of int8", 100.0 * g / int8_peak.unwrap_or(1.0))
                    }
                    (Some(g), _, _) if r.dtype == "bf16" && bf16_dot && bf16_peak.is_some() => {
                        let of = if bf16_path_now == diffugpt::cpu_bf16::Bf16Path::Amx {
                            "amx"
                        } else {
                            "bf16"
                        };
                        format!("{:.0}% of {of}", 100.0 * g / bf16_peak.unwrap_or(1.0))
                    }
                    (Some(g), Some(p), _) => format!("{:.0}%", 100.0 * g / p),
                    (_, _, Some(f)) => format!("{:.0}% of floor", 100.0 * r.per_s / f),
                    _ => "-".into(),
                };
                writeln!(
                    o,
                    "| {name} | {:.1} M | {backend} | {} | {threads} | {} | {} | {} | {:.2} ± {:.2} | {:.1} | {gf} | {share} |",
                    params as f64 / 1e6,
                    r.dtype,
                    r.test,
                    r.steps,
                    r.forward_passes,
                    r.mean_ms,
                    r.std_ms,
                    r.per_s
                )?;
            }
            if let Some(p) = peak {
                let shares: Vec<String> = rows
                    .iter()
                    .filter_map(|r| {
                        Some(format!(
                            "{} {} {:.0}%",
                            r.test,
                            r.dtype,
                            100.0 * r.gflops? / p
                        ))
                    })
                    .collect();
                writeln!(
                    o,
                    "\nCPU f32 FMA peak, measured now (threads: {threads}): {p:.1} GFLOP/s ({}); \
                     CPU kernels: {kernels} ({rows_note}{loops} loops); int8 products: {int8_path}; bf16 products: {bf16_path}",
                    shares.join(", ")
                )?;
            }
            if let Some(ip) = int8_peak {
                writeln!(
                    o,
                    "int8 dot-product ({int8_path}) peak, measured now: {ip:.1} GOP/s ({:.1}x the f32 FMA peak); \
                     the int8 rows' % is of this peak",
                    ip / peak.unwrap_or(f64::NAN)
                )?;
            }
            if let Some(bp) = bf16_peak {
                writeln!(
                    o,
                    "{bf16_peak_name} peak, measured now: {bp:.1} GFLOP/s ({:.2}x the f32 FMA peak; {})",
                    bp / peak.unwrap_or(f64::NAN),
                    match bf16_path_now {
                        diffugpt::cpu_bf16::Bf16Path::Amx => "the bf16 rows' % is of this peak, \
                            of which their two activation terms leave half",
                        diffugpt::cpu_bf16::Bf16Path::Dot => "the bf16 rows' % is of this peak",
                        diffugpt::cpu_bf16::Bf16Path::Decode => "the bf16 rows decode into the f32 kernels",
                    }
                )?;
            }
            if !profiles.is_empty() {
                write_profiles(&mut o, &profiles, &cfg, a.reps)?;
            }
            if let Some(bw) = bandwidth {
                let w: Vec<String> = weight_mb
                    .iter()
                    .map(|(d, mb)| format!("{d} {mb:.0} MB ({:.1} tokens/s)", bw * 1e3 / mb))
                    .collect();
                writeln!(
                    o,
                    "Memory read bandwidth, measured now: {bw:.1} GB/s; weights and one-row floor: {}",
                    w.join(", ")
                )?;
            }
            if let Some(k) = &report.kernels {
                let failures = if report.graph_failures.is_empty() {
                    "none".to_string()
                } else {
                    report.graph_failures.join("; ")
                };
                writeln!(
                    o,
                    "\nDevice kernels: {k}; graphs: {}; graph capture failures: {failures}",
                    if report.graphs == Some(true) {
                        "on"
                    } else {
                        "off"
                    }
                )?;
            }
        }
    }
    Ok(())
}

/// The `--profile` table: one row per (dtype, T), one column per op, "ms (share %)".
fn write_profiles(
    o: &mut impl Write,
    profiles: &[(&str, usize, diffugpt::forward_profile::Profile)],
    cfg: &diffugpt::ModelConfig,
    reps: usize,
) -> Result<()> {
    use diffugpt::forward_profile::Op;
    // Only the ops some forward ran (the embedding is a copy, but shows where it is not).
    let ops: Vec<Op> = Op::all()
        .into_iter()
        .filter(|&op| profiles.iter().any(|(_, _, p)| p.get(op).is_some()))
        .collect();
    writeln!(
        o,
        "\nForward profile, ms per forward (share), mean of {} profiled forwards; wall-clock per op \
         on the calling thread, \"other\" the time between ops:\n",
        reps.max(1)
    )?;
    let names: Vec<&str> = ops.iter().map(|op| op.name()).collect();
    writeln!(o, "| dtype | T | {} | other | total |", names.join(" | "))?;
    writeln!(
        o,
        "| --- | ---: |{} ---: | ---: |",
        " ---: |".repeat(ops.len())
    )?;
    for (d, t, p) in profiles {
        let share = |ms: f64| format!("{ms:.1} ({:.0}%)", 100.0 * ms / p.total_ms.max(1e-9));
        let cells: Vec<String> = ops
            .iter()
            .map(|&op| p.get(op).map_or("-".to_string(), |x| share(x.ms)))
            .collect();
        writeln!(
            o,
            "| {d} | {t} | {} | {} | {:.1} |",
            cells.join(" | "),
            share(p.other_ms()),
            p.total_ms
        )?;
        // The matrix ops' arithmetic rates, to set against the FMA peak above.
        let rates: Vec<String> = ops
            .iter()
            .map(|&op| {
                let f = cfg.op_flops(op, *t, *t);
                match p.get(op) {
                    Some(x) if f > 0.0 && x.ms > 0.0 => format!("{:.0} GFLOP/s", f / x.ms / 1e6),
                    _ => String::new(),
                }
            })
            .collect();
        writeln!(o, "| | | {} | | |", rates.join(" | "))?;
    }
    Ok(())
}

fn init_random(a: InitArgs) -> Result<()> {
    let cfg = ModelConfig {
        n_layer: a.n_layer,
        n_head: a.n_head,
        n_embd: a.n_embd,
        n_inner: 4 * a.n_embd,
        n_positions: a.n_positions,
        vocab_size: a.vocab,
        ..ModelConfig::gpt2_small()
    };
    let ids = SpecialIds::resolve(a.vocab, &Default::default(), &Default::default())?;
    let m = Gpt2::random(cfg, ids, a.seed, &candle_core::Device::Cpu)?;
    write_model(&m, &a.out, a.tokenizer.as_deref())
}

fn write_model(m: &Gpt2, out: &Path, tokenizer: Option<&Path>) -> Result<()> {
    weights::save(m, out, Layout::DiffuGpt, SaveDtype::F16)?;
    if let Some(t) = tokenizer {
        std::fs::copy(t, out.join("tokenizer.json"))?;
    }
    eprintln!("wrote {} ({} parameters)", out.display(), m.param_count());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir(root: &Path, rel: &str) -> PathBuf {
        let d = root.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.safetensors"), b"").unwrap();
        d
    }

    #[test]
    fn default_model_search_order() {
        let t = tempfile::tempdir().unwrap();
        let (prefix, src) = (t.path().join("prefix"), t.path().join("src"));
        let exe = prefix.join("bin/diffugpt");
        let found = |env: Option<&str>| {
            find_default_model(env.map(Into::into), Some(&exe), &src).map_err(|e| e.to_string())
        };
        // Nothing anywhere: one error listing every place, in order.
        let e = found(None).unwrap_err();
        let share = prefix.join("bin/../share/diffugpt/models/default");
        let beside = prefix.join("bin/models/default");
        let in_src = src.join(DEFAULT_MODEL.source_dir);
        let listed = format!(
            "$DIFFUGPT_MODEL (unset), {}, {}, {}",
            share.display(),
            beside.display(),
            in_src.display()
        );
        assert!(e.contains(&listed), "{e}");
        // Each place, from last to first, takes over once it exists.
        model_dir(&src, DEFAULT_MODEL.source_dir);
        assert_eq!(found(None).unwrap(), in_src);
        model_dir(&prefix, "bin/models/default");
        assert_eq!(found(None).unwrap(), beside);
        model_dir(&prefix, "share/diffugpt/models/default");
        assert_eq!(found(None).unwrap(), share);
        // The environment variable wins, and is taken as given even when it does not exist.
        assert_eq!(found(Some("/elsewhere")).unwrap(), Path::new("/elsewhere"));
    }

    #[test]
    fn error_chain_drops_causes_already_quoted() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let e = anyhow::Error::new(diffugpt::Error::Io {
            path: "/m".into(),
            source: io,
        })
        .context("loading /m");
        let s = error_chain(&e);
        assert_eq!(s, format!("loading /m: cannot read /m: {text}"));
        assert_eq!(s.matches(&text).count(), 1, "{s}");
    }
}
