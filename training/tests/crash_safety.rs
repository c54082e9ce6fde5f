//! Crash safety of checkpoints: the trainer binary, saving a checkpoint after every step, is killed
//! with SIGKILL 20 times at seeded random moments aimed at every phase: before it has written
//! anything, while a checkpoint directory is being written, right after it is renamed into place
//! (before or while `latest` is updated and old checkpoints are pruned), between checkpoints, and
//! at blind delays (often while a resumed run loads). After every kill `latest` must name a
//! complete checkpoint (weights load, `state.json` agrees, optimizer state loads) at least as new
//! as the one before; each round resumes from it, or starts fresh when nothing was written yet.
//! Finally the run is completed with `--resume`, and must be bit-identical to an uninterrupted run
//! started alongside: same final weights, same loss at every step, and every line of
//! `metrics.jsonl` parses, with no step logged twice. About 25-50 s in the dev profile on 2 cores,
//! so it is `#[ignore]`d out of the README's test command; `.ci/run` runs it with `-- --ignored`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use diffugpt::rng::Rng;
use diffugpt::LoadOptions;
use diffugpt_training::config::{Diffusion, Pipeline, TrainConfig};
use diffugpt_training::data::Kind;
use diffugpt_training::prepare::PadVariant;

mod common;
use common::tiny_scratch;

const BIN: &str = env!("CARGO_BIN_EXE_diffugpt-train");
const KILLS: usize = 20;
/// Enough that 20 rounds (at most 3 checkpoints each, ~1.5 on average) never finish the run.
const STEPS: usize = 60;

/// A tiny diffusion run (1 layer, 16 dims) that checkpoints after every step.
fn config(data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        val_data: None,
        diffusion: Diffusion {
            attn_anneal_steps: 10,
            pad_anneal_steps: 10,
            ..Default::default()
        },
        save_every: 1,
        ..common::config(Pipeline::Diffusion, tiny_scratch(), data, out, STEPS)
    }
}

/// Padded (one document per row) data from the fixture corpus, as `pipeline.rs` prepares it.
fn prep(out: &Path) -> PathBuf {
    common::prep(out, Kind::Padded, PadVariant::EosEos)
}

fn write_config(cfg: &TrainConfig, path: &Path) {
    std::fs::write(path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
}

fn spawn(cfg_path: &Path, resume: bool, log: &Path) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("train")
        .arg(cfg_path)
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap());
    if resume {
        cmd.arg("--resume");
    }
    cmd.spawn().unwrap()
}

/// Step number of a `step-NNNNNNNN` name (`None` for anything else, temporaries included).
fn step_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step-")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().unwrap())
}

/// Names in the checkpoint directory with their modification times.
fn entries(ckpts: &Path) -> Vec<(String, SystemTime)> {
    let Ok(rd) = std::fs::read_dir(ckpts) else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let e = e.ok()?;
        Some((
            e.file_name().into_string().ok()?,
            e.metadata().ok()?.modified().ok()?,
        ))
    })
    .collect()
}

/// Checks what a kill left behind; returns the step `latest` names (0 when there is none yet).
/// `latest` is read as a file first, so a dangling pointer is reported here by name (and
/// `checkpoint::latest`, which refuses one with an error, must then agree).
fn check_latest(ckpts: &Path, previous: usize, round: usize) -> usize {
    let pointer = ckpts.join("latest");
    let name = match std::fs::read_to_string(&pointer) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert_eq!(
                previous, 0,
                "round {round}: `latest` disappeared (it named step {previous})"
            );
            return 0;
        }
        Err(e) => panic!("round {round}: reading `latest`: {e}"),
    };
    let step = step_of(&name).unwrap_or_else(|| {
        panic!("round {round}: `latest` names {name:?}, not a finished checkpoint")
    });
    let dir = ckpts.join(&name);
    assert!(
        dir.is_dir(),
        "round {round}: `latest` names {name}, which does not exist"
    );
    assert_eq!(
        diffugpt_training::checkpoint::latest(ckpts).unwrap(),
        Some(dir.clone())
    );
    let (m, _) = diffugpt::weights::load(&dir, LoadOptions::default())
        .unwrap_or_else(|e| panic!("round {round}: {name} does not load: {e}"));
    assert_eq!((m.cfg.n_layer, m.cfg.n_embd), (1, 16));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("state.json"))
            .unwrap_or_else(|e| panic!("round {round}: {name}/state.json: {e}")),
    )
    .unwrap_or_else(|e| panic!("round {round}: {name}/state.json does not parse: {e}"));
    assert_eq!(
        state["step"].as_u64(),
        Some(step as u64),
        "round {round}: {name}/state.json"
    );
    let opt = candle_core::safetensors::load(
        dir.join("optimizer.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("round {round}: {name}/optimizer.safetensors: {e}"));
    assert!(!opt.is_empty());
    assert!(
        step >= previous,
        "round {round}: `latest` went back from step {previous} to {step}"
    );
    step
}

/// Per-step training losses from metrics.jsonl. Every line is complete JSON and no step is logged
/// twice: a resumed run first cuts the log back to its checkpoint's step, dropping what the killed
/// run logged after it (and a line the kill tore).
fn losses(metrics: &Path) -> BTreeMap<u64, f64> {
    let text = std::fs::read_to_string(metrics).unwrap();
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}:{}: {e}: {line:?}", metrics.display(), i + 1));
        let (step, loss) = (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap());
        if let Some(old) = out.insert(step, loss) {
            panic!(
                "{}: step {step} logged twice (losses {old}, {loss})",
                metrics.display()
            );
        }
    }
    out
}

