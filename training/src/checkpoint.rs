//! Crash-safe checkpoints: each is a directory `step-NNNNNNNN` holding the model in the core's
//! layout (`model.safetensors` + `config.json`), the optimizer moments (`optimizer.safetensors`) and
//! `state.json` (step, Adam step count, RNG state, best validation loss). It is written under a
//! temporary name (`.step-NNNNNNNN.tmp`), every file fsynced, then renamed into place; only then
//! does the `latest` pointer (itself replaced atomically) name it. A crash at any point leaves the
//! previous `latest` intact.
//!
//! Invariant: `latest` and `best` are either absent or name a complete checkpoint. Pruning never
//! deletes a directory a pointer names, and replacing an existing `step-*` directory (a fresh run
//! re-saving a step number of an earlier run) first drops any pointer naming it. [`latest`]
//! therefore treats a pointer that names a missing or incomplete directory as damage done outside
//! the trainer and returns an error naming it; it does not fall back to scanning for another
//! checkpoint, which could silently resume from the wrong place.
//!
//! Killed writes leave temporaries behind (`.step-NNNNNNNN.tmp` directories, the
//! `.step-NNNNNNNN.old.tmp` a replaced checkpoint is moved to, and `.NAME.tmpPID` files of the
//! core's atomic writer); [`remove_stale_temps`] deletes those at the next start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use diffugpt::weights::{self, Layout, SaveDtype};
use diffugpt::Gpt2;

use crate::optim::AdamW;
use crate::train::TrainState;

/// The files of a complete checkpoint directory.
pub const CHECKPOINT_FILES: [&str; 4] = [
    "model.safetensors",
    "config.json",
    "optimizer.safetensors",
    "state.json",
];

/// The pointer files in the checkpoints directory.
const POINTERS: [&str; 2] = ["latest", "best"];

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

#[cfg(test)]
thread_local! {
    /// Unit tests set this to make `save` fail at a named point, as a kill there would.
    static CRASH_AT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

fn crash_point(_at: &'static str) -> Result<()> {
    #[cfg(test)]
    if CRASH_AT.with(|c| c.get()) == Some(_at) {
        bail!("injected crash at {_at}");
    }
    Ok(())
}

/// The directory name of the checkpoint for `step`.
pub fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// The step of a checkpoint directory name `step-NNNNNNNN` (at least 8 digits), else `None`.
pub fn parse_step_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step-")?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes a checkpoint for `state.step`; marks it best if asked; keeps the last `keep` (and best).
pub fn save(
    root: &Path,
    model: &Gpt2,
    opt: &AdamW,
    state: &TrainState,
    best: bool,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut m = model.clone();
    m.differentiable = false;
    weights::save(&m, &tmp, Layout::DiffuGpt, SaveDtype::F32)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, (n, _)) in opt.vars.iter().enumerate() {
        tensors.insert(format!("m.{n}"), opt.m[i].clone());
        tensors.insert(format!("v.{n}"), opt.v[i].clone());
    }
    let opt_path = tmp.join("optimizer.safetensors");
    candle_core::safetensors::save(&tensors, &opt_path)?;
    std::fs::File::open(&opt_path)?.sync_all()?;
    weights::write_atomic(&tmp.join("state.json"), &serde_json::to_vec_pretty(state)?)?;
    fsync_dir(&tmp)?;
    crash_point("written")?;
    let dst = root.join(&name);
    if dst.exists() {
        // Re-saving a step that already has a directory: an unpointed leftover of a killed run
        // (the resumed run recomputes it), or an earlier run's checkpoint under a fresh run. A
        // pointer naming it is dropped first, so no pointer ever names a missing directory; the
        // old directory is moved aside rather than deleted in place, so a kill never leaves a
        // half-deleted `step-*` directory.
        for p in POINTERS {
            if pointer(root, p).as_deref() == Some(name.as_str()) {
                std::fs::remove_file(root.join(p))
                    .with_context(|| format!("dropping pointer {}", root.join(p).display()))?;
                fsync_dir(root)?;
            }
        }
        crash_point("pointers-dropped")?;
        let trash = root.join(format!(".{name}.old.tmp"));
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::rename(&dst, &trash).with_context(|| format!("moving {} aside", dst.display()))?;
        crash_point("moved-aside")?;
        std::fs::rename(&tmp, &dst)?;
        fsync_dir(root)?;
        std::fs::remove_dir_all(&trash).with_context(|| format!("removing {}", trash.display()))?;
    } else {
        std::fs::rename(&tmp, &dst)?;
        fsync_dir(root)?;
    }
    crash_point("renamed")?;
    weights::write_atomic(&root.join("latest"), name.as_bytes())?;
    if best {
        weights::write_atomic(&root.join("best"), name.as_bytes())?;
    }
    prune(root, keep)?;
    Ok(dst)
}

