#!/usr/bin/env python3
"""models/default/README.md (the model card) from the recipe's run directory: the stages' configs
and metrics.jsonl (steps, positions seen, wall time, final losses) and, when `scripts/results.sh`
has run, the headline evaluation numbers. Called by `run.sh export`.

    python3 model_card.py RUN_DIR MODEL_DIR
"""
import json
import os
import platform
import subprocess
import sys

RUN, OUT = sys.argv[1], sys.argv[2]
STAGES = [
    ("pretrain-arm", "ARM pre-training on the entry stream (no padding)"),
    ("pretrain", "diffusion adaptation: attention annealing from causal to bidirectional"),
    ("pad", "pad fine-tuning on eos-pad blocks (pad annealing)"),
]


def cpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def stage(name):
    d = os.path.join(RUN, name)
    cfg = json.load(open(os.path.join(d, "config.json")))
    rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    steps = train[-1]["step"]
    seq = cfg.get("seq_len", 256) if "stream" in cfg["train_data"] else 256
    positions = steps * cfg["batch_size"] * cfg.get("grad_accum", 1) * seq
    # elapsed_s restarts at each --resume: sum the pieces.
    wall, last = 0.0, 0.0
    for r in train:
        if r["elapsed_s"] < last:
            wall += last
        last = r["elapsed_s"]
    wall += last
    return dict(cfg=cfg, steps=steps, positions=positions, wall=wall,
                loss=train[-1]["loss"], val=val[-1]["val_loss"] if val else None)


def report(*parts):
    p = os.path.join(RUN, "eval", *parts, "report.json")
    return json.load(open(p)) if os.path.exists(p) else None


cfg = json.load(open(os.path.join(OUT, "config.json")))
params = None
w = []
a = w.append
a("# diffugpt default model\n")
a("A small DiffuGPT-architecture model (GPT-2 blocks, bidirectional attention, LM head tied to the")
a("token embedding, DiffuGPT's shift: the logits at position i predict token i+1) trained by this")
a("project's own `diffugpt-train` on dictionary entries, so that the library has a model that knows")
a("where its text ends. It is the CLI's and the examples' default (`cargo run --release -- generate`).")
a("It is the recipe's *eos-pad* model (pre-training + pad fine-tuning); the mask-EoS fine-tuned one")
a("predicts ends better at the first step but ends its answers too early (see `docs/results.md`).")
a("Decode it with the library's default end floor (0.7): without it, confidence decoding lets its")
a("padding creep inward and the answers stop after a handful of tokens.\n")
a("| | |")
a("| --- | --- |")
a(f"| shape | {cfg['n_layer']} layers x {cfg['n_embd']} wide, {cfg['n_head']} heads, "
  f"{cfg['n_positions']} positions, GELU (tanh) |")
a(f"| vocabulary | {cfg['vocab_size']} rows: a byte-level BPE of 8 192 ids trained on the corpus "
  f"(`tokenizer.json`) + the pad row |")
a(f"| special ids | end/BOS `<|endoftext|>` = {cfg['eos_token_id']}, mask `<|mask|>` = "
  f"{cfg['mask_token_id']}, pad = {cfg['pad_token_id']} |")
a(f"| weights | `model.safetensors`, f16, DiffuGPT-S key layout (`embed_tokens.weight`, "
  f"`denoise_model.*`, Conv1D `[in, out]`) |")
