#!/usr/bin/env bash
# The default model's recipe (see README.md beside this script for the measured choices).
#   training/recipes/default/run.sh [STAGE...]
# Stages, in order (default: all but `compare`):
#   vocab     corpus BPE vocabulary (8 192 ids) on gcide + jargon + foldoc + fortunes
#   data      gcide entries tokenised: stream (pre-training), eos-pad and eos-eos blocks, mask-eos
#   compare   the short-budget measurements behind the two choices (vocabulary; diffusion from
#             scratch vs ARM + adaptation), COMPARE_MINUTES of training each
#   pretrain  ARM on the stream, then diffusion adaptation (attention annealing)
#   pad       pad fine-tuning on eos-pad blocks (the default model's line)
#   eoseos    the eos-eos variant of pad fine-tuning (for the Q1 comparison only)
#   maskeos   mask-EoS fine-tuning from the pad model
#   export    the eos-pad model: f16 weights + tokenizer + model card -> models/default
#   long      (not in the default line yet) continued diffusion pre-training of the stream,
#             ~100 min at 6 000 steps, resumable: the next model's base
#   eval      docs/results.md (scripts/results.sh)
# A stage whose run has a final model is skipped; one with checkpoints is resumed, so a stage cut
# short (STAGE_MINUTES, default 95, a session's share) continues where it stopped when run again.
# Environment: CORPUS (directory with gcide.txt, jargon.txt, foldoc.txt, fortunes.txt: the files of
#              ../shared/data/corpus next to the checkout by default; a copy anywhere works),
#              GPT2_TOKENIZER (GPT-2's tokenizer.json, only for `compare`; default
#              ../shared/data/gpt2/tokenizer.json),
#              RUN (where data and runs go, default training/runs/default; git-ignored),
#              STAGE_MINUTES, COMPARE_MINUTES (default 5).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
CORPUS=$(cd "${CORPUS:-$ROOT/../shared/data/corpus}" && pwd)
GPT2_TOKENIZER=${GPT2_TOKENIZER:-$ROOT/../shared/data/gpt2/tokenizer.json}
RUN=${RUN:-$ROOT/training/runs/default}
STAGE_MINUTES=${STAGE_MINUTES:-95}
COMPARE_MINUTES=${COMPARE_MINUTES:-5}
T=$ROOT/target/release/diffugpt-train
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(vocab data pretrain pad eoseos maskeos export eval)

for f in gcide.txt jargon.txt foldoc.txt fortunes.txt; do
  [ -f "$CORPUS/$f" ] || { echo "missing $CORPUS/$f (set CORPUS=DIR)" >&2; exit 1; }
done
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
cargo build --release --workspace --bins --manifest-path "$ROOT/Cargo.toml"
# The configs name paths relative to the run directory.
cd "$RUN"

# train CONFIG: one training stage, skipped when done, resumed when cut short.
train() {
  local cfg=$1 out
  out=$(sed -n 's/.*"out_dir": *"\([^"]*\)".*/\1/p' "$cfg")
  if [ -f "$out/final/model.safetensors" ]; then
    echo "   $out: done"
  elif [ -d "$out/checkpoints" ] && ls "$out/checkpoints" | grep -q step; then
    $T train "$cfg" --resume --max-minutes "$STAGE_MINUTES"
  else
    $T train "$cfg" --max-minutes "$STAGE_MINUTES"
  fi
  if [ ! -f "$out/final/model.safetensors" ]; then
    # Cut short by STAGE_MINUTES: the later stages start from this one's final model, so stop
    # here (successfully: the budget did its job) and let the next invocation resume.
    echo "   $out: stopped at its STAGE_MINUTES budget with a checkpoint; run the same command again to resume"
    exit 0
  fi
  # Loadable with its tokenizer (eval, `diffugpt --model`).
  cp tokenizer.json "$out/final/tokenizer.json"
}

# prepare KIND VARIANT TOKENIZER OUT
prepare() {
  [ -f "$4/train.bin" ] || $T prepare --input "$CORPUS/gcide.txt" --splitter entries --kind "$1" \
    --variant "$2" --block-len 256 --long-docs skip --seed 0 --tokenizer "$3" --out-dir "$4" >/dev/null
  echo "   $4"
}

# with_steps CONFIG STEPS OUT_CONFIG: a copy of CONFIG training for STEPS steps.
with_steps() {
  sed "s/\"steps\": *[0-9]*/\"steps\": $2/" "$1" > "$3"
}

