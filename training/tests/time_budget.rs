//! A wall-clock budget ends an invocation with a checkpoint, and `--resume` continues exactly
//! where an uninterrupted run would be.

use std::time::Instant;

use diffugpt_training::config::Pipeline;
use diffugpt_training::data::Kind;
use diffugpt_training::prepare::PadVariant;
use diffugpt_training::train::{train, train_observed, StopAt};

mod common;
use common::{config, prep, tiny_scratch};

#[test]
fn a_spent_time_budget_stops_with_a_checkpoint_and_resume_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prep(&tmp.path().join("d"), Kind::Padded, PadVariant::EosEos);
    let whole = config(
        Pipeline::Diffusion,
        tiny_scratch(),
        &data,
        &tmp.path().join("whole"),
        4,
    );
    let all = train(&whole, None, false, None).unwrap();
    assert_eq!(all.len(), 4);

    let cut = config(
        Pipeline::Diffusion,
        tiny_scratch(),
        &data,
        &tmp.path().join("cut"),
        4,
    );
    // A deadline already past: the first step completes, then the run stops.
    let stop = StopAt {
        step: None,
        deadline: Some(Instant::now()),
    };
    let mut seen = Vec::new();
    let first = train_observed(&cut, None, false, stop, &mut |s| seen.push(s)).unwrap();
    assert_eq!(seen, vec![1]);
    assert_eq!(first.len(), 1);
    assert!(!cut.out_dir.join("final").exists(), "not finished");
    let rest = train(&cut, None, true, None).unwrap();
    assert_eq!(rest.len(), 3);
    let joined: Vec<f64> = first.into_iter().chain(rest).collect();
    assert_eq!(joined, all, "the budget cut changes nothing");
}
