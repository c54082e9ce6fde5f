//! `eval throughput` end to end on the fixture model and a small padded split.

use std::path::PathBuf;

use diffugpt_training::data::Kind;
use diffugpt_training::eval::throughput::{run, ThroughputArgs};
use diffugpt_training::prepare::{prepare, PrepareOptions, Splitter};

#[test]
fn throughput_report_counts_work_for_both_modes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let mut o = PrepareOptions::new(
        root.join("training/tests/fixtures/corpus/fortunes.txt"),
        root.join("tests/fixtures/tiny-diffugpt/tokenizer.json"),
        tmp.path().join("d"),
    );
    o.splitter = Splitter::Percent;
    o.kind = Kind::Padded;
    o.block_len = 64;
    prepare(&o).unwrap();
    let args = ThroughputArgs {
        model: root.join("tests/fixtures/tiny-diffugpt"),
        data: tmp.path().join("d/test"),
        out: tmp.path().join("out"),
        canvas: None,
        steps_per_token: 0.25,
        predictor: "quantile:0.9".into(),
        oracle: true,
        no_grow: true,
        end_floor: 0.0,
        max_examples: 2,
        seed: 0,
    };
    let r = run(&args).unwrap();
    assert_eq!((r.fixed.examples, r.eos_first.examples), (2, 2));
    // Fixed mode: every step over the full 63-slot canvas.
    assert_eq!(r.fixed.forward_passes, 2 * 16); // ceil(63 * 0.25) steps each
                                                // The oracle cut shrinks the canvas, so EoS-first processes fewer positions.
    assert!(r.eos_first.positions_processed < r.fixed.positions_processed);
    assert!(r.fixed.useful_tokens_per_s > 0.0 && r.speedup.is_finite());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/report.json")).unwrap())
            .unwrap();
    assert_eq!(json["predictor"], "oracle");
    assert!(json["environment"]["threads"].as_u64().unwrap() >= 1);
    assert!(std::fs::read_to_string(tmp.path().join("out/report.md"))
        .unwrap()
        .contains("| eos-first |"));
}
