#!/usr/bin/env python3
"""Loads a 4-bit checkpoint that runner wrote (model:save_pretrained on a quantized model) in
transformers + bitsandbytes on the CPU, and compares its logits with those of the checkpoint
transformers itself wrote from the same weights (tests/fixtures/quant/tiny_bnb_nf4).

    /some/venv/bin/python scripts/check_4bit_checkpoint_in_transformers.py DIR

DIR: for example the `nf4` folder that tests/fixtures/recipes/quant_api.lua saves in its trial
folder (runner tests/fixtures/recipes/quant_api.lua --results /tmp/q).
"""
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures", "quant")

ids = load_file(os.path.join(FIX, "expected.safetensors"))["input_ids"]
ours = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map="cpu")
theirs = AutoModelForCausalLM.from_pretrained(os.path.join(FIX, "tiny_bnb_nf4"), device_map="cpu")
for m in (ours, theirs):
    m.train()  # bitsandbytes' plain f32 path (see make_quant_fixtures.py); Llama has no dropout
q = ours.model.layers[0].self_attn.q_proj
print("loaded as", type(q).__name__, q.weight.quant_state.quant_type, "block", q.weight.quant_state.blocksize,
      "double" if q.weight.quant_state.nested else "single")
with torch.no_grad():
    a, b = ours(ids).logits, theirs(ids).logits
print("max |logits(runner checkpoint) - logits(transformers checkpoint)| =", (a - b).abs().max().item())
same = all(torch.equal(x, y) for (_, x), (_, y) in zip(sorted(ours.state_dict().items()), sorted(theirs.state_dict().items())))
print("state dicts identical:", same)
