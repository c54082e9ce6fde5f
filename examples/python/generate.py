#!/usr/bin/env python3
"""Generate with the built-in default model through the Python binding, fixed-length and
EoS-first side by side.

    pip install ./bindings/python            # once (builds the library with cargo)
    python3 examples/python/generate.py [MODEL_DIR] [PROMPT]
"""
import os
import sys

import diffugpt

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "models", "default")
prompt = sys.argv[2] if len(sys.argv) > 2 else "Lantern \\Lan\"tern\\, n."

with diffugpt.Model.load(model_dir) as model:
    for mode in ("fixed", "eos-first"):
        res = model.generate(prompt, canvas_len=128, length_mode=mode)
        s = res.stats
        print(f"--- {mode}: {s.final_len} tokens, predicted {s.predicted_len}, "
              f"{s.forward_passes} forward passes, {s.elapsed_s:.2f} s")
        print(prompt + res.text)
