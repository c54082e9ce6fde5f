#!/usr/bin/env bash
# CI check of the CUDA backend on a machine without a GPU (a few minutes on 2 cores):
#   1. NVRTC 13.0 from PyPI into a cached venv (~90 MB download once; no GPU, no nvcc needed);
#   2. clippy of everything with `--features cuda` (cudarc loads CUDA at run time, so the build
#      needs no CUDA at all);
#   3. tests/cuda.rs: kernels.cu compiles with NVRTC for sm_80 and sm_90, and `cuda` requests fall
#      back to the CPU (library, C API, CLI); the GPU tests are reported as ignored;
#   4. the GPU-run scripts without a GPU (scripts/test_gpu_scripts.sh): glibc_check.sh on binaries
#      that pass and fail, gpu_run.sh --selftest (its deadline always writes summary.md) and
#      gpu_run.sh --dry-run of the whole plan with stubs.
# Usage: scripts/cuda_ci_check.sh   (CUVENV=/path overrides the venv location)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
venv=${CUVENV:-${XDG_CACHE_HOME:-$HOME/.cache}/diffugpt-cuvenv}
# shellcheck disable=SC2012 # a venv path, no odd characters
nvrtc_lib() { ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -n1; }
if [ -z "$(nvrtc_lib)" ] || ! ls "$(nvrtc_lib)"/libnvrtc.so.13 >/dev/null 2>&1; then
  echo "== installing NVRTC 13.0 into $venv"
  python3 -m venv "$venv"
  # 13.0 to match the GPU machine's driver (580 / CUDA 13.0): newer NVRTC emits PTX it rejects.
  "$venv/bin/pip" install -q "nvidia-cuda-nvrtc==13.0.88"
fi
lib=$(nvrtc_lib)
echo "== cargo clippy --features cuda -D warnings"
cargo clippy --features cuda --all-targets -- -D warnings
echo "== cargo test --features cuda --test cuda (NVRTC from $lib)"
LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  cargo test --features cuda --test cuda -- --nocapture 2>&1 | tee /tmp/diffugpt-cuda-ci.log
# The compile test must really have run (not skipped for want of libnvrtc).
if grep -q "SKIPPED: libnvrtc" /tmp/diffugpt-cuda-ci.log; then
  echo "NVRTC could not be loaded from $lib: the kernel compile test did not run" >&2
  exit 1
fi
echo "== GPU-run scripts (glibc_check.sh, gpu_run.sh --selftest and --dry-run)"
bash scripts/test_gpu_scripts.sh
echo "== CUDA checks passed (GPU tests ignored: no GPU here)"
