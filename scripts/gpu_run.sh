#!/usr/bin/env bash
# Runs ON THE GPU MACHINE (CUDA 13 driver + toolkit, PyTorch 2.11, no Rust), from the repository
# root, with target/gpu-pack built by scripts/gpu_check.sh. Writes results under $OUT.
#   1. tests/cuda.rs: every kernel vs the CPU reference (table in kernel_errors.md), the forward vs
#      the CPU model, greedy EoS-first decoding equal to the CPU's;
#   2. diffugpt bench --device cuda (bf16 and f32): forward T=64/1024, fixed vs EoS-first decoding
#      (prompt 32, canvas 512, 64 steps);
#   3. benches/pytorch_cuda.py: PyTorch bf16 on the same model shape (eager, CUDA graph, the same
#      decode workload, batched 16 x 512);
#   4. summary.md: the ratios.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/diffugpt-gpu-out}
mkdir -p "$out"
pack=target/gpu-pack
# The toolkit's libraries first: PyTorch's wheels carry other cuBLAS minor versions.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export DIFFUGPT_ROOT=$PWD
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
status=0

echo "== tests/cuda.rs"
# The GPU tests are #[ignore]d (a plain `cargo test` reports them as ignored, not passed);
# run them here, where a missing GPU (or libnvrtc) fails them instead of skipping them.
DIFFUGPT_REQUIRE_GPU=1 timeout 180 "$pack/cuda-tests" --include-ignored --nocapture \
  --test-threads=1 > "$out/tests.log" 2>&1 || status=1
tail -n 5 "$out/tests.log"
{
  echo "| kernel / test | dtype | rel. error | tolerance |"
  echo "| --- | --- | ---: | --- |"
  grep '^ERR |' "$out/tests.log" | sed 's/^ERR | /| /; s/$/ |/'
} > "$out/kernel_errors.md"
cat "$out/kernel_errors.md"
grep -q "SKIPPED: no GPU" "$out/tests.log" && { echo "GPU tests were skipped: no GPU found" >&2; status=1; }

echo "== diffugpt generate --device cuda (fixture model)"
timeout 30 "$pack/diffugpt" generate --model tests/fixtures/tiny-diffugpt --device cuda --dtype f32 \
  --canvas 32 --prompt "Hello" --json > "$out/generate.json" 2> "$out/generate.err" || status=1
cat "$out/generate.err"
if grep -q "running on the CPU" "$out/generate.err"; then
  # The GPU path is not usable: CPU benchmarks would only burn device time.
  echo "the CLI fell back to the CPU: skipping the benchmarks" >&2
  exit 1
fi

echo "== diffugpt bench --device cuda"
for dt in bf16 f32; do
  timeout 90 "$pack/diffugpt" bench --device cuda --dtype "$dt" --forward-lens 64,1024 --reps 10 \
    --canvas 512 --steps 64 --prompt-len 32 --answer-len 32 --format json \
    > "$out/bench_$dt.json" 2> "$out/bench_$dt.err" || status=1
  cat "$out/bench_$dt.err"
done
# The same bf16 bench replaying each forward from a CUDA graph (opt-in, see README).
DIFFUGPT_CUDA_GRAPHS=1 timeout 90 "$pack/diffugpt" bench --device cuda --dtype bf16 \
  --forward-lens 64,1024 --reps 10 --canvas 512 --steps 64 --prompt-len 32 --answer-len 32 \
  --format json > "$out/bench_bf16_graphs.json" 2> "$out/bench_bf16_graphs.err" || status=1
cat "$out/bench_bf16_graphs.err"

echo "== PyTorch bf16 (benches/pytorch_cuda.py)"
timeout 150 python3 benches/pytorch_cuda.py --out "$out/pytorch.json" || status=1

python3 - "$out" <<'PY' || status=1
import json, os, sys
out = sys.argv[1]
def load(n):
    try:
        return json.load(open(os.path.join(out, n)))
    except Exception as e:
        print(f"missing {n}: {e}")
        return None
ours, f32, pt = load("bench_bf16.json"), load("bench_f32.json"), load("pytorch.json")
gr = load("bench_bf16_graphs.json")
lines = ["| test | diffugpt bf16 ms | diffugpt bf16 + graphs ms | diffugpt f32 ms | PyTorch eager ms | PyTorch graph ms | bf16 / PyTorch graph |",
         "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
def row(name, key):
    a = next((r["mean_ms"] for r in (ours or {}).get("rows", []) if r["test"] == name), None)
    b = next((r["mean_ms"] for r in (f32 or {}).get("rows", []) if r["test"] == name), None)
    c = next((r["mean_ms"] for r in (gr or {}).get("rows", []) if r["test"] == name), None)
    e = (pt or {}).get(key, {}).get("eager_ms")
    g = (pt or {}).get(key, {}).get("graph_ms")
    f = lambda x: "-" if x is None else f"{x:.3f}"
    ratio = f"{a / g:.2f}" if a and g else "-"
    lines.append(f"| {name} | {f(a)} | {f(c)} | {f(b)} | {f(e)} | {f(g)} | {ratio} |")
row("forward-64", "forward-64")
row("forward-1024", "forward-1024")
row("fixed-512", "fixed-512")
name = next((r["test"] for r in (ours or {}).get("rows", []) if r["test"].startswith("eosfirst")), "eosfirst")
row(name, "fixed-512")
if pt and "batch-16x512" in pt:
    b = pt["batch-16x512"]
    lines.append(f"| batch 16x512 forward (PyTorch only) | - | - | - | {b['eager_ms']:.3f} | {b['graph_ms']:.3f} | - |")
lines.append("")
lines.append(f"backend: {(ours or {}).get('backend')}; torch {(pt or {}).get('torch')} on {(pt or {}).get('gpu')}")
lines.append("eosfirst row: compared with PyTorch's fixed-512 decode (same prompt, canvas and steps).")
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
exit $status
