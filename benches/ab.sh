#!/usr/bin/env bash
# Two builds of `diffugpt` against each other on a shared host: their forward benchmarks run in
# alternating rounds (A, B, A, B, ...), so that a neighbour's load falls on both alike, and the
# minimum and median per build are printed with the ratio of the medians. A single run of each is
# not a comparison on such a host: the same build has read 114 and 160 ms minutes apart.
# Usage: benches/ab.sh A B [ROUNDS] [LENS] [REPS] [DTYPES]
#   A and B: a `diffugpt` binary, optionally after VAR=VALUE settings (one word each), e.g.
#   cp target/release/diffugpt /tmp/diffugpt_a; (change, build); \
#        benches/ab.sh /tmp/diffugpt_a target/release/diffugpt 5 64,1024 3
#   benches/ab.sh "DIFFUGPT_CPU_INT8=decode target/release/diffugpt" target/release/diffugpt \
#        5 64,1024 3 f32,int8
set -euo pipefail
usage="usage: benches/ab.sh A B [ROUNDS] [LENS] [REPS] [DTYPES]"
a=${1:?$usage}
b=${2:?$usage}
rounds=${3:-5}; lens=${4:-64,1024}; reps=${5:-3}; dtypes=${6:-f32}
py=$(command -v python3)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
    for side in a b; do
        spec=$a; [ "$side" = b ] && spec=$b
        read -ra cmd <<< "$spec"
        env "${cmd[@]}" bench --forward-lens "$lens" --reps "$reps" --canvas 0 --arm-tokens 0 \
            --dtype "$dtypes" --format json > "$out/$side.$r.json"
    done
done
"$py" - "$out" "$rounds" "$a" "$b" <<'PY'
import json, os, statistics, sys
d, rounds, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = {s: [json.load(open(os.path.join(d, f"{s}.{r}.json"))) for r in range(1, rounds + 1)]
        for s in "ab"}
# Keys: "64" for f32, "64/int8" for another weight format.
lens = sorted(runs["a"][0]["forward_ms"], key=lambda k: (k.partition("/")[2], int(k.partition("/")[0])))
print(f"A = {a}\nB = {b}\n{rounds} alternating rounds; each value the mean of one run's repetitions\n")
print("| T | A min ms | A median ms | B min ms | B median ms | B / A (medians) |")
print("| ---: | ---: | ---: | ---: | ---: | ---: |")
for t in lens:
    va = [r["forward_ms"][t] for r in runs["a"]]
    vb = [r["forward_ms"][t] for r in runs["b"]]
    ma, mb = statistics.median(va), statistics.median(vb)
    print(f"| {t} | {min(va):.1f} | {ma:.1f} | {min(vb):.1f} | {mb:.1f} | {mb / ma:.3f} |")
peaks = [r["fma_peak_gflops"] for s in "ab" for r in runs[s] if r.get("fma_peak_gflops")]
if peaks:
    print(f"\nf32 FMA peak over the runs: {min(peaks):.1f}-{max(peaks):.1f} GFLOP/s")
PY
