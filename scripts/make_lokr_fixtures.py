#!/usr/bin/env python3
"""Generates the LoKr fixtures: PEFT's LoKr adapters on the tiny random Llama, their logits,
and PEFT's trainable counts for LoKr on SmolLM2-135M's shape.

    /some/venv/bin/python scripts/make_lokr_fixtures.py

Uses tests/fixtures/parity/tiny_hf (hidden 32, MLP 64: made by make_parity_fixtures.py) and the
input ids of tests/fixtures/peft/expected.json. Each adapter is built with PEFT's random
initialisation (`init_weights=False`, so it changes the logits), saved with `save_pretrained`
into tests/fixtures/peft/<name>/, and its logits go to tests/fixtures/peft/lokr_expected.json,
with the logits of PEFT's merge (`merge_and_unload`) of the first one and the counts.
"""
import json
import os

import torch
from peft import LoKrConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TINY = "tests/fixtures/parity/tiny_hf"
OUT = "tests/fixtures/peft"
IDS = torch.tensor(json.load(open(os.path.join(OUT, "expected.json")))["input_ids"])

ADAPTERS = {
    # r 2 < every side / 2: both factors low-rank products (lokr_w1_a/b, lokr_w2_a/b).
    "lokr": LoKrConfig(r=2, alpha=4, target_modules="all-linear", decompose_both=True,
                       init_weights=False, task_type="CAUSAL_LM"),
    # Split by 4 where it divides; r 8 keeps the full factors (lokr_w1, lokr_w2).
    "lokr_factor": LoKrConfig(r=8, alpha=2, target_modules=["q_proj", "v_proj", "down_proj"],
                              decompose_factor=4, init_weights=False, task_type="CAUSAL_LM"),
}

expected = {"input_ids": IDS.tolist()}
for name, config in ADAPTERS.items():
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    model.save_pretrained(os.path.join(OUT, name))
    os.remove(os.path.join(OUT, name, "README.md"))  # a generated model card, not needed
    expected[name] = [round(v, 6) for v in logits.flatten().tolist()]
    if name == "lokr":
        merged = model.merge_and_unload()
        with torch.no_grad():
            expected["lokr_merged"] = [round(v, 6) for v in merged(input_ids=IDS).logits.flatten().tolist()]

smol = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
COUNTS = {
    "lokr_qv_r8": LoKrConfig(),
    "lokr_all_r8": LoKrConfig(r=8, alpha=8, target_modules="all-linear"),
    "lokr_all_r4_both": LoKrConfig(r=4, alpha=8, target_modules="all-linear", decompose_both=True),
    "lokr_qv_r16_factor8": LoKrConfig(r=16, target_modules=["q_proj", "v_proj"], decompose_factor=8),
}
counts = {}
for name, config in COUNTS.items():
    with torch.device("meta"):
        base = LlamaForCausalLM(smol)
    trainable, total = get_peft_model(base, config).get_nb_trainable_parameters()
    counts[name] = {"trainable": trainable, "total": total}
expected["smollm2_counts"] = counts
with open(os.path.join(OUT, "lokr_expected.json"), "w") as f:
    json.dump(expected, f)
print(json.dumps(counts, indent=1))
