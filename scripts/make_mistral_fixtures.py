#!/usr/bin/env python3
"""Generates the Mistral sliding-window fixtures in tests/fixtures/parity/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors accelerate
    /some/venv/bin/python scripts/make_mistral_fixtures.py

Writes:
  tiny_mistral_hf/      a tiny random MistralForCausalLM (GQA, untied head) whose sliding window
                        (5) is shorter than the test sequences, so the window changes the logits
  mistral_expected.json input ids and transformers' logits (eager attention, which applies the
                        sliding-window mask), the same without the window (to show it matters),
                        and a greedy continuation generated with transformers' KV cache past the
                        window.
"""
import json
import os

import torch
from transformers import MistralConfig, MistralForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "fixtures", "parity")
torch.manual_seed(7)
cfg = MistralConfig(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256,
    sliding_window=5, tie_word_embeddings=False, attn_implementation="eager",
)
model = MistralForCausalLM(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
out_dir = os.path.join(OUT, "tiny_mistral_hf")
model.save_pretrained(out_dir, safe_serialization=True)

ids = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 88, 23, 54, 9, 31],
                    [7, 7, 7, 100, 12, 31, 45, 2, 77, 66, 9, 120, 11, 4]])
with torch.no_grad():
    logits = model(input_ids=ids).logits
    model.config.sliding_window = None
    full = model(input_ids=ids).logits
    model.config.sliding_window = 5
    prompt = ids[:1, :4]
    generated = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
diff = (logits - full).abs().max().item()
assert diff > 1e-2, f"the window should change the logits ({diff})"
with open(os.path.join(OUT, "mistral_expected.json"), "w") as f:
    json.dump({
        "input_ids": ids.tolist(),
        "logits": [round(x, 7) for x in logits.flatten().tolist()],
        "logits_without_window": [round(x, 7) for x in full.flatten().tolist()],
        "prompt": prompt[0].tolist(),
        "greedy": generated[0, prompt.shape[1]:].tolist(),
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": __import__("transformers").__version__},
    }, f)
print("max |window - no window|:", diff, "greedy:", generated[0].tolist())
