//! Error handling of the weight / config / tokenizer loader, on small safetensors files built by
//! hand. Each test starts from a valid tiny checkpoint and changes exactly one thing, then checks the
//! specific `Error` variant (and the tensor name or a key phrase), never just `is_err`.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use candle_core::Device;
use diffugpt::config::{HfConfig, ModelConfig, SpecialIdOverrides, SpecialIds};
use diffugpt::weights::{self, CheckpointInfo, SaveDtype};
use diffugpt::{Error, Gpt2, Layout, LoadOptions, Model};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Counts the bytes each thread allocates, so "fails fast" is a bound on work (allocations), not
/// on time: a loader that built millions of expected names or sized a huge buffer before
/// refusing would allocate gigabytes.
struct CountingAlloc;

thread_local! {
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread-local
// (no allocation, `try_with` tolerates thread teardown).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|c| c.set(c.get() + layout.size() as u64));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|c| c.set(c.get() + new_size as u64));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// The most a refused config may make the loading thread allocate (the tiny checkpoint itself
/// takes a few KB; the failures this guards against took gigabytes).
const REFUSAL_BYTES: u64 = 16 << 20;

/// Runs `f` and returns its result with the bytes this thread allocated meanwhile.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATED.with(|c| c.get());
    let out = f();
    (out, ALLOCATED.with(|c| c.get()) - before)
}

/// One tensor of a hand-built safetensors file.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Entry {
    fn f32(name: &str, shape: &[usize], values: &[f32]) -> Self {
        Entry {
            name: name.to_string(),
            dtype: "F32".into(),
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

fn tiny_cfg() -> ModelConfig {
    ModelConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 8,
        n_inner: 32,
        n_positions: 16,
        vocab_size: 40,
        ..ModelConfig::tiny(40)
    }
}

fn default_ids(vocab: usize) -> SpecialIds {
    SpecialIds::resolve(vocab, &HfConfig::default(), &SpecialIdOverrides::default()).unwrap()
}

fn random_model(cfg: ModelConfig, seed: u64) -> Gpt2 {
    let ids = default_ids(cfg.vocab_size);
    Gpt2::random(cfg, ids, seed, &Device::Cpu).unwrap()
}

fn f32s(t: &candle_core::Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The tensors of `model` as F32 entries named in `layout`.
fn entries_of(model: &Gpt2, layout: Layout) -> Vec<Entry> {
    model
        .named_tensors()
        .unwrap()
        .into_iter()
        .map(|(canon, t)| Entry::f32(&layout.file_name(&canon), t.dims(), &f32s(&t)))
        .collect()
}

/// A valid tiny DiffuGPT-layout checkpoint (1 layer, 8 wide, 40 tokens).
fn tiny_entries() -> Vec<Entry> {
    entries_of(&random_model(tiny_cfg(), 0), Layout::DiffuGpt)
}

/// The config.json this project writes for the tiny model.
fn tiny_config_json() -> String {
    serde_json::to_string(&HfConfig::from_model(&tiny_cfg(), &default_ids(40))).unwrap()
}

/// The JSON object of one tensor's header entry.
fn entry_json(e: &Entry, start: usize, end: usize) -> String {
    format!(
        "{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{start},{end}]}}",
        e.dtype, e.shape
    )
}

/// Header JSON with contiguous offsets in list order, plus the concatenated data.
fn header_and_data(entries: &[Entry]) -> (String, Vec<u8>) {
    let mut parts = vec!["\"__metadata__\":{\"format\":\"pt\"}".to_string()];
    let mut data = Vec::new();
    for e in entries {
        let start = data.len();
        data.extend_from_slice(&e.data);
        parts.push(format!(
            "\"{}\":{}",
            e.name,
            entry_json(e, start, data.len())
        ));
    }
    (format!("{{{}}}", parts.join(",")), data)
}

/// 8-byte little-endian header length, header, data.
fn assemble(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

fn safetensors_bytes(entries: &[Entry]) -> Vec<u8> {
    let (h, d) = header_and_data(entries);
    assemble(h.as_bytes(), &d)
}

/// Writes `dir/model.safetensors` (and `dir/config.json` when given); returns the weights path.
fn write_raw(dir: &Path, bytes: &[u8], config: Option<&str>) -> PathBuf {
    let w = dir.join("model.safetensors");
    std::fs::write(&w, bytes).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.join("config.json"), c).unwrap();
    }
    w
}

fn write_model(dir: &Path, entries: &[Entry], config: Option<&str>) -> PathBuf {
    write_raw(dir, &safetensors_bytes(entries), config)
}

fn find<'a>(entries: &'a mut [Entry], name: &str) -> &'a mut Entry {
    entries
        .iter_mut()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no entry {name}"))
}

fn load(path: &Path) -> diffugpt::Result<(Gpt2, CheckpointInfo)> {
    weights::load(path, LoadOptions::default())
}

fn load_err(path: &Path, opts: LoadOptions) -> Error {
    match weights::load(path, opts) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => e,
    }
}

/// Loads a file made of `bytes` (with the tiny config) and expects `BadSafetensors` for that
/// file; returns its message.
fn bad_safetensors_msg(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let w = write_raw(dir.path(), bytes, Some(&tiny_config_json()));
    match load_err(dir.path(), LoadOptions::default()) {
        Error::BadSafetensors { path, msg } => {
            assert_eq!(path, w);
            msg
        }
        other => panic!("expected BadSafetensors, got {other:?}"),
    }
}

/// Loads the tiny entries with one change and the tiny config.
fn load_entries(entries: &[Entry]) -> diffugpt::Result<(Gpt2, CheckpointInfo)> {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), entries, Some(&tiny_config_json()));
    load(dir.path())
}

fn err_of(r: diffugpt::Result<(Gpt2, CheckpointInfo)>) -> Error {
    match r {
        Ok(_) => panic!("loaded but should not have"),
        Err(e) => e,
    }
}

