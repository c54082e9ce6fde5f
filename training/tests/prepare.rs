//! Data preparation end to end on the fixture corpora (fortunes, Devil's Dictionary pairs) with
//! the GPT-2 tokenizer, and the `diffugpt-tokens-v1` reader's rejection of corrupt files.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use diffugpt::Tokenizer;
use diffugpt_training::data::{
    self, bin_path, header_path, meta_path, Dtype, Header, Kind, Split, TokenFile, FORMAT,
    OVERFLOW_BUCKET,
};
use diffugpt_training::prepare::{
    chunk_bounds, histogram_bounds, prepare, split_documents, LongDocs, PadVariant, PrepareArgs,
    PrepareOptions, RawDoc, Splitter, Summary,
};

const EOS: u32 = 50256;
const MASK: u32 = 10541;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tokenizer_path() -> PathBuf {
    manifest().join("../tests/fixtures/tiny-diffugpt/tokenizer.json")
}

fn fortunes() -> PathBuf {
    manifest().join("tests/fixtures/corpus/fortunes.txt")
}

fn pairs() -> PathBuf {
    manifest().join("tests/fixtures/corpus/pairs.jsonl")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&tokenizer_path()).unwrap()
}

/// A fresh directory under cargo's test tmpdir, removed on drop.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(name: &str) -> TmpDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "prepare-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn opts(input: PathBuf, out: &Path, splitter: Splitter, kind: Kind) -> PrepareOptions {
    let mut o = PrepareOptions::new(input, tokenizer_path(), out.to_path_buf());
    o.splitter = splitter;
    o.kind = kind;
    o.block_len = 128;
    o.val_frac = 0.1;
    o.test_frac = 0.1;
    o.seed = 7;
    o
}

/// The fixture's fortunes, cut independently of the library, tokenised.
fn expected_fortunes(tok: &Tokenizer) -> Vec<Vec<u32>> {
    let text = fs::read_to_string(fortunes()).unwrap();
    let entries: Vec<&str> = text.trim_end().split("\n%\n").collect();
    assert_eq!(entries.len(), 300, "fixture should hold 300 fortunes");
    entries
        .iter()
        .map(|e| tok.encode(e.trim()).unwrap())
        .collect()
}

struct Pair {
    prompt: Vec<u32>,
    answer: Vec<u32>,
}

fn expected_pairs(tok: &Tokenizer) -> Vec<Pair> {
    fs::read_to_string(pairs())
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Pair {
                prompt: tok.encode(v["prompt"].as_str().unwrap()).unwrap(),
                answer: tok.encode(v["answer"].as_str().unwrap()).unwrap(),
            }
        })
        .collect()
}

fn open_all(out: &Path) -> Vec<(Split, TokenFile)> {
    Split::ALL
        .into_iter()
        .map(|s| (s, TokenFile::open(&out.join(s.as_str())).unwrap()))
        .collect()
}

