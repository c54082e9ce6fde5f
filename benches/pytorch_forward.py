#!/usr/bin/env python3
"""PyTorch reference timing of one DiffuGPT-S-shaped forward (12 x 768, vocab 50257, random
weights, bidirectional attention, logits for every row), for side-by-side comparison with
`diffugpt bench`. Prints JSON {"forward_ms": {"64": ..., "1024": ...}, ...}.

    python3 benches/pytorch_forward.py --lens 64,1024 --reps 3 [--threads N] [--dtype D]

--dtype: f32 (default); bf16 (the whole model cast to bfloat16: PyTorch's own bf16 CPU path);
int8 (torch.ao.quantization.quantize_dynamic on every nn.Linear, the tied head included: int8
weights, activations quantised per row at run time, as PyTorch offers int8 on the CPU).

--profile: also time each op of the forward as `diffugpt bench --profile` does (wall-clock around
each op as the forward calls it, summed over the layers, mean of REPS forwards after the timed
ones), printed under "profile_ms" with the same op names, so the two split side by side.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

# Per-op wall-clock (ms) while profiling, keyed by the op names of `diffugpt bench --profile`;
# None when off, so that the timed forwards run the plain modules.
PROFILE = None


def timed(name, f, *args):
    if PROFILE is None:
        return f(*args)
    s = time.perf_counter()
    y = f(*args)
    PROFILE[name] = PROFILE.get(name, 0.0) + (time.perf_counter() - s) * 1e3
    return y


class Block(torch.nn.Module):
    def __init__(self, e, h):
        super().__init__()
        self.h = h
        self.ln_1 = torch.nn.LayerNorm(e, eps=1e-5)
        self.c_attn = torch.nn.Linear(e, 3 * e)
        self.c_proj = torch.nn.Linear(e, e)
        self.ln_2 = torch.nn.LayerNorm(e, eps=1e-5)
        self.c_fc = torch.nn.Linear(e, 4 * e)
        self.mlp_proj = torch.nn.Linear(4 * e, e)

    def forward(self, x):
        b, t, e = x.shape
        h = timed("layer_norm", self.ln_1, x)
        q, k, v = timed("qkv (c_attn)", self.c_attn, h).split(e, dim=2)
        q, k, v = (z.view(b, t, self.h, e // self.h).transpose(1, 2) for z in (q, k, v))
        y = timed("attention", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=False)
                  .transpose(1, 2).reshape(b, t, e))
        x = timed("residual adds", torch.add, x, timed("attn.c_proj", self.c_proj, y))
        h = timed("layer_norm", self.ln_2, x)
        m = timed("mlp.c_fc + gelu", lambda: F.gelu(self.c_fc(h), approximate="tanh"))
        return timed("residual adds", torch.add, x, timed("mlp.c_proj", self.mlp_proj, m))


class Gpt2(torch.nn.Module):
    def __init__(self, v=50257, p=1024, e=768, h=12, n=12):
        super().__init__()
        self.wte = torch.nn.Embedding(v, e)
        self.wpe = torch.nn.Embedding(p, e)
        self.blocks = torch.nn.ModuleList(Block(e, h) for _ in range(n))
        self.ln_f = torch.nn.LayerNorm(e, eps=1e-5)
        # Tied head as a Linear sharing the embedding, so that quantize_dynamic reaches it too.
        self.head = torch.nn.Linear(e, v, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, ids):
        x = timed("embed", lambda: self.wte(ids) + self.wpe(torch.arange(ids.shape[1])))
        for b in self.blocks:
            x = b(x)
        return timed("head (logits)", self.head, timed("layer_norm", self.ln_f, x))  # every row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", default="64,1024")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: PyTorch's default)")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "int8"])
    ap.add_argument("--profile", action="store_true", help="also time each op (profile_ms)")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = Gpt2().eval()
    if a.dtype == "bf16":
        m = m.to(torch.bfloat16)
    elif a.dtype == "int8":
        m = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    out = {}
    for t in [int(x) for x in a.lens.split(",")]:
        ids = (torch.arange(t) * 7919 % 50257).unsqueeze(0)
        with torch.inference_mode():
            m(ids)  # warm-up
            ms = []
            for _ in range(a.reps):
                s = time.perf_counter()
                m(ids)
                ms.append((time.perf_counter() - s) * 1e3)
        out[str(t)] = statistics.mean(ms)
    profile = {}
    if a.profile:
        global PROFILE
        for t in [int(x) for x in a.lens.split(",")]:
            ids = (torch.arange(t) * 7919 % 50257).unsqueeze(0)
            PROFILE = {}
            with torch.inference_mode():
                s = time.perf_counter()
                for _ in range(a.reps):
                    m(ids)
                total = (time.perf_counter() - s) * 1e3 / a.reps
            ops = {k: v / a.reps for k, v in PROFILE.items()}
            ops["total"] = total
            ops["other"] = max(0.0, total - sum(v for k, v in ops.items() if k != "total"))
            profile[str(t)] = ops
        PROFILE = None
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": a.dtype,
        "mkl": torch.backends.mkl.is_available(), "forward_ms": out,
        **({"profile_ms": profile} if a.profile else {}),
    }))


if __name__ == "__main__":
    main()
