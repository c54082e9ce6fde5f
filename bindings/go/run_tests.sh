#!/usr/bin/env bash
# Runs `go vet` and `go test` for the Go binding against target/release/libdiffugpt.so.
# Needs go and pkg-config (it says so and stops when one is missing; it installs nothing) and
# `cargo build --release` run at the repository root. Works from any directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
lib="${CARGO_TARGET_DIR:-$repo/target}/release"

# Never installs anything: a missing tool is reported with what to install (.ci/run installs
# golang-go and pkg-config explicitly).
missing=()
command -v go >/dev/null 2>&1 || missing+=("go (Debian/Ubuntu: apt-get install golang-go; or https://go.dev/dl)")
command -v pkg-config >/dev/null 2>&1 || missing+=("pkg-config (Debian/Ubuntu: apt-get install pkg-config)")
if [[ ${#missing[@]} -gt 0 ]]; then
    printf 'error: the Go binding tests need: %s\n' "${missing[@]}" >&2
    exit 1
fi

if [[ ! -f "$lib/libdiffugpt.so" || ! -f "$lib/diffugpt.pc" ]]; then
    echo "error: $lib/libdiffugpt.so or diffugpt.pc is missing; run 'cargo build --release' in $repo first" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'chmod -R u+w "$tmp" 2>/dev/null || true; rm -rf "$tmp"' EXIT

export PKG_CONFIG_PATH="$lib${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CGO_ENABLED=1
export GO111MODULE=on
export GOFLAGS=-mod=mod
export GOPROXY=off
export GOSUMDB=off
export GOTOOLCHAIN=local
export GOCACHE="$tmp/gocache"
export GOPATH="$tmp/gopath"
export GOMODCACHE="$GOPATH/pkg/mod"

cd "$here"
echo "== $(go version)"
echo "== go vet ./..."
go vet ./...
echo "== go test -v ./..."
go test -count=1 -v ./...
if [[ "${DIFFUGPT_GO_RACE:-0}" == "1" ]]; then
    echo "== go test -race ./..."
    go test -count=1 -race ./...
fi
# The example, on the built-in default model (a module of its own that uses this one).
echo "== examples/go: go run ."
(cd "$repo/examples/go" && go vet . && go run . | tee "$tmp/example.txt")
grep -q -- "--- eos-first" "$tmp/example.txt"