/// Checks the header against the files on disk and the summary.
fn check_consistent(out: &Path, summary: &Summary) {
    let on_disk: Summary =
        serde_json::from_slice(&fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(&on_disk, summary);
    let mut total_docs = 0;
    for (s, f) in open_all(out) {
        let h = f.header();
        let ss = summary.split(s);
        assert_eq!(h.format, FORMAT);
        assert_eq!(h.split, s);
        assert_eq!(h.kind, summary.kind);
        assert_eq!(h.dtype, Dtype::U16);
        let stem = out.join(s.as_str());
        assert_eq!(fs::metadata(bin_path(&stem)).unwrap().len(), h.n_tokens * 2);
        assert_eq!(f.tokens().len() as u64, h.n_tokens);
        assert_eq!(h.n_tokens, ss.tokens);
        assert_eq!(h.n_blocks, ss.blocks);
        assert_eq!(h.n_docs, ss.docs_written as u64);
        assert_eq!(h.docs_skipped_too_long, ss.docs_skipped_too_long as u64);
        assert_eq!(h.docs_split_too_long, ss.docs_split_too_long as u64);
        assert_eq!(ss.docs, ss.docs_written + ss.docs_skipped_too_long);
        let hist_total: u64 = h.length_histogram.iter().map(|b| b.1).sum();
        assert_eq!(hist_total as usize, ss.docs);
        if h.kind.is_blocked() {
            assert_eq!(h.block_len, summary.block_len as u64);
            assert_eq!(h.n_tokens, h.n_blocks * h.block_len);
            assert_eq!(
                fs::metadata(meta_path(&stem)).unwrap().len(),
                h.n_blocks * 4
            );
        } else {
            assert_eq!((h.block_len, h.n_blocks), (0, 0));
            assert!(!meta_path(&stem).exists());
            assert_eq!(h.pad_id, None);
        }
        total_docs += ss.docs;
    }
    assert_eq!(total_docs, summary.docs);
    let hist_total: u64 = summary.length_histogram.iter().map(|b| b.1).sum();
    assert_eq!(hist_total as usize, summary.docs);
    assert_eq!(
        summary.docs_skipped_too_long,
        summary.train.docs_skipped_too_long
            + summary.val.docs_skipped_too_long
            + summary.test.docs_skipped_too_long
    );
}

/// The content of a padded block (between the BOS and the end token), after checking its shape.
fn block_content(block: &[u32], pad: u32, block_len: usize) -> &[u32] {
    assert_eq!(block.len(), block_len);
    assert_eq!(block[0], EOS, "block starts with the BOS");
    let e = data::end_position(block, EOS).expect("block has an end token");
    assert!(block[1..e].iter().all(|&t| t != EOS && t != pad));
    assert!(
        block[e + 1..].iter().all(|&t| t == pad),
        "padding after the end"
    );
    &block[1..e]
}

fn sorted(v: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[test]
fn stream_holds_every_fortune_followed_by_eos() {
    let tok = tokenizer();
    let out = TmpDir::new("stream");
    let s = prepare(&opts(
        fortunes(),
        out.path(),
        Splitter::Percent,
        Kind::Stream,
    ))
    .unwrap();
    check_consistent(out.path(), &s);
    assert_eq!(s.docs, 300);
    assert_eq!((s.docs_empty, s.docs_with_eos), (0, 0));
    assert_eq!((s.val.docs, s.test.docs, s.train.docs), (30, 30, 240));
    assert_eq!(s.pad_id, None);
    assert_eq!(s.vocab_size, 50257);
    let mut got = Vec::new();
    for (_, f) in open_all(out.path()) {
        assert_eq!(*f.tokens().last().unwrap(), EOS);
        assert_eq!(f.header().vocab_size, 50257);
        let docs = f.stream_docs();
        assert_eq!(docs.len() as u64, f.header().n_docs);
        let n: usize = docs.iter().map(|d| d.len() + 1).sum();
        assert_eq!(n as u64, f.header().n_tokens);
        got.extend(docs.into_iter().map(|d| d.to_vec()));
    }
    let want = expected_fortunes(&tok);
    assert_eq!(sorted(&got), sorted(&want));
    // Statistics over the whole corpus.
    let mut lens: Vec<usize> = want.iter().map(|d| d.len()).collect();
    lens.sort_unstable();
    assert_eq!(s.max_doc_len, *lens.last().unwrap());
    let mean = lens.iter().sum::<usize>() as f64 / 300.0;
    assert!((s.mean_doc_len - mean).abs() < 1e-9);
    assert_eq!(s.median_doc_len, (lens[149] + lens[150]) as f64 / 2.0);
}

#[test]
fn padded_eos_eos_blocks_are_bos_doc_eos_padding() {
    let tok = tokenizer();
    let out = TmpDir::new("eoseos");
    let mut o = opts(fortunes(), out.path(), Splitter::Percent, Kind::Padded);
    o.variant = PadVariant::EosEos;
    let s = prepare(&o).unwrap();
    check_consistent(out.path(), &s);
    let want = expected_fortunes(&tok);
    let too_long = want.iter().filter(|d| d.len() > 126).count();
    assert_eq!(s.docs_skipped_too_long, too_long);
    assert_eq!(s.docs_split_too_long, 0);
    let mut got = Vec::new();
    for (_, f) in open_all(out.path()) {
        let h = f.header();
        assert_eq!((h.eos_id, h.pad_id, h.mask_id), (EOS, Some(EOS), MASK));
        assert_eq!(h.vocab_size, 50257);
        assert_eq!(h.block_len, 128);
        for (i, (block, meta)) in f.blocks().enumerate() {
            let doc = block_content(block, EOS, 128);
            assert_eq!(meta, 1, "plain docs: only the BOS is fixed");
            assert_eq!(f.end_position(i), Some(doc.len() + 1));
            got.push(doc.to_vec());
        }
    }
    let kept: Vec<Vec<u32>> = want.into_iter().filter(|d| d.len() <= 126).collect();
    assert_eq!(sorted(&got), sorted(&kept));
}

#[test]
fn padded_eos_pad_uses_a_new_pad_id_and_vocab() {
    let tok = tokenizer();
    let out = TmpDir::new("eospad");
    let mut o = opts(fortunes(), out.path(), Splitter::Percent, Kind::Padded);
    o.variant = PadVariant::EosPad;
    let s = prepare(&o).unwrap();
    check_consistent(out.path(), &s);
    assert_eq!((s.pad_id, s.vocab_size), (Some(50257), 50258));
    let mut got = Vec::new();
    let mut pads = 0;
    for (_, f) in open_all(out.path()) {
        let h = f.header();
        assert_eq!(
            (h.pad_id, h.vocab_size, h.mask_id),
            (Some(50257), 50258, MASK)
        );
        for (block, meta) in f.blocks() {
            let doc = block_content(block, 50257, 128);
            assert_eq!(meta, 1);
            // Exactly one eos after the BOS: the end token.
            assert_eq!(block.iter().filter(|&&t| t == EOS).count(), 2);
            pads += block.iter().filter(|&&t| t == 50257).count();
            got.push(doc.to_vec());
        }
    }
    assert!(pads > 0);
    let kept: Vec<Vec<u32>> = expected_fortunes(&tok)
        .into_iter()
        .filter(|d| d.len() <= 126)
        .collect();
    assert_eq!(sorted(&got), sorted(&kept));
}

#[test]
fn pairs_fix_the_prompt_right_after_the_bos() {
    let tok = tokenizer();
    let out = TmpDir::new("pairs");
    let o = opts(
        pairs(),
        out.path(),
        Splitter::JsonPair("prompt".into(), "answer".into()),
        Kind::Padded,
    );
    let s = prepare(&o).unwrap();
    check_consistent(out.path(), &s);
    assert_eq!(s.docs, 100);
    assert_eq!(s.docs_skipped_too_long, 0);
    let want = expected_pairs(&tok);
    let mut seen = BTreeSet::new();
    for (_, f) in open_all(out.path()) {
        for (block, meta) in f.blocks() {
            let doc = block_content(block, EOS, 128);
            let m = meta as usize;
            let prompt = &block[1..m];
            let (i, p) = want
                .iter()
                .enumerate()
                .find(|(_, p)| p.prompt == prompt)
                .expect("block starts with a fixture prompt");
            assert_eq!(m, 1 + p.prompt.len(), "meta = 1 + prompt_len");
            assert_eq!(&doc[p.prompt.len()..], &p.answer[..], "answer follows");
            assert!(seen.insert(i), "each pair once");
        }
    }
    assert_eq!(seen.len(), 100);
}

#[test]
fn mask_eos_meta_is_a_visible_prefix_within_the_doc() {
    let out = TmpDir::new("maskeos");
    let o = opts(fortunes(), out.path(), Splitter::Percent, Kind::MaskEos);
    let s = prepare(&o).unwrap();
    check_consistent(out.path(), &s);
    let mut ks = BTreeSet::new();
    let mut at_zero = 0;
    let mut at_full = 0;
    let mut n = 0;
    for (_, f) in open_all(out.path()) {
        assert_eq!(f.header().kind, Kind::MaskEos);
        for (i, (block, meta)) in f.blocks().enumerate() {
            let doc = block_content(block, EOS, 128);
            let m = meta as usize;
            assert!(
                (1..=1 + doc.len()).contains(&m),
                "meta {m} for doc len {}",
                doc.len()
            );
            ks.insert(m);
            at_zero += (m == 1) as usize;
            at_full += (m == 1 + doc.len()) as usize;
            n += 1;
            // The documented training view of the block.
            let x = data::mask_eos_input(block, meta, MASK);
            assert_eq!(&x[..m], &block[..m]);
            assert!(x[m..].iter().all(|&t| t == MASK));
            let e = f.end_position(i).unwrap();
            let loss = data::mask_eos_loss_positions(block, meta, EOS, 2);
            assert!(
                loss.contains(&(e - 1)),
                "logits at e-1 predict the end token"
            );
            // Token positions j = p + 1 within [max(m, e - 2), e + 2].
            let window = m.max(e - 2)..=e + 2;
            assert!(loss.iter().all(|&p| window.contains(&(p + 1))));
        }
    }
    assert!(ks.len() > 20, "k varies: {} distinct", ks.len());
    assert!(at_zero < n && at_full < n);
    // Same seed, same k; another seed, other k.
    let again = TmpDir::new("maskeos-again");
    prepare(&opts(
        fortunes(),
        again.path(),
        Splitter::Percent,
        Kind::MaskEos,
    ))
    .unwrap();
    for s in Split::ALL {
        let a = fs::read(meta_path(&out.path().join(s.as_str()))).unwrap();
        let b = fs::read(meta_path(&again.path().join(s.as_str()))).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn mask_eos_pairs_always_show_the_prompt() {
    let tok = tokenizer();
    let out = TmpDir::new("maskeos-pairs");
    let o = opts(
        pairs(),
        out.path(),
        Splitter::JsonPair("prompt".into(), "answer".into()),
        Kind::MaskEos,
    );
    prepare(&o).unwrap();
    let want = expected_pairs(&tok);
    for (_, f) in open_all(out.path()) {
        for (block, meta) in f.blocks() {
            let doc = block_content(block, EOS, 128);
            let p = want
                .iter()
                .find(|p| {
                    block[1..].starts_with(&p.prompt)
                        && doc.len() == p.prompt.len() + p.answer.len()
                })
                .unwrap();
            let m = meta as usize;
            assert!((1 + p.prompt.len()..=1 + doc.len()).contains(&m));
        }
    }
}

#[test]
fn mask_eos_loss_window_follows_the_documented_shift() {
    // [BOS] a b c [END] pad pad pad, k = 1 -> meta 2.
    let block = [EOS, 11, 12, 13, EOS, 7, 7, 7];
    assert_eq!(data::end_position(&block, EOS), Some(4));
    assert_eq!(
        data::mask_eos_input(&block, 2, MASK),
        vec![EOS, 11, MASK, MASK, MASK, MASK, MASK, MASK]
    );
    // window 0: only the end token, predicted by the logits at 3.
    assert_eq!(data::mask_eos_loss_positions(&block, 2, EOS, 0), vec![3]);
    // window 1: tokens 3..=5 -> logits 2..=4.
    assert_eq!(
        data::mask_eos_loss_positions(&block, 2, EOS, 1),
        vec![2, 3, 4]
    );
    // window 5: visible tokens (< meta) excluded, clipped at the block end.
    assert_eq!(
        data::mask_eos_loss_positions(&block, 2, EOS, 5),
        vec![1, 2, 3, 4, 5, 6]
    );
}

/// (lengths, documents over `block_len - 2`, blocks under `long_docs = split`).
fn long_doc_lengths(tok: &Tokenizer, block_len: usize) -> (Vec<usize>, usize, usize) {
    let lens: Vec<usize> = expected_fortunes(tok).iter().map(|d| d.len()).collect();
    let too_long = lens.iter().filter(|&&l| l > block_len - 2).count();
    let blocks = lens.iter().map(|&l| chunk_bounds(l, block_len).len()).sum();
    (lens, too_long, blocks)
}

/// The content of a block that may be a continuation (no end token): `(content, ends)`.
fn chunk_content(block: &[u32], pad: u32, block_len: usize) -> (&[u32], bool) {
    if data::end_position(block, EOS).is_some() {
        return (block_content(block, pad, block_len), true);
    }
    assert_eq!(block.len(), block_len);
    assert_eq!(block[0], EOS, "block starts with the BOS");
    assert!(block[1..].iter().all(|&t| t != EOS && t != pad));
    (&block[1..], false)
}

#[test]
fn chunk_bounds_end_only_the_last_chunk() {
    // Fits: one chunk. Block 16: content cap 14, continuation 15.
    assert_eq!(chunk_bounds(14, 16), vec![(0, 14)]);
    assert_eq!(chunk_bounds(1, 16), vec![(0, 1)]);
    assert_eq!(chunk_bounds(16, 16), vec![(0, 15), (15, 16)]);
    assert_eq!(chunk_bounds(29, 16), vec![(0, 15), (15, 29)]);
    assert_eq!(chunk_bounds(31, 16), vec![(0, 15), (15, 30), (30, 31)]);
    // Continuations that use the document up exactly: no last chunk, no end.
    assert_eq!(chunk_bounds(15, 16), vec![(0, 15)]);
    assert_eq!(chunk_bounds(30, 16), vec![(0, 15), (15, 30)]);
    for n in 1..200 {
        let b = chunk_bounds(n, 16);
        assert_eq!(b[0].0, 0);
        assert_eq!(b.last().unwrap().1, n);
        for w in b.windows(2) {
            assert_eq!(w[0].1, w[1].0, "contiguous");
            assert_eq!(w[0].1 - w[0].0, 15, "{n}: every chunk but the last is full");
        }
        let last = b.last().unwrap();
        let len = last.1 - last.0;
        assert!(
            (1..=14).contains(&len) || (len == 15 && n % 15 == 0),
            "{n}: {b:?}"
        );
    }
}

#[test]
fn long_docs_are_skipped_and_counted() {
    let tok = tokenizer();
    let out = TmpDir::new("skip");
    let mut o = opts(fortunes(), out.path(), Splitter::Percent, Kind::Padded);
    o.block_len = 16;
    o.long_docs = LongDocs::Skip;
    let s = prepare(&o).unwrap();
    check_consistent(out.path(), &s);
    let (lens, too_long, _) = long_doc_lengths(&tok, 16);
    assert!(too_long > 100, "fixture has many docs over 14 tokens");
    assert_eq!(s.docs_skipped_too_long, too_long);
    assert_eq!(s.docs_split_too_long, 0);
    let blocks = s.train.blocks + s.val.blocks + s.test.blocks;
    assert_eq!(blocks as usize, lens.len() - too_long);
    for (_, f) in open_all(out.path()) {
        for (block, _) in f.blocks() {
            assert!(block_content(block, EOS, 16).len() <= 14);
        }
    }
    // Histogram buckets: 8, 16, overflow.
    let bounds: Vec<u64> = s.length_histogram.iter().map(|b| b.0).collect();
    assert_eq!(bounds, vec![8, 16, OVERFLOW_BUCKET]);
    let over_16 = lens.iter().filter(|&&l| l > 16).count() as u64;
    assert_eq!(s.length_histogram[2].1, over_16);
}

#[test]
fn long_docs_are_split_into_blocks_and_counted() {
    let tok = tokenizer();
    let out = TmpDir::new("split");
    let mut o = opts(fortunes(), out.path(), Splitter::Percent, Kind::Padded);
    o.block_len = 16;
    o.long_docs = LongDocs::Split;
    let s = prepare(&o).unwrap();
    check_consistent(out.path(), &s);
    let (lens, too_long, blocks) = long_doc_lengths(&tok, 16);
    assert_eq!(s.docs_split_too_long, too_long);
    assert_eq!(s.docs_skipped_too_long, 0);
    assert_eq!(
        (s.train.blocks + s.val.blocks + s.test.blocks) as usize,
        blocks
    );
    let (mut content, mut ends, mut continuations) = (0, 0, 0);
    for (_, f) in open_all(out.path()) {
        for (block, meta) in f.blocks() {
            let (c, ended) = chunk_content(block, EOS, 16);
            assert!(!c.is_empty());
            assert_eq!(meta, 1);
            content += c.len();
            if ended {
                assert!(c.len() <= 14);
                ends += 1;
            } else {
                // A continuation is a full block of text: no end where the text goes on.
                assert_eq!(c.len(), 15);
                continuations += 1;
            }
        }
    }
    // One end per document, except where continuations use the document up exactly.
    let unmarked = lens.iter().filter(|&&l| l > 14 && l % 15 == 0).count();
    assert_eq!(ends, lens.len() - unmarked, "one end per document");
    assert_eq!(continuations, blocks - ends);
    assert!(continuations > 0);
    assert_eq!(
        content,
        lens.iter().sum::<usize>(),
        "no token lost or invented"
    );
    // Mask-eos on split docs: meta stays within each chunk.
    let out2 = TmpDir::new("split-maskeos");
    let mut o = opts(fortunes(), out2.path(), Splitter::Percent, Kind::MaskEos);
    o.block_len = 16;
    o.long_docs = LongDocs::Split;
    let s2 = prepare(&o).unwrap();
    assert_eq!(s2.docs_split_too_long, too_long);
    for (_, f) in open_all(out2.path()) {
        for (i, (_, meta)) in f.blocks().enumerate() {
            let limit = f.end_position(i).unwrap_or(16);
            assert!(meta as usize <= limit);
        }
    }
}

#[test]
fn long_pairs_split_keeps_prompt_fixed_per_chunk() {
    let tok = tokenizer();
    let out = TmpDir::new("split-pairs");
    let mut o = opts(
        pairs(),
        out.path(),
        Splitter::JsonPair("prompt".into(), "answer".into()),
        Kind::Padded,
    );
    o.block_len = 16;
    o.long_docs = LongDocs::Split;
    o.val_frac = 0.0;
    o.test_frac = 0.0;
    let s = prepare(&o).unwrap();
    check_consistent(out.path(), &s);
    let f = TokenFile::open(&out.path().join("train")).unwrap();
    // Rebuild the chunks in train order is not needed: check meta bounds against prompts.
    let want = expected_pairs(&tok);
    let total: usize = want
        .iter()
        .map(|p| chunk_bounds(p.prompt.len() + p.answer.len(), 16).len())
        .sum();
    assert_eq!(f.n_blocks(), total);
    let first_chunks = f
        .blocks()
        .filter(|(b, m)| {
            want.iter()
                .any(|p| b[1..].starts_with(&p.prompt) && *m as usize == 1 + p.prompt.len().min(15))
        })
        .count();
    assert!(first_chunks >= 100);
}

/// Documents of each split, as sets of token sequences.
fn split_docs(out: &Path) -> HashMap<Split, BTreeSet<Vec<u32>>> {
    open_all(out)
        .into_iter()
        .map(|(s, f)| {
            let docs: BTreeSet<Vec<u32>> =
                f.stream_docs().into_iter().map(|d| d.to_vec()).collect();
            assert_eq!(
                docs.len() as u64,
                f.header().n_docs,
                "fixture docs are distinct"
            );
            (s, docs)
        })
        .collect()
}

#[test]
fn splits_are_deterministic_disjoint_and_seeded() {
    let tok = tokenizer();
    let a = TmpDir::new("seed-a");
    let b = TmpDir::new("seed-b");
    let c = TmpDir::new("seed-c");
    let o = |out: &Path, seed| {
        let mut o = opts(fortunes(), out, Splitter::Percent, Kind::Stream);
        o.seed = seed;
        o
    };
    prepare(&o(a.path(), 1)).unwrap();
    prepare(&o(b.path(), 1)).unwrap();
    prepare(&o(c.path(), 2)).unwrap();
    for s in Split::ALL {
        for path in [bin_path, header_path] {
            let pa = path(&a.path().join(s.as_str()));
            let pb = path(&b.path().join(s.as_str()));
            assert_eq!(
                fs::read(pa).unwrap(),
                fs::read(pb).unwrap(),
                "{s} identical"
            );
        }
    }
    assert_eq!(
        fs::read(a.path().join("summary.json")).unwrap(),
        fs::read(b.path().join("summary.json")).unwrap()
    );
    let da = split_docs(a.path());
    let dc = split_docs(c.path());
    let all: BTreeSet<Vec<u32>> = expected_fortunes(&tok).into_iter().collect();
    for d in [&da, &dc] {
        let (tr, va, te) = (&d[&Split::Train], &d[&Split::Val], &d[&Split::Test]);
        assert!(tr.is_disjoint(va) && tr.is_disjoint(te) && va.is_disjoint(te));
        let union: BTreeSet<Vec<u32>> = tr.union(va).chain(te).cloned().collect();
        assert_eq!(union, all);
        assert_eq!((va.len(), te.len()), (30, 30));
    }
    assert_ne!(da[&Split::Val], dc[&Split::Val]);
    assert_ne!(da[&Split::Test], dc[&Split::Test]);
}

#[test]
fn splitters_cut_and_count_empty_docs() {
    let text = "one\n\n\n two \n2b\n\n   \nthree\n";
    let d = split_documents(text, &Splitter::BlankLine).unwrap();
    assert_eq!(
        d.docs,
        vec![
            RawDoc::Text("one".into()),
            RawDoc::Text("two \n2b".into()),
            RawDoc::Text("three".into())
        ]
    );
    assert_eq!(d.empty, 0);

    let d = split_documents("a\n%\n%\nb\nc\n%\n", &Splitter::Percent).unwrap();
    assert_eq!(
        d.docs,
        vec![RawDoc::Text("a".into()), RawDoc::Text("b\nc".into())]
    );
    assert_eq!(d.empty, 1);

    let d = split_documents("x\n\ny\n  \n", &Splitter::Line).unwrap();
    assert_eq!(d.docs.len(), 2);
    assert_eq!(d.empty, 2);

    let jl = "{\"text\": \"hi\", \"n\": 1}\n{\"text\": \"\"}\n{\"text\": \" yo\"}\n";
    let d = split_documents(jl, &Splitter::JsonField("text".into())).unwrap();
    assert_eq!(
        d.docs,
        vec![RawDoc::Text("hi".into()), RawDoc::Text(" yo".into())]
    );
    assert_eq!(d.empty, 1);

    let jl = "{\"q\": \"Q\", \"a\": \" A\"}\n{\"q\": \"Q2\", \"a\": \"\"}\n";
    let d = split_documents(jl, &Splitter::JsonPair("q".into(), "a".into())).unwrap();
    assert_eq!(
        d.docs,
        vec![RawDoc::Pair {
            prompt: "Q".into(),
            answer: " A".into()
        }]
    );
    assert_eq!(d.empty, 1);

    let err = split_documents("{\"text\": 1}\n", &Splitter::JsonField("text".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 1") && err.contains("text"), "{err}");
    let err = format!(
        "{:#}",
        split_documents("{}\nnot json\n", &Splitter::JsonField("t".into())).unwrap_err()
    );
    assert!(err.contains("line 1"), "{err}");
    let err = format!(
        "{:#}",
        split_documents(
            "{\"t\":\"a\"}\nnot json\n",
            &Splitter::JsonField("t".into())
        )
        .unwrap_err()
    );
    assert!(
        err.contains("line 2") && err.contains("invalid JSON"),
        "{err}"
    );
}

#[test]
fn prepare_drops_empty_and_eos_docs_and_honours_max_docs() {
    let dir = TmpDir::new("drops");
    let input = dir.path().join("in.txt");
    fs::write(
        &input,
        "alpha beta\n\nhas <|endoftext|> inside\n\ngamma\n\ndelta ------------ epsilon\n\nzeta\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let mut o = opts(input.clone(), &out, Splitter::BlankLine, Kind::Padded);
    o.val_frac = 0.0;
    o.test_frac = 0.0;
    let s = prepare(&o).unwrap();
    assert_eq!((s.docs, s.docs_with_eos, s.docs_with_mask_id), (4, 1, 1));
    assert_eq!((s.val.docs, s.test.docs), (0, 0));
    let f = TokenFile::open(&out.join("val")).unwrap();
    assert_eq!((f.header().n_tokens, f.n_blocks()), (0, 0));
    o.max_docs = Some(2);
    let s = prepare(&o).unwrap();
    assert_eq!((s.docs, s.docs_with_eos), (1, 1));
    check_consistent(&out, &s);
}

#[test]
fn prepare_rejects_bad_options_and_inputs() {
    let out = TmpDir::new("bad");
    let base = opts(fortunes(), out.path(), Splitter::Percent, Kind::Padded);
    let err = |o: &PrepareOptions| format!("{:#}", prepare(o).unwrap_err());
    let mut o = base.clone();
    o.val_frac = 0.6;
    o.test_frac = 0.5;
    assert!(err(&o).contains("nothing to train"), "{}", err(&o));
    let mut o = base.clone();
    o.block_len = 2;
    assert!(err(&o).contains("block_len"));
    let mut o = base.clone();
    o.input = out.path().join("missing.txt");
    assert!(err(&o).contains("missing.txt"));
    let mut o = base.clone();
    o.tokenizer = out.path().join("no-tokenizer.json");
    assert!(err(&o).contains("no-tokenizer.json"));
    let mut o = base.clone();
    o.mask_id = 60000;
    assert!(err(&o).contains("mask_id"));
    let mut o = base;
    o.splitter = Splitter::JsonField("text".into());
    assert!(err(&o).contains("invalid JSON"), "{}", err(&o));
}

/// A small valid padded file: two blocks of 6.
fn small_padded() -> (Header, Vec<u32>, Vec<u32>) {
    let tokens = vec![EOS, 5, 6, EOS, 9, 9, EOS, 7, EOS, 9, 9, 9];
    let meta = vec![1, 2];
    let header = Header {
        format: FORMAT.into(),
        kind: Kind::Padded,
        dtype: Dtype::U16,
        n_tokens: 12,
        n_docs: 2,
        block_len: 6,
        n_blocks: 2,
        eos_id: EOS,
        pad_id: Some(9),
        mask_id: MASK,
        vocab_size: 50257,
        split: Split::Val,
        docs_skipped_too_long: 0,
        docs_split_too_long: 0,
        length_histogram: vec![(6, 2), (OVERFLOW_BUCKET, 0)],
    };
    (header, tokens, meta)
}

fn open_err(stem: &Path) -> String {
    format!("{:#}", TokenFile::open(stem).unwrap_err())
}

#[test]
fn token_file_round_trips_u16_and_u32() {
    let dir = TmpDir::new("roundtrip");
    // u16, padded.
    let (h, tokens, meta) = small_padded();
    let stem = dir.path().join("p16");
    TokenFile::write(&stem, &h, &tokens, Some(&meta)).unwrap();
    assert_eq!(fs::metadata(bin_path(&stem)).unwrap().len(), 24);
    assert_eq!(fs::metadata(meta_path(&stem)).unwrap().len(), 8);
    let f = TokenFile::open(&stem).unwrap();
    assert_eq!(f.header(), &h);
    assert_eq!(f.tokens(), &tokens[..]);
    assert_eq!(f.block(1), &[EOS, 7, EOS, 9, 9, 9]);
    assert_eq!((f.meta(0), f.meta(1)), (1, 2));
    // u32, stream with ids above 65535.
    let tokens = vec![70000, 3, 99_999, 5, 1, 5, 65536, 5];
    let h = Header {
        format: FORMAT.into(),
        kind: Kind::Stream,
        dtype: Dtype::U32,
        n_tokens: 8,
        n_docs: 3,
        block_len: 0,
        n_blocks: 0,
        eos_id: 5,
        pad_id: None,
        mask_id: 4,
        vocab_size: 100_000,
        split: Split::Train,
        docs_skipped_too_long: 0,
        docs_split_too_long: 0,
        length_histogram: vec![(8, 3), (OVERFLOW_BUCKET, 0)],
    };
    let stem = dir.path().join("s32");
    // A stale meta file from an earlier blocked run disappears.
    fs::write(meta_path(&stem), [0u8; 4]).unwrap();
    TokenFile::write(&stem, &h, &tokens, None).unwrap();
    assert!(!meta_path(&stem).exists());
    assert_eq!(fs::metadata(bin_path(&stem)).unwrap().len(), 32);
    let f = TokenFile::open(&stem).unwrap();
    assert_eq!(f.header().dtype, Dtype::U32);
    assert_eq!(f.tokens(), &tokens[..]);
    assert_eq!(
        f.stream_docs(),
        vec![&[70000, 3, 99_999][..], &[1][..], &[65536][..]]
    );
    // The writer insists on the canonical dtype.
    let mut h16 = h.clone();
    h16.dtype = Dtype::U16;
    assert!(TokenFile::write(&dir.path().join("bad"), &h16, &tokens, None).is_err());
    // No temporary files are left behind.
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn corrupt_files_are_rejected() {
    let dir = TmpDir::new("corrupt");
    let fresh = |name: &str| {
        let (h, tokens, meta) = small_padded();
        let stem = dir.path().join(name);
        TokenFile::write(&stem, &h, &tokens, Some(&meta)).unwrap();
        stem
    };

    let stem = fresh("truncated");
    let bytes = fs::read(bin_path(&stem)).unwrap();
    fs::write(bin_path(&stem), &bytes[..bytes.len() - 2]).unwrap();
    let e = open_err(&stem);
    assert!(e.contains("22 bytes") && e.contains("truncated"), "{e}");

    let stem = fresh("meta-truncated");
    fs::write(meta_path(&stem), [1u8, 0, 0, 0]).unwrap();
    assert!(open_err(&stem).contains("meta.bin"));

    let stem = fresh("big-id");
    let mut bytes = fs::read(bin_path(&stem)).unwrap();
    bytes[2..4].copy_from_slice(&60000u16.to_le_bytes());
    fs::write(bin_path(&stem), &bytes).unwrap();
    let e = open_err(&stem);
    assert!(e.contains("60000") && e.contains("vocab_size"), "{e}");

    let stem = fresh("unknown-field");
    let mut v: serde_json::Value =
        serde_json::from_slice(&fs::read(header_path(&stem)).unwrap()).unwrap();
    v["extra"] = serde_json::json!(1);
    fs::write(header_path(&stem), v.to_string()).unwrap();
    let e = open_err(&stem);
    assert!(e.contains("unknown field") && e.contains("extra"), "{e}");

    let stem = fresh("bad-format");
    let mut v: serde_json::Value =
        serde_json::from_slice(&fs::read(header_path(&stem)).unwrap()).unwrap();
    v["format"] = serde_json::json!("diffugpt-tokens-v0");
    fs::write(header_path(&stem), v.to_string()).unwrap();
    assert!(open_err(&stem).contains("unsupported format"));

    let stem = fresh("meta-too-big");
    let mut m = fs::read(meta_path(&stem)).unwrap();
    m[4..8].copy_from_slice(&7u32.to_le_bytes());
    fs::write(meta_path(&stem), &m).unwrap();
    let e = open_err(&stem);
    assert!(e.contains("meta 7") && e.contains("block_len 6"), "{e}");

    let stem = fresh("meta-past-end");
    let mut m = fs::read(meta_path(&stem)).unwrap();
    m[4..8].copy_from_slice(&3u32.to_le_bytes());
    fs::write(meta_path(&stem), &m).unwrap();
    assert!(open_err(&stem).contains("end position"));

    let stem = fresh("no-bos");
    let mut bytes = fs::read(bin_path(&stem)).unwrap();
    bytes[12..14].copy_from_slice(&1u16.to_le_bytes());
    fs::write(bin_path(&stem), &bytes).unwrap();
    assert!(open_err(&stem).contains("BOS"));

    let stem = fresh("wrong-count");
    let mut v: serde_json::Value =
        serde_json::from_slice(&fs::read(header_path(&stem)).unwrap()).unwrap();
    v["n_tokens"] = serde_json::json!(13);
    fs::write(header_path(&stem), v.to_string()).unwrap();
    assert!(open_err(&stem).contains("n_tokens"));

    let stem = fresh("missing-bin");
    fs::remove_file(bin_path(&stem)).unwrap();
    assert!(open_err(&stem).contains("missing-bin.bin"));

    // The writer refuses what the reader would reject.
    let (h, mut tokens, meta) = small_padded();
    tokens[1] = 50257;
    let e = format!(
        "{:#}",
        TokenFile::write(&dir.path().join("w"), &h, &tokens, Some(&meta)).unwrap_err()
    );
    assert!(e.contains("vocab_size"), "{e}");
    assert!(!header_path(&dir.path().join("w")).exists());
}

#[test]
fn histogram_bounds_double_up_to_block_len() {
    assert_eq!(
        histogram_bounds(256),
        vec![8, 16, 32, 64, 128, 256, OVERFLOW_BUCKET]
    );
    assert_eq!(
        histogram_bounds(100),
        vec![8, 16, 32, 64, 100, OVERFLOW_BUCKET]
    );
    assert_eq!(histogram_bounds(4), vec![4, OVERFLOW_BUCKET]);
}

#[test]
fn option_strings_parse_and_clap_args_map_to_options() {
    use clap::Parser;
    assert_eq!("percent".parse::<Splitter>().unwrap(), Splitter::Percent);
    assert_eq!(
        "blank-line".parse::<Splitter>().unwrap(),
        Splitter::BlankLine
    );
    assert_eq!("line".parse::<Splitter>().unwrap(), Splitter::Line);
    assert_eq!(
        "json:body".parse::<Splitter>().unwrap(),
        Splitter::JsonField("body".into())
    );
    assert_eq!(
        "pair:q,a".parse::<Splitter>().unwrap(),
        Splitter::JsonPair("q".into(), "a".into())
    );
    assert!("pair:q".parse::<Splitter>().is_err());
    for s in ["blank-line", "percent", "line", "json:x", "pair:p,a"] {
        assert_eq!(s.parse::<Splitter>().unwrap().to_string(), s);
    }
    for k in Kind::ALL {
        assert_eq!(k.to_string().parse::<Kind>().unwrap(), k);
    }
    assert_eq!("eospad".parse::<PadVariant>().unwrap(), PadVariant::EosPad);
    assert_eq!("eos-eos".parse::<PadVariant>().unwrap(), PadVariant::EosEos);
    assert_eq!("split".parse::<LongDocs>().unwrap(), LongDocs::Split);

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PrepareArgs,
    }
    let cli = Cli::try_parse_from([
        "x",
        "--input",
        "c.jsonl",
        "--tokenizer",
        "t.json",
        "--out-dir",
        "o",
    ])
    .unwrap();
    let o = PrepareOptions::from(cli.args);
    assert_eq!(
        o,
        PrepareOptions::new("c.jsonl".into(), "t.json".into(), "o".into())
    );
    assert_eq!(o.splitter, Splitter::JsonField("text".into()));
    let cli = Cli::try_parse_from([
        "x",
        "--input",
        "f.txt",
        "--tokenizer",
        "t.json",
        "--out-dir",
        "o",
        "--splitter",
        "pair:prompt,answer",
        "--kind",
        "mask-eos",
        "--block-len",
        "64",
        "--variant",
        "eos-pad",
        "--long-docs",
        "split",
        "--seed",
        "3",
        "--val-frac",
        "0.2",
        "--test-frac",
        "0",
        "--max-docs",
        "10",
    ])
    .unwrap();
    let o = PrepareOptions::from(cli.args);
    assert_eq!(
        o.splitter,
        Splitter::JsonPair("prompt".into(), "answer".into())
    );
    assert_eq!(
        (o.kind, o.block_len, o.variant, o.long_docs, o.seed),
        (Kind::MaskEos, 64, PadVariant::EosPad, LongDocs::Split, 3)
    );
    assert_eq!((o.val_frac, o.test_frac, o.max_docs), (0.2, 0.0, Some(10)));
    assert!(Cli::try_parse_from([
        "x",
        "--input",
        "f",
        "--tokenizer",
        "t",
        "--out-dir",
        "o",
        "--kind",
        "blocks"
    ])
    .is_err());
}

#[test]
fn entries_splitter_makes_headword_prompts() {
    let text = "Licence header line\n\n\
Abduce \\Ab*duce\"\\, v. t. [imp. & p. p. {Abduced}.]\n   To draw or conduct away. [Obs.]\n   [1913 Webster]\n\n\n         If we abduce the eye.\n\n\
benchmark\n n.\n\n    [techspeak] An inaccurate measure.\n\n\
Lonely \\Lone\"ly\\ adj.\n\n   \n";
    let s: Splitter = "entries".parse().unwrap();
    assert_eq!(s, Splitter::Entries);
    assert_eq!(s.to_string(), "entries");
    assert!(s.is_pair());
    let d = split_documents(text, &s).unwrap();
    assert_eq!(
        d.docs,
        vec![
            RawDoc::Pair {
                prompt: "Abduce \\Ab*duce\"\\, v. t. [imp. & p. p. {Abduced}.]".into(),
                answer:
                    "\nTo draw or conduct away. [Obs.]\n[1913 Webster]\n\nIf we abduce the eye."
                        .into()
            },
            RawDoc::Pair {
                prompt: "benchmark".into(),
                answer: "\nn.\n\n[techspeak] An inaccurate measure.".into()
            },
        ]
    );
    // The licence line and the entry without a body have no answer.
    assert_eq!(d.empty, 2);
}
