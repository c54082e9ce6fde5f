//! What a new user of the `diffugpt` binary meets when something is wrong: flag-named range
//! errors, error text without repetition, and the default model found by a moved or installed
//! binary. Also the binding scripts' promise to install nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-diffugpt");

fn run_bin(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(bin);
    c.args(args).env_remove("DIFFUGPT_MODEL");
    for (k, v) in env {
        c.env(k, v);
    }
    let out: Output = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn run(args: &[&str]) -> (bool, String, String) {
    run_bin(Path::new(env!("CARGO_BIN_EXE_diffugpt")), args, &[])
}

#[test]
fn negative_numbers_get_the_range_error_not_unknown_argument() {
    let (ok, _, spaced) = run(&["generate", "--temperature", "-1", "--canvas", "4"]);
    assert!(!ok);
    let (ok, _, joined) = run(&["generate", "--temperature=-1", "--canvas", "4"]);
    assert!(!ok);
    assert!(!spaced.contains("unexpected argument"), "{spaced}");
    assert!(spaced.contains("temperature"), "{spaced}");
    assert_eq!(
        spaced, joined,
        "`--temperature -1` and `--temperature=-1` differ"
    );
    // Unsigned flags: clap's own message naming the flag and the value.
    for flag in ["--seed", "--top-k", "--canvas", "--margin"] {
        let (ok, _, err) = run(&["generate", flag, "-1"]);
        assert!(!ok);
        assert!(!err.contains("unexpected argument"), "{flag}: {err}");
        assert!(
            err.contains(&format!("invalid value '-1' for '{flag}")),
            "{flag}: {err}"
        );
    }
}

#[test]
fn zero_sizes_name_the_flag() {
    let (ok, _, err) = run(&["generate", "--canvas", "0"]);
    assert!(!ok);
    assert!(err.contains("--canvas must be at least 1"), "{err}");
    assert!(!err.contains("canvas_len"), "{err}");
    let (ok, _, err) = run(&["generate", "--arm", "--max-new-tokens", "0"]);
    assert!(!ok);
    assert!(err.contains("--max-new-tokens must be at least 1"), "{err}");
}

#[test]
fn a_missing_model_dir_is_reported_once() {
    let (ok, _, err) = run(&["generate", "--model", "/nonexistent/model"]);
    assert!(!ok);
    let os = std::io::Error::from_raw_os_error(2).to_string(); // ENOENT
    assert!(err.contains("/nonexistent/model"), "{err}");
    assert!(err.contains(&os), "{err}");
    assert_eq!(err.matches(&os).count(), 1, "{err}");
}

#[test]
fn a_bad_tokenizer_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, "{ not json").unwrap();
    let (ok, _, err) = run(&["inspect", "--tokenizer", tok.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains(tok.to_str().unwrap()), "{err}");
    assert!(err.contains("malformed"), "{err}");
    assert_eq!(err.matches("tokenizer error").count(), 1, "{err}");
}

#[test]
fn a_prompt_too_long_for_the_context_is_refused() {
    let prompt = " hello".repeat(300);
    // The fixture's GPT-2 vocabulary: " hello" is one token there.
    let (ok, _, err) = run(&[
        "generate", "--model", FIXTURE, "--prompt", &prompt, "--canvas", "4",
    ]);
    assert!(!ok);
    assert!(err.contains("invalid prompt"), "{err}");
    assert!(err.contains("300 tokens"), "{err}");
}

/// A copy of the binary at `<dir>/bin/diffugpt`, as `cargo install --root <dir>` would place it.
fn installed_copy(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("diffugpt");
    std::fs::copy(env!("CARGO_BIN_EXE_diffugpt"), &exe).unwrap();
    exe
}

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        let src = Path::new(FIXTURE).join(f);
        if src.exists() {
            std::fs::copy(src, to.join(f)).unwrap();
        }
    }
}

#[test]
fn a_moved_binary_finds_its_default_model() {
    let dir = tempfile::tempdir().unwrap();
    let exe = installed_copy(dir.path());
    // Nothing installed next to it: the built-in default of the source tree.
    let (ok, _, err) = run_bin(&exe, &["inspect"], &[]);
    assert!(ok, "{err}");
    let builtin = concat!(env!("CARGO_MANIFEST_DIR"), "/models/default");
    assert!(err.contains(builtin), "{err}");
    // Installed under <prefix>/share: that copy wins.
    let share = dir.path().join("share/diffugpt/models/default");
    copy_fixture(&share);
    let (ok, out, err) = run_bin(&exe, &["inspect"], &[]);
    assert!(ok, "{err}");
    assert!(err.contains("share/diffugpt/models/default"), "{err}");
    assert!(out.contains("\"layout\""), "{out}");
    // DIFFUGPT_MODEL wins over both; a bad one is an error naming it, not a silent fallback.
    let (ok, _, err) = run_bin(&exe, &["inspect"], &[("DIFFUGPT_MODEL", FIXTURE)]);
    assert!(ok, "{err}");
    assert!(!err.contains("built-in default"), "{err}");
    let (ok, _, err) = run_bin(&exe, &["inspect"], &[("DIFFUGPT_MODEL", "/no/such/model")]);
    assert!(!ok);
    assert!(err.contains("/no/such/model"), "{err}");
}

#[test]
fn go_binding_script_installs_nothing_when_go_is_missing() {
    // A PATH with only `dirname` and fake apt-get/sudo that would leave a mark if called.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mark = dir.path().join("installed");
    for fake in ["apt-get", "sudo"] {
        let p = bin.join(fake);
        std::fs::write(&p, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&p, perm).unwrap();
    }
    let Ok(dirname) = which("dirname") else {
        eprintln!("skipped: no `dirname` on PATH");
        return;
    };
    std::os::unix::fs::symlink(dirname, bin.join("dirname")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bindings/go/run_tests.sh");
    let out = Command::new("/bin/bash")
        .arg(script)
        .env("PATH", &bin)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("need: go"), "{err}");
    assert!(!mark.exists(), "run_tests.sh tried to install something");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
