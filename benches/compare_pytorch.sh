#!/usr/bin/env bash
# Side-by-side forward timing: diffugpt (release) vs PyTorch fp32 on the same machine, same run.
# Usage: benches/compare_pytorch.sh [PYTHON] [LENS] [REPS] [THREADS]
# THREADS (default: each side's own default, one per core) is passed to both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}; lens=${2:-64,1024}; reps=${3:-3}; threads=${4:-}
cargo build --release --quiet
ours=$(./target/release/diffugpt ${threads:+--threads "$threads"} bench --forward-lens "$lens" \
    --reps "$reps" --canvas 0 --format json)
theirs=$("$py" benches/pytorch_forward.py --lens "$lens" --reps "$reps" ${threads:+--threads "$threads"})
"$py" - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
peak = o.get("fma_peak_gflops")
print(f"| T | diffugpt ms (threads: {o['threads']}) | PyTorch {t['torch']} ms (threads: {t['threads']}, mkl={t['mkl']}) | ratio "
      f"| diffugpt GFLOP/s | floor ms at FMA peak | floor / PyTorch |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for k in sorted(o["forward_ms"], key=int):
    v, p = o["forward_ms"][k], t["forward_ms"][k]
    g = o["forward_gflops"][k]
    # The floor: this forward's matrix arithmetic at the CPU's measured f32 FMA peak; no f32
    # implementation doing the same work can go below it.
    floor = g * v / peak if peak else float("nan")
    share = f" ({100 * g / peak:.0f}%)" if peak else ""
    print(f"| {k} | {v:.1f} | {p:.1f} | {v / p:.2f} | {g:.1f}{share} | {floor:.1f} | {floor / p:.2f} |")
if peak:
    print(f"\nf32 FMA peak measured in the same run (threads: {o['threads']}): {peak:.1f} GFLOP/s")
PY