/// Where the kill of a round is aimed. Events are counted from the start of the round, so the
/// aims hold on slow and fast machines alike.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Aim {
    /// A few ms after the start: before anything is written (the first round).
    Start,
    /// A blind delay of up to 1 s: often while the trainer loads its checkpoint or computes.
    Blind,
    /// Soon after the `n`-th new `.step-*.tmp` directory appears: while a checkpoint is written.
    Writing(usize),
    /// As soon as the `n`-th new `step-*` directory appears: after its rename, before or while
    /// `latest` is updated and old checkpoints are pruned.
    Renamed(usize),
    /// A moment after `latest` has advanced `n` times: between checkpoints.
    Between(usize),
}

/// What a round has seen of its trainer's checkpoints so far.
#[derive(Default)]
struct Seen {
    tmp: std::collections::HashSet<String>,
    renamed: std::collections::HashSet<String>,
    latest: std::collections::HashSet<String>,
}

impl Seen {
    /// Records the directories and `latest` values this process produced (modified after
    /// `since`: earlier rounds leave temporaries and unpointed checkpoints behind, with older
    /// times).
    fn poll(&mut self, ckpts: &Path, since: SystemTime, start_step: usize) {
        for (name, t) in entries(ckpts) {
            if t < since {
                continue;
            }
            if name.starts_with(".step-") && name.ends_with(".tmp") {
                self.tmp.insert(name);
            } else if step_of(&name).is_some_and(|s| s > start_step) {
                self.renamed.insert(name);
            }
        }
        if let Ok(l) = std::fs::read_to_string(ckpts.join("latest")) {
            if step_of(l.trim()).is_some_and(|s| s > start_step) {
                self.latest.insert(l);
            }
        }
    }

    fn reached(&self, aim: Aim) -> bool {
        match aim {
            Aim::Writing(n) => self.tmp.len() >= n,
            Aim::Renamed(n) => self.renamed.len() >= n,
            Aim::Between(n) => self.latest.len() >= n,
            Aim::Start | Aim::Blind => true,
        }
    }
}

fn exited_early(round: usize, status: std::process::ExitStatus, log: &Path) -> ! {
    let hint = if status.success() {
        format!(" (it finished all {STEPS} steps: raise STEPS for this machine)")
    } else {
        String::new()
    };
    panic!(
        "round {round}: the trainer exited ({status}) before it was killed{hint}:\n{}",
        std::fs::read_to_string(log).unwrap()
    )
}

