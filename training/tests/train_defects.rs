//! Training defects found when the trainer was first run at scale (issue 14, part 3): data whose
//! special ids differ from the model's, micro-batches without targets in gradient accumulation,
//! and a scratch model that takes its vocabulary and ids from the data.

use diffugpt::LoadOptions;
use diffugpt_training::config::{Init, Pipeline};
use diffugpt_training::data::Kind;
use diffugpt_training::dataset::{Dataset, Example};
use diffugpt_training::prepare::{prepare, PadVariant, PrepareOptions, Splitter};
use diffugpt_training::train::{
    accumulate_gradients, apply_update, initial_model, make_trainable, train, Batch,
};

mod common;
use common::{config, root, tiny_scratch};

/// The fixture corpus prepared with the given special ids (64-token padded blocks).
fn prep_with(
    out: &std::path::Path,
    eos: u32,
    mask: u32,
    variant: PadVariant,
) -> std::path::PathBuf {
    let mut o = PrepareOptions::new(
        root().join("training/tests/fixtures/corpus/fortunes.txt"),
        root().join("tests/fixtures/tiny-diffugpt/tokenizer.json"),
        out.to_path_buf(),
    );
    o.splitter = Splitter::Percent;
    o.kind = Kind::Padded;
    o.variant = variant;
    o.block_len = 64;
    o.eos_id = eos;
    o.mask_id = mask;
    prepare(&o).unwrap();
    out.to_path_buf()
}

fn fixture_model() -> Init {
    Init::Checkpoint {
        path: root().join("tests/fixtures/tiny-diffugpt"),
    }
}

#[test]
fn data_with_another_mask_or_eos_id_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // The fixture model uses eos 50256 and mask 10541.
    let data = prep_with(&tmp.path().join("mask"), 50256, 10540, PadVariant::EosEos);
    let cfg = config(
        Pipeline::Diffusion,
        fixture_model(),
        &data,
        &tmp.path().join("run"),
        2,
    );
    let err = format!("{:#}", train(&cfg, None, false, None).unwrap_err());
    assert!(
        err.contains("mask_id 10540") && err.contains("mask id is 10541"),
        "{err}"
    );
    let data = prep_with(&tmp.path().join("eos"), 50255, 10541, PadVariant::EosEos);
    let cfg = config(
        Pipeline::Diffusion,
        fixture_model(),
        &data,
        &tmp.path().join("run2"),
        2,
    );
    let err = format!("{:#}", train(&cfg, None, false, None).unwrap_err());
    assert!(
        err.contains("eos_id 50255") && err.contains("eos id is 50256"),
        "{err}"
    );
}

#[test]
fn a_scratch_model_takes_the_data_ids_and_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prep_with(&tmp.path().join("d"), 50256, 10540, PadVariant::EosPad);
    let cfg = config(
        Pipeline::Diffusion,
        tiny_scratch(),
        &data,
        &tmp.path().join("run"),
        2,
    );
    let d = Dataset::open(&cfg.train_data, cfg.pipeline).unwrap();
    let m = initial_model(&cfg, &d).unwrap();
    assert_eq!(
        (m.ids.eos, m.ids.mask, m.ids.pad, m.cfg.vocab_size),
        (50256, 10540, Some(50257), 50258)
    );
    train(&cfg, None, false, None).unwrap();
    let (m, _) =
        diffugpt::weights::load(&cfg.out_dir.join("final"), LoadOptions::default()).unwrap();
    assert_eq!((m.ids.mask, m.ids.pad), (10540, Some(50257)));
}

#[test]
fn a_micro_batch_without_targets_does_not_dilute_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prep_with(&tmp.path().join("d"), 50256, 10541, PadVariant::EosEos);
    let cfg = config(
        Pipeline::Arm,
        fixture_model(),
        &data,
        &tmp.path().join("run"),
        2,
    );
    let d = Dataset::open(&cfg.train_data, cfg.pipeline).unwrap();
    let examples: Vec<Example> = (0..4).map(|i| d.get(i, 64)).collect();
    // The same blocks with everything fixed: no position carries a target.
    let empty: Vec<Example> = examples
        .iter()
        .map(|e| Example {
            fixed: e.tokens.len(),
            ..e.clone()
        })
        .collect();
    let base = initial_model(&cfg, &d).unwrap();
    let run = |batches: Vec<Vec<Example>>| {
        let mut t = make_trainable(&base, &cfg).unwrap();
        let batches: Vec<Batch> = batches
            .into_iter()
            .map(|b| Batch::new(b).unwrap())
            .collect();
        let mut rng = diffugpt::rng::Rng::new(1);
        let acc = accumulate_gradients(&t.model, &t.opt, &cfg, &batches, &mut rng, 0).unwrap();
        let norm = apply_update(&mut t.opt, &acc, 1e-3, 1.0).unwrap();
        let w: Vec<f32> = t.opt.vars[0]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (acc.used, acc.mean_loss(), norm, w)
    };
    let alone = run(vec![examples.clone()]);
    let with_empty = run(vec![empty.clone(), examples.clone()]);
    assert_eq!(alone.0, 1);
    assert_eq!(with_empty.0, 1, "the empty micro-batch is not counted");
    assert_eq!(
        with_empty.1, alone.1,
        "mean loss over micro-batches with targets"
    );
    assert_eq!(with_empty.2, alone.2, "gradient norm of the mean");
    assert_eq!(with_empty.3, alone.3, "the same update");
    // Nothing to learn from: no update at all.
    let none = run(vec![empty]);
    assert_eq!(none.0, 0);
    assert!(none.1.is_nan());
    let before: Vec<f32> = make_trainable(&base, &cfg).unwrap().opt.vars[0]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(none.3, before);
}
