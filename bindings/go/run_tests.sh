#!/usr/bin/env bash
# Runs `go vet` and `go test` for the Go binding against target/release/libdiffugpt.so.
# Assumes `cargo build --release` was run at the repository root. Works from any directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
lib="$repo/target/release"

if [[ ! -f "$lib/libdiffugpt.so" || ! -f "$lib/diffugpt.pc" ]]; then
    echo "error: $lib/libdiffugpt.so or diffugpt.pc is missing; run 'cargo build --release' in $repo first" >&2
    exit 1
fi

apt_install() {
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update
    $sudo apt-get install -y "$@"
}
if ! command -v go >/dev/null 2>&1; then
    echo "== go not found: installing golang-go with apt-get"
    apt_install golang-go
fi
if ! command -v pkg-config >/dev/null 2>&1; then
    echo "== pkg-config not found: installing it with apt-get"
    apt_install pkg-config
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