fn pointer(root: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(root.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The checkpoint `latest` names; `Ok(None)` when there is no `latest` pointer (nothing has been
/// saved yet, or a fresh run replaced the checkpoint it named before saving its own).
///
/// A `latest` that names something other than a complete `step-*` directory whose `state.json`
/// holds the same step is an error naming the pointer and the directory: the trainer never leaves
/// one behind (see the module docs), so it means outside damage, and resuming from an older
/// checkpoint found by scanning could silently repeat or skip training.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    let path = root.join("latest");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let name = text.trim();
    let Some(step) = parse_step_name(name) else {
        bail!(
            "{} names {name:?}, not a checkpoint directory (step-NNNNNNNN)",
            path.display()
        );
    };
    let dir = root.join(name);
    if !dir.is_dir() {
        bail!(
            "{} names {}, which does not exist; point it at an intact step-* directory, \
             or remove it to start the run over",
            path.display(),
            dir.display()
        );
    }
    check_complete(&dir, step).with_context(|| {
        format!(
            "{} names {}, which is not a complete checkpoint",
            path.display(),
            dir.display()
        )
    })?;
    Ok(Some(dir))
}

/// Every checkpoint file is present and `state.json` parses and holds `step`.
fn check_complete(dir: &Path, step: usize) -> Result<()> {
    for f in CHECKPOINT_FILES {
        let p = dir.join(f);
        if !p.is_file() {
            bail!("{} is missing", p.display());
        }
    }
    let p = dir.join("state.json");
    let st: TrainState = serde_json::from_slice(&std::fs::read(&p)?)
        .with_context(|| format!("parsing {}", p.display()))?;
    if st.step != step {
        bail!("{} holds step {}, not {step}", p.display(), st.step);
    }
    Ok(())
}

/// A fresh run starting over in a directory that holds another run's checkpoints: the whole
/// `root` is renamed to `<root>.previous-N` (the first N free), one atomic rename. Nothing of the
/// old run is lost, it can no longer be resumed by mistake, and its higher-numbered `step-*`
/// directories cannot crowd the new run's out of keep-last-N. Returns where it went, or `None`
/// when `root` holds no checkpoint (missing, empty, or only pointers).
pub fn archive_previous_run(root: &Path) -> Result<Option<PathBuf>> {
    let has_checkpoint = match std::fs::read_dir(root) {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .any(|n| parse_step_name(&n).is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    if !has_checkpoint {
        return Ok(None);
    }
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .context("checkpoint directory has no name")?;
    let parent = root.parent().unwrap_or(Path::new("."));
    let dest = (1..)
        .map(|n| parent.join(format!("{name}.previous-{n}")))
        .find(|p| !p.exists())
        .expect("an unbounded range always has a free name");
    std::fs::rename(root, &dest)
        .with_context(|| format!("moving {} to {}", root.display(), dest.display()))?;
    fsync_dir(parent)?;
    Ok(Some(dest))
}

/// Deletes all but the newest `keep` checkpoints (by step), never one `latest` or `best` names.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let protect: Vec<String> = POINTERS.iter().filter_map(|f| pointer(root, f)).collect();
    let mut steps: Vec<(usize, String)> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| Some((parse_step_name(&n)?, n)))
        .collect();
    steps.sort();
    let n = steps.len();
    for (_, name) in steps.into_iter().take(n.saturating_sub(keep.max(1))) {
        if !protect.contains(&name) {
            std::fs::remove_dir_all(root.join(&name)).with_context(|| format!("pruning {name}"))?;
        }
    }
    Ok(())
}

/// Whether `name` is a temporary of the core's atomic writer for one of `files`
/// (`.FILE.tmpPID`).
fn is_atomic_temp(name: &str, files: &[&str]) -> bool {
    files.iter().any(|f| {
        name.strip_prefix('.')
            .and_then(|r| r.strip_prefix(f))
            .and_then(|r| r.strip_prefix(".tmp"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Whether `name` is a checkpoint temporary: `.step-NNNNNNNN.tmp` (being written) or
/// `.step-NNNNNNNN.old.tmp` (a replaced checkpoint being deleted).
fn is_checkpoint_temp(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|r| r.strip_suffix(".tmp"))
        .map(|r| r.strip_suffix(".old").unwrap_or(r))
        .is_some_and(|r| parse_step_name(r).is_some())
}

/// Removes what killed writes left in `dir`: the atomic writer's `.FILE.tmpPID` files for the
/// given `files`, and, with `checkpoints`, the `.step-NNNNNNNN.tmp` / `.step-NNNNNNNN.old.tmp`
/// directories. Nothing else is touched. Returns the removed paths (a missing `dir` is empty).
/// Only for startup: a trainer still writing into the same directory would lose its temporaries.
pub fn remove_stale_temps(dir: &Path, files: &[&str], checkpoints: bool) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut removed = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let ty = e.file_type()?;
        let p = e.path();
        if checkpoints && ty.is_dir() && is_checkpoint_temp(&name) {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        } else if ty.is_file() && is_atomic_temp(&name, files) {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        } else {
            continue;
        }
        removed.push(p);
    }
    if !removed.is_empty() {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Removes stale temporaries from a checkpoints directory (see [`remove_stale_temps`]).
pub fn remove_stale_checkpoint_temps(root: &Path) -> Result<Vec<PathBuf>> {
    remove_stale_temps(root, &POINTERS, true)
}

/// Restores the optimizer moments saved with a checkpoint.
pub fn load_optimizer(opt: &mut AdamW, dir: &Path) -> Result<()> {
    let t = candle_core::safetensors::load(
        dir.join("optimizer.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    for (i, (n, _)) in opt.vars.iter().enumerate() {
        opt.m[i] = t
            .get(&format!("m.{n}"))
            .with_context(|| format!("optimizer state lacks m.{n}"))?
            .clone();
        opt.v[i] = t
            .get(&format!("v.{n}"))
            .with_context(|| format!("optimizer state lacks v.{n}"))?
            .clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use diffugpt::config::{ModelConfig, SpecialIdOverrides, SpecialIds};

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            adam_t: step,
            rng: [1, 2, 3, 4],
            best_val: None,
        }
    }

    /// A directory that passes `check_complete` (the files' contents are not loaded).
    fn fake_checkpoint(root: &Path, step: usize) -> PathBuf {
        let dir = root.join(step_dir_name(step));
        std::fs::create_dir_all(&dir).unwrap();
        for f in CHECKPOINT_FILES {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        std::fs::write(
            dir.join("state.json"),
            serde_json::to_vec(&state(step)).unwrap(),
        )
        .unwrap();
        dir
    }

    fn point(root: &Path, file: &str, step: usize) {
        std::fs::write(root.join(file), step_dir_name(step)).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn step_names() {
        assert_eq!(step_dir_name(7), "step-00000007");
        assert_eq!(parse_step_name("step-00000007"), Some(7));
        assert_eq!(parse_step_name("step-123456789"), Some(123_456_789));
        for bad in [
            "step-7",
            "step-0000000x",
            ".step-00000007.tmp",
            "latest",
            "step-",
        ] {
            assert_eq!(parse_step_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn latest_is_none_without_a_pointer() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(latest(tmp.path()).unwrap(), None);
        assert_eq!(latest(&tmp.path().join("no-such-dir")).unwrap(), None);
        // Checkpoints without a pointer are not picked up by scanning.
        fake_checkpoint(tmp.path(), 3);
        assert_eq!(latest(tmp.path()).unwrap(), None);
    }

    #[test]
    fn latest_names_a_complete_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        fake_checkpoint(tmp.path(), 2);
        let dir = fake_checkpoint(tmp.path(), 5);
        point(tmp.path(), "latest", 5);
        assert_eq!(latest(tmp.path()).unwrap(), Some(dir));
    }

    #[test]
    fn latest_pointing_at_a_missing_directory_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        // An intact older checkpoint exists: no silent fallback to it either.
        fake_checkpoint(tmp.path(), 2);
        point(tmp.path(), "latest", 4);
        let err = format!("{:#}", latest(tmp.path()).unwrap_err());
        let missing = tmp.path().join("step-00000004");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(
            err.contains(&tmp.path().join("latest").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn latest_pointing_at_an_incomplete_or_foreign_checkpoint_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fake_checkpoint(tmp.path(), 4);
        point(tmp.path(), "latest", 4);
        std::fs::remove_file(dir.join("optimizer.safetensors")).unwrap();
        let err = format!("{:#}", latest(tmp.path()).unwrap_err());
        assert!(err.contains("not a complete checkpoint"), "{err}");
        assert!(err.contains("optimizer.safetensors is missing"), "{err}");

        std::fs::write(dir.join("optimizer.safetensors"), b"x").unwrap();
        std::fs::write(
            dir.join("state.json"),
            serde_json::to_vec(&state(9)).unwrap(),
        )
        .unwrap();
        let err = format!("{:#}", latest(tmp.path()).unwrap_err());
        assert!(err.contains("holds step 9, not 4"), "{err}");

        for bad in ["../elsewhere", "", "step-4", ".step-00000004.tmp"] {
            std::fs::write(tmp.path().join("latest"), bad).unwrap();
            let err = format!("{:#}", latest(tmp.path()).unwrap_err());
            assert!(err.contains("not a checkpoint directory"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn prune_keeps_the_newest_and_never_what_a_pointer_names() {
        let tmp = tempfile::tempdir().unwrap();
        // Steps past 8 digits sort by number, not by name ("step-100000000" < "step-99999999").
        for s in [1, 2, 3, 4, 5, 99_999_999, 100_000_000] {
            fake_checkpoint(tmp.path(), s);
        }
        point(tmp.path(), "latest", 2);
        point(tmp.path(), "best", 4);
        prune(tmp.path(), 2).unwrap();
        assert_eq!(
            names(tmp.path()),
            [
                "best",
                "latest",
                "step-00000002",
                "step-00000004",
                "step-100000000",
                "step-99999999"
            ]
        );
        assert!(latest(tmp.path()).unwrap().is_some());
        // keep = 0 still keeps one (and the pointed ones).
        prune(tmp.path(), 0).unwrap();
        assert_eq!(
            names(tmp.path()),
            [
                "best",
                "latest",
                "step-00000002",
                "step-00000004",
                "step-100000000"
            ]
        );
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_checkpoint(root, 3);
        point(root, "latest", 3);
        for d in [".step-00000004.tmp", ".step-00000003.old.tmp"] {
            std::fs::create_dir_all(root.join(d).join("sub")).unwrap();
            std::fs::write(root.join(d).join(".state.json.tmp77"), b"{").unwrap();
        }
        for f in [".latest.tmp123", ".best.tmp9"] {
            std::fs::write(root.join(f), b"step-0").unwrap();
        }
        // Not the trainer's: other names, other shapes, a file where a directory is expected.
        let keep = [
            ".latest.tmp",
            ".latest.tmpx",
            ".notes.tmp1",
            "notes.tmp",
            ".step-4.tmp",
            ".step-foo.tmp",
            ".step-00000005.tmpx",
            "latest.tmp1",
        ];
        for f in keep {
            std::fs::write(root.join(f), b"mine").unwrap();
        }
        std::fs::write(root.join(".step-00000006.tmp"), b"a file").unwrap();
        std::fs::create_dir(root.join(".latest.tmp5")).unwrap();

        let mut removed: Vec<String> = remove_stale_checkpoint_temps(root)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                ".best.tmp9",
                ".latest.tmp123",
                ".step-00000003.old.tmp",
                ".step-00000004.tmp"
            ]
        );
        let mut expect: Vec<&str> = keep.to_vec();
        expect.extend([
            ".latest.tmp5",
            ".step-00000006.tmp",
            "latest",
            "step-00000003",
        ]);
        expect.sort();
        assert_eq!(names(root), expect);
        assert_eq!(latest(root).unwrap(), Some(root.join("step-00000003")));
        // A second pass finds nothing; a missing directory is fine.
        assert!(remove_stale_checkpoint_temps(root).unwrap().is_empty());
        assert!(remove_stale_checkpoint_temps(&root.join("none"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_fresh_run_archives_the_previous_one_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("checkpoints");
        // Nothing to archive: no directory, an empty one, pointers only.
        assert_eq!(archive_previous_run(&root).unwrap(), None);
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("latest"), "step-00000001").unwrap();
        assert_eq!(archive_previous_run(&root).unwrap(), None);
        std::fs::remove_file(root.join("latest")).unwrap();
        for round in 1..=2 {
            fake_checkpoint(&root, 100);
            point(&root, "latest", 100);
            let dest = archive_previous_run(&root).unwrap().unwrap();
            assert_eq!(
                dest,
                tmp.path().join(format!("checkpoints.previous-{round}"))
            );
            assert!(!root.exists());
            assert_eq!(names(&dest), ["latest", "step-00000100"]);
            assert_eq!(latest(&dest).unwrap(), Some(dest.join("step-00000100")));
        }
    }

    fn tiny() -> (Gpt2, AdamW) {
        let mc = ModelConfig {
            vocab_size: 32,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            n_inner: 32,
            n_positions: 16,
            ..ModelConfig::gpt2_small()
        };
        let ids =
            SpecialIds::resolve(32, &Default::default(), &SpecialIdOverrides::default()).unwrap();
        let model = Gpt2::random(mc, ids, 1, &Device::Cpu).unwrap();
        let vars: Vec<(String, Var)> = model
            .named_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, Var::from_tensor(&t).unwrap()))
            .collect();
        let opt = AdamW::new(vars, (0.9, 0.95), 1e-8, 0.0).unwrap();
        (model, opt)
    }

    fn with_crash<T>(at: &'static str, f: impl FnOnce() -> T) -> T {
        CRASH_AT.with(|c| c.set(Some(at)));
        let r = f();
        CRASH_AT.with(|c| c.set(None));
        r
    }

    /// After a save dies at any point, `latest` names a complete checkpoint: the previous one
    /// or the new one, never a missing directory, including when the step being saved already
    /// has a directory that `latest` and `best` name (a fresh run over an earlier run's).
    #[test]
    fn a_save_dying_anywhere_leaves_latest_intact() {
        let (model, opt) = tiny();
        let points = ["written", "pointers-dropped", "moved-aside", "renamed"];
        for at in points {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            save(root, &model, &opt, &state(1), true, 2).unwrap();
            save(root, &model, &opt, &state(2), false, 2).unwrap();
            // Not replacing anything: `latest` stays at step 2 until the new one is in place.
            let r = with_crash(at, || save(root, &model, &opt, &state(3), false, 2));
            let now = latest(root).unwrap_or_else(|e| panic!("{at}: {e:#}"));
            match at {
                "written" | "renamed" => {
                    assert!(r.is_err());
                    assert_eq!(now, Some(root.join("step-00000002")), "{at}");
                }
                _ => assert_eq!(now, Some(root.join("step-00000003")), "{at}"),
            }
            // Replacing the directory both pointers name (step 1 after a fresh restart).
            point(root, "latest", 1);
            let r = with_crash(at, || save(root, &model, &opt, &state(1), false, 2));
            assert!(r.is_err(), "{at}");
            match latest(root).unwrap_or_else(|e| panic!("{at}: {e:#}")) {
                None => assert_ne!(at, "written"),
                Some(dir) => assert_eq!(dir, root.join("step-00000001"), "{at}"),
            }
            if let Some(best) = pointer(root, "best") {
                assert!(root.join(best).join("state.json").is_file(), "{at}");
            }
            // The next start cleans up; a complete save then points at the new directory.
            remove_stale_checkpoint_temps(root).unwrap();
            assert!(names(root).iter().all(|n| !n.starts_with('.')), "{at}");
            let dir = save(root, &model, &opt, &state(1), false, 2).unwrap();
            assert_eq!(latest(root).unwrap(), Some(dir.clone()));
            let mut restored = AdamW::new(opt.vars.clone(), (0.9, 0.95), 1e-8, 0.0).unwrap();
            load_optimizer(&mut restored, &dir).unwrap();
            weights::load(&dir, Default::default()).unwrap();
        }
    }
}
