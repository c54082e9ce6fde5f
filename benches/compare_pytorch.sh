#!/usr/bin/env bash
# Side-by-side forward timing: diffugpt (release) vs PyTorch on the same machine, same run, per
# weight dtype.
# Usage: [ROUNDS=N] benches/compare_pytorch.sh [PYTHON] [LENS] [REPS] [THREADS] [DTYPES]
# THREADS (default: each side's own default, one per core) is passed to both sides. DTYPES
# (default f32) is a comma-separated list of f32, bf16, int8: ours keeps bf16 / int8 weights
# (`--dtype`; products on the integer / bf16 dot-product kernels where they run, else decoded to
# f32); PyTorch casts the model to bf16 / applies quantize_dynamic (int8).
# ROUNDS (default 1): the two sides run in alternating rounds (ours, PyTorch, ours, ...) and the
# table gives each side's median and minimum over the rounds (each round's value is the mean of
# its REPS forwards) with the ratio of the medians. On a shared host a single run of each is not
# a comparison: a neighbour's load that falls on one side only moves the ratio by 20 % or more
# (measured on the Zen 3 host: the same build 2.4 and 2.75 s at T = 1024 within minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}; lens=${2:-64,1024}; reps=${3:-3}; threads=${4:-}; dtypes=${5:-f32}
rounds=${ROUNDS:-1}
cargo build --release --quiet
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
for d in ${dtypes//,/ }; do
for r in $(seq 1 "$rounds"); do
    ./target/release/diffugpt ${threads:+--threads "$threads"} bench --forward-lens "$lens" \
        --reps "$reps" --canvas 0 --arm-tokens 0 --dtype "$d" --format json > "$runs/ours.$d.$r"
    "$py" benches/pytorch_forward.py --lens "$lens" --reps "$reps" --dtype "$d" \
        ${threads:+--threads "$threads"} > "$runs/theirs.$d.$r"
done
"$py" - "$runs" "$d" "$rounds" <<'PY'
import json, os, statistics, sys
runs, d, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
ours = [json.load(open(os.path.join(runs, f"ours.{d}.{r}"))) for r in range(1, rounds + 1)]
theirs = [json.load(open(os.path.join(runs, f"theirs.{d}.{r}"))) for r in range(1, rounds + 1)]
o, t = ours[0], theirs[0]
peaks = [x["fma_peak_gflops"] for x in ours if x.get("fma_peak_gflops")]
peak = statistics.median(peaks) if peaks else None
what = "ms" if rounds == 1 else f"median ms (min), {rounds} alternating rounds"
print(f"\n| dtype | T | diffugpt {what} (threads: {o['threads']}) | PyTorch {t['torch']} {what} (threads: {t['threads']}, mkl={t['mkl']}) | ratio "
      f"| diffugpt GFLOP/s | floor ms at FMA peak | floor / PyTorch |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for key in sorted(o["forward_ms"], key=lambda s: int(s.split("/")[0])):
    k = key.split("/")[0]
    ov = [x["forward_ms"][key] for x in ours]
    tv = [x["forward_ms"][k] for x in theirs]
    v, p = statistics.median(ov), statistics.median(tv)
    # GFLOP/s of the median time: the work per forward is the same in every round.
    g = o["forward_gflops"][key] * o["forward_ms"][key] / v
    # The floor: this forward's matrix arithmetic at the CPU's measured f32 FMA peak; no f32
    # implementation doing the same work can go below it.
    floor = g * v / peak if peak else float("nan")
    share = f" ({100 * g / peak:.0f}%)" if peak else ""
    vs = f"{v:.1f}" if rounds == 1 else f"{v:.1f} ({min(ov):.1f})"
    ps = f"{p:.1f}" if rounds == 1 else f"{p:.1f} ({min(tv):.1f})"
    print(f"| {d} | {k} | {vs} | {ps} | {v / p:.2f} | {g:.1f}{share} | {floor:.1f} | {floor / p:.2f} |")
if peak:
    span = "" if len(peaks) == 1 else f" (median of the rounds; {min(peaks):.1f}-{max(peaks):.1f})"
    print(f"\nf32 FMA peak measured in the same run (threads: {o['threads']}): {peak:.1f} GFLOP/s"
          f"{span}; weights: {o.get('weight_mb')} MB")
PY
done
