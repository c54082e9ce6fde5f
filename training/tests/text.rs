//! `diffugpt-train text`: a prepared split decodes back to its documents, prompts first.

mod common;

use diffugpt_training::data::Kind;
use diffugpt_training::prepare::PadVariant;
use diffugpt_training::text::{run, TextArgs};

#[test]
fn padded_split_decodes_back_to_its_fortunes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::prep(&tmp.path().join("data"), Kind::Padded, PadVariant::EosPad);
    let args = TextArgs {
        data: data.join("train"),
        tokenizer: common::root().join("tests/fixtures/tiny-diffugpt/tokenizer.json"),
        out: tmp.path().join("text"),
        max: Some(20),
    };
    let s = run(&args).unwrap();
    assert!(s.documents > 5 && s.documents <= 20, "{s:?}");
    let docs = std::fs::read_to_string(&s.docs).unwrap();
    let prompts = std::fs::read_to_string(&s.prompts).unwrap();
    assert_eq!(prompts.lines().count(), s.documents);
    let corpus =
        std::fs::read_to_string(common::root().join("training/tests/fixtures/corpus/fortunes.txt"))
            .unwrap();
    // Every decoded document is a fortune of the corpus, word for word, and starts with its prompt.
    let words = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let corpus_words = words(&corpus);
    for (doc, prompt) in docs.split("\n%\n").zip(prompts.lines()) {
        assert!(
            corpus_words.contains(&words(doc)),
            "not in the corpus: {doc:?}"
        );
        assert!(
            words(doc).starts_with(&words(prompt)),
            "{prompt:?} / {doc:?}"
        );
    }
    // A stream has no prompts: refused with the reason.
    let stream = common::prep(&tmp.path().join("stream"), Kind::Stream, PadVariant::EosPad);
    let e = run(&TextArgs {
        data: stream.join("train"),
        ..args
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("padded or mask-eos"), "{e}");
}
