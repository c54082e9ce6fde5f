#!/usr/bin/env bash
# Shows that the decoder / objective tests can fail: applies each mutation named in issue 19 to a
# copy-restored source file, runs the test meant to catch it, expects that test to FAIL, and
# restores the file. Exits non-zero if any mutation survives (its test passed).
#   scripts/mutation_check.sh            # all mutations
#   scripts/mutation_check.sh growth     # the ones whose name contains "growth"
# Slow (each mutation rebuilds the library): not part of CI.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
only=${1:-}
survived=0

# name # file # sed expression # test command
mutations=(
  "reversed-sort#src/decode.rs#s/b\.1\.confidence\$/a.1.confidence/; s/\.total_cmp(&a\.1\.confidence)/.total_cmp(\&b.1.confidence)/#cargo test -p diffugpt --test decode each_strategy"
  "wrong-growth#src/decode.rs#s/(canvas\.len() \/ 2)\.max(16)/canvas.len().max(16)/#cargo test -p diffugpt --test decode growth"
  "reveal-all#src/decode.rs#s/remaining <= 1 || rng\.next_f64() < p/remaining >= 1 || rng.next_f64() < p/#cargo test -p diffugpt --test decode random_keep_reveals"
  "no-1-over-t#training/src/train.rs#s/(1\.0 \/ tn) as f32/1.0f32/#cargo test -p diffugpt-training --lib objective_tests"
  "no-shift#training/src/train.rs#s/rows\.push(((bi \* t + j - 1) as u32, \*slot,/rows.push(((bi * t + j) as u32, *slot,/#cargo test -p diffugpt-training --lib objective_tests"
  "no-pad-annealing#training/src/train.rs#s/let p = if after_end { tn \* pad_scale } else { tn };/let p = tn;/#cargo test -p diffugpt-training --lib objective_tests"
  "full-logits#src/decode.rs#s/slots\.chunks(LOGIT_CHUNK)/slots.chunks(slots.len().max(1))/#cargo test -p diffugpt --test memory decoding_a_1024"
  "swapped-margins-ffi#src/ffi.rs#s/margin: p\.margin as usize,/margin: p.margin_ratio as usize,/; s/margin_ratio: p\.margin_ratio,/margin_ratio: p.margin as f32,/#cargo test -p diffugpt --test ffi_params"
  "swapped-margins-cli#src/bin/diffugpt.rs#s/margin: a\.margin,/margin: a.margin_ratio as usize,/; s/margin_ratio: a\.margin_ratio,/margin_ratio: a.margin as f32,/#cargo test -p diffugpt --test cli_params"
)

for m in "${mutations[@]}"; do
  IFS='#' read -r name file expr cmd <<<"$m"
  [[ -n "$only" && "$name" != *"$only"* ]] && continue
  cp "$file" "$file.orig"
  sed -i "$expr" "$file"
  if cmp -s "$file" "$file.orig"; then
    echo "!! $name: the mutation did not apply to $file (source changed?)"
    mv "$file.orig" "$file"
    survived=1
    continue
  fi
  echo "== $name: $cmd"
  if $cmd >"/tmp/mutation-$name.log" 2>&1; then
    echo "!! $name SURVIVED: the test passed (log: /tmp/mutation-$name.log)"
    survived=1
  else
    echo "   caught by: $(grep -E '^test .* FAILED$' "/tmp/mutation-$name.log" | sed 's/^test //; s/ \.\.\. FAILED$//' | tr '\n' ' ')"
  fi
  mv "$file.orig" "$file"
done
exit $survived
