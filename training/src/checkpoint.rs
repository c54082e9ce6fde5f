//! Crash-safe checkpoints: each is a directory `step-NNNNNNNN` holding the model in the core's
//! layout (`model.safetensors` + `config.json`), the optimizer moments (`optimizer.safetensors`) and
//! `state.json` (step, Adam step count, RNG state, best validation loss). It is written under a
//! temporary name, every file fsynced, then renamed into place; only then does the `latest` pointer
//! (itself replaced atomically) name it. A crash at any point leaves the previous `latest` intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;
use diffugpt::weights::{self, Layout, SaveDtype};
use diffugpt::Gpt2;

use crate::optim::AdamW;
use crate::train::TrainState;

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
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
    let name = format!("step-{:08}", state.step);
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
    let dst = root.join(&name);
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::rename(&tmp, &dst)?;
    fsync_dir(root)?;
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

/// The directory named by `latest`, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(pointer(root, "latest")
        .map(|n| root.join(n))
        .filter(|p| p.is_dir()))
}

/// Deletes all but the newest `keep` checkpoints, never `latest` or `best`, plus stale temporaries.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let protect: Vec<String> = ["latest", "best"]
        .iter()
        .filter_map(|f| pointer(root, f))
        .collect();
    let mut steps: Vec<String> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-"))
        .collect();
    steps.sort();
    let n = steps.len();
    for name in steps.into_iter().take(n.saturating_sub(keep.max(1))) {
        if !protect.contains(&name) {
            std::fs::remove_dir_all(root.join(&name)).with_context(|| format!("pruning {name}"))?;
        }
    }
    Ok(())
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
