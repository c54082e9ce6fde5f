#!/usr/bin/env bash
# Side-by-side forward timing: diffugpt (release) vs PyTorch fp32 on the same machine, same run.
# Usage: benches/compare_pytorch.sh [PYTHON] [LENS] [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}; lens=${2:-64,1024}; reps=${3:-3}
cargo build --release --quiet
ours=$(./target/release/diffugpt bench --forward-lens "$lens" --reps "$reps" --canvas 0 --format json)
theirs=$("$py" benches/pytorch_forward.py --lens "$lens" --reps "$reps")
"$py" - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"| T | diffugpt ms | PyTorch {t['torch']} ms ({t['threads']} threads, mkl={t['mkl']}) | ratio |")
print("| ---: | ---: | ---: | ---: |")
for k, v in o["forward_ms"].items():
    p = t["forward_ms"][k]
    print(f"| {k} | {v:.1f} | {p:.1f} | {v / p:.2f} |")
PY