#[test]
#[ignore = "soak test (tens of seconds): .ci/run runs it with `cargo test --workspace -- --ignored`"]
fn sigkill_at_random_points_never_corrupts_checkpoints() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = prep(&tmp.path().join("data"));

    // The reference: the same run without interruptions, in parallel with the killed one.
    let reference = config(&data, &tmp.path().join("reference"));
    let reference_cfg = tmp.path().join("reference.json");
    write_config(&reference, &reference_cfg);
    let mut reference_child = spawn(&reference_cfg, false, &tmp.path().join("reference.log"));

    let cfg = config(&data, &tmp.path().join("run"));
    let cfg_path = tmp.path().join("run.json");
    write_config(&cfg, &cfg_path);
    let ckpts = cfg.out_dir.join("checkpoints");
    let mut rng = Rng::new(2024);
    let mut latest = 0usize;
    let mut fresh_restarts = 0;
    let mut left_tmp = 0;
    let mut left_unpointed = 0;
    for round in 0..KILLS {
        let n = 1 + rng.below(3) as usize;
        let aim = match (round, rng.below(4)) {
            (0, _) => Aim::Start,
            (_, 0) => Aim::Blind,
            (_, 1) => Aim::Writing(n),
            (_, 2) => Aim::Renamed(n),
            _ => Aim::Between(n),
        };
        let resume = latest > 0;
        if !resume && round > 0 {
            fresh_restarts += 1;
        }
        let log = tmp.path().join(format!("round-{round}.log"));
        let spawned = SystemTime::now();
        let mut child = spawn(&cfg_path, resume, &log);
        let t0 = Instant::now();
        let mut seen = Seen::default();
        // No time limit: this loop ends because the trainer's work is bounded. Each poll either
        // sees the aim reached or the child still running; a child that finishes (or dies)
        // without the aim being reached is a failure (`exited_early`), and STEPS bounds how long
        // it can run. Only a hung trainer keeps the loop going, and CI's job timeout reports that.
        while !seen.reached(aim) {
            if let Some(status) = child.try_wait().unwrap() {
                exited_early(round, status, &log);
            }
            std::thread::sleep(Duration::from_micros(500));
            seen.poll(&ckpts, spawned, latest);
        }
        let delay = match aim {
            Aim::Start => rng.below(30),
            Aim::Blind => rng.below(1000),
            Aim::Writing(_) => rng.below(25),
            Aim::Renamed(_) => 0,
            Aim::Between(_) => rng.below(100),
        };
        std::thread::sleep(Duration::from_millis(delay));
        if let Some(status) = child.try_wait().unwrap() {
            exited_early(round, status, &log);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let alive_ms = t0.elapsed().as_millis();

        let names: Vec<String> = entries(&ckpts).into_iter().map(|(n, _)| n).collect();
        let previous = latest;
        latest = check_latest(&ckpts, previous, round);
        // What the kill interrupted (for the coverage checks below).
        let tmp_dirs = names
            .iter()
            .filter(|n| n.starts_with(".step-") && n.ends_with(".tmp"))
            .count();
        let newer = names
            .iter()
            .filter_map(|n| step_of(n))
            .filter(|&s| s > latest)
            .count();
        left_tmp += usize::from(tmp_dirs > 0);
        left_unpointed += usize::from(newer > 0);
        eprintln!(
            "round {round:2}: {aim:?} kill after {alive_ms:4} ms ({}), latest step {previous} -> \
             {latest}; {tmp_dirs} temporary, {newer} newer unpointed",
            if resume { "resumed" } else { "fresh" },
        );
    }
    // The kills landed where they were aimed: at least once before anything was written (so a
    // fresh start followed), and at least once in the middle of writing a checkpoint.
    assert!(
        fresh_restarts >= 1,
        "no kill landed before the first checkpoint"
    );
    assert!(
        left_tmp >= 1,
        "no kill landed while a checkpoint was being written"
    );
    assert!(
        latest > 0 && latest < STEPS,
        "latest step {latest}: the rounds must make progress without finishing"
    );

    // Finish the run.
    let log = tmp.path().join("final.log");
    let status = spawn(&cfg_path, true, &log).wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(check_latest(&ckpts, latest, KILLS), STEPS);
    let (m, _) = diffugpt::weights::load(&cfg.out_dir.join("final"), LoadOptions::default())
        .expect("the final model loads");
    assert_eq!(m.cfg.n_layer, 1);
    let run_losses = losses(&cfg.out_dir.join("metrics.jsonl"));
    assert_eq!(
        run_losses.keys().copied().collect::<Vec<_>>(),
        (1..=STEPS as u64).collect::<Vec<_>>(),
        "every step is logged"
    );

    // Bit-identical to the uninterrupted run.
    let status = reference_child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(tmp.path().join("reference.log")).unwrap()
    );
    assert_eq!(
        run_losses,
        losses(&reference.out_dir.join("metrics.jsonl")),
        "the losses differ from the uninterrupted run"
    );
    let load = |dir: &Path| {
        candle_core::safetensors::load(
            dir.join("final/model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (a, b) = (load(&cfg.out_dir), load(&reference.out_dir));
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            va == vb,
            "final weights differ from the uninterrupted run in {name}"
        );
    }
    eprintln!(
        "{KILLS} kills ({fresh_restarts} fresh restarts, {left_tmp} left a temporary, \
         {left_unpointed} left a newer unpointed checkpoint) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
