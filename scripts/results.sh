#!/usr/bin/env bash
# docs/results.md and its plots, from the default recipe's models (training/recipes/default):
# every number in it is measured by `diffugpt-train eval` on the held-out test split.
#   scripts/results.sh [PART...]   (after `training/recipes/default/run.sh`)
# Parts, in order (default: all): q4 (EoS-first vs fixed: quality and useful tokens/s, the timed
# part: run it on a quiet machine), evals (Q1-Q3 for the four models), floor (the end-floor
# sweep of decoding), probe, md (assemble).
# Environment: RUN (the recipe's run directory, default training/runs/default),
#              N (test entries per first-step evaluation, default 400),
#              GEN (entries decoded in full per model for Q1, default 12),
#              Q4 (prompts decoded both ways for Q4, default 12),
#              FLOOR_N (entries decoded per end floor, default 24).
# Full decoding runs at half a step per canvas slot (DiffuGPT uses one): the whole script takes
# about 35 minutes on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=$(cd "${RUN:-$ROOT/training/runs/default}" && pwd)
N=${N:-400}
GEN=${GEN:-12}
Q4=${Q4:-12}
FLOOR_N=${FLOOR_N:-24}
T=$ROOT/target/release/diffugpt-train
DOCS=$ROOT/docs
PLOTS=$DOCS/results
EVAL=$RUN/eval
mkdir -p "$PLOTS" "$EVAL"
cd "$RUN"

# The four models of the comparison (label, run directory).
MODELS=(base:pretrain eos-eos:eoseos eos-pad:pad mask-eos:maskeos)
# A model whose stage has not run is left out (with a note), the others are evaluated.
found=()
for m in "${MODELS[@]}"; do
  if [ -f "${m#*:}/final/model.safetensors" ]; then
    cp tokenizer.json "${m#*:}/final/tokenizer.json"
    found+=("$m")
  else
    echo "note: no $RUN/${m#*:}/final: the ${m%%:*} model is left out (run its recipe stage)" >&2
  fi
done
[ ${#found[@]} -gt 0 ] || { echo "no model to evaluate: run training/recipes/default/run.sh first" >&2; exit 1; }
MODELS=("${found[@]}")

# The held-out entries as text: prompts (headword lines) and whole entries.
$T text --data data/gcide-padded/test --tokenizer tokenizer.json --out "$EVAL/text" --max "$N" >/dev/null

PARTS=("$@")
[ ${#PARTS[@]} -gt 0 ] || PARTS=(q4 evals floor probe md)
has() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

PREDICTORS=argmax,threshold:0.5,threshold:0.9,threshold:0.95,threshold:0.98,quantile:0.5,quantile:0.8,quantile:0.9,quantile:0.95,quantile:0.99
step() { echo "== $* ($(date -u +%H:%M:%S))"; }
has evals && for m in "${MODELS[@]}"; do
  name=${m%%:*} dir=${m#*:}/final
  # Q2: first-step end prediction from the prompt alone, and with part of the answer visible;
  # Q1: the second also decodes the first GEN entries in full (end-token precision/recall/F1 by
  # visible-token quartile, fixed vs EoS-first), without the end floor: the model's own ends.
  step "$name eos meta"
  $T eval eos --model "$dir" --data data/gcide-padded/test --out "$EVAL/$name/eos-meta" \
    --visible meta --max-examples "$N" --predictors "$PREDICTORS" >/dev/null
  step "$name eos uniform"
  $T eval eos --model "$dir" --data data/gcide-padded/test --out "$EVAL/$name/eos-uniform" \
    --visible uniform --max-examples "$N" --predictors "$PREDICTORS" --generate \
    --generate-examples "$GEN" --steps-per-token 0.5 --end-floor 0 >/dev/null
  # Q3: the price in quality: ELBO (perplexity bound) on held-out entries, LAMBADA-style accuracy.
  step "$name ppl"
  $T eval ppl --model "$dir" --data data/gcide-stream/test --seq-len 256 --max-seqs 64 \
    --out "$EVAL/$name/ppl" >/dev/null
  step "$name lambada"
  $T eval lambada --model "$dir" --from-text "$EVAL/text/docs.txt" --n 200 \
    --out "$EVAL/$name/lambada" >/dev/null
done
# Q4: EoS-first vs fixed-length decoding: answer quality and useful tokens/s, on the models that
# learned to end.
has q4 && for m in eos-pad:pad mask-eos:maskeos; do
  name=${m%%:*} dir=${m#*:}/final
  [ -f "$dir/model.safetensors" ] || continue
  step "$name compare"
  $T eval compare --model "$dir" --prompts "$EVAL/text/prompts.txt" --canvas 192 --steps 96 \
    --max-prompts "$Q4" --out "$EVAL/$name/compare" >/dev/null
  step "$name throughput"
  $T eval throughput --model "$dir" --data data/gcide-padded/test --max-examples "$Q4" \
    --steps-per-token 0.5 --out "$EVAL/$name/throughput" >/dev/null
done

# The end floor (decoding): answers of the pad-trained models from the prompt alone, decoded in
# full at several floors; the length error against the held-out entries picks the default.
has floor && for m in eos-pad:pad eos-eos:eoseos; do
  name=${m%%:*} dir=${m#*:}/final
  [ -f "$dir/model.safetensors" ] || continue
  for f in 0 0.5 0.7 0.8 0.9; do
    step "$name floor $f"
    $T eval eos --model "$dir" --data data/gcide-padded/test --out "$EVAL/$name/floor-$f" \
      --visible meta --max-examples "$FLOOR_N" --predictors quantile:0.9 --generate \
      --generate-examples "$FLOOR_N" --steps-per-token 0.5 --end-floor "$f" >/dev/null
  done
done

# The learned end probe on the frozen eos-pad model's first step, against its zero-shot predictors.
[ -f pad/final/model.safetensors ] && has probe && for v in meta uniform; do
  step "probe $v"
  $T eval probe --model pad/final --train-data data/gcide-padded/train --data data/gcide-padded/test \
    --visible $v --train-examples 1000 --max-examples "$N" --epochs 200 --out "$EVAL/eos-pad/probe-$v" >/dev/null
done

# Assemble docs/results.md: the reports' own tables under each question, plots copied beside.
has md || exit 0
step "docs/results.md"
for m in "${MODELS[@]}"; do
  name=${m%%:*}
  for d in "$EVAL/$name"/*/; do
    for png in "$d"*.png; do
      [ -f "$png" ] && cp "$png" "$PLOTS/$name-$(basename "$d")-$(basename "$png")"
    done
  done
done
python3 "$ROOT/scripts/results_md.py" "$EVAL" "$RUN" > "$DOCS/results.md"
echo "wrote $DOCS/results.md"
