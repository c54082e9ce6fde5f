#!/usr/bin/env bash
# Side-by-side forward timing: diffugpt (release) vs PyTorch on the same machine, same run, per
# weight dtype.
# Usage: benches/compare_pytorch.sh [PYTHON] [LENS] [REPS] [THREADS] [DTYPES]
# THREADS (default: each side's own default, one per core) is passed to both sides. DTYPES
# (default f32) is a comma-separated list of f32, bf16, int8: ours keeps bf16 / int8 weights
# (`--dtype`; products on the integer / bf16 dot-product kernels where they run, else decoded to
# f32); PyTorch casts the model to bf16 / applies quantize_dynamic (int8).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}; lens=${2:-64,1024}; reps=${3:-3}; threads=${4:-}; dtypes=${5:-f32}
cargo build --release --quiet
for d in ${dtypes//,/ }; do
ours=$(./target/release/diffugpt ${threads:+--threads "$threads"} bench --forward-lens "$lens" \
    --reps "$reps" --canvas 0 --arm-tokens 0 --dtype "$d" --format json)
theirs=$("$py" benches/pytorch_forward.py --lens "$lens" --reps "$reps" --dtype "$d" \
    ${threads:+--threads "$threads"})
"$py" - "$ours" "$theirs" "$d" <<'PY'
import json, sys
o, t, d = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
peak = o.get("fma_peak_gflops")
print(f"\n| dtype | T | diffugpt ms (threads: {o['threads']}) | PyTorch {t['torch']} ms (threads: {t['threads']}, mkl={t['mkl']}) | ratio "
      f"| diffugpt GFLOP/s | floor ms at FMA peak | floor / PyTorch |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for key in sorted(o["forward_ms"], key=lambda s: int(s.split("/")[0])):
    k = key.split("/")[0]
    v, p = o["forward_ms"][key], t["forward_ms"][k]
    g = o["forward_gflops"][key]
    # The floor: this forward's matrix arithmetic at the CPU's measured f32 FMA peak; no f32
    # implementation doing the same work can go below it.
    floor = g * v / peak if peak else float("nan")
    share = f" ({100 * g / peak:.0f}%)" if peak else ""
    print(f"| {d} | {k} | {v:.1f} | {p:.1f} | {v / p:.2f} | {g:.1f}{share} | {floor:.1f} | {floor / p:.2f} |")
if peak:
    print(f"\nf32 FMA peak measured in the same run (threads: {o['threads']}): {peak:.1f} GFLOP/s; "
          f"weights: {o.get('weight_mb')} MB")
PY
done
