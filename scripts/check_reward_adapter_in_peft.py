#!/usr/bin/env python3
"""Checks that PEFT loads a reward-model adapter saved by runner, head included, and scores
as runner does. runner first re-saves the fixture adapter (LoRA on q,v plus its copy of the
score head) from its own tensors:

    printf 'local m = runner.model.load("tests/fixtures/preference/tiny_reward_hf")\\n
    m:load_adapter("tests/fixtures/preference/reward_lora")\\n m:save_adapter(runner.params.out)\\n' > save.lua
    runner save.lua --set out=DIR --trust   # DIR outside --results: allowed with --trust
    /some/venv/bin/python scripts/check_reward_adapter_in_peft.py DIR

(needs torch, transformers, peft). Prints PEFT's scores beside the fixture's and exits 1 when
they differ by more than 1e-4.
"""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import LlamaForSequenceClassification

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
adapter = sys.argv[1]
fixture = json.load(open("tests/fixtures/preference/reward.json"))
base = LlamaForSequenceClassification.from_pretrained(fixture["base"], dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter).eval()
batch = fixture["right_padded"]
with torch.no_grad():
    scores = model(input_ids=torch.tensor(batch["input_ids"]),
                   attention_mask=torch.tensor(batch["attention_mask"])).logits[:, 0].tolist()
want = fixture["rewards_lora"]["right"]
worst = max(abs(a - b) for a, b in zip(scores, want))
print(json.dumps({"peft_scores": scores, "fixture_scores": want, "max_abs_diff": worst}))
sys.exit(0 if worst < 1e-4 else 1)
