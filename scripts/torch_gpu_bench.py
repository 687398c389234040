# PyTorch + PEFT training step on a CUDA GPU, the companion of
# `bench_train_step METHOD BATCH SEQ STEPS random-smollm2 cuda` (scripts/device_check.sh runs
# both): a randomly initialised model of SmolLM2-135M's shape (the weights do not travel to
# the GPU machine), random token ids with labels = ids, AdamW lr 2e-4, 2 warm-up steps, then
# the mean over STEPS steps.
#
#   python scripts/torch_gpu_bench.py [lora|lora_all|full] [fp32|bf16] [BATCH] [SEQ] [STEPS]
#
# fp32 lets matrix products use TF32 tensor cores, as Burn's CUDA backend does; bf16 is
# autocast over f32 master weights, as runner's `precision = "bf16"`. `tflops` counts the
# step's matrix products as bench_train_step's `step_flops` does (see there).
import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
                    rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True)
ADAPTED = {"lora": ["q_proj", "v_proj"], "lora_all": "all-linear"}


def step_flops(c, trainable, adapters, batch, seq):
    tokens = batch * seq
    d, ffn = c["hidden_size"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    layers = c["num_hidden_layers"]
    weights = (d * q + 2 * d * kv + q * d + 3 * d * ffn) * layers
    head = d * c["vocab_size"]
    attention = 2 * 2 * batch * seq * seq * q * layers
    forward = 2 * tokens * (weights + head) + attention
    return 2 * forward + (6 if adapters else 2) * tokens * trainable


def main():
    method = sys.argv[1] if len(sys.argv) > 1 else "lora"
    precision = sys.argv[2] if len(sys.argv) > 2 else "fp32"
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    seq = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    if precision not in ("fp32", "bf16"):
        sys.exit(f"precision must be fp32 or bf16, not {precision}")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(device)
    if method in ADAPTED:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=ADAPTED[method], lora_dropout=0.0))
    elif method != "full":
        sys.exit(f"unknown method {method} (lora, lora_all, full)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=2e-4)
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (batch, seq), device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - start) / steps
    print(json.dumps({"impl": "pytorch", "device": "cuda", "method": method, "precision": precision,
                      "batch": batch, "seq": seq, "s_per_step": round(dt, 4),
                      "tokens_per_s": round(batch * seq / dt, 1),
                      "tflops": round(step_flops(SMOLLM2_135M, trainable_count, method != "full", batch, seq) / dt / 1e12, 3),
                      "trainable": trainable_count,
                      "peak_device_mb": round(torch.cuda.max_memory_allocated() / 2**20),
                      "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
