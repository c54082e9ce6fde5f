#!/usr/bin/env bash
# Runs the C API's pointer and buffer helpers under Miri (undefined-behaviour checker):
# the tests in src/ffi.rs `mod tests` need no model, so Miri interprets them in about a minute.
#
#   bash scripts/miri.sh        (MIRI_TOOLCHAIN=nightly-YYYY-MM-DD to pin a nightly)
#
# Miri ships only with nightly toolchains; the script installs the toolchain's miri and rust-src
# components when they are missing. The rest of the project builds on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
tc=${MIRI_TOOLCHAIN:-nightly}
if ! cargo "+$tc" miri --version >/dev/null 2>&1; then
  echo "== installing $tc with miri"
  rustup toolchain install "$tc" --profile minimal --component miri,rust-src
fi
cargo "+$tc" miri --version
cargo "+$tc" miri setup >/dev/null
# -Zmiri-strict-provenance: the FFI code must not forge pointers from integers.
MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}" cargo "+$tc" miri test --lib ffi::tests
