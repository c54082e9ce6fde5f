#!/usr/bin/env bash
# The forward op by op, diffugpt against PyTorch: `diffugpt bench --profile` and
# `benches/pytorch_forward.py --profile` time each op the same way (wall-clock around it as the
# forward calls it, summed over the layers), in ROUNDS alternating rounds (default 3); the table
# gives each op's median ms per forward on each side and their ratio. f32 weights.
# Usage: [ROUNDS=N] benches/compare_profile.sh [PYTHON] [LENS] [REPS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}; lens=${2:-64,1024}; reps=${3:-2}; threads=${4:-}
rounds=${ROUNDS:-3}
cargo build --release --quiet
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
for r in $(seq 1 "$rounds"); do
    ./target/release/diffugpt ${threads:+--threads "$threads"} bench --forward-lens "$lens" \
        --reps "$reps" --canvas 0 --arm-tokens 0 --profile --format json > "$runs/ours.$r"
    "$py" benches/pytorch_forward.py --lens "$lens" --reps "$reps" --profile \
        ${threads:+--threads "$threads"} > "$runs/theirs.$r"
done
"$py" - "$runs" "$rounds" <<'PY'
import json, os, statistics, sys
runs, rounds = sys.argv[1], int(sys.argv[2])
ours = [json.load(open(os.path.join(runs, f"ours.{r}"))) for r in range(1, rounds + 1)]
theirs = [json.load(open(os.path.join(runs, f"theirs.{r}"))) for r in range(1, rounds + 1)]
print(f"\nForward op by op, median ms per forward over {rounds} alternating rounds "
      f"(diffugpt threads: {ours[0]['threads']}; PyTorch {theirs[0]['torch']}, threads: {theirs[0]['threads']})")
for p in ours[0]["forward_profile"]:
    t = str(p["t"])
    names = [o["op"] for o in p["ops"]] + ["other", "total"]
    def ours_ms(run, name):
        q = next(x for x in run["forward_profile"] if str(x["t"]) == t)
        if name == "total":
            return q["total_ms"]
        if name == "other":
            return q["other_ms"]
        return next((o["ms"] for o in q["ops"] if o["op"] == name), 0.0)
    print(f"\n| T = {t} | diffugpt ms | PyTorch ms | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for n in names:
        a = statistics.median(ours_ms(run, n) for run in ours)
        b = statistics.median(run["profile_ms"][t].get(n, 0.0) for run in theirs)
        ratio = f"{a / b:.2f}" if b > 0 else "-"
        print(f"| {n} | {a:.1f} | {b:.1f} | {ratio} |")
PY
