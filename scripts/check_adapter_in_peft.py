#!/usr/bin/env python3
"""Loads an adapter that runner saved into PEFT and compares PEFT's logits with expected ones.

    /some/venv/bin/python scripts/check_adapter_in_peft.py BASE_DIR ADAPTER_DIR EXPECTED_JSON KEY [FAMILY]

BASE_DIR is a Hugging Face model directory, ADAPTER_DIR what runner's save_adapter wrote,
EXPECTED_JSON a fixture holding "input_ids" and the logits under KEY (under FAMILY first when
given, as tests/fixtures/parity/qwen_expected.json nests them). Prints the largest |difference|
and exits 1 above 1e-4. For the Qwen fixtures, runner re-saves PEFT's adapter first:

    printf 'local m = runner.model.load("tests/fixtures/parity/tiny_qwen2_hf")\n
    m:load_adapter("tests/fixtures/parity/tiny_qwen2_lora")\n m:save_adapter(runner.params.out)\n' > save.lua
    runner save.lua --set out=DIR --trust
    /some/venv/bin/python scripts/check_adapter_in_peft.py tests/fixtures/parity/tiny_qwen2_hf DIR \
        tests/fixtures/parity/qwen_expected.json lora_logits qwen2
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

base, adapter, expected, key = sys.argv[1:5]
exp = json.load(open(expected))
if len(sys.argv) > 5:
    exp = exp[sys.argv[5]]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
ids = torch.tensor(exp["input_ids"])
with torch.no_grad():
    logits = model(input_ids=ids).logits.flatten()
diff = (logits - torch.tensor(exp[key])).abs().max().item()
print(f"{adapter}: max |PEFT - expected| = {diff:.3g}")
sys.exit(0 if diff <= 1e-4 else 1)
