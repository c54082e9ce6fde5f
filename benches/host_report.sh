#!/usr/bin/env bash
# Everything issue 16 asks to be measured on a CPU, in one run, into one markdown file: the CPU
# (model, flags, caches), the forward per weight dtype against the measured peaks, the forward op
# by op, the matrix kernels alone, the register blocks on one core, the two loop orders of the
# many-row products against each other (DIFFUGPT_CPU_GEMM=panel vs blocked, alternating rounds),
# and, given a Python with torch, PyTorch side by side per dtype and op by op. Meant for the first minutes of a session on
# a CPU not measured before (an Intel Xeon with AVX-512 is rare here): run it while nothing else
# holds the cores, then read the file.
# Usage: benches/host_report.sh [OUT.md] [PYTHON_WITH_TORCH]
#   ROUNDS=6 (A/B rounds), PT_ROUNDS=3 (alternating rounds against PyTorch), REPS=3; about
#   15-20 minutes on 2 cores with PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/host_report.md}
py=${2:-}
rounds=${ROUNDS:-6}
reps=${REPS:-3}
pt_rounds=${PT_ROUNDS:-3}
cargo build --release --quiet --bin diffugpt --example kernel_rates --example register_blocks
bin=target/release/diffugpt
{
    echo "# Host report ($(date -u +%Y-%m-%dT%H:%MZ), head $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo
    echo '```'
    lscpu | grep -E "^(Model name|Vendor ID|CPU family|Model:|CPU\(s\)|Thread|Core|L1d|L2|L3)" || true
    echo "flags: $(grep -o -E 'avx512[a-z_0-9]*|amx[a-z_0-9]*|avx_vnni|avx2|fma|f16c' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo '```'
    echo
    echo "## Forward per weight dtype, ARM decoding, peaks"
    echo
    echo "\`$bin bench --forward-lens 64,256,1024 --reps $reps --canvas 0 --arm-tokens 32 --dtype f32,bf16,int8\`"
    echo
    "$bin" bench --forward-lens 64,256,1024 --reps "$reps" --canvas 0 --arm-tokens 32 --dtype f32,bf16,int8
    echo
    echo "## The forward op by op"
    echo
    "$bin" bench --forward-lens 64,1024 --reps "$reps" --canvas 0 --arm-tokens 0 --profile
    echo
    echo "## Matrix kernels alone (2 threads, then 1)"
    echo
    ./target/release/examples/kernel_rates
    echo
    RAYON_NUM_THREADS=1 ./target/release/examples/kernel_rates
    echo
    echo "## Register blocks in L1, one thread"
    echo
    RAYON_NUM_THREADS=1 ./target/release/examples/register_blocks
    echo
    echo "## Loops of the many-row products: panel (A) vs blocked (B)"
    echo
    benches/ab.sh "DIFFUGPT_CPU_GEMM=panel $bin" "DIFFUGPT_CPU_GEMM=blocked $bin" "$rounds" 64,256,1024 "$reps"
    if [ -n "$py" ]; then
        echo
        echo "## Against PyTorch ($py), $pt_rounds alternating rounds"
        ROUNDS=$pt_rounds benches/compare_pytorch.sh "$py" 64,1024 "$reps" "" f32,bf16,int8
        echo
        echo "## Against PyTorch op by op (f32), $pt_rounds alternating rounds"
        ROUNDS=$pt_rounds benches/compare_profile.sh "$py" 64,1024 "$reps"
    fi
} 2>&1 | tee "$out"
echo "written: $out"
