#!/usr/bin/env python3
"""PyTorch fp32 CPU reference for `diffugpt-train`'s diffusion objective, for side-by-side
comparison (benches/compare_pytorch_train.sh): the same GPT-2 blocks (pre-LN, tanh-GELU,
learned positions, LM head tied to the embedding), bidirectional attention, DiffuGPT's
objective (per sequence t ~ U(t_eps, 1), each position after the first masked with probability
t, the hidden state of position j - 1 predicts masked token j, loss weight 1/t, mean over the
masked rows, LM head on those rows only), AdamW (decay on >= 2-D parameters only) with OneCycle
(cosine, no momentum cycling), global-norm clip 1.0.

Tokens are random windows of a prepared stream split when --data names its stem (as written
by `diffugpt-train prepare --kind stream`), else uniformly random ids.
Prints JSON: positions/s (batch x seq per step) and loss rows/s over the steps from --from on,
and the peak RSS. With stream data every position is a useful (non-padding) token.

    python3 benches/pytorch_train.py --layers 4 --embd 256 --threads 2
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F


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
        q, k, v = self.c_attn(self.ln_1(x)).split(e, dim=2)
        q, k, v = (z.view(b, t, self.h, e // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, e))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(torch.nn.Module):
    def __init__(self, v, p, e, h, n):
        super().__init__()
        self.wte = torch.nn.Embedding(v, e)
        self.wpe = torch.nn.Embedding(p, e)
        self.blocks = torch.nn.ModuleList(Block(e, h) for _ in range(n))
        self.ln_f = torch.nn.LayerNorm(e, eps=1e-5)
        for name, w in self.named_parameters():
            if w.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n) if "proj.weight" in name else 0.02
                torch.nn.init.normal_(w, 0.0, std)
            elif name.endswith("bias"):
                torch.nn.init.zeros_(w)

    def hidden(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x)


def load_tokens(stem):
    """The ids of a prepared split (`<stem>.json` header, `<stem>.bin` little-endian ids)."""
    import array

    with open(stem + ".json") as f:
        header = json.load(f)
    a = array.array("H" if header["dtype"] == "u16" else "I")
    with open(stem + ".bin", "rb") as f:
        a.frombytes(f.read())
    return torch.tensor(a, dtype=torch.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--mask-id", type=int, default=10541)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40, help="steps run (OneCycle length)")
    ap.add_argument("--from", dest="start", type=int, default=10, help="first timed step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data", default="", help="stem of a prepared stream split (else random ids)")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    e, n = a.embd, a.layers
    m = Gpt2(a.vocab, 1024, e, max(1, e // 64), n).train()
    decay = [p for p in m.parameters() if p.dim() >= 2]
    no_decay = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.1, anneal_strategy="cos",
        div_factor=25.0, final_div_factor=1e4, cycle_momentum=False,
    )
    stream = load_tokens(a.data) if a.data else None
    g = torch.Generator().manual_seed(a.seed)
    b, t, t_eps = a.batch, a.seq, 1e-3
    timed_start, rows_timed = None, 0
    for step in range(a.steps):
        if step == a.start:
            timed_start = time.perf_counter()
        if stream is not None:
            starts = torch.randint(0, len(stream) - t, (b,), generator=g)
            x = torch.stack([stream[s : s + t] for s in starts])
        else:
            x = torch.randint(0, a.vocab, (b, t), generator=g)
        tn = t_eps + (1 - t_eps) * torch.rand(b, generator=g)
        masked = torch.rand(b, t, generator=g) < tn[:, None]
        masked[:, 0] = False
        inp = torch.where(masked, torch.full_like(x, a.mask_id), x)
        h = m.hidden(inp)
        sel = masked[:, 1:]
        hs = h[:, :-1][sel]
        logits = hs @ m.wte.weight.T
        nll = F.cross_entropy(logits, x[:, 1:][sel], reduction="none")
        w = (1.0 / tn)[:, None].expand(b, t - 1)[sel]
        loss = (nll * w).sum() / max(1, hs.shape[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        sched.step()
        if timed_start is not None:
            rows_timed += int(sel.sum())
    dt = time.perf_counter() - timed_start
    steps = a.steps - a.start
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "layers": n, "embd": e, "batch": b, "seq": t, "timed_steps": steps,
        "positions_per_s": steps * b * t / dt,
        "loss_rows_per_s": rows_timed / dt,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": loss.item(),
    }))


if __name__ == "__main__":
    main()
