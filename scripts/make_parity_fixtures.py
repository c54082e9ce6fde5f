#!/usr/bin/env python3
"""Generate small golden parity fixtures for the GPT-2 / DiffuGPT forward pass.

Independent NumPy (float64) reference implementation of the GPT-2 (pre-LN)
forward pass, in two attention modes:
  * "diffusion": no attention mask (fully bidirectional), as used by DiffuGPT;
  * "causal":    standard GPT-2 causal mask (key j > query i masked with -inf).

Writes, under tests/fixtures/parity/<name>/:
  model.safetensors   random tiny weights (F32 / F16 / BF16, HF or DiffuGPT layout)
  config.json         HF GPT-2 style config
  golden.safetensors  ids (I64 [T]), logits_diffusion (F32 [T,V]), logits_causal (F32 [T,V])

Usage:  python3 scripts/make_parity_fixtures.py
Deterministic: re-running reproduces byte-identical files (safetensors files
are serialized by hand with sorted keys; BF16 is produced by round-to-nearest-
even truncation of float32 bit patterns, since NumPy has no bfloat16).
"""

import json
import math
import os
import struct
import sys

import numpy as np

V, E, H, L, P = 97, 16, 2, 2, 32
T = 12

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "parity")


# --------------------------------------------------------------------------
# dtype helpers
# --------------------------------------------------------------------------

