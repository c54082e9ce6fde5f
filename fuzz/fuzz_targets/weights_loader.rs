//! The input is a `model.safetensors` file. It is loaded twice through
//! `diffugpt::weights::load`: from a directory with a small config.json (the parity fixtures'
//! hyper-parameters: 2 layers, 16 wide, vocab 97, 32 positions) and from one without (shapes
//! inferred from the tensors). Errors are fine; a panic, an out-of-bounds access (ASan) or an
//! allocation over libFuzzer's malloc limit is a bug. A model that loads gets a forward pass.
#![no_main]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use diffugpt::weights::{load, LoadOptions};
use libfuzzer_sys::fuzz_target;

struct Dirs {
    with_config: PathBuf,
    bare: PathBuf,
}

fn dirs() -> &'static Dirs {
    static D: OnceLock<Dirs> = OnceLock::new();
    D.get_or_init(|| {
        common::one_thread();
        let root = common::scratch("weights");
        let with_config = root.join("with-config");
        let bare = root.join("bare");
        std::fs::create_dir_all(&with_config).unwrap();
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::copy(
            common::fixture("parity/diffugpt-f32/config.json"),
            with_config.join("config.json"),
        )
        .unwrap();
        Dirs { with_config, bare }
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dirs();
    // Cancel from the progress callback at a tensor picked from the input length, sometimes.
    let cancel_at = if data.len() % 7 == 3 {
        data.len() % 29
    } else {
        usize::MAX
    };
    for (dir, check_finite) in [
        (&d.with_config, data.len().is_multiple_of(2)),
        (&d.bare, true),
    ] {
        let path = dir.join("model.safetensors");
        std::fs::write(&path, data).unwrap();
        let opts = LoadOptions {
            check_finite,
            progress: Some(Box::new(move |done, total| {
                assert!(done >= 1 && done <= total, "progress {done}/{total}");
                done < cancel_at
            })),
            ..Default::default()
        };
        // `load` takes the directory (picks up config.json) or the file itself.
        let res = load(dir, opts);
        if common::verbose() {
            eprintln!(
                "{}: {:?}",
                dir.display(),
                res.as_ref().map(|(g, i)| (&g.cfg, i)).err()
            );
        }
        if let Ok((gpt, info)) = res {
            assert!(info.file_dtypes.iter().map(|(_, n)| n).sum::<usize>() > 0);
            gpt.ids
                .validate(gpt.cfg.vocab_size)
                .expect("loader returned bad special ids");
            gpt.cfg
                .validate()
                .expect("loader returned an invalid config");
            common::smoke_forward(&gpt);
        }
        std::fs::remove_file(&path).unwrap();
    }
});
