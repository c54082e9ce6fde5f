//! Loading and saving `model.safetensors` in the three GPT-2 layouts we meet:
//!
//! | layout | embedding | blocks | head |
//! | --- | --- | --- | --- |
//! | DiffuGPT (also this project's own) | `embed_tokens.weight` | `denoise_model.h.{i}.*` | tied, or `lm_head.weight` |
//! | HF `GPT2LMHeadModel` | `transformer.wte.weight` | `transformer.h.{i}.*` | tied, or `lm_head.weight` |
//! | HF `GPT2Model` | `wte.weight` | `h.{i}.*` | tied |
//!
//! Every tensor's name, dtype and shape is checked against the config before any conversion, so a bad
//! file fails fast with an error naming the tensor. The file is memory-mapped and each tensor's pages
//! are dropped right after conversion to f32, so loading a 16-bit checkpoint never holds both copies.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

use crate::config::{Activation, HfConfig, ModelConfig, SpecialIdOverrides, SpecialIds};
use crate::error::{Error, Result};
use crate::model::{canonical_shapes, Gpt2};

/// The naming scheme of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `embed_tokens.weight` + `denoise_model.*` (DiffuGPT; the training crate writes this too).
    DiffuGpt,
    /// `transformer.*` (+ optional `lm_head.weight`), as `GPT2LMHeadModel` saves it.
    HfGpt2,
    /// No prefix (`wte.weight`, `h.0...`), as `GPT2Model` saves it.
    Gpt2Bare,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::DiffuGpt => "diffugpt",
            Layout::HfGpt2 => "hf-gpt2",
            Layout::Gpt2Bare => "gpt2-bare",
        }
    }

    /// File name for a canonical name (see [`Gpt2::named_tensors`]).
    pub fn file_name(self, canonical: &str) -> String {
        match (self, canonical) {
            (_, "lm_head.weight") => canonical.to_string(),
            (Layout::DiffuGpt, "wte.weight") => "embed_tokens.weight".to_string(),
            (Layout::DiffuGpt, n) => format!("denoise_model.{n}"),
            (Layout::HfGpt2, n) => format!("transformer.{n}"),
            (Layout::Gpt2Bare, n) => n.to_string(),
        }
    }

    fn detect(names: &HashSet<&str>) -> Result<Self> {
        for l in [Layout::DiffuGpt, Layout::HfGpt2, Layout::Gpt2Bare] {
            if names.contains(l.file_name("wte.weight").as_str()) {
                return Ok(l);
            }
        }
        Err(Error::UnknownLayout(
            "no token embedding (`embed_tokens.weight`, `transformer.wte.weight` or `wte.weight`)"
                .into(),
        ))
    }

    /// Buffers some exporters save that carry no weights (GPT-2's causal mask).
    fn is_ignorable(self, name: &str) -> bool {
        name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
    }
}

/// Options for [`load`].
#[derive(Default)]
pub struct LoadOptions {
    /// Override the special ids found in config.json / the DiffuGPT conventions.
    pub special_ids: SpecialIdOverrides,
    /// Reject weights containing NaN or Inf (costs one pass over the weights).
    pub check_finite: bool,
    /// Called with (tensors done, tensors total) while converting; returning false cancels the
    /// load with [`Error::Cancelled`].
    pub progress: Option<Box<dyn FnMut(usize, usize) -> bool + Send>>,
    /// Compute dtype; `None` is f32. On the GPU it picks F32 or BF16 compute; on the CPU
    /// [`crate::Model::load`] reads BF16 as `cpu_weights: Bf16` (f32 compute on bf16 weights).
    pub dtype: Option<DType>,
    /// How the CPU forward stores its projections and head ([`crate::cpu_quant`]): f32, bf16
    /// or int8, decoded into the f32 kernels. Compressed formats need the AVX2 or AVX-512
    /// kernels ([`crate::cpu_gemm::isa`]); without them loading fails with `Error::Config`.
    pub cpu_weights: crate::cpu_quant::WeightFormat,
    /// tokenizer.json to use instead of the one next to the weights.
    pub tokenizer: Option<PathBuf>,
    /// Where [`crate::Model`] runs diffusion forwards. `Cuda` without a usable GPU (or in a build
    /// without the `cuda` feature) falls back to the CPU with a message on stderr; see
    /// [`crate::Model::fallback`]. [`load`] itself always builds the CPU model.
    pub device: ComputeDevice,
}

/// The device requested in [`LoadOptions`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeDevice {
    #[default]
    Cpu,
    /// The first CUDA GPU; `LoadOptions::dtype` picks F32 or BF16 there (default BF16).
    Cuda,
}

