//! The committed C header must equal a fresh cbindgen run (pinned version, cbindgen.toml), with the
//! version macros taken from Cargo.toml. Regenerate: `DGPT_UPDATE_HEADER=1 cargo test --test header`.

#[test]
fn committed_header_matches_a_fresh_generation() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = cbindgen::Config::from_file(format!("{root}/cbindgen.toml")).unwrap();
    let mut buf = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(cfg)
        .generate()
        .expect("cbindgen")
        .write(&mut buf);
    let fresh = String::from_utf8(buf)
        .unwrap()
        .replace("@MAJOR@", env!("CARGO_PKG_VERSION_MAJOR"))
        .replace("@MINOR@", env!("CARGO_PKG_VERSION_MINOR"))
        .replace("@PATCH@", env!("CARGO_PKG_VERSION_PATCH"));
    let path = format!("{root}/include/diffugpt.h");
    if std::env::var_os("DGPT_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/diffugpt.h is stale: run `DGPT_UPDATE_HEADER=1 cargo test --test header`"
    );
    assert!(committed.contains(&format!(
        "#define DGPT_VERSION_MINOR {}",
        env!("CARGO_PKG_VERSION_MINOR")
    )));
}