/// Loads the tiny entries with a given config.json text and expects `Error::Config`.
fn config_err(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_entries(), Some(config));
    match load_err(dir.path(), LoadOptions::default()) {
        Error::Config(m) => m,
        other => panic!("expected Config, got {other:?}"),
    }
}

/// The tiny config as a JSON object with `key` replaced by the raw JSON `value`.
fn config_with(key: &str, value: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&tiny_config_json()).unwrap();
    v[key] = serde_json::from_str(value).unwrap();
    v.to_string()
}

fn assert_same_weights(a: &Gpt2, b: &Gpt2) {
    let (na, nb) = (a.named_tensors().unwrap(), b.named_tensors().unwrap());
    assert_eq!(na.len(), nb.len());
    for ((ka, ta), (kb, tb)) in na.iter().zip(&nb) {
        assert_eq!(ka, kb);
        assert_eq!(ta.dims(), tb.dims(), "{ka}");
        assert_eq!(f32s(ta), f32s(tb), "{ka}");
    }
}

fn fixture_tokenizer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-diffugpt/tokenizer.json")
}

/// A word-level tokenizer.json with 4 tokens, small enough for the 40-token model.
const SMALL_TOKENIZER: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "c": 2, "[UNK]": 3}, "unk_token": "[UNK]"}
}"#;

// ---------------------------------------------------------------------------------------------
// The helper itself builds a valid file
// ---------------------------------------------------------------------------------------------

#[test]
fn hand_built_tiny_file_loads() {
    let (m, info) = load_entries(&tiny_entries()).unwrap();
    assert_eq!(m.cfg, tiny_cfg());
    assert_eq!(m.ids, default_ids(40));
    assert_eq!(info.layout, Layout::DiffuGpt);
    assert!(info.config_from_file);
    assert!(!info.untied_head);
    assert_eq!(info.file_dtypes, vec![("F32".to_string(), 16)]);
    assert_same_weights(&m, &random_model(tiny_cfg(), 0));
}

#[test]
fn header_key_order_need_not_follow_offsets() {
    // Offsets are contiguous but the header lists the tensors in reverse: legal safetensors.
    let entries = tiny_entries();
    let (_, data) = header_and_data(&entries);
    let mut offsets = Vec::new();
    let mut pos = 0;
    for e in &entries {
        offsets.push((pos, pos + e.data.len()));
        pos += e.data.len();
    }
    let parts: Vec<String> = entries
        .iter()
        .zip(&offsets)
        .rev()
        .map(|(e, &(s, t))| format!("\"{}\":{}", e.name, entry_json(e, s, t)))
        .collect();
    let header = format!("{{{}}}", parts.join(","));
    let dir = tempfile::tempdir().unwrap();
    write_raw(
        dir.path(),
        &assemble(header.as_bytes(), &data),
        Some(&tiny_config_json()),
    );
    let (m, _) = load(dir.path()).unwrap();
    assert_same_weights(&m, &random_model(tiny_cfg(), 0));
}

// ---------------------------------------------------------------------------------------------
// Container-level corruption -> Error::BadSafetensors
// ---------------------------------------------------------------------------------------------

#[test]
fn zero_length_file() {
    let msg = bad_safetensors_msg(&[]);
    assert!(
        msg.contains("0 bytes") && msg.contains("too short"),
        "{msg}"
    );
}

#[test]
fn file_shorter_than_header_length() {
    let msg = bad_safetensors_msg(&[1, 0, 0, 0, 0]);
    assert!(
        msg.contains("5 bytes") && msg.contains("too short"),
        "{msg}"
    );
}

#[test]
fn header_length_beyond_file() {
    let good = safetensors_bytes(&tiny_entries());
    let mut bytes = good.clone();
    bytes[..8].copy_from_slice(&(good.len() as u64 + 1).to_le_bytes());
    let msg = bad_safetensors_msg(&bytes);
    assert!(msg.contains("beyond the end of the file"), "{msg}");

    // An absurd length (over safetensors' 100 MB cap, even over usize on 32-bit).
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let msg = bad_safetensors_msg(&bytes);
    assert!(msg.contains("header length"), "{msg}");

    // Exactly 8 bytes: a header length with no header.
    let msg = bad_safetensors_msg(&16u64.to_le_bytes());
    assert!(msg.contains("beyond the end of the file"), "{msg}");
}

#[test]
fn header_not_utf8() {
    let (mut h, d) = header_and_data(&tiny_entries());
    h.insert(1, ' ');
    let mut header = h.into_bytes();
    header[1] = 0xff;
    let msg = bad_safetensors_msg(&assemble(&header, &d));
    assert!(msg.contains("not valid UTF-8"), "{msg}");
}

#[test]
fn header_not_json() {
    let (h, d) = header_and_data(&tiny_entries());
    let broken = &h[..h.len() - 1]; // drop the closing brace
    let msg = bad_safetensors_msg(&assemble(broken.as_bytes(), &d));
    assert!(msg.contains("not valid JSON"), "{msg}");

    let msg = bad_safetensors_msg(&assemble(b"[1, 2, 3]", &[]));
    assert!(msg.contains("not valid JSON"), "{msg}");

    // Valid JSON, invalid safetensors entry (shape is not a list of integers).
    let msg = bad_safetensors_msg(&assemble(
        br#"{"wte.weight":{"dtype":"F32","shape":"big","data_offsets":[0,4]}}"#,
        &[0; 4],
    ));
    assert!(msg.contains("not valid JSON"), "{msg}");
}

