#!/usr/bin/env bash
# Prepares the GPU check: builds, on this (CPU) machine, the release `diffugpt` binary and the
# tests/cuda.rs test binary with `--features cuda`, strips them and packs them into
# target/gpu-pack/ (a few MB; the GPU machine has no Rust). Then, in a session with the device tool:
#
#   run(command="bash scripts/gpu_run.sh", carry=["target/gpu-pack"], timeout_s=540)
#
# gpu_run.sh writes everything to $OUT: tests.log, kernel_errors.md, bench_*.json, pytorch.json and
# summary.md (diffugpt vs PyTorch 2.11 bf16, same run, same GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --release --features cuda --bin diffugpt
test_bin=$(cargo test --release --features cuda --test cuda --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cuda" and m.get("executable"):
        print(m["executable"])' | tail -n1)
[ -n "$test_bin" ] || { echo "could not find the tests/cuda.rs binary" >&2; exit 1; }
pack=target/gpu-pack
rm -rf "$pack" && mkdir -p "$pack"
cp target/release/diffugpt "$pack/diffugpt"
cp "$test_bin" "$pack/cuda-tests"
strip "$pack/diffugpt" "$pack/cuda-tests"
ls -l "$pack"
du -sh "$pack"
# Sanity here: the binaries start without any CUDA library present (dynamic loading).
"$pack/diffugpt" bench --device cuda --forward-lens 8 --reps 1 --canvas 0 --format json >/dev/null
DIFFUGPT_ROOT=$PWD "$pack/cuda-tests" --test-threads=1 -q
echo "packed into $pack; next, with a GPU: run(command=\"bash scripts/gpu_run.sh\", carry=[\"$pack\"])"
