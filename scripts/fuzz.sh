#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (libFuzzer + AddressSanitizer) on the stable toolchain.
#
#   bash scripts/fuzz.sh [TARGET|all] [SECONDS]     (defaults: all, 30 seconds per target)
#
# TARGET is one of: weights_loader config_json tokenizer_frontend c_api_strings.
# cargo-fuzz needs nightly-only flags (-Zsanitizer, -Cpasses=sancov...); RUSTC_BOOTSTRAP=1 lets
# the stable compiler accept them. For each target the script first replays the saved crash
# inputs in fuzz/regressions/<target>/ (each must now pass), then fuzzes for SECONDS starting
# from the committed seeds in fuzz/corpus/<target>/. New corpus entries go to
# fuzz/target/corpus/<target>/ (ignored by git, kept between runs), crashes to
# fuzz/artifacts/<target>/. Exits non-zero if any target crashed.
#
# FUZZ_RUNS=N makes a run reproducible (CI uses it): each target executes exactly N inputs with
# a fixed seed (FUZZ_SEED, default 1) from the committed seeds only, so a given commit always
# explores the same inputs; SECONDS then only caps the time.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(weights_loader config_json tokenizer_frontend c_api_strings)
target="${1:-all}"
seconds="${2:-30}"
if [ "$target" = all ]; then
  targets=("${ALL_TARGETS[@]}")
else
  case " ${ALL_TARGETS[*]} " in
    *" $target "*) targets=("$target") ;;
    *) echo "unknown target '$target' (all, ${ALL_TARGETS[*]})" >&2; exit 2 ;;
  esac
fi
case "$seconds" in '' | *[!0-9]*) echo "SECONDS must be a whole number" >&2; exit 2 ;; esac
case "${FUZZ_RUNS:-0}${FUZZ_SEED:-1}" in *[!0-9]*) echo "FUZZ_RUNS and FUZZ_SEED must be whole numbers" >&2; exit 2 ;; esac

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
# Scratch files of the targets (weights_loader writes model.safetensors there) stay in target/.
mkdir -p target/tmp target/logs
export TMPDIR="$PWD/target/tmp"

echo "== cargo fuzz build (${targets[*]})"
if [ ${#targets[@]} -eq ${#ALL_TARGETS[@]} ]; then
  cargo fuzz build
else
  cargo fuzz build "${targets[0]}"
fi

# libFuzzer options: one process (shared machines), a 4 GiB RSS/malloc cap (a single huge
# allocation is reported as a crash), 30 s per input, inputs up to 64 KiB (the seeds of
# weights_loader are ~40 KiB).
opts=(-rss_limit_mb=4096 -timeout=30 -max_len=65536 -print_final_stats=1)

failed=()
for t in "${targets[@]}"; do
  regs=()
  if [ -d "regressions/$t" ]; then
    while IFS= read -r -d '' f; do regs+=("$f"); done \
      < <(find "regressions/$t" -type f ! -name '*.md' -print0 | sort -z)
  fi
  if [ ${#regs[@]} -gt 0 ]; then
    echo "== $t: replaying ${#regs[@]} regression input(s)"
    if ! cargo fuzz run "$t" "${regs[@]}" -- "${opts[@]}" >"target/logs/$t-regressions.log" 2>&1; then
      tail -n 40 "target/logs/$t-regressions.log"
      grep -m3 -A4 "panicked at" "target/logs/$t-regressions.log" || true
      failed+=("$t (regression)")
      continue
    fi
  fi
  log="target/logs/$t.log"
  if [ -n "${FUZZ_RUNS:-}" ]; then
    echo "== $t: fuzzing ${FUZZ_RUNS} inputs, seed ${FUZZ_SEED:-1} (at most ${seconds}s)"
    # A throw-away corpus directory: earlier local runs must not change what CI explores.
    corpus_dirs=("$(mktemp -d "target/tmp/corpus-$t.XXXXXX")" "corpus/$t")
    mode=(-runs="$FUZZ_RUNS" -seed="${FUZZ_SEED:-1}")
  else
    echo "== $t: fuzzing for ${seconds}s"
    mkdir -p "target/corpus/$t"
    corpus_dirs=("target/corpus/$t" "corpus/$t")
    mode=()
  fi
  if cargo fuzz run "$t" "${corpus_dirs[@]}" -- \
      "${opts[@]}" "${mode[@]}" -max_total_time="$seconds" >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units|^stat::peak_rss_mb' "$log" || true
  else
    tail -n 60 "$log"
    grep -m3 -A4 "panicked at" "$log" || true
    echo "!! $t crashed; the input is in fuzz/artifacts/$t/ (log: fuzz/$log)." >&2
    echo "   Reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t fuzz/artifacts/$t/<file>  (in fuzz/)" >&2
    failed+=("$t")
  fi
  if [ -n "${FUZZ_RUNS:-}" ]; then rm -rf "${corpus_dirs[0]}"; fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "== fuzzing FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "== fuzzing passed: ${targets[*]} (${FUZZ_RUNS:+$FUZZ_RUNS runs or }${seconds}s each)"