impl ComputeDevice {
    pub fn parse(s: &str) -> crate::error::Result<Self> {
        match s {
            "cpu" => Ok(ComputeDevice::Cpu),
            "cuda" | "gpu" => Ok(ComputeDevice::Cuda),
            _ => Err(Error::Param(format!("unknown device `{s}` (cpu, cuda)"))),
        }
    }
}

/// Where a model's files are.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub weights: PathBuf,
    pub config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
}

impl ModelFiles {
    /// `path` is `model.safetensors` itself or a directory holding it; `config.json` and
    /// `tokenizer.json` next to the weights are picked up when present.
    pub fn locate(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let (dir, weights) = if meta.is_dir() {
            let w = path.join("model.safetensors");
            if !w.is_file() {
                return Err(Error::NoWeights(path.to_path_buf()));
            }
            (path.to_path_buf(), w)
        } else {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (dir, path.to_path_buf())
        };
        let opt = |n: &str| Some(dir.join(n)).filter(|p| p.is_file());
        Ok(ModelFiles {
            weights,
            config: opt("config.json"),
            tokenizer: opt("tokenizer.json"),
        })
    }
}

/// What [`load`] found in the file, for `diffugpt inspect`.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    pub layout: Layout,
    /// dtypes of the stored tensors with their counts.
    pub file_dtypes: Vec<(String, usize)>,
    pub config_from_file: bool,
    pub untied_head: bool,
}

/// Loads a model from `path` (file or directory).
pub fn load(path: &Path, opts: LoadOptions) -> Result<(Gpt2, CheckpointInfo)> {
    load_as(path, opts, false)
}

/// [`load`] for f32 inference on this CPU ([`crate::Model::load`]): where the kernels run
/// ([`crate::cpu_gemm::available`]) and the weights stay f32, the token embedding / head comes
/// out already in the strip layout [`Gpt2::pack_for_cpu`] gives it, converted in place as it is
/// read, so that the largest tensor is never held twice (peak memory).
pub(crate) fn load_for_cpu(path: &Path, opts: LoadOptions) -> Result<(Gpt2, CheckpointInfo)> {
    let strips = opts.cpu_weights == crate::cpu_quant::WeightFormat::F32
        && opts.dtype.is_none_or(|d| d == DType::F32)
        && crate::cpu_gemm::available();
    load_as(path, opts, strips)
}

/// [`load`]; `head_strips` as in [`load_file_as`].
fn load_as(path: &Path, opts: LoadOptions, head_strips: bool) -> Result<(Gpt2, CheckpointInfo)> {
    let files = ModelFiles::locate(path)?;
    let hf = match &files.config {
        Some(p) => HfConfig::parse(&std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?)?,
        None => HfConfig::default(),
    };
    load_file_as(
        &files.weights,
        &hf,
        files.config.is_some(),
        opts,
        head_strips,
    )
}

/// Loads weights from one safetensors file with an already parsed config.
pub fn load_file(
    weights: &Path,
    hf: &HfConfig,
    config_from_file: bool,
    opts: LoadOptions,
) -> Result<(Gpt2, CheckpointInfo)> {
    load_file_as(weights, hf, config_from_file, opts, false)
}

