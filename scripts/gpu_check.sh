#!/usr/bin/env bash
# Prepares the GPU check, on this CPU machine: builds the release `diffugpt` binary and the
# tests/cuda.rs test binary with `--features cuda`, checks them, and packs them into
# target/gpu-pack/ (the GPU machine has no Rust). Then, in a session with the device tool:
#
#   run(command="bash scripts/gpu_run.sh", carry=["target/gpu-pack"], timeout_s=600)
#
# (gpu_run.sh stops itself at DEADLINE=540 s and writes $OUT/summary.md whatever happens.)
#
# glibc: this machine has glibc 2.36; the GPU machine's may be older. The binaries are therefore
# built with cargo-zigbuild for the target `x86_64-unknown-linux-gnu.2.31`: zig's linker links
# against glibc 2.31's symbol versions (and compiles the C dependencies with zig cc), so they load
# on any glibc >= 2.31. ziglang and cargo-zigbuild come from PyPI, pinned, into a cached venv
# (ZIGVENV, default ~/.cache/diffugpt-zigvenv; ~100 MB once). scripts/glibc_check.sh then checks
# every GLIBC_/GLIBCXX_ symbol version the packed binaries import is <= 2.31, and the pack fails
# otherwise. The CUDA libraries are not load-time dependencies (cudarc dlopens them).
# The zig build has its own target directory (target/x86_64-unknown-linux-gnu/): the first one is
# a full release build (~15-25 min on 2 cores), later ones are incremental.
#
# Usage: scripts/gpu_check.sh                     build, check, pack, dry-run gpu_run.sh on it
#        scripts/gpu_check.sh --pack-only BIN TESTS   pack and check two already built binaries
# Environment: GLIBC_MAX (default 2.31), ZIGVENV, CARGO_BUILD_JOBS (cargo's own),
#   GPU_CHECK_MANIFEST (another Cargo.toml to build, for testing this script).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
glibc_max=${GLIBC_MAX:-2.31}
target=x86_64-unknown-linux-gnu.$glibc_max
pack=target/gpu-pack
# Another crate with a `diffugpt` bin, a tests/cuda.rs and a `cuda` feature (the test of this
# script builds a tiny stand-in instead of the real ~20 min build).
manifest=${GPU_CHECK_MANIFEST:-Cargo.toml}
zig_pins=(ziglang==0.17.1 cargo-zigbuild==0.24.1)

if [ "${1:-}" = --pack-only ]; then
  [ $# -eq 3 ] || { echo "usage: $0 --pack-only DIFFUGPT_BIN CUDA_TESTS_BIN" >&2; exit 2; }
  bin=$2 test_bin=$3
  built_with="--pack-only (prebuilt binaries)"
else
  [ $# -eq 0 ] || { echo "usage: $0 [--pack-only DIFFUGPT_BIN CUDA_TESTS_BIN]" >&2; exit 2; }
  venv=${ZIGVENV:-${XDG_CACHE_HOME:-$HOME/.cache}/diffugpt-zigvenv}
  if ! "$venv/bin/cargo-zigbuild" --version >/dev/null 2>&1 ||
    ! "$venv/bin/python3" -m ziglang version >/dev/null 2>&1; then
    echo "== installing ${zig_pins[*]} into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "${zig_pins[@]}"
  fi
  # cargo-zigbuild finds zig through `python3 -m ziglang` of the venv.
  export PATH=$venv/bin:$PATH
  echo "== cargo zigbuild --release --features cuda --target $target (diffugpt, tests/cuda.rs)"
  json=$(mktemp)
  trap 'rm -f "$json"' EXIT
  cargo zigbuild --manifest-path "$manifest" --release --features cuda --target "$target" \
    --bin diffugpt --test cuda --message-format=json-render-diagnostics > "$json"
  # The executables from cargo's messages: the bin and the test harness of tests/cuda.rs.
  read -r bin test_bin < <(python3 - "$json" <<'PY'
import json, sys
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m.get("target", {})
    if t.get("name") == "diffugpt" and "bin" in t.get("kind", []):
        found["bin"] = m["executable"]
    if t.get("name") == "cuda" and "test" in t.get("kind", []):
        found["test"] = m["executable"]
print(found.get("bin", "-"), found.get("test", "-"))
PY
  )
  built_with="cargo-zigbuild $(cargo-zigbuild --version | awk '{print $2}'), zig $(python3 -m ziglang version), $(rustc --version)"
fi
for f in "$bin" "$test_bin"; do
  [ -f "$f" ] || { echo "gpu_check: binary not found: $f" >&2; exit 1; }
done

echo "== packing into $pack"
rm -rf "$pack" && mkdir -p "$pack"
cp "$bin" "$pack/diffugpt"
cp "$test_bin" "$pack/cuda-tests"
strip "$pack/diffugpt" "$pack/cuda-tests"
chmod +x "$pack/diffugpt" "$pack/cuda-tests"

echo "== glibc symbol versions (<= $glibc_max)"
glibc_ok=1
for b in "$pack/diffugpt" "$pack/cuda-tests"; do
  bash scripts/glibc_check.sh "$b" "$glibc_max" | tail -n 25 || glibc_ok=0
done
{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "built: $(date -u '+%Y-%m-%d %H:%M UTC') on $(ldd --version | head -n1 | awk '{print $NF}') glibc"
  echo "with: $built_with"
  for b in "$pack/diffugpt" "$pack/cuda-tests"; do
    { bash scripts/glibc_check.sh "$b" "$glibc_max" || true; } | tail -n1 | sed "s|$pack/||"
  done
} > "$pack/BUILD_INFO"
cat "$pack/BUILD_INFO"
if [ $glibc_ok -eq 0 ]; then
  echo "gpu_check: the pack needs a glibc newer than $glibc_max: it may not start on the GPU machine" >&2
  exit 1
fi

echo "== sanity here (no GPU: the binaries start without any CUDA library, and fall back)"
names=$("$pack/cuda-tests" --list --ignored | sed -n 's/: test$//p')
[ -n "$names" ] || { echo "gpu_check: $pack/cuda-tests lists no GPU test (--list --ignored)" >&2; exit 1; }
echo "GPU tests: $(echo "$names" | wc -l) ($(echo "$names" | tr '\n' ' '))"
"$pack/diffugpt" bench --device cuda --forward-lens 8 --reps 1 --canvas 0 --arm-tokens 0 \
  --format json > /dev/null
DIFFUGPT_ROOT=$PWD "$pack/cuda-tests" --test-threads=1 -q

echo "== gpu_run.sh --dry-run on this pack (the plan, with stubs for the GPU steps)"
dry=$(mktemp -d)
OUT=$dry bash scripts/gpu_run.sh --dry-run | tail -n 3
rm -rf "$dry"

# The device tool carries at most 64 MiB: the working tree and the pack together.
tree_kb=$(git ls-files -z | du -ck --files0-from=- 2>/dev/null | tail -n1 | cut -f1)
pack_kb=$(du -sk "$pack" | cut -f1)
echo "pack: $((pack_kb / 1024)) MiB; tracked tree: $((${tree_kb:-0} / 1024)) MiB (the device tool carries 64 MiB in all)"
if [ $((pack_kb + ${tree_kb:-0})) -gt $((60 * 1024)) ]; then
  echo "gpu_check: too big to carry: compress the pack (xz) or trim the tree" >&2
  exit 1
fi
echo "packed into $pack; next, with a GPU:"
echo "  run(command=\"bash scripts/gpu_run.sh\", carry=[\"$pack\"], timeout_s=600)"
