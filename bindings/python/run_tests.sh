#!/usr/bin/env bash
# Installs the Python bindings into a throw-away venv and runs their tests.
# Assumes `cargo build --release` was run at the repository root. Works from any cwd.
# Env: PYTHON (default python3), DIFFUGPT_LIB (default <repo>/target/release/libdiffugpt.so).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
lib="${DIFFUGPT_LIB:-$repo/target/release/libdiffugpt.so}"

if [[ ! -f "$lib" ]]; then
    echo "run_tests.sh: $lib not found; run \`cargo build --release\` in $repo first" >&2
    exit 1
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/diffugpt-py.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

"$python" -m venv "$tmp/venv"
venv_py="$tmp/venv/bin/python"
# Build from a clean copy so no build/ or *.egg-info is left in (or reused from) the checkout.
mkdir -p "$tmp/src"
cp -R "$here/pyproject.toml" "$here/README.md" "$here/diffugpt" "$tmp/src/"
rm -rf "$tmp/src/diffugpt/__pycache__"
"$venv_py" -m pip install --quiet --disable-pip-version-check "$tmp/src" pytest

cd "$tmp"  # so that `import diffugpt` can only find the installed package
DIFFUGPT_LIB="$lib" "$venv_py" -m pytest "$here/tests" -q -p no:cacheprovider