/// [`load_file`]; `head_strips`: the embedding / head as [`crate::cpu_quant::Rows::F32Strips`].
fn load_file_as(
    weights: &Path,
    hf: &HfConfig,
    config_from_file: bool,
    mut opts: LoadOptions,
    head_strips: bool,
) -> Result<(Gpt2, CheckpointInfo)> {
    let dtype = opts.dtype.unwrap_or(DType::F32);
    let device = Device::Cpu;
    let file = File::open(weights).map_err(|e| Error::io(weights, e))?;
    let len = file.metadata().map_err(|e| Error::io(weights, e))?.len();
    let bad = |msg: String| Error::BadSafetensors {
        path: weights.to_path_buf(),
        msg,
    };
    if len < 8 {
        return Err(bad(format!("file is {len} bytes, too short for a header")));
    }
    // SAFETY: the map is read-only; a file truncated by another process while we read it would
    // raise SIGBUS, which is the documented limit of memory-mapped loading.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(weights, e))?;
    check_duplicate_names(&mmap).map_err(bad)?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| bad(describe_st_error(e)))?;

    let names: HashSet<&str> = st.names().into_iter().collect();
    let layout = Layout::detect(&names)?;
    let untied_head = names.contains("lm_head.weight");
    let cfg = resolve_config(hf, layout, &st)?;
    let ids = SpecialIds::resolve(cfg.vocab_size, hf, &opts.special_ids)?;

    // Check every name, dtype and shape before converting anything.
    let expected = canonical_shapes(&cfg, untied_head);
    let mut wanted: HashMap<String, &str> = HashMap::new();
    for (canon, shape) in &expected {
        let fname = layout.file_name(canon);
        let view = st
            .tensor(&fname)
            .map_err(|_| Error::MissingTensor(fname.clone()))?;
        check_dtype(&fname, &view)?;
        if view.shape() != shape.as_slice() {
            return Err(Error::WrongShape {
                name: fname,
                expected: shape.clone(),
                got: view.shape().to_vec(),
            });
        }
        wanted.insert(fname, canon.as_str());
    }
    for n in &names {
        if !wanted.contains_key(*n) && !layout.is_ignorable(n) {
            return Err(Error::UnknownTensor(n.to_string()));
        }
    }

    let total = expected.len();
    let mut done = 0usize;
    let base = mmap.as_ptr() as usize;
    let mut convert = |canon: &str| -> Result<Tensor> {
        let fname = layout.file_name(canon);
        let view = st
            .tensor(&fname)
            .map_err(|_| Error::MissingTensor(fname.clone()))?;
        let data = to_f32(&view);
        if opts.check_finite {
            if let Some(index) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite { name: fname, index });
            }
        }
        let t = match view.shape() {
            &[n, k] if head_strips && matches!(canon, "wte.weight" | "lm_head.weight") => {
                let strip = crate::cpu_gemm::STRIP;
                let data = crate::cpu_quant::rows_into_f32_strips(data, k, n);
                Tensor::from_vec(data, (n.div_ceil(strip), k, strip), &device)?
            }
            shape => Tensor::from_vec(data, shape, &device)?.to_dtype(dtype)?,
        };
        // Drop the pages we just converted from our resident set (they are file-backed and
        // read-only, so the kernel can always read them again).
        let off = view.data().as_ptr() as usize - base;
        // SAFETY: the range lies inside the mapping and the mapping is never written.
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, view.data().len())
        };
        done += 1;
        if let Some(p) = opts.progress.as_mut() {
            if !p(done, total) {
                return Err(Error::Cancelled(format!(
                    "loading stopped by the progress callback at tensor {done} of {total}"
                )));
            }
        }
        Ok(t)
    };
    let model = Gpt2::from_named(cfg, ids, &mut convert, untied_head)?;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for (_, v) in st.tensors() {
        *counts.entry(format!("{:?}", v.dtype())).or_default() += 1;
    }
    let mut file_dtypes: Vec<_> = counts.into_iter().collect();
    file_dtypes.sort();
    Ok((
        model,
        CheckpointInfo {
            layout,
            file_dtypes,
            config_from_file,
            untied_head,
        },
    ))
}

fn describe_st_error(e: safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "file too short for the 8-byte header length".into(),
        E::HeaderTooLarge => "header length is beyond the file or over 100 MB".into(),
        E::InvalidHeaderLength => "header length points beyond the end of the file".into(),
        E::InvalidHeader(_) => "header is not valid UTF-8".into(),
        E::InvalidHeaderDeserialization(e) => format!("header is not valid JSON: {e}"),
        E::InvalidOffset(n) => {
            format!("tensor `{n}` has data offsets out of order, overlapping or out of range")
        }
        E::TensorInvalidInfo => "a tensor's byte size does not match its dtype and shape".into(),
        E::MetadataIncompleteBuffer => {
            "data section size differs from what the header declares (truncated or padded file)"
                .into()
        }
        E::ValidationOverflow => "a tensor's declared size overflows".into(),
        other => other.to_string(),
    }
}

/// JSON objects with repeated keys are legal JSON but a silent last-one-wins in serde; a
/// checkpoint naming one tensor twice is corrupt, so look for repeats in the header first.
fn check_duplicate_names(buf: &[u8]) -> std::result::Result<(), String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    let Some(n) = buf.get(..8) else {
        return Ok(());
    };
    let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
    let Some(header) = usize::try_from(n)
        .ok()
        .and_then(|n| buf.get(8..8usize.checked_add(n)?))
    else {
        return Ok(()); // the safetensors parser reports this one
    };
    struct Dups;
    impl<'de> Visitor<'de> for Dups {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut seen = HashSet::new();
            let mut dup = None;
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(k.clone()) && dup.is_none() {
                    dup = Some(k);
                }
            }
            Ok(dup)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(header);
    match de.deserialize_map(Dups) {
        Ok(Some(name)) => Err(Error::DuplicateTensor(name).to_string()),
        _ => Ok(()),
    }
}

