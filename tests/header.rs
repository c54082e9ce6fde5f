//! The committed C header must equal a fresh cbindgen run (pinned version, cbindgen.toml), with the
//! version macros taken from Cargo.toml. Regenerate: `DGPT_UPDATE_HEADER=1 cargo test --test header`.
//! The header (and the C++ wrapper) must also compile warning-free under strict flags, with every
//! macro used, since C and C++ evaluate macros with their own integer rules.

use std::path::Path;
use std::process::Command;

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

fn committed_header() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/diffugpt.h")).unwrap()
}

/// Every `#define` of the header except the include guard: (name, value).
fn header_macros(header: &str) -> Vec<(String, String)> {
    header
        .lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().to_string()))
        })
        .collect()
}

#[test]
fn every_macro_has_the_dgpt_prefix() {
    let header = committed_header();
    let macros = header_macros(&header);
    assert!(macros.len() >= 14, "{macros:?}");
    for (name, _) in &macros {
        assert!(
            name.starts_with("DGPT_"),
            "macro {name} lacks the DGPT_ prefix"
        );
    }
    assert!(header.contains("#define DIFFUGPT_H"), "include guard");
}

/// A translation unit that includes `include` and uses every macro in a constant expression
/// (file-scope array sizes, so an overflowing or negative value is a compile error), and checks
/// the memory limit's value, which must be an unsigned 64-bit constant.
fn source_using_every_macro(include: &str) -> String {
    let mut src = format!("#include \"{include}\"\n");
    for (i, (name, _)) in header_macros(&committed_header()).iter().enumerate() {
        src += &format!(
            "typedef char dgpt_macro_{i}[((unsigned long long)({name}) + 1ull) > 0 ? 1 : -1];\n"
        );
    }
    src += "typedef char dgpt_mem_limit[(DGPT_DEFAULT_MEMORY_LIMIT == 8589934592ull) ? 1 : -1];\n";
    src += "typedef char dgpt_mem_unsigned[((DGPT_DEFAULT_MEMORY_LIMIT - DGPT_DEFAULT_MEMORY_LIMIT - 1) > 0) ? 1 : -1];\n";
    src += "typedef char dgpt_mem_64[(sizeof(DGPT_DEFAULT_MEMORY_LIMIT) == 8) ? 1 : -1];\n";
    src += "int dgpt_header_used(void);\nint dgpt_header_used(void) { return (int)sizeof(dgpt_mem_limit) + (int)DGPT_OK; }\n";
    src
}

/// Compiles `src` with `compiler` and strict flags; None when the compiler is not installed.
fn compile(compiler: &str, flags: &[&str], src: &str, name: &str) -> Option<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, src).unwrap();
    let out = Command::new(compiler)
        .args(flags)
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-c", "-o"])
        .arg(dir.path().join("out.o"))
        .arg("-I")
        .arg(Path::new(root).join("include"))
        .arg(&file)
        .output();
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running {compiler}: {e}"),
        Ok(o) => {
            assert!(
                o.status.success(),
                "{compiler} {flags:?} rejected the header:\n{}\n--- source ---\n{src}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }
}

#[test]
fn header_compiles_strictly_as_c99_and_cpp17_using_every_macro() {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let c = compile(
        &cc,
        &["-std=c99"],
        &source_using_every_macro("diffugpt.h"),
        "t.c",
    );
    let cpp = compile(
        &cxx,
        &["-std=c++17", "-x", "c++"],
        &source_using_every_macro("diffugpt.hpp"),
        "t.cpp",
    );
    if c.is_none() || cpp.is_none() {
        // Visible in the test output; CI has both compilers.
        eprintln!("skipped: no C or C++ compiler (`{cc}`, `{cxx}`): header not compiled");
    }
}
