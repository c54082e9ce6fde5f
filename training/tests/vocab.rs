//! A corpus-trained BPE vocabulary: trained by `vocab`, picked up by `prepare` (special ids from
//! the tokenizer), trained on from scratch, and loaded by the library like any other checkpoint.

use diffugpt::{GenerateParams, LoadOptions, Model, Tokenizer};
use diffugpt_training::config::Pipeline;
use diffugpt_training::data::{Kind, TokenFile};
use diffugpt_training::prepare::{prepare, PrepareArgs, PrepareOptions};
use diffugpt_training::train::train;
use diffugpt_training::vocab::{special_ids, train_vocab, VocabArgs};

mod common;
use common::{config, root, tiny_scratch};

fn corpus() -> std::path::PathBuf {
    root().join("training/tests/fixtures/corpus/fortunes.txt")
}

fn trained(dir: &std::path::Path, size: usize) -> std::path::PathBuf {
    let out = dir.join("tokenizer.json");
    let s = train_vocab(&VocabArgs {
        inputs: vec![corpus()],
        vocab_size: size,
        min_frequency: 2,
        out: out.clone(),
    })
    .unwrap();
    assert_eq!((s.eos_id, s.mask_id), (0, 1));
    assert_eq!(
        s.vocab_size, size,
        "the fixture corpus has enough pairs to fill it"
    );
    out
}

#[test]
fn a_trained_vocabulary_round_trips_text_and_is_smaller_per_token() {
    let tmp = tempfile::tempdir().unwrap();
    let path = trained(tmp.path(), 600);
    let t = Tokenizer::from_file(&path).unwrap();
    let gpt2 =
        Tokenizer::from_file(&root().join("tests/fixtures/tiny-diffugpt/tokenizer.json")).unwrap();
    for text in [
        "Hello, world!  Two  spaces.\nNew line",
        "Ünïcödé — 日本語 🦀",
        "You will be fortunate in everything you put your hands to.",
    ] {
        let ids = t.encode(text).unwrap();
        assert!(ids.iter().all(|&i| (i as usize) < 600));
        assert!(
            !ids.contains(&0) && !ids.contains(&1),
            "text never makes specials"
        );
        assert_eq!(t.decode(&ids, false).unwrap(), text);
    }
    // Fitted to the corpus: a corpus sentence takes few more tokens than with GPT-2's 50 257.
    let line = "You will be fortunate in everything you put your hands to.";
    let (ours, theirs) = (
        t.encode(line).unwrap().len(),
        gpt2.encode(line).unwrap().len(),
    );
    assert!(ours <= 2 * theirs, "{ours} vs {theirs}");
    assert_eq!(special_ids(&path).unwrap(), (Some(0), Some(1)));
    // GPT-2's tokenizer has the end token and no mask token.
    let g = special_ids(&root().join("tests/fixtures/tiny-diffugpt/tokenizer.json")).unwrap();
    assert_eq!(g, (Some(50256), None));
}

#[test]
fn bad_vocab_requests_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let args = |inputs, size| VocabArgs {
        inputs,
        vocab_size: size,
        min_frequency: 2,
        out: tmp.path().join("t.json"),
    };
    let e = train_vocab(&args(vec![corpus()], 100)).unwrap_err();
    assert!(format!("{e:#}").contains("too small"), "{e:#}");
    let e = train_vocab(&args(vec![tmp.path().join("missing.txt")], 500)).unwrap_err();
    assert!(format!("{e:#}").contains("missing.txt"), "{e:#}");
}

#[test]
fn prepare_train_and_generate_with_a_trained_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = trained(tmp.path(), 500);
    // `prepare` through its CLI arguments: the ids come from the tokenizer.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PrepareArgs,
    }
    let data = tmp.path().join("data");
    let mut cli = <Cli as clap::Parser>::try_parse_from([
        "x",
        "--input",
        corpus().to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--out-dir",
        data.to_str().unwrap(),
        "--splitter",
        "percent",
        "--block-len",
        "64",
        "--variant",
        "eos-pad",
    ])
    .unwrap();
    cli.args.resolve_special_ids().unwrap();
    let opts = PrepareOptions::from(cli.args);
    assert_eq!((opts.eos_id, opts.mask_id), (0, 1));
    prepare(&opts).unwrap();
    let h = TokenFile::open(&data.join("train"))
        .unwrap()
        .header()
        .clone();
    assert_eq!(
        (h.eos_id, h.mask_id, h.pad_id, h.vocab_size),
        (0, 1, Some(500), 501)
    );
    assert_eq!(h.kind, Kind::Padded);

    let cfg = config(
        Pipeline::Diffusion,
        tiny_scratch(),
        &data,
        &tmp.path().join("run"),
        3,
    );
    train(&cfg, None, false, None).unwrap();
    let model_dir = cfg.out_dir.join("final");
    std::fs::copy(&tok, model_dir.join("tokenizer.json")).unwrap();
    let model = Model::load(&model_dir, LoadOptions::default()).unwrap();
    let ids = model.gpt.ids;
    assert_eq!((ids.eos, ids.mask, ids.pad), (0, 1, Some(500)));
    let out = model
        .generate_text(
            "You will",
            &GenerateParams {
                canvas_len: 8,
                ..GenerateParams::default()
            },
        )
        .unwrap();
    assert!(out.generation.stats.forward_passes > 0);
}