# budget_steps CONFIG MINUTES: the steps CONFIG trains in MINUTES here, from a 12-step probe.
budget_steps() {
  local probe=probe-$(basename "$1") out pps
  sed -e 's/"log_every": *[0-9]*/"log_every": 4/' \
      -e 's/"out_dir": *"\([^"]*\)"/"out_dir": "\1-probe"/' "$1" > "$probe"
  out=$(sed -n 's/.*"out_dir": *"\([^"]*\)".*/\1/p' "$probe")
  rm -rf "$out"
  $T train "$probe" --stop-after 12 >/dev/null 2>&1
  pps=$(tail -1 "$out/metrics.jsonl" | sed -n 's/.*"positions_per_s":\([0-9.e+]*\).*/\1/p')
  rm -rf "$out" "$probe"
  python3 -c "print(int($2 * 60 * $pps / (8 * 256)))"
}

for stage in "${STAGES[@]}"; do
  echo "== $stage ($(date -u +%H:%M:%S))"
  case $stage in
    vocab)
      # Dictionary, jargon and FOLDOC entries and fortunes: the text the model is for.
      [ -f tokenizer.json ] || $T vocab --vocab-size 8192 --out tokenizer.json \
        --input "$CORPUS/gcide.txt" --input "$CORPUS/jargon.txt" \
        --input "$CORPUS/foldoc.txt" --input "$CORPUS/fortunes.txt"
      ;;
    data)
      # GCIDE entries: prompt = headword line, answer = the rest. Same seed and fractions for
      # every layout, so the held-out entries are the same documents in each.
      prepare stream eos-pad tokenizer.json data/gcide-stream
      prepare padded eos-pad tokenizer.json data/gcide-padded
      prepare padded eos-eos tokenizer.json data/gcide-eoseos
      prepare mask-eos eos-pad tokenizer.json data/gcide-mask-eos
      ;;
    compare)
      prepare stream eos-pad "$GPT2_TOKENIZER" data/gpt2-gcide-stream
      cp "$GPT2_TOKENIZER" data/gpt2-tokenizer.json
      mkdir -p compare
      for c in diffusion-gpt2 diffusion-bpe8k; do
        n=$(budget_steps "$HERE/compare/$c.json" "$COMPARE_MINUTES")
        echo "   $c: $n steps in $COMPARE_MINUTES min"
        with_steps "$HERE/compare/$c.json" "$n" "compare/$c.json"
        STAGE_MINUTES=$((COMPARE_MINUTES * 2)) train "compare/$c.json"
      done
      # ARM for 60 % of the budget, then diffusion adaptation (attention annealing) for 40 %.
      n=$(budget_steps "$HERE/compare/arm-bpe8k.json" "$(python3 -c "print($COMPARE_MINUTES * 0.6)")")
      with_steps "$HERE/compare/arm-bpe8k.json" "$n" compare/arm-bpe8k.json
      STAGE_MINUTES=$((COMPARE_MINUTES * 2)) train compare/arm-bpe8k.json
      n=$(budget_steps "$HERE/compare/adapt-bpe8k.json" "$(python3 -c "print($COMPARE_MINUTES * 0.4)")")
      with_steps "$HERE/compare/adapt-bpe8k.json" "$n" compare/adapt-bpe8k.json
      STAGE_MINUTES=$((COMPARE_MINUTES * 2)) train compare/adapt-bpe8k.json
      cp data/gpt2-tokenizer.json compare/diffusion-gpt2/final/tokenizer.json
      # The same held-out entries, the same masks: ELBO per token, and per entry (x tokens/entry).
      for c in diffusion-gpt2 diffusion-bpe8k adapt-bpe8k; do
        d=data/gcide-stream; [ $c != diffusion-gpt2 ] || d=data/gpt2-gcide-stream
        $T eval ppl --model "compare/$c/final" --data "$d/test" --seq-len 256 --max-seqs 64 \
          --levels 8 --out "compare/$c/ppl" >/dev/null
        echo "   $c: $(grep -o '"nll_per_token":[0-9.]*' "compare/$c/ppl/report.json")"
      done
      ;;
    pretrain)
      # ARM first, then diffusion adaptation with attention annealing (the better of the two on
      # the same short budget, see README.md).
      train "$HERE/pretrain-arm.json"
      train "$HERE/pretrain.json"
      ;;
    long) train "$HERE/pretrain-long.json" ;;
    pad) train "$HERE/pad.json" ;;
    eoseos) train "$HERE/eoseos.json" ;;
    maskeos) train "$HERE/maskeos.json" ;;
    export)
      # The eos-pad model: the mask-EoS model predicts ends better at the first step but ends its
      # answers too early in full decoding (docs/results.md, Q3), so it is not the default.
      $T export --model pad/final --tokenizer tokenizer.json --out "$ROOT/models/default"
      python3 "$HERE/model_card.py" "$RUN" "$ROOT/models/default" > "$ROOT/models/default/README.md"
      ;;
    eval) "$ROOT/scripts/results.sh" ;;
    *)
      echo "unknown stage $stage (see the top of this script)" >&2
      exit 2
      ;;
  esac
done
