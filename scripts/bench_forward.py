#!/usr/bin/env python3
"""Forward-pass throughput of transformers on SmolLM2-135M-Instruct, the reference for
examples/bench_forward.rs: batch 4 x 256 random tokens, f32, no grad; one warm-up, median of 5.

    /some/venv/bin/pip install torch transformers gguf accelerate
    /some/venv/bin/python scripts/bench_forward.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf [BATCH] [SEQ] [RUNS]
"""
import json
import os
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path = sys.argv[1]
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 4
seq = int(sys.argv[3]) if len(sys.argv) > 3 else 256
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 5
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
torch.manual_seed(0)
ids = torch.randint(0, model.config.vocab_size, (batch, seq))
times = []
with torch.no_grad():
    for i in range(runs + 1):
        t = time.perf_counter()
        model(input_ids=ids)
        if i > 0:
            times.append(time.perf_counter() - t)
median = statistics.median(times)
print(json.dumps({"impl": f"transformers {__import__('transformers').__version__} / torch {torch.__version__.split('+')[0]}",
                  "threads": torch.get_num_threads(), "batch": batch, "seq": seq,
                  "median_s": round(median, 3), "tokens_per_s": round(batch * seq / median)}))
