#!/usr/bin/env bash
# Installs the Python package exactly as a user would (`pip install ./bindings/python`: setup.py
# builds libdiffugpt with cargo and bundles it) into a throw-away venv, then runs the tests with
# no DIFFUGPT_LIB set, so they use the bundled library. Works from any cwd.
# Env: PYTHON (default python3); CARGO_TARGET_DIR is honoured (an earlier build is reused).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
unset DIFFUGPT_LIB

tmp="$(mktemp -d "${TMPDIR:-/tmp}/diffugpt-py.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

"$python" -m venv "$tmp/venv"
venv_py="$tmp/venv/bin/python"
"$venv_py" -m pip install --quiet --disable-pip-version-check "$here" pytest

cd "$tmp"  # so that `import diffugpt` can only find the installed package
DIFFUGPT_EXPECT_BUNDLED=1 "$venv_py" -m pytest "$here/tests" -q -p no:cacheprovider
# The example, on the built-in default model, with the installed package.
echo "== examples/python/generate.py"
"$venv_py" "$here/../../examples/python/generate.py" | tee "$tmp/example.txt"
grep -q -- "--- eos-first" "$tmp/example.txt"
