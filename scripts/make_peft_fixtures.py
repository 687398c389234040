#!/usr/bin/env python3
"""Generates the Hugging Face PEFT fixtures in tests/fixtures/peft/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors peft
    /some/venv/bin/python scripts/make_peft_fixtures.py

Uses the tiny random Llama of tests/fixtures/parity/tiny_hf (made by make_parity_fixtures.py).
For each method it builds a PEFT model, sets every adapter weight to non-zero random values,
saves the adapter with `save_pretrained` into tests/fixtures/peft/<name>/ and records the
logits PEFT computes on fixed input ids in expected.json. For prompt and prefix tuning the
logits of the virtual positions are dropped, so every entry is [batch, seq, vocab].

It also writes smollm2_counts.json: PEFT's trainable and total parameter counts
(`get_nb_trainable_parameters`, what `print_trainable_parameters` prints) for SmolLM2-135M's
configuration, computed on the meta device (no weights needed).
"""
import json
import os

import torch
from peft import (IA3Config, LNTuningConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig,
                  get_peft_model)
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

# Relative paths, so that adapter_config.json's base_model_name_or_path names no machine path.
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TINY = "tests/fixtures/parity/tiny_hf"
OUT = "tests/fixtures/peft"
os.makedirs(OUT, exist_ok=True)

IDS = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 88], [7, 7, 7, 100, 12, 31, 45, 2, 77, 66]])

METHODS = {
    "lora": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    "lora_all_rslora": LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", use_rslora=True, task_type="CAUSAL_LM"),
    "dora": LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                       use_dora=True, task_type="CAUSAL_LM"),
    "ia3": IA3Config(task_type="CAUSAL_LM"),
    "prompt": PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
    "prefix": PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
    "prefix_proj": PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=16,
                                      task_type="CAUSAL_LM"),
}

expected = {"input_ids": IDS.tolist()}
for name, config in METHODS.items():
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(TINY, torch_dtype=torch.float32)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if "magnitude" in pname or "ia3_l" in pname:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits
    if logits.shape[1] != IDS.shape[1]:
        logits = logits[:, -IDS.shape[1]:]
    model.save_pretrained(os.path.join(OUT, name))
    os.remove(os.path.join(OUT, name, "README.md"))  # a generated model card, not needed
    expected[name] = [round(v, 6) for v in logits.flatten().tolist()]
    if name == "lora":
        # The merged model, as transformers computes it.
        merged = model.merge_and_unload()
        with torch.no_grad():
            expected["lora_merged"] = [round(v, 6) for v in merged(input_ids=IDS).logits.flatten().tolist()]
with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(expected, f)

# Trainable-parameter counts on SmolLM2-135M's configuration.
smol = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
COUNTS = {
    "lora_qv_r8": LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "lora_all_r8": LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    "dora_qv_r8": LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_dora=True),
    "ia3": IA3Config(task_type="CAUSAL_LM"),
    "prompt_20": PromptTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM"),
    "prefix_20": PrefixTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM"),
    "ln_tuning": LNTuningConfig(task_type="CAUSAL_LM"),
}
counts = {}
for name, config in COUNTS.items():
    with torch.device("meta"):
        base = LlamaForCausalLM(smol)
    model = get_peft_model(base, config)
    trainable, total = model.get_nb_trainable_parameters()
    counts[name] = {"trainable": trainable, "total": total}
with torch.device("meta"):
    base = LlamaForCausalLM(smol)
counts["full"] = {"trainable": sum(p.numel() for p in base.parameters()), "total": sum(p.numel() for p in base.parameters())}
with open(os.path.join(OUT, "smollm2_counts.json"), "w") as f:
    json.dump(counts, f, indent=1)
print(json.dumps(counts, indent=1))