#[test]
fn truncated_data_section() {
    let good = safetensors_bytes(&tiny_entries());
    let msg = bad_safetensors_msg(&good[..good.len() - 3]);
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn trailing_extra_bytes() {
    let mut bytes = safetensors_bytes(&tiny_entries());
    bytes.extend_from_slice(&[0; 16]);
    let msg = bad_safetensors_msg(&bytes);
    assert!(msg.contains("data section size differs"), "{msg}");
}

#[test]
fn overlapping_offsets() {
    let entries = tiny_entries();
    let (_, data) = header_and_data(&entries);
    // The second tensor starts 4 bytes before the first one ends; the last ends 4 bytes early.
    let mut parts = Vec::new();
    let mut pos = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let start = if i == 1 { pos - 4 } else { pos };
        let end = start + e.data.len();
        parts.push(format!("\"{}\":{}", e.name, entry_json(e, start, end)));
        pos = end;
    }
    let header = format!("{{{}}}", parts.join(","));
    let msg = bad_safetensors_msg(&assemble(header.as_bytes(), &data[..data.len() - 4]));
    assert!(msg.contains("out of order, overlapping"), "{msg}");
    assert!(msg.contains(&entries[1].name), "{msg}");
}

#[test]
fn gap_between_offsets() {
    let entries = tiny_entries();
    let mut parts = Vec::new();
    let mut data = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if i == 2 {
            data.extend_from_slice(&[0; 4]); // 4 unreferenced bytes before the third tensor
        }
        let start = data.len();
        data.extend_from_slice(&e.data);
        parts.push(format!(
            "\"{}\":{}",
            e.name,
            entry_json(e, start, data.len())
        ));
    }
    let header = format!("{{{}}}", parts.join(","));
    let msg = bad_safetensors_msg(&assemble(header.as_bytes(), &data));
    assert!(msg.contains("out of order, overlapping"), "{msg}");
    assert!(msg.contains(&entries[2].name), "{msg}");
}

#[test]
fn end_offset_before_start() {
    let mut entries = tiny_entries();
    let last = entries.pop().unwrap();
    let (h, mut data) = header_and_data(&entries);
    let start = data.len();
    data.extend_from_slice(&last.data);
    let header = format!(
        "{},\"{}\":{}}}",
        &h[..h.len() - 1],
        last.name,
        entry_json(&last, start, start - 4)
    );
    let msg = bad_safetensors_msg(&assemble(header.as_bytes(), &data));
    assert!(msg.contains("out of order, overlapping"), "{msg}");
    assert!(msg.contains(&last.name), "{msg}");
}

#[test]
fn byte_size_not_matching_dtype_and_shape() {
    let mut entries = tiny_entries();
    // ln_1.weight is [8] F32 = 32 bytes; store 28.
    find(&mut entries, "denoise_model.h.0.ln_1.weight")
        .data
        .truncate(28);
    let msg = bad_safetensors_msg(&safetensors_bytes(&entries));
    assert!(msg.contains("byte size does not match"), "{msg}");

    // Right byte count for F32 but labelled F16 (twice the elements' worth of bytes).
    let mut entries = tiny_entries();
    find(&mut entries, "denoise_model.ln_f.bias").dtype = "F16".into();
    let msg = bad_safetensors_msg(&safetensors_bytes(&entries));
    assert!(msg.contains("byte size does not match"), "{msg}");
}

#[test]
fn shape_product_overflow() {
    let mut entries = tiny_entries();
    find(&mut entries, "denoise_model.ln_f.bias").shape = vec![usize::MAX / 2, 4];
    let msg = bad_safetensors_msg(&safetensors_bytes(&entries));
    assert!(msg.contains("overflows"), "{msg}");
}

#[test]
fn unknown_dtype_string() {
    let mut entries = tiny_entries();
    find(&mut entries, "denoise_model.ln_f.bias").dtype = "F128".into();
    let msg = bad_safetensors_msg(&safetensors_bytes(&entries));
    assert!(msg.contains("F128"), "{msg}");
}

#[test]
fn duplicate_tensor_name_in_header() {
    let entries = tiny_entries();
    let (h, mut data) = header_and_data(&entries);
    // Repeat ln_f.bias as a second key pointing at 32 more bytes at the end.
    let dup = entries
        .iter()
        .find(|e| e.name == "denoise_model.ln_f.bias")
        .unwrap()
        .clone();
    let start = data.len();
    data.extend_from_slice(&dup.data);
    let header = format!(
        "{},\"{}\":{}}}",
        &h[..h.len() - 1],
        dup.name,
        entry_json(&dup, start, data.len())
    );
    assert_eq!(header.matches("\"denoise_model.ln_f.bias\"").count(), 2);
    let msg = bad_safetensors_msg(&assemble(header.as_bytes(), &data));
    let expected = Error::DuplicateTensor("denoise_model.ln_f.bias".into()).to_string();
    assert_eq!(msg, expected);
    assert!(msg.contains("more than once"), "{msg}");
}