fn check_dtype(name: &str, v: &TensorView) -> Result<()> {
    match v.dtype() {
        StDtype::F32 | StDtype::F16 | StDtype::BF16 => Ok(()),
        other => Err(Error::UnsupportedDtype {
            name: name.to_string(),
            dtype: format!("{other:?}"),
        }),
    }
}

fn to_f32(v: &TensorView) -> Vec<f32> {
    let b = v.data();
    match v.dtype() {
        StDtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StDtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => unreachable!("dtype checked before conversion"),
    }
}

/// Hyper-parameters from config.json where given, otherwise from the tensor shapes; the
/// vocabulary always from the embedding rows.
fn resolve_config(hf: &HfConfig, layout: Layout, st: &SafeTensors) -> Result<ModelConfig> {
    let shape = |canon: &str| -> Result<Vec<usize>> {
        let n = layout.file_name(canon);
        st.tensor(&n)
            .map(|v| v.shape().to_vec())
            .map_err(|_| Error::MissingTensor(n))
    };
    let wte = shape("wte.weight")?;
    if wte.len() != 2 {
        return Err(Error::WrongShape {
            name: layout.file_name("wte.weight"),
            expected: vec![hf.vocab_size.unwrap_or(0), hf.n_embd.unwrap_or(0)],
            got: wte,
        });
    }
    let wpe = shape("wpe.weight")?;
    let n_embd = hf.n_embd.unwrap_or(wte[1]);
    let inferred_layers = (0..)
        .take_while(|i| {
            st.tensor(&layout.file_name(&format!("h.{i}.ln_1.weight")))
                .is_ok()
        })
        .count();
    let n_layer = hf.n_layer.unwrap_or(inferred_layers);
    let n_inner = match hf.n_inner {
        Some(i) => i,
        None if hf.n_embd.is_some() => n_embd.saturating_mul(4),
        None => shape("h.0.mlp.c_fc.weight")
            .ok()
            .and_then(|s| s.get(1).copied())
            .unwrap_or(n_embd.saturating_mul(4)),
    };
    let n_head = match hf.n_head {
        Some(h) => h,
        // Without a config the head count is not in any shape; GPT-2 always uses 64-wide heads.
        None if n_embd.is_multiple_of(64) => n_embd / 64,
        None => {
            return Err(Error::Config(format!(
                "n_head is not given (no config.json, or none in it) and n_embd {n_embd} is not a multiple of 64: cannot infer it"
            )))
        }
    };
    let cfg = ModelConfig {
        n_layer,
        n_head,
        n_embd,
        n_inner,
        n_positions: hf.n_positions.unwrap_or(wpe.first().copied().unwrap_or(0)),
        vocab_size: wte[0],
        layer_norm_eps: hf.layer_norm_epsilon.unwrap_or(1e-5),
        activation: match &hf.activation_function {
            Some(a) => Activation::from_hf(a)?,
            None => Activation::GeluTanh,
        },
    };
    if let Some(v) = hf.vocab_size {
        // A config may under-count (DiffuGPT-M: 50257 vs 50258 rows) but never over-count.
        if v > cfg.vocab_size {
            return Err(Error::Config(format!(
                "config vocab_size {v} exceeds the {} embedding rows",
                cfg.vocab_size
            )));
        }
    }
    cfg.validate()?;
    // A config may not promise more layers than the file holds (checked before anything is
    // sized from n_layer).
    if cfg.n_layer > inferred_layers {
        return Err(Error::MissingTensor(
            layout.file_name(&format!("h.{inferred_layers}.ln_1.weight")),
        ));
    }
    Ok(cfg)
}

/// Storage dtype when saving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    F16,
    BF16,
}

/// Writes `model` as `dir/model.safetensors` + `dir/config.json` in `layout`, crash-safely: each
/// file goes to a temporary name, is fsynced, then renamed over the old one.
pub fn save(model: &Gpt2, dir: &Path, layout: Layout, dtype: SaveDtype) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (canon, t) in model.named_tensors()? {
        let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = match dtype {
            SaveDtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            SaveDtype::F16 => data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            SaveDtype::BF16 => data
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        bufs.push((layout.file_name(&canon), t.dims().to_vec(), bytes));
    }
    let st_dtype = match dtype {
        SaveDtype::F32 => StDtype::F32,
        SaveDtype::F16 => StDtype::F16,
        SaveDtype::BF16 => StDtype::BF16,
    };
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(st_dtype, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Config(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "producer".to_string(),
        format!("diffugpt {}", crate::VERSION),
    );
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(&dir.join("model.safetensors"), &bytes)?;
    let cfg = HfConfig::from_model(&model.cfg, &model.ids);
    let json = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(&dir.join("config.json"), &json)
}

/// temp file -> fsync -> rename -> fsync(dir): a crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
