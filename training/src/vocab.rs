//! `vocab`: a byte-level BPE vocabulary trained on the corpus, for models trained from scratch.
//!
//! Why: with GPT-2's 50 257 ids the tied embedding / LM head is 80-94 % of a small model's
//! parameters and most of its compute (every masked row is scored against every id). A vocabulary
//! of a few thousand ids learned from the corpus itself costs a few more tokens per text and
//! makes the head an order of magnitude cheaper.
//!
//! The scheme is GPT-2's (byte-level pre-tokenizer with GPT-2's split regex, no normalizer,
//! no prefix space, byte-level decoder), so any UTF-8 text round-trips and the library loads the
//! result like GPT-2's `tokenizer.json`. Two special tokens come first: [`EOS_TOKEN`] (id 0, the
//! end of text and BOS) and [`MASK_TOKEN`] (id 1). `prepare` picks both up from the tokenizer
//! when `--eos-id` / `--mask-id` are not given; a pad id (the `eos-pad` variant) is the next id
//! after the vocabulary, as with GPT-2. The trained model writes all three to its `config.json`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

/// End of text (also the BOS), id 0 of a trained vocabulary; GPT-2 spells it the same.
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// The `[MASK]` token, id 1 of a trained vocabulary.
pub const MASK_TOKEN: &str = "<|mask|>";

/// `clap` arguments of the `vocab` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct VocabArgs {
    /// Corpus files (UTF-8 text; one or more).
    #[arg(long = "input", required = true)]
    pub inputs: Vec<PathBuf>,
    /// Total ids, special tokens included (at least 258: 256 bytes and the two specials).
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Merges need a pair seen at least this often.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Where to write tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
}

/// What `vocab` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct VocabSummary {
    pub out: PathBuf,
    pub vocab_size: usize,
    pub eos_id: u32,
    pub mask_id: u32,
}

/// Trains the vocabulary and writes `args.out` (atomically).
pub fn train_vocab(args: &VocabArgs) -> Result<VocabSummary> {
    ensure!(
        args.vocab_size >= 258,
        "vocab_size {} is too small: the 256 byte tokens and the two special tokens need 258",
        args.vocab_size
    );
    ensure!(
        args.vocab_size <= u32::MAX as usize,
        "vocab_size {} does not fit u32 ids",
        args.vocab_size
    );
    let files = args
        .inputs
        .iter()
        .map(|p| {
            // The trainer reports unreadable files without the path: check them here.
            std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
            p.to_str()
                .map(str::to_string)
                .with_context(|| format!("{}: not a UTF-8 path", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(args.vocab_size)
        .min_frequency(args.min_frequency)
        .show_progress(false)
        .special_tokens(vec![
            AddedToken::from(EOS_TOKEN, true),
            AddedToken::from(MASK_TOKEN, true),
        ])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
    .with_post_processor(Some(ByteLevel::new(false, true, true).into()))
    .with_decoder(Some(ByteLevelDecoder::default().into()))
    .build()
    .map_err(|e| anyhow::anyhow!("building the tokenizer: {e}"))?;
    tokenizer
        .train_from_files(&mut trainer, files)
        .map_err(|e| anyhow::anyhow!("training the vocabulary: {e}"))?;
    let json = tokenizer
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("serializing tokenizer.json: {e}"))?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::data::write_file_atomic(&args.out, json.as_bytes())?;
    let (eos_id, mask_id) = special_ids(&args.out)?;
    let loaded = diffugpt::Tokenizer::from_file(&args.out)?;
    Ok(VocabSummary {
        out: args.out.clone(),
        vocab_size: loaded.vocab_size(),
        eos_id: eos_id.context("the trained vocabulary lost its end token")?,
        mask_id: mask_id.context("the trained vocabulary lost its mask token")?,
    })
}

/// The ids of [`EOS_TOKEN`] and [`MASK_TOKEN`] in a `tokenizer.json`, where it has them
/// (GPT-2's has the first, 50256, and not the second).
pub fn special_ids(tokenizer: &Path) -> Result<(Option<u32>, Option<u32>)> {
    let t = diffugpt::Tokenizer::from_file(tokenizer)
        .with_context(|| format!("loading tokenizer {}", tokenizer.display()))?;
    Ok((t.token_id(EOS_TOKEN), t.token_id(MASK_TOKEN)))
}
