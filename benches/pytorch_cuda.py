#!/usr/bin/env python3
"""PyTorch bf16 reference on a CUDA GPU for `diffugpt bench --device cuda` (scripts/gpu_run.sh runs
both in the same session so the ratios are measured on the same machine, same run).

Model: DiffuGPT-S-shaped (12 x 768, 12 heads, vocab 50257, tied head), random weights, bf16,
bidirectional attention through F.scaled_dot_product_attention (flash / cuDNN kernels).

Workloads (milliseconds, mean over --reps after warm-up; the clock stops after a synchronize):
* forward-64, forward-1024: one forward of T positions, logits for every row and the greedy
  decision (argmax and its probability): what `diffugpt bench` times as forward-T;
* fixed-512: DiffuGPT fixed-length decoding, prompt 32 + canvas 512, 64 steps, confidence
  strategy, logits only for the masked rows (as diffugpt does);
* batch-16x512: one forward of 16 sequences of 512 positions, logits for every row.
Each is timed eager and with the forward captured in a CUDA graph (the decode's per-step
selection stays eager in both).

    python3 benches/pytorch_cuda.py --out pytorch.json [--reps 10]
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

V, P, E, H, L = 50257, 1024, 768, 12, 12
MASK, EOS = 10541, 50256


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(E, eps=1e-5)
        self.c_attn = torch.nn.Linear(E, 3 * E)
        self.c_proj = torch.nn.Linear(E, E)
        self.ln_2 = torch.nn.LayerNorm(E, eps=1e-5)
        self.c_fc = torch.nn.Linear(E, 4 * E)
        self.mlp_proj = torch.nn.Linear(4 * E, E)

    def forward(self, x):
        b, t, e = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(e, dim=2)
        q, k, v = (z.view(b, t, H, e // H).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, e))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(V, E)
        self.wpe = torch.nn.Embedding(P, E)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(L))
        self.ln_f = torch.nn.LayerNorm(E, eps=1e-5)
        torch.nn.init.normal_(self.wte.weight, std=0.02)
        torch.nn.init.normal_(self.wpe.weight, std=0.02)

    def hidden(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x)

    def decide(self, h):
        """Logits for the rows of h and the greedy decision (token, its probability)."""
        logits = h @ self.wte.weight.T
        logits[..., MASK] = float("-inf")
        p = logits.float().softmax(-1)
        conf, tok = p.max(-1)
        return tok, conf


def timed(reps, fn):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.mean(out), (statistics.stdev(out) if len(out) > 1 else 0.0)


def graphed(fn, *static_inputs):
    """Captures fn(*static_inputs) in a CUDA graph; returns (replay, static outputs)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = fn(*static_inputs)
    return g.replay, outs


def forward_bench(m, t, reps, batch=1):
    ids = torch.randint(0, V, (batch, t), device="cuda")

    def step(i):
        return m.decide(m.hidden(i))

    eager = timed(reps, lambda: step(ids))
    replay, _ = graphed(step, ids)
    graph = timed(reps, replay)
    return {"eager_ms": eager[0], "eager_std": eager[1], "graph_ms": graph[0], "graph_std": graph[1]}


def fixed_decode(m, prompt_len, canvas, steps, reps):
    """DiffuGPT fixed-length decoding, confidence strategy, greedy; logits for masked rows only."""
    p_len = 1 + prompt_len
    prefix = torch.cat([torch.tensor([EOS]), torch.arange(100, 100 + prompt_len)]).cuda()
    seq = torch.empty(1, p_len + canvas, dtype=torch.long, device="cuda")
    hidden_out = {}

    def fwd(s):
        return m.hidden(s)

    def run(forward):
        seq[0, :p_len] = prefix
        seq[0, p_len:] = MASK
        masked = torch.ones(canvas, dtype=torch.bool, device="cuda")
        for t in range(steps):
            h = forward()[0]
            slots = masked.nonzero().squeeze(1)
            tok, conf = m.decide(h[p_len - 1 + slots])
            n = math.ceil(slots.numel() / (steps - t))
            top = conf.topk(n).indices
            seq[0, p_len + slots[top]] = tok[top]
            masked[slots[top]] = False
            if not bool(masked.any()):
                break

    eager = timed(reps, lambda: run(lambda: fwd(seq)))
    replay, h_static = graphed(fwd, seq)
    hidden_out["h"] = h_static

    def graph_forward():
        replay()
        return hidden_out["h"]

    graph = timed(reps, lambda: run(graph_forward))
    return {"eager_ms": eager[0], "eager_std": eager[1], "graph_ms": graph[0], "graph_std": graph[1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--decode-reps", type=int, default=3)
    ap.add_argument("--out", default="pytorch.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    m = Gpt2().cuda().to(torch.bfloat16).eval()
    res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "dtype": "bf16"}
    with torch.inference_mode():
        for t in (64, 1024):
            res[f"forward-{t}"] = forward_bench(m, t, a.reps)
            print(f"forward-{t}", res[f"forward-{t}"], flush=True)
        res["fixed-512"] = fixed_decode(m, 32, 512, 64, a.decode_reps)
        print("fixed-512", res["fixed-512"], flush=True)
        res["batch-16x512"] = forward_bench(m, 512, a.reps, batch=16)
        print("batch-16x512", res["batch-16x512"], flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