a("| license of the data | GCIDE (GPL), see `../shared/data/corpus/README.md` of the training machine |")
a("")
a("## Training (recipe: `training/recipes/default/run.sh`)\n")
a(f"Data: GCIDE dictionary entries (`gcide.txt`), prompt = the entry's first line (headword,")
a("pronunciation, part of speech), answer = the rest; split by entry with seed 0 (5 % validation,")
a("5 % test, never trained on). Entries longer than 254 tokens are left out of the 256-token blocks.\n")
a(f"Machine: `{cpu()}`, 2 cores, CPU training engine, fp32.\n")
a("Wall times include other work on the same 2 cores during the run (builds and tests): the")
a("engine's quiet speed at this shape is ~4 100-4 600 positions/s at batch 8 (`run.sh compare`).\n")
a("| stage | what | steps | batch (x accumulation) x length | positions seen | wall time | final train loss | val loss |")
a("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
total_pos, total_wall = 0, 0.0
for name, what in STAGES:
    if not os.path.exists(os.path.join(RUN, name, "metrics.jsonl")):
        continue
    s = stage(name)
    total_pos += s["positions"]
    total_wall += s["wall"]
    c = s["cfg"]
    val = "-" if s["val"] is None else f"{s['val']:.3f}"
    accum = c.get("grad_accum", 1)
    batch = f"{c['batch_size']} x {accum}" if accum > 1 else f"{c['batch_size']}"
    a(f"| `{name}` | {what} | {s['steps']} | {batch} x 256 | {s['positions'] / 1e6:.1f} M | "
      f"{s['wall'] / 60:.0f} min | {s['loss']:.3f} | {val} |")
a(f"| total | | | | {total_pos / 1e6:.1f} M | {total_wall / 60:.0f} min | | |")
a("")
a("Losses are nats per target token: ARM cross-entropy for `pretrain-arm`, the 1/t-weighted")
a("diffusion loss (an ELBO term, larger than a cross-entropy) for the diffusion stages.\n")

a("## Evaluation (held-out test entries; all of it in `docs/results.md`)\n")
meta, uni = report("eos-pad", "eos-meta"), report("eos-pad", "eos-uniform")
ppl, lam = report("eos-pad", "ppl"), report("eos-pad", "lambada")
thr = report("eos-pad", "throughput")
cmp_ = report("eos-pad", "compare")
if meta:
    for label, r in [("prompt alone", meta), ("part of the answer visible", uni)]:
        if not r:
            continue
        for p in r["predictors"]:
            if p["label"] in ("argmax", "threshold:0.95"):
                o = p["overall"]
                a(f"- First-step end, {label}, `{p['label']}`: upper bound correct "
                  f"{100 * o['upper_bound']:.1f} %, canvas saved {100 * o['saved_pooled']:.1f} % (pooled), "
                  f"exact {100 * o['exact']:.1f} %, RMSE {o['rmse']:.1f} slots (n = {o['n']}).")
if ppl:
    a(f"- Diffusion ELBO on held-out entries: {ppl['nll_per_token']:.3f} nats/token "
      f"(perplexity <= {ppl['ppl']:.1f}).")
if lam:
    a(f"- LAMBADA-style last-word accuracy on held-out entries: {100 * lam['accuracy']:.1f} % (n = {lam['n']}).")
if cmp_:
    f, e = cmp_["fixed"], cmp_["eos_first"]
    a(f"- Decoding {cmp_['n_prompts']} held-out headwords both ways (canvas {cmp_['canvas']}, end floor "
      f"{cmp_.get('end_floor', 0.7)}): mean answer length {f['mean_final_len']:.1f} fixed vs "
      f"{e['mean_final_len']:.1f} EoS-first; the model's own ELBO of the answers {f['nll_per_token']:.3f} vs "
      f"{e['nll_per_token']:.3f} nats/token; positions processed {f['positions_processed']} vs "
      f"{e['positions_processed']}.")
if thr:
    a(f"- Useful tokens/s, EoS-first vs fixed-length decoding ({thr['fixed']['examples']} entries, "
      f"canvas {thr['canvas']}): {thr['eos_first']['useful_tokens_per_s']:.1f} vs "
      f"{thr['fixed']['useful_tokens_per_s']:.1f} ({thr['speedup']:.2f}x).")
a("")
a("## Limits\n")
a("- It knows dictionary entries and little else: trained on ~11 M tokens of GCIDE for about an hour")
a("  of a 2-core CPU, it writes text in the *style* of an entry (etymology brackets, numbered senses,")
a("  quotations, cross-references in braces) whose content is often wrong or repetitive. It is a")
a("  demonstration model for the decoding library, not a source of definitions.")
a("- Its context is 256 positions; entries longer than 254 tokens were never seen whole.")
a("- The tokenizer is its own (8 192 ids), not GPT-2's: use `tokenizer.json` from this directory.")
print("\n".join(w))
