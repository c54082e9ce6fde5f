//! The int8 switch `DIFFUGPT_CPU_INT8` (`auto`, `vnni`, `avx2`, `decode`): each value, in a fresh
//! `diffugpt bench` process (the switch is read once per process), picks the products its
//! documentation says on this CPU — never kernels the CPU (or `DIFFUGPT_CPU_KERNELS`) cannot run,
//! with a note on stderr when it has to fall back — and the int8 forward runs on them. CI runs it
//! as it is and under `DIFFUGPT_CPU_KERNELS=avx2` (the AVX2 kernels where VNNI would run) and
//! `generic` (a clear refusal).

use std::path::PathBuf;
use std::process::Command;

use diffugpt::cpu_int8::{Int8Kernel, INT8_ENV};

/// `diffugpt bench --dtype int8` on the tiny fixture with `INT8_ENV` set to `value` (unset for
/// `None`): the int8 path the report names, and stderr.
fn int8_path_with(value: Option<&str>) -> (String, String) {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-diffugpt");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffugpt"));
    cmd.args(["bench", "--model"])
        .arg(&model)
        .args([
            "--forward-lens",
            "8",
            "--reps",
            "1",
            "--canvas",
            "0",
            "--arm-tokens",
            "0",
            "--dtype",
            "int8",
            "--format",
            "json",
        ])
        .env_remove(INT8_ENV);
    if let Some(v) = value {
        cmd.env(INT8_ENV, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !diffugpt::cpu_gemm::available() {
        // Under the portable kernels there are no int8 weights at all: a clear refusal.
        assert!(
            !out.status.success(),
            "{INT8_ENV}={value:?} ran under generic kernels"
        );
        assert!(stderr.contains("int8 weights need"), "{stderr}");
        return ("refused".into(), stderr);
    }
    assert!(out.status.success(), "{INT8_ENV}={value:?}: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["forward_ms"]["8/int8"].as_f64().unwrap() > 0.0,
        "{INT8_ENV}={value:?}: no int8 forward in {r}"
    );
    (r["cpu_int8"].as_str().unwrap().to_string(), stderr)
}

#[test]
fn the_int8_switch_picks_its_products() {
    // This process shares the child's DIFFUGPT_CPU_KERNELS, so `supported` answers for it too.
    if !diffugpt::cpu_gemm::available() {
        assert_eq!(int8_path_with(None).0, "refused");
        eprintln!("SKIPPED: the portable kernels run no int8 weights (checked: a clear refusal)");
        return;
    }
    let all = Int8Kernel::all_supported();
    let auto = all.first().map_or("decode", |k| k.name());

    let (got, _) = int8_path_with(None);
    assert_eq!(got, auto, "unset");
    let (got, _) = int8_path_with(Some("auto"));
    assert_eq!(got, auto, "auto");
    let (got, _) = int8_path_with(Some("decode"));
    assert_eq!(got, "decode");
    for k in [Int8Kernel::Vnni, Int8Kernel::Avx2] {
        let (got, stderr) = int8_path_with(Some(k.name()));
        if k.supported() {
            assert_eq!(got, k.name());
        } else {
            assert_eq!(got, auto, "{} unsupported: auto's choice", k.name());
            assert!(stderr.contains("cannot run it"), "{stderr}");
        }
    }
    let (got, stderr) = int8_path_with(Some("bogus"));
    assert_eq!(got, auto);
    assert!(stderr.contains("is not one of"), "{stderr}");
}