#[test]
fn duplicate_name_with_identical_entry() {
    // Both keys describe the very same bytes: still two tensors with one name, still corrupt.
    let entries = tiny_entries();
    let mut parts = Vec::new();
    let mut data = Vec::new();
    for e in &entries {
        let start = data.len();
        data.extend_from_slice(&e.data);
        let p = format!("\"{}\":{}", e.name, entry_json(e, start, data.len()));
        if e.name == "denoise_model.h.0.attn.c_attn.weight" {
            parts.push(p.clone());
        }
        parts.push(p);
    }
    let header = format!("{{{}}}", parts.join(","));
    let msg = bad_safetensors_msg(&assemble(header.as_bytes(), &data));
    assert!(
        msg.contains("`denoise_model.h.0.attn.c_attn.weight`") && msg.contains("more than once"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Content-level errors: names, dtypes, shapes, values
// ---------------------------------------------------------------------------------------------

#[test]
fn unsupported_dtype_for_named_weight() {
    for dtype in ["F64", "I64"] {
        let mut entries = tiny_entries();
        let e = find(&mut entries, "denoise_model.h.0.mlp.c_fc.weight");
        e.dtype = dtype.into();
        e.data.extend(e.data.clone()); // 8 bytes per element now
        match err_of(load_entries(&entries)) {
            Error::UnsupportedDtype { name, dtype: d } => {
                assert_eq!(name, "denoise_model.h.0.mlp.c_fc.weight");
                assert_eq!(d, dtype);
            }
            other => panic!("expected UnsupportedDtype, got {other:?}"),
        }
    }
    // An integer token embedding is refused too (it is read for its shape before the check).
    let mut entries = tiny_entries();
    let e = find(&mut entries, "embed_tokens.weight");
    e.dtype = "I32".into();
    match err_of(load_entries(&entries)) {
        Error::UnsupportedDtype { name, dtype } => {
            assert_eq!(
                (name.as_str(), dtype.as_str()),
                ("embed_tokens.weight", "I32")
            );
        }
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
}

#[test]
fn transposed_c_attn_weight() {
    let mut entries = tiny_entries();
    find(&mut entries, "denoise_model.h.0.attn.c_attn.weight").shape = vec![24, 8];
    match err_of(load_entries(&entries)) {
        Error::WrongShape {
            name,
            expected,
            got,
        } => {
            assert_eq!(name, "denoise_model.h.0.attn.c_attn.weight");
            assert_eq!(expected, vec![8, 24]);
            assert_eq!(got, vec![24, 8]);
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
}

#[test]
fn wrong_shape_bias_and_embedding() {
    // A bias stored as [1, 32] instead of [32].
    let mut entries = tiny_entries();
    find(&mut entries, "denoise_model.h.0.mlp.c_fc.bias").shape = vec![1, 32];
    match err_of(load_entries(&entries)) {
        Error::WrongShape { name, got, .. } => {
            assert_eq!(name, "denoise_model.h.0.mlp.c_fc.bias");
            assert_eq!(got, vec![1, 32]);
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
    // A 1-D token embedding.
    let mut entries = tiny_entries();
    find(&mut entries, "embed_tokens.weight").shape = vec![320];
    match err_of(load_entries(&entries)) {
        Error::WrongShape { name, got, .. } => {
            assert_eq!(name, "embed_tokens.weight");
            assert_eq!(got, vec![320]);
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
    // A config whose n_embd disagrees with the tensors.
    let dir = tempfile::tempdir().unwrap();
    write_model(
        dir.path(),
        &tiny_entries(),
        Some(&config_with("n_embd", "16")),
    );
    match load_err(dir.path(), LoadOptions::default()) {
        Error::WrongShape {
            name,
            expected,
            got,
        } => {
            assert_eq!(name, "embed_tokens.weight");
            assert_eq!(expected, vec![40, 16]);
            assert_eq!(got, vec![40, 8]);
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
}

#[test]
fn config_n_positions_disagrees_with_wpe() {
    let dir = tempfile::tempdir().unwrap();
    write_model(
        dir.path(),
        &tiny_entries(),
        Some(&config_with("n_positions", "32")),
    );
    match load_err(dir.path(), LoadOptions::default()) {
        Error::WrongShape {
            name,
            expected,
            got,
        } => {
            assert_eq!(name, "denoise_model.wpe.weight");
            assert_eq!((expected, got), (vec![32, 8], vec![16, 8]));
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
}

#[test]
fn missing_tensor() {
    let mut entries = tiny_entries();
    entries.retain(|e| e.name != "denoise_model.h.0.mlp.c_fc.bias");
    match err_of(load_entries(&entries)) {
        Error::MissingTensor(n) => assert_eq!(n, "denoise_model.h.0.mlp.c_fc.bias"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    let mut entries = tiny_entries();
    entries.retain(|e| e.name != "denoise_model.wpe.weight");
    match err_of(load_entries(&entries)) {
        Error::MissingTensor(n) => assert_eq!(n, "denoise_model.wpe.weight"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn config_declares_more_layers_than_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_model(
        dir.path(),
        &tiny_entries(),
        Some(&config_with("n_layer", "2")),
    );
    match load_err(dir.path(), LoadOptions::default()) {
        Error::MissingTensor(n) => assert_eq!(n, "denoise_model.h.1.ln_1.weight"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn config_declares_huge_layer_count_fails_fast() {
    // 2^20 layers of an 8-wide model is under the parameter cap, but the file has one layer: the
    // loader must say so without first building millions of expected names.
    let dir = tempfile::tempdir().unwrap();
    write_model(
        dir.path(),
        &tiny_entries(),
        Some(&config_with("n_layer", "1048576")),
    );
    let (err, bytes) = allocated_by(|| load_err(dir.path(), LoadOptions::default()));
    assert!(
        matches!(&err, Error::MissingTensor(n) if n == "denoise_model.h.1.ln_1.weight"),
        "{err:?}"
    );
    assert!(bytes < REFUSAL_BYTES, "allocated {bytes} bytes");
}

#[test]
fn extra_unknown_tensor() {
    let mut entries = tiny_entries();
    entries.push(Entry::f32(
        "denoise_model.h.0.attn.rotary",
        &[2],
        &[0.0, 1.0],
    ));
    match err_of(load_entries(&entries)) {
        Error::UnknownTensor(n) => assert_eq!(n, "denoise_model.h.0.attn.rotary"),
        other => panic!("expected UnknownTensor, got {other:?}"),
    }
    // A second layer's tensors beyond what the config declares are unknown too.
    let mut entries = tiny_entries();
    entries.push(Entry::f32("denoise_model.h.1.ln_1.weight", &[8], &[1.0; 8]));
    match err_of(load_entries(&entries)) {
        Error::UnknownTensor(n) => assert_eq!(n, "denoise_model.h.1.ln_1.weight"),
        other => panic!("expected UnknownTensor, got {other:?}"),
    }
    // A tensor of another layout mixed in.
    let mut entries = tiny_entries();
    entries.push(Entry::f32("transformer.ln_f.bias", &[8], &[0.0; 8]));
    match err_of(load_entries(&entries)) {
        Error::UnknownTensor(n) => assert_eq!(n, "transformer.ln_f.bias"),
        other => panic!("expected UnknownTensor, got {other:?}"),
    }
}

#[test]
fn untied_head_loads_and_is_shape_checked() {
    let mut entries = tiny_entries();
    let head: Vec<f32> = (0..320).map(|i| i as f32 * 1e-3).collect();
    entries.push(Entry::f32("lm_head.weight", &[40, 8], &head));
    let (m, info) = load_entries(&entries).unwrap();
    assert!(info.untied_head);
    assert_eq!(f32s(m.head()), head);

    let mut entries = tiny_entries();
    entries.push(Entry::f32("lm_head.weight", &[8, 40], &head));
    match err_of(load_entries(&entries)) {
        Error::WrongShape { name, expected, .. } => {
            assert_eq!(name, "lm_head.weight");
            assert_eq!(expected, vec![40, 8]);
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
}

#[test]
fn nan_weight_with_check_finite() {
    let mut entries = tiny_entries();
    let e = find(&mut entries, "denoise_model.h.0.mlp.c_proj.weight");
    e.data[5 * 4..6 * 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &entries, Some(&tiny_config_json()));
    let opts = LoadOptions {
        check_finite: true,
        ..Default::default()
    };
    match load_err(dir.path(), opts) {
        Error::NonFinite { name, index } => {
            assert_eq!(name, "denoise_model.h.0.mlp.c_proj.weight");
            assert_eq!(index, 5);
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    // Without the check the file loads, NaN and all.
    let (m, _) = load(dir.path()).unwrap();
    assert!(f32s(&m.blocks[0].mlp_proj_w)[5].is_nan());
}

#[test]
fn inf_in_f16_weight_with_check_finite() {
    let mut entries = tiny_entries();
    let e = find(&mut entries, "denoise_model.ln_f.weight");
    let vals: Vec<f32> = e
        .data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    e.dtype = "F16".into();
    e.data = vals
        .iter()
        .enumerate()
        .flat_map(|(i, &v)| {
            let h = if i == 7 {
                half::f16::NEG_INFINITY
            } else {
                half::f16::from_f32(v)
            };
            h.to_le_bytes()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &entries, Some(&tiny_config_json()));
    let opts = LoadOptions {
        check_finite: true,
        ..Default::default()
    };
    match load_err(dir.path(), opts) {
        Error::NonFinite { name, index } => {
            assert_eq!((name.as_str(), index), ("denoise_model.ln_f.weight", 7));
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

#[test]
fn no_token_embedding() {
    let mut entries = tiny_entries();
    entries.retain(|e| e.name != "embed_tokens.weight");
    match err_of(load_entries(&entries)) {
        Error::UnknownLayout(m) => assert!(m.contains("no token embedding"), "{m}"),
        other => panic!("expected UnknownLayout, got {other:?}"),
    }
    // An empty (but well-formed) safetensors file.
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path(), &assemble(b"{}", &[]), None);
    match load_err(dir.path(), LoadOptions::default()) {
        Error::UnknownLayout(m) => assert!(m.contains("embed_tokens.weight"), "{m}"),
        other => panic!("expected UnknownLayout, got {other:?}"),
    }
}

#[test]
fn directory_without_weights() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), tiny_config_json()).unwrap();
    match load_err(dir.path(), LoadOptions::default()) {
        Error::NoWeights(p) => assert_eq!(p, dir.path()),
        other => panic!("expected NoWeights, got {other:?}"),
    }
    // model.safetensors that is a directory is no weights file either.
    std::fs::create_dir(dir.path().join("model.safetensors")).unwrap();
    match load_err(dir.path(), LoadOptions::default()) {
        Error::NoWeights(p) => assert_eq!(p, dir.path()),
        other => panic!("expected NoWeights, got {other:?}"),
    }
    match Model::load(dir.path(), LoadOptions::default()) {
        Err(Error::NoWeights(p)) => assert_eq!(p, dir.path()),
        Err(other) => panic!("expected NoWeights, got {other:?}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn nonexistent_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").join("model.safetensors");
    match load_err(&missing, LoadOptions::default()) {
        Error::Io { path, source } => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    match Model::load(&missing, LoadOptions::default()) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        Err(other) => panic!("expected Io, got {other:?}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn weights_file_path_directly() {
    // Passing model.safetensors itself picks up config.json next to it.
    let dir = tempfile::tempdir().unwrap();
    let w = write_model(dir.path(), &tiny_entries(), Some(&tiny_config_json()));
    let (m, info) = load(&w).unwrap();
    assert!(info.config_from_file);
    assert_eq!(m.cfg, tiny_cfg());
}

// ---------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------

#[test]
fn config_wrong_types() {
    let m = config_err(&config_with("n_layer", "\"two\""));
    assert!(
        m.contains("config.json") && m.contains("invalid type") && m.contains("two"),
        "{m}"
    );
    let m = config_err(&config_with("layer_norm_epsilon", "\"small\""));
    assert!(m.contains("invalid type"), "{m}");
    let m = config_err(&config_with("n_embd", "8.5"));
    assert!(m.contains("invalid type"), "{m}");
}

#[test]
fn config_not_json() {
    let m = config_err("{\"n_layer\": 1,");
    assert!(m.contains("config.json"), "{m}");
    let m = config_err("");
    assert!(m.contains("config.json"), "{m}");
}

#[test]
fn config_negative_and_zero_sizes() {
    let m = config_err(&config_with("n_layer", "-1"));
    assert!(m.contains("config.json") && m.contains("-1"), "{m}");
    let m = config_err(&config_with("n_head", "-2"));
    assert!(m.contains("config.json") && m.contains("-2"), "{m}");
    let m = config_err(&config_with("n_layer", "0"));
    assert!(m.contains("n_layer must be positive"), "{m}");
    let m = config_err(&config_with("n_head", "0"));
    assert!(m.contains("n_head must be positive"), "{m}");
}

#[test]
fn config_n_head_not_dividing_n_embd() {
    let m = config_err(&config_with("n_head", "3"));
    assert!(m.contains("not divisible by n_head 3"), "{m}");
}

#[test]
fn config_bad_epsilon_and_activation() {
    let m = config_err(&config_with("layer_norm_epsilon", "0.0"));
    assert!(m.contains("layer_norm_epsilon"), "{m}");
    let m = config_err(&config_with("activation_function", "\"relu\""));
    assert!(m.contains("relu") && m.contains("not supported"), "{m}");
}

#[test]
fn config_absurd_sizes_refused_before_allocating() {
    let cases = [
        config_with("n_embd", "10000000"),
        config_with("n_inner", "10000000000"),
        config_with("n_layer", "1000000000"),
        config_with("n_positions", "1000000000000"),
        {
            let v = config_with("n_embd", "10000000");
            let mut v: serde_json::Value = serde_json::from_str(&v).unwrap();
            v["n_head"] = 1.into();
            v["n_inner"] = 1.into();
            v.to_string()
        },
    ];
    for c in &cases {
        let (m, bytes) = allocated_by(|| config_err(c));
        assert!(
            m.contains("refusing to allocate") || m.contains("absurd"),
            "{c}: {m}"
        );
        assert!(bytes < REFUSAL_BYTES, "{c}: allocated {bytes} bytes");
    }
}

#[test]
fn config_sizes_that_overflow_the_parameter_count() {
    // Sizes within the per-field cap (2^24) whose parameter count overflows u64 must still be a
    // Config error: not a panic in debug builds, nor a wrapped small count in release builds.
    // The second case wraps to exactly 6_076_080 parameters with u64 wrapping arithmetic.
    let cases: [[(&str, u64); 4]; 2] = [
        [
            ("n_layer", 1 << 24),
            ("n_embd", 1 << 24),
            ("n_inner", 1 << 24),
            ("n_positions", 1 << 24),
        ],
        [
            ("n_layer", 1 << 24),
            ("n_embd", 104_760),
            ("n_inner", 5_038_216),
            ("n_positions", 16),
        ],
    ];
    for case in cases {
        let mut v: serde_json::Value = serde_json::from_str(&tiny_config_json()).unwrap();
        for (k, x) in case {
            v[k] = x.into();
        }
        v["n_head"] = 1.into();
        let c = v.to_string();
        let (r, bytes) = allocated_by(|| std::panic::catch_unwind(|| config_err(&c)));
        let m = r.unwrap_or_else(|_| panic!("loading {c} panicked instead of returning Config"));
        assert!(m.contains("refusing to allocate"), "{c}: {m}");
        assert!(bytes < REFUSAL_BYTES, "{c}: allocated {bytes} bytes");

        // The same through ModelConfig::validate directly.
        let cfg = ModelConfig {
            n_layer: case[0].1 as usize,
            n_head: 1,
            n_embd: case[1].1 as usize,
            n_inner: case[2].1 as usize,
            n_positions: case[3].1 as usize,
            ..tiny_cfg()
        };
        let r = std::panic::catch_unwind(|| cfg.validate());
        assert!(
            matches!(r, Ok(Err(Error::Config(ref m))) if m.contains("refusing")),
            "{cfg:?}: {r:?}"
        );
    }
}

#[test]
fn special_ids_for_empty_vocab_is_an_error() {
    let r = std::panic::catch_unwind(|| {
        SpecialIds::resolve(0, &HfConfig::default(), &SpecialIdOverrides::default())
    });
    assert!(matches!(r, Ok(Err(Error::Config(_)))), "{r:?}");
}

#[test]
fn config_vocab_larger_than_embedding() {
    let m = config_err(&config_with("vocab_size", "41"));
    assert!(
        m.contains("vocab_size 41 exceeds the 40 embedding rows"),
        "{m}"
    );
    // Under-counting is allowed (DiffuGPT-M ships one more row than its config says).
    let dir = tempfile::tempdir().unwrap();
    write_model(
        dir.path(),
        &tiny_entries(),
        Some(&config_with("vocab_size", "39")),
    );
    let (m, _) = load(dir.path()).unwrap();
    assert_eq!(m.cfg.vocab_size, 40);
}

#[test]
fn special_ids_out_of_range() {
    // From config.json.
    let m = config_err(&config_with("mask_token_id", "40"));
    assert!(
        m.contains("mask id 40 is outside the vocabulary of 40"),
        "{m}"
    );
    let m = config_err(&config_with("eos_token_id", "1000"));
    assert!(m.contains("eos id 1000"), "{m}");
    let m = config_err(&config_with("pad_token_id", "50256"));
    assert!(m.contains("pad id 50256"), "{m}");
    // mask equal to eos.
    let m = config_err(&config_with("mask_token_id", "39"));
    assert!(m.contains("must differ"), "{m}");

    // From the load options.
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_entries(), Some(&tiny_config_json()));
    let cases = [
        (
            SpecialIdOverrides {
                mask: Some(40),
                ..Default::default()
            },
            "mask id 40",
        ),
        (
            SpecialIdOverrides {
                eos: Some(u32::MAX),
                ..Default::default()
            },
            "eos id 4294967295",
        ),
        (
            SpecialIdOverrides {
                pad: Some(Some(99)),
                ..Default::default()
            },
            "pad id 99",
        ),
    ];
    for (ov, phrase) in cases {
        let opts = LoadOptions {
            special_ids: ov,
            ..Default::default()
        };
        match load_err(dir.path(), opts) {
            Error::Config(m) => assert!(m.contains(phrase), "{m}"),
            other => panic!("expected Config, got {other:?}"),
        }
    }
    // A valid override is applied, and `Some(None)` removes a declared pad id.
    std::fs::write(
        dir.path().join("config.json"),
        config_with("pad_token_id", "37"),
    )
    .unwrap();
    let (m, _) = load(dir.path()).unwrap();
    assert_eq!(m.ids.pad, Some(37));
    let opts = LoadOptions {
        special_ids: SpecialIdOverrides {
            mask: Some(3),
            pad: Some(None),
            ..Default::default()
        },
        ..Default::default()
    };
    let (m, _) = weights::load(dir.path(), opts).unwrap();
    assert_eq!((m.ids.eos, m.ids.mask, m.ids.pad), (39, 3, None));
}

#[test]
fn config_unknown_keys_are_ignored() {
    let mut v: serde_json::Value = serde_json::from_str(&tiny_config_json()).unwrap();
    v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    v["task_specific_params"] = serde_json::json!({"text-generation": {"do_sample": true}});
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_entries(), Some(&v.to_string()));
    let (m, _) = load(dir.path()).unwrap();
    assert_eq!(m.cfg, tiny_cfg());
}

// ---------------------------------------------------------------------------------------------
// Inference without config.json
// ---------------------------------------------------------------------------------------------

#[test]
fn no_config_infers_sizes_from_shapes() {
    let cfg = ModelConfig {
        n_layer: 2,
        n_head: 1,
        n_embd: 64,
        n_inner: 96, // not 4 * n_embd: must come from the c_fc shape
        n_positions: 12,
        vocab_size: 40,
        ..ModelConfig::tiny(40)
    };
    let model = random_model(cfg.clone(), 3);
    let dir = tempfile::tempdir().unwrap();
    for layout in [Layout::DiffuGpt, Layout::HfGpt2, Layout::Gpt2Bare] {
        weights::save(&model, dir.path(), layout, SaveDtype::F32).unwrap();
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        let (m, info) = load(dir.path()).unwrap();
        assert!(!info.config_from_file);
        assert_eq!(info.layout, layout);
        assert_eq!(m.cfg, cfg, "{layout:?}");
        assert_eq!(m.ids, default_ids(40));
        assert_same_weights(&m, &model);
    }
}

#[test]
fn no_config_and_n_embd_not_multiple_of_64() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_entries(), None);
    match load_err(dir.path(), LoadOptions::default()) {
        Error::Config(m) => assert!(m.contains("n_head") && m.contains("n_embd 8"), "{m}"),
        other => panic!("expected Config, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Save + load roundtrips
// ---------------------------------------------------------------------------------------------

#[test]
fn roundtrip_every_layout_f32_exact() {
    let model = random_model(tiny_cfg(), 7);
    for layout in [Layout::DiffuGpt, Layout::HfGpt2, Layout::Gpt2Bare] {
        let dir = tempfile::tempdir().unwrap();
        weights::save(&model, dir.path(), layout, SaveDtype::F32).unwrap();
        let (m, info) = load(dir.path()).unwrap();
        assert_eq!(info.layout, layout);
        assert!(info.config_from_file);
        assert!(!info.untied_head);
        assert_eq!(info.file_dtypes, vec![("F32".to_string(), 16)]);
        assert_eq!(m.cfg, model.cfg, "{layout:?}");
        assert_eq!(m.ids, model.ids, "{layout:?}");
        assert_same_weights(&m, &model);
    }
}

#[test]
fn roundtrip_half_dtypes_within_rounding() {
    let model = random_model(tiny_cfg(), 11);
    let originals = model.named_tensors().unwrap();
    type Round = fn(f32) -> f32;
    let cases: [(SaveDtype, &str, Round); 2] = [
        (SaveDtype::F16, "F16", |v| half::f16::from_f32(v).to_f32()),
        (SaveDtype::BF16, "BF16", |v| {
            half::bf16::from_f32(v).to_f32()
        }),
    ];
    for layout in [Layout::DiffuGpt, Layout::HfGpt2, Layout::Gpt2Bare] {
        for (dtype, name, round) in cases {
            let dir = tempfile::tempdir().unwrap();
            weights::save(&model, dir.path(), layout, dtype).unwrap();
            let (m, info) = load(dir.path()).unwrap();
            assert_eq!(info.layout, layout);
            assert_eq!(info.file_dtypes, vec![(name.to_string(), 16)]);
            assert_eq!(m.cfg, model.cfg);
            assert_eq!(m.ids, model.ids);
            let mut max_rel = 0f32;
            for ((k, orig), (k2, got)) in originals.iter().zip(m.named_tensors().unwrap()) {
                assert_eq!(*k, k2);
                assert_eq!(orig.dims(), got.dims());
                for (a, b) in f32s(orig).into_iter().zip(f32s(&got)) {
                    // Exactly what one rounding to the storage type gives...
                    assert_eq!(round(a), b, "{k} {dtype:?}");
                    // ...which is within half an ulp of the 16-bit type (normal range).
                    if a.abs() > 1e-4 {
                        max_rel = max_rel.max(((a - b) / a).abs());
                    }
                }
            }
            let bound = if dtype == SaveDtype::F16 {
                1.0 / 2048.0
            } else {
                1.0 / 256.0
            };
            assert!(max_rel <= bound, "{dtype:?}: max relative error {max_rel}");
        }
    }
}

#[test]
fn roundtrip_overwrites_previous_save() {
    let dir = tempfile::tempdir().unwrap();
    let a = random_model(tiny_cfg(), 1);
    let b = random_model(tiny_cfg(), 2);
    weights::save(&a, dir.path(), Layout::DiffuGpt, SaveDtype::F32).unwrap();
    weights::save(&b, dir.path(), Layout::HfGpt2, SaveDtype::F32).unwrap();
    let (m, info) = load(dir.path()).unwrap();
    assert_eq!(info.layout, Layout::HfGpt2);
    assert_same_weights(&m, &b);
    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors"]);
}

#[test]
fn mixed_dtypes_load_and_are_counted() {
    let mut entries = tiny_entries();
    for name in ["denoise_model.ln_f.weight", "denoise_model.ln_f.bias"] {
        let e = find(&mut entries, name);
        e.data = e
            .data
            .chunks_exact(4)
            .flat_map(|c| {
                half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
            })
            .collect();
        e.dtype = "BF16".into();
    }
    let (m, info) = load_entries(&entries).unwrap();
    assert_eq!(
        info.file_dtypes,
        vec![("BF16".to_string(), 2), ("F32".to_string(), 14)]
    );
    assert_same_weights(&m, &random_model(tiny_cfg(), 0)); // ln_f is 1s and 0s: exact in bf16
}

#[test]
fn hf_layout_with_causal_mask_buffer_loads() {
    let model = random_model(tiny_cfg(), 5);
    let mut entries = entries_of(&model, Layout::HfGpt2);
    // GPT-2's registered causal-mask buffers: [1, 1, n_positions, n_positions] and a scalar.
    let mask: Vec<u8> = (0..16 * 16).map(|i| u8::from(i % 16 <= i / 16)).collect();
    entries.push(Entry {
        name: "transformer.h.0.attn.bias".into(),
        dtype: "BOOL".into(),
        shape: vec![1, 1, 16, 16],
        data: mask,
    });
    entries.push(Entry::f32("transformer.h.0.attn.masked_bias", &[], &[-1e4]));
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::to_string(&HfConfig::from_model(&model.cfg, &model.ids)).unwrap();
    write_model(dir.path(), &entries, Some(&config));
    let (m, info) = load(dir.path()).unwrap();
    assert_eq!(info.layout, Layout::HfGpt2);
    assert_same_weights(&m, &model);
    assert!(info.file_dtypes.contains(&("BOOL".to_string(), 1)));

    // Also as F32 and in the bare layout.
    let mut entries = entries_of(&model, Layout::Gpt2Bare);
    entries.push(Entry::f32(
        "h.0.attn.bias",
        &[1, 1, 2, 2],
        &[1.0, 0.0, 1.0, 1.0],
    ));
    write_model(dir.path(), &entries, Some(&config));
    let (m, info) = load(dir.path()).unwrap();
    assert_eq!(info.layout, Layout::Gpt2Bare);
    assert_same_weights(&m, &model);
}

#[test]
fn progress_reports_every_tensor() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_entries(), Some(&tiny_config_json()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let opts = LoadOptions {
        progress: Some(Box::new(move |d, t| {
            s.lock().unwrap().push((d, t));
            true
        })),
        ..Default::default()
    };
    weights::load(dir.path(), opts).unwrap();
    let seen = seen.lock().unwrap();
    let want: Vec<(usize, usize)> = (1..=16).map(|d| (d, 16)).collect();
    assert_eq!(*seen, want);
}

// ---------------------------------------------------------------------------------------------
// Tokenizer (Model::load)
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_entries(), Some(&tiny_config_json()));
    let tok = dir.path().join("tokenizer.json");
    for bad in ["{ not json", "{\"model\": {\"type\": \"NoSuchModel\"}}", ""] {
        std::fs::write(&tok, bad).unwrap();
        match Model::load(dir.path(), LoadOptions::default()) {
            Err(Error::Tokenizer(m)) => {
                assert!(
                    m.contains("tokenizer.json") && m.contains("malformed"),
                    "{m}"
                )
            }
            Err(other) => panic!("expected Tokenizer, got {other:?}"),
            Ok(_) => panic!("loaded with tokenizer {bad:?}"),
        }
    }
}

#[test]
fn tokenizer_bigger_than_model_vocab() {
    // The real GPT-2 tokenizer (50257 tokens) next to a 40-token model.
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_entries(), Some(&tiny_config_json()));
    let opts = LoadOptions {
        tokenizer: Some(fixture_tokenizer()),
        ..Default::default()
    };
    match Model::load(dir.path(), opts) {
        Err(Error::Tokenizer(m)) => {
            assert!(
                m.contains("can emit id 50256") && m.contains("only 40"),
                "{m}"
            )
        }
        Err(other) => panic!("expected Tokenizer, got {other:?}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn tokenizer_option_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_entries(), Some(&tiny_config_json()));
    let missing = dir.path().join("other-tokenizer.json");
    let opts = LoadOptions {
        tokenizer: Some(missing.clone()),
        ..Default::default()
    };
    match Model::load(dir.path(), opts) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        Err(other) => panic!("expected Io, got {other:?}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn small_tokenizer_next_to_weights_loads() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tiny_entries(), Some(&tiny_config_json()));
    // Without a tokenizer the model loads but has none.
    let m = Model::load(dir.path(), LoadOptions::default()).unwrap();
    assert!(m.tokenizer.is_none());
    assert!(matches!(m.tokenizer(), Err(Error::Tokenizer(_))));

    std::fs::write(dir.path().join("tokenizer.json"), SMALL_TOKENIZER).unwrap();
    let m = Model::load(dir.path(), LoadOptions::default()).unwrap();
    let tok = m.tokenizer().unwrap();
    assert_eq!(tok.vocab_size(), 4);
    assert_eq!(tok.encode("a b c").unwrap(), vec![0, 1, 2]);
    assert_eq!(m.gpt.cfg, tiny_cfg());

    // An explicit tokenizer option wins over the one next to the weights.
    let opts = LoadOptions {
        tokenizer: Some(fixture_tokenizer()),
        ..Default::default()
    };
    assert!(matches!(
        Model::load(dir.path(), opts),
        Err(Error::Tokenizer(_))
    ));
}

#[test]
fn weight_errors_win_over_tokenizer_errors() {
    // A broken weights file is reported as such even when the tokenizer is also broken.
    let mut entries = tiny_entries();
    entries.retain(|e| e.name != "denoise_model.ln_f.bias");
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &entries, Some(&tiny_config_json()));
    std::fs::write(dir.path().join("tokenizer.json"), "garbage").unwrap();
    match Model::load(dir.path(), LoadOptions::default()) {
        Err(Error::MissingTensor(n)) => assert_eq!(n, "denoise_model.ln_f.bias"),
        Err(other) => panic!("expected MissingTensor, got {other:?}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn fixture_checkpoint_loads_with_its_tokenizer() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-diffugpt");
    let m = Model::load(&dir, LoadOptions::default()).unwrap();
    assert_eq!(m.gpt.cfg.vocab_size, 50257);
    assert_eq!(m.gpt.ids.mask, 10541);
    assert_eq!(m.tokenizer().unwrap().vocab_size(), 50257);
}
