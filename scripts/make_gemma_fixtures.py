#!/usr/bin/env python3
"""Generates the Gemma 2 and Gemma 3 fixtures in tests/fixtures/parity/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors peft accelerate
    /some/venv/bin/python scripts/make_gemma_fixtures.py

Each tiny random model exercises what sets the family apart from Llama: GeGLU (tanh GELU), RMSNorm
with `1 + weight` (the norm weights are drawn around 0, as Gemma stores them), the embedding
scaled by sqrt(hidden), the four norms of a layer (pre and post attention, pre and post MLP),
query_pre_attn_scalar != head_dim, a head_dim that is not hidden/heads, and sliding-window layers
beside full ones (window 4 on 14 tokens):
  gemma2: alternating layers, attention and final logit soft-capping (small caps, so they bite);
  gemma3: q/k RMSNorm per head, explicit layer_types, a local rope base for the sliding layers
          and linear rope scaling (factor 4) on the full ones; no soft-capping.
Writes, per family:
  tiny_<family>_hf/      the model (transformers' save_pretrained)
  tiny_<family>_lora/    a PEFT LoRA adapter (r=4) on PEFT's default targets, random non-zero
  gemma_expected.json    input ids, transformers' logits, the logits with the adapter, PEFT's
                         trainable count for LoRA r=4, and a greedy continuation generated with
                         transformers' KV cache past the window.
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "fixtures", "parity")
ids = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 88, 23, 54, 9, 31],
                    [7, 7, 7, 100, 12, 31, 45, 2, 77, 66, 9, 120, 11, 4]])
common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, rms_norm_eps=1e-6, max_position_embeddings=256, query_pre_attn_scalar=24,
              sliding_window=4, attn_implementation="eager", pad_token_id=0, bos_token_id=2, eos_token_id=1)
families = {
    "gemma2": (Gemma2ForCausalLM, Gemma2Config(
        **common, num_hidden_layers=3, rope_theta=10000.0, attn_logit_softcapping=4.0, final_logit_softcapping=3.0)),
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig(
        **common, num_hidden_layers=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
}
expected = {}
for seed, (family, (cls, cfg)) in enumerate(families.items()):
    torch.manual_seed(200 + seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    model.save_pretrained(os.path.join(OUT, f"tiny_{family}_hf"), safe_serialization=True)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        windowless = type(cfg)(**{**cfg.to_dict(), "sliding_window": 64})
        full = cls(windowless).eval()
        full.load_state_dict(model.state_dict())
        diff = (full(input_ids=ids).logits - logits).abs().max().item()
        assert diff > 1e-2, f"{family}: the window should change the logits ({diff})"
        prompt = ids[:1, :4]
        generated = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0,
                                   eos_token_id=None)
    if cfg.final_logit_softcapping is not None:
        assert logits.abs().max().item() < cfg.final_logit_softcapping
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    trainable, _total = peft_model.get_nb_trainable_parameters()
    targets = sorted(peft_model.peft_config["default"].target_modules)
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    assert (adapted - logits).abs().max() > 1e-3, "the adapter should change the logits"
    peft_model.save_pretrained(os.path.join(OUT, f"tiny_{family}_lora"))
    os.remove(os.path.join(OUT, f"tiny_{family}_lora", "README.md"))  # boilerplate model card
    expected[family] = {
        "input_ids": ids.tolist(),
        "logits": [round(x, 7) for x in logits.flatten().tolist()],
        "lora_logits": [round(x, 7) for x in adapted.flatten().tolist()],
        "lora_r4_default_targets": targets,
        "lora_r4_trainable": trainable,
        "prompt": prompt[0].tolist(),
        "greedy": generated[0, prompt.shape[1]:].tolist(),
    }
    print(family, "targets", targets, "trainable", trainable, "window changes logits by", diff,
          "greedy", generated[0].tolist())
expected["versions"] = {"torch": torch.__version__.split("+")[0],
                        "transformers": __import__("transformers").__version__,
                        "peft": __import__("peft").__version__}
with open(os.path.join(OUT, "gemma_expected.json"), "w") as f:
    json.dump(expected, f)
