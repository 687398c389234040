#!/usr/bin/env python3
"""Generates the Qwen2 and Qwen3 fixtures in tests/fixtures/parity/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors peft accelerate
    /some/venv/bin/python scripts/make_qwen_fixtures.py

For each family (qwen2: biases on q, k, v; qwen3: RMSNorm over each head of q and k, a head_dim
that is not hidden/heads) writes:
  tiny_<family>_hf/           a tiny random model (GQA; qwen2 with a tied head, qwen3 untied)
  tiny_<family>_lora/         a PEFT LoRA adapter on the family's default targets (PEFT's own
                              choice for the model type), with random non-zero weights
  qwen_expected.json          per family: input ids, transformers' logits, the logits with the
                              adapter (PEFT), and PEFT's trainable-parameter count for LoRA r=4
                              on the default targets.
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "fixtures", "parity")
ids = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 88, 23, 54], [7, 7, 7, 100, 12, 31, 45, 2, 77, 66, 9, 120]])
common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256, attn_implementation="eager")
families = {
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**common, rope_theta=1000000.0, tie_word_embeddings=True)),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(**common, head_dim=16, rope_theta=1000000.0, tie_word_embeddings=False)),
}
expected = {}
for seed, (family, (cls, cfg)) in enumerate(families.items()):
    torch.manual_seed(100 + seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    model.save_pretrained(os.path.join(OUT, f"tiny_{family}_hf"), safe_serialization=True)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
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
    }
    print(family, "targets", targets, "trainable", trainable)
expected["versions"] = {"torch": torch.__version__.split("+")[0],
                        "transformers": __import__("transformers").__version__,
                        "peft": __import__("peft").__version__}
with open(os.path.join(OUT, "qwen_expected.json"), "w") as f:
    json.dump(expected, f)

# Qwen's per-layer sliding windows (its own seed: the fixtures above stay as they are): with
# use_sliding_window, layers from max_window_layers on attend within the window (4 tokens on 14).
torch.manual_seed(150)
cfg = Qwen2Config(**{**common, "num_hidden_layers": 3}, rope_theta=10000.0, tie_word_embeddings=True,
                  use_sliding_window=True, sliding_window=4, max_window_layers=1)
model = Qwen2ForCausalLM(cfg).eval()
assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
with torch.no_grad():
    for name, p in model.named_parameters():
        p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
window_dir = os.path.join(OUT, "tiny_qwen2_window_hf")
model.save_pretrained(window_dir, safe_serialization=True)
# transformers 4 wrote no layer_types: runner must derive them from max_window_layers.
with open(os.path.join(window_dir, "config.json")) as f:
    saved = json.load(f)
saved.pop("layer_types")
with open(os.path.join(window_dir, "config.json"), "w") as f:
    json.dump(saved, f, indent=2)
long_ids = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 88, 23, 54, 9, 31]])
with torch.no_grad():
    windowed = model(input_ids=long_ids).logits
    model.config.layer_types = ["full_attention"] * 3
    unwindowed = model(input_ids=long_ids).logits
assert (windowed - unwindowed).abs().max() > 1e-2, "the window should change the logits"
with open(os.path.join(OUT, "qwen_window_expected.json"), "w") as f:
    json.dump({"input_ids": long_ids.tolist(), "logits": [round(x, 7) for x in windowed.flatten().tolist()]}, f)
