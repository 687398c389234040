# PyTorch + PEFT training step under CPU autocast (bf16 matmuls, f32 master weights), the
# companion of `RUNNER_BENCH_PRECISION=bf16 bench_train_step`. Same shapes and optimizer as
# ../shared/reference/lora_bench.py, which measures f32.
#
#   python scripts/torch_autocast_bench.py MODEL_DIR [lora|lora_all|full] [BATCH] [SEQ] [STEPS]
import json
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main():
    model_dir = sys.argv[1]
    method = sys.argv[2] if len(sys.argv) > 2 else "lora"
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    seq = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = {"lora": ["q_proj", "v_proj"], "lora_all": "all-linear"}
    if method in targets:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets[method], lora_dropout=0.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - start) / steps
    print(json.dumps({"impl": "pytorch", "method": method, "precision": "bf16 autocast", "batch": batch, "seq": seq,
                      "s_per_step": round(dt, 4), "tokens_per_s": round(batch * seq / dt, 1),
                      "trainable": sum(p.numel() for p in trainable),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