def f32_to_bf16_bits(x):
    """float32 array -> uint16 bf16 bit patterns, round-to-nearest-even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    assert np.all(np.isfinite(x))
    u = x.view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_f32(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def quantize(w, dtype):
    """Return (stored_bytes_array, dtype_str, value_as_float64_seen_by_reference)."""
    w32 = np.asarray(w, dtype=np.float32)
    if dtype == "F32":
        return w32, "F32", w32.astype(np.float64)
    if dtype == "F16":
        h = w32.astype(np.float16)
        return h, "F16", h.astype(np.float64)
    if dtype == "BF16":
        bits = f32_to_bf16_bits(w32)
        return bits, "BF16", bf16_bits_to_f32(bits).astype(np.float64)
    raise ValueError(dtype)


# --------------------------------------------------------------------------
# minimal, deterministic safetensors writer / reader
# --------------------------------------------------------------------------

_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "F64": 8}
_NP = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "F64": "<f8"}


def write_safetensors(path, tensors):
    """tensors: dict name -> (np.ndarray, dtype_str). Keys written sorted."""
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        arr, dt = tensors[name]
        data = np.ascontiguousarray(arr, dtype=_NP[dt]).tobytes()
        assert len(data) == int(np.prod(arr.shape, dtype=np.int64)) * _ITEMSIZE[dt]
        header[name] = {
            "dtype": dt,
            "shape": [int(s) for s in arr.shape],
            "data_offsets": [off, off + len(data)],
        }
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Returns dict name -> (float64-or-int64 array, dtype_str)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        s, e = info["data_offsets"]
        end_max = max(end_max, e)
        a = np.frombuffer(raw[base + s:base + e], dtype=_NP[dt]).reshape(info["shape"])
        if dt == "BF16":
            a = bf16_bits_to_f32(a)
        out[name] = (a.copy(), dt)
    assert base + end_max == len(raw), "trailing/missing bytes"
    return out


# --------------------------------------------------------------------------
# reference forward pass (float64)
# --------------------------------------------------------------------------

def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=-1, keepdims=True)


def forward(p, ids, mode, n_head, eps):
    """p: canonical-name dict of float64 arrays (wte, wpe, h.{i}.*, ln_f.*, head)."""
    ids = np.asarray(ids, dtype=np.int64)
    t = ids.shape[0]
    e = p["wte"].shape[1]
    d = e // n_head
    n_layer = len({k.split(".")[1] for k in p if k.startswith("h.")})
    h = p["wte"][ids] + p["wpe"][:t]
    if mode == "causal":
        mask = np.where(np.arange(t)[None, :] > np.arange(t)[:, None], -np.inf, 0.0)
    elif mode == "diffusion":
        mask = np.zeros((t, t))
    else:
        raise ValueError(mode)
    for i in range(n_layer):
        g = lambda s: p[f"h.{i}.{s}"]
        a = layer_norm(h, g("ln_1.weight"), g("ln_1.bias"), eps)
        qkv = a @ g("attn.c_attn.weight") + g("attn.c_attn.bias")
        q, k, v = qkv[:, :e], qkv[:, e:2 * e], qkv[:, 2 * e:]
        heads = []
        for hh in range(n_head):
            sl = slice(hh * d, (hh + 1) * d)
            s = q[:, sl] @ k[:, sl].T / math.sqrt(d) + mask
            heads.append(softmax(s) @ v[:, sl])
        att = np.concatenate(heads, axis=1)
        h = h + att @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        m = layer_norm(h, g("ln_2.weight"), g("ln_2.bias"), eps)
        m = gelu_tanh(m @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias"))
        h = h + m @ g("mlp.c_proj.weight") + g("mlp.c_proj.bias")
    h = layer_norm(h, p["ln_f.weight"], p["ln_f.bias"], eps)
    return h @ p["head"].T


# --------------------------------------------------------------------------
# random model construction
# --------------------------------------------------------------------------

def random_canonical(rng, untied_head):
    """Canonical names -> float32 arrays."""
    f = lambda *shape: rng.normal(0.0, 0.2, size=shape).astype(np.float32)
    lnw = lambda: (1.0 + rng.normal(0.0, 0.1, size=(E,))).astype(np.float32)
    bias = lambda n: rng.normal(0.0, 0.05, size=(n,)).astype(np.float32)
    p = {"wte": f(V, E), "wpe": f(P, E)}
    for i in range(L):
        p[f"h.{i}.ln_1.weight"] = lnw()
        p[f"h.{i}.ln_1.bias"] = bias(E)
        p[f"h.{i}.attn.c_attn.weight"] = f(E, 3 * E)
        p[f"h.{i}.attn.c_attn.bias"] = bias(3 * E)
        p[f"h.{i}.attn.c_proj.weight"] = f(E, E)
        p[f"h.{i}.attn.c_proj.bias"] = bias(E)
        p[f"h.{i}.ln_2.weight"] = lnw()
        p[f"h.{i}.ln_2.bias"] = bias(E)
        p[f"h.{i}.mlp.c_fc.weight"] = f(E, 4 * E)
        p[f"h.{i}.mlp.c_fc.bias"] = bias(4 * E)
        p[f"h.{i}.mlp.c_proj.weight"] = f(4 * E, E)
        p[f"h.{i}.mlp.c_proj.bias"] = bias(E)
    p["ln_f.weight"] = lnw()
    p["ln_f.bias"] = bias(E)
    if untied_head:
        p["lm_head"] = f(V, E)
    return p


def file_name(canon, layout):
    if layout == "diffugpt":
        if canon == "wte":
            return "embed_tokens.weight"
        if canon == "wpe":
            return "denoise_model.wpe.weight"
        if canon == "lm_head":
            return "lm_head.weight"
        return "denoise_model." + canon
    if layout == "hf":
        if canon == "wte":
            return "transformer.wte.weight"
        if canon == "wpe":
            return "transformer.wpe.weight"
        if canon == "lm_head":
            return "lm_head.weight"
        return "transformer." + canon
    raise ValueError(layout)


MODELS = [
    # name, layout, dtype, eps, untied lm_head, seed
    ("diffugpt-f32", "diffugpt", "F32", 1e-5, False, 1001),
    ("diffugpt-f16", "diffugpt", "F16", 1e-6, False, 1002),
    ("gpt2-f32", "hf", "F32", 1e-5, True, 1003),
    ("gpt2-bf16", "hf", "BF16", 1e-5, False, 1004),
]


def make_model(name, layout, dtype, eps, untied, seed):
    rng = np.random.default_rng(seed)
    canon32 = random_canonical(rng, untied)
    ids = rng.integers(0, V, size=(T,), dtype=np.int64)
    ids[0] = 0
    alt_rng = np.random.default_rng(seed + 5000)

    stored, ref = {}, {}
    for cname, w in canon32.items():
        arr, dt, w64 = quantize(w, dtype)
        stored[file_name(cname, layout)] = (arr, dt)
        ref[cname] = w64

    d = os.path.join(OUT_DIR, name)
    os.makedirs(d, exist_ok=True)
    model_path = os.path.join(d, "model.safetensors")
    write_safetensors(model_path, stored)

    config = {
        "activation_function": "gelu_new",
        "layer_norm_epsilon": eps,
        "model_type": "gpt2",
        "n_embd": E,
        "n_head": H,
        "n_layer": L,
        "n_positions": P,
        "vocab_size": V,
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")

    # Reload what was actually written and use *that* as the reference weights.
    loaded = read_safetensors(model_path)
    assert set(loaded) == set(stored)
    back = {}
    for cname in canon32:
        a, dt = loaded[file_name(cname, layout)]
        assert dt == dtype
        back[cname] = a.astype(np.float64)
        assert np.array_equal(back[cname], ref[cname]), cname
    back["head"] = back["lm_head"] if untied else back["wte"]
    back.pop("lm_head", None)

    ld = forward(back, ids, "diffusion", H, eps)
    lc = forward(back, ids, "causal", H, eps)

    # ---- self-checks ----
    assert ld.shape == (T, V) and lc.shape == (T, V)
    assert np.all(np.isfinite(ld)) and np.all(np.isfinite(lc))
    # row 0 of causal only sees token 0; last row of causal sees everything.
    for i in range(T - 1):
        ids2 = ids.copy()
        ids2[i + 1:] = (ids[i + 1:] + 1 + alt_rng.integers(0, V - 1, size=T - i - 1)) % V
        assert np.all(ids2[i + 1:] != ids[i + 1:])
        lc2 = forward(back, ids2, "causal", H, eps)
        ld2 = forward(back, ids2, "diffusion", H, eps)
        assert np.array_equal(lc2[: i + 1], lc[: i + 1]), f"causal row {i} leaked future"
        assert np.abs(ld2[i] - ld[i]).max() > 1e-4, f"diffusion row {i} ignored future"
        # causal == running on the prefix alone
        lp = forward(back, ids[: i + 1], "causal", H, eps)
        assert np.array_equal(lp[i], lc[i]) or np.abs(lp[i] - lc[i]).max() < 1e-12
    # Last row: causal and diffusion see the same tokens but differ through earlier layers.
    assert np.abs(ld - lc).max() > 1e-3
    # Eps sensitivity (informational, for the 1e-6 model).
    other = forward(back, ids, "diffusion", H, 1e-5 if eps != 1e-5 else 1e-6)
    eps_delta = float(np.abs(other - ld).max())

    golden = {
        "ids": (ids, "I64"),
        "logits_diffusion": (ld.astype(np.float32), "F32"),
        "logits_causal": (lc.astype(np.float32), "F32"),
    }
    gpath = os.path.join(d, "golden.safetensors")
    write_safetensors(gpath, golden)
    g = read_safetensors(gpath)
    assert np.array_equal(g["ids"][0], ids)
    assert np.array_equal(g["logits_causal"][0], lc.astype(np.float32))

    print(
        f"{name}: dtype={dtype} eps={eps} tied={not untied} "
        f"|logits| max={np.abs(ld).max():.3f} std={ld.std():.3f}  "
        f"max|diff-causal|={np.abs(ld - lc).max():.3f}  eps-sensitivity={eps_delta:.2e}"
    )


def main():
    for m in MODELS:
        make_model(*m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
