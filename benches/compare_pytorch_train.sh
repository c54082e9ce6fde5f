#!/usr/bin/env bash
# Side-by-side CPU training throughput: diffugpt-train (release) vs PyTorch fp32, interleaved on
# the same machine in the same run. Both train a from-scratch diffusion model (GPT-2 blocks,
# tied head, vocab 50257) on the same prepared stream data, batch 8 x 128, AdamW + OneCycle,
# clip 1.0, 40 steps; the rate is over steps 10-40 (positions = batch x seq per step; stream data
# has no padding), the peak RSS is the whole process's.
# Usage: benches/compare_pytorch_train.sh [PYTHON] [SHAPES] [THREADS] [ROUNDS] [CORPUS]
#   SHAPES: comma-separated LAYERSxWIDTH (default 4x256,2x128); THREADS (default 2) for both
#   sides (RAYON_NUM_THREADS / torch.set_num_threads); BACKEND=candle selects the trainer's
#   candle path instead of its CPU engine.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}; shapes=${2:-4x256,2x128}; threads=${3:-2}; rounds=${4:-2}
corpus=${5:-training/tests/fixtures/corpus/fortunes.txt}; backend=${BACKEND:-auto}
cargo build --release --quiet -p diffugpt-training
bin=${CARGO_TARGET_DIR:-target}/release/diffugpt-train
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$bin" prepare --input "$corpus" --tokenizer tests/fixtures/tiny-diffugpt/tokenizer.json \
    --out-dir "$work/data" --kind stream --val-frac 0.01 --test-frac 0.01 >/dev/null
results=()
for round in $(seq "$rounds"); do
  for shape in ${shapes//,/ }; do
    layers=${shape%x*}; embd=${shape#*x}
    ours=$("$py" - "$bin" "$work" "$layers" "$embd" "$threads" "$backend" "$round" <<'PY'
import json, os, resource, subprocess, sys
bin_, work, layers, embd, threads, backend, rnd = sys.argv[1:]
layers, embd = int(layers), int(embd)
out = f"{work}/run-{layers}x{embd}-{rnd}"
cfg = {
    "pipeline": "diffusion",
    "init": {"from": "scratch", "n_layer": layers, "n_head": max(1, embd // 64),
             "n_embd": embd, "n_positions": 1024},
    "train_data": f"{work}/data/train", "seq_len": 128, "batch_size": 8, "steps": 40,
    "optim": {"max_lr": 1e-3, "weight_decay": 0.01}, "log_every": 1, "seed": 0,
    "out_dir": out, "backend": backend,
}
path = f"{out}.json"
with open(path, "w") as f:
    json.dump(cfg, f)
env = dict(os.environ, RAYON_NUM_THREADS=threads)
subprocess.run([bin_, "train", path], env=env, check=True, stderr=subprocess.DEVNULL)
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
lines = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
el = {l["step"]: l["elapsed_s"] for l in lines if "elapsed_s" in l}
useful = [l["useful_tokens_per_s"] for l in lines if l.get("step", 0) > 10 and "useful_tokens_per_s" in l]
print(json.dumps({"positions_per_s": 30 * 8 * 128 / (el[40] - el[10]),
                  "useful_tokens_per_s": sum(useful) / len(useful), "peak_rss_mb": rss}))
PY
)
    theirs=$("$py" benches/pytorch_train.py --layers "$layers" --embd "$embd" --threads "$threads" \
        --data "$work/data/train")
    results+=("$shape $ours $theirs")
  done
done
"$py" - "${results[@]}" <<'PY'
import json, sys
print("| shape | diffugpt-train positions/s | PyTorch positions/s | ratio | diffugpt peak RSS MB | PyTorch peak RSS MB | RSS ratio |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
torch = ""
for r in sys.argv[1:]:
    shape, rest = r.split(" ", 1)
    dec = json.JSONDecoder()
    o, i = dec.raw_decode(rest)
    t, _ = dec.raw_decode(rest[i:].strip())
    torch = f"PyTorch {t['torch']}, threads {t['threads']}"
    print(f"| {shape} | {o['positions_per_s']:.0f} | {t['positions_per_s']:.0f} "
          f"| {o['positions_per_s'] / t['positions_per_s']:.2f} | {o['peak_rss_mb']:.0f} "
          f"| {t['peak_rss_mb']:.0f} | {o['peak_rss_mb'] / t['peak_rss_mb']:.2f} |")
print(f"\n{torch}")
PY
