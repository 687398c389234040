# PyTorch + PEFT training step, the companion of runner's `bench_train_step` where the shared
# f32 CPU reference (../shared/reference/lora_bench.py) does not reach: bf16 autocast on the
# CPU (scripts/bench_train_step.sh) and CUDA in f32 or bf16 (scripts/device_check.sh).
# Random token ids with labels = ids, AdamW lr 2e-4, 2 warm-up steps, then the mean over
# STEPS steps.
#
#   python scripts/torch_bench.py MODEL [lora|lora_all|full] [fp32|bf16] [cpu|cuda] [BATCH] [SEQ] [STEPS]
#
# MODEL is a Hugging Face model directory, or `random-smollm2`: a randomly initialised model
# of SmolLM2-135M's shape (the weights do not travel to the GPU machine). bf16 is autocast
# over f32 master weights, as runner's `precision = "bf16"`. On CUDA, f32 products may use
# TF32 tensor cores, as Burn's CUDA backend does. `tflops` counts the step's matrix products
# as bench_train_step's `step_flops` does (see there). Peak memory: the process's RSS on the
# CPU, `torch.cuda.max_memory_allocated` on CUDA.
import json
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
                    rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True)
TARGETS = {"lora": ["q_proj", "v_proj"], "lora_all": "all-linear"}


def step_flops(c, trainable, adapters, batch, seq):
    tokens = batch * seq
    d, ffn = c.hidden_size, c.intermediate_size
    hd = getattr(c, "head_dim", None) or d // c.num_attention_heads
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    layers = c.num_hidden_layers
    weights = (d * q + 2 * d * kv + q * d + 3 * d * ffn) * layers
    head = d * c.vocab_size
    attention = 2 * 2 * batch * seq * seq * q * layers
    forward = 2 * tokens * (weights + head) + attention
    return 2 * forward + (6 if adapters else 2) * tokens * trainable


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: torch_bench.py MODEL [METHOD] [PRECISION] [DEVICE] [BATCH] [SEQ] [STEPS]")
    model_name = args[0]
    method = args[1] if len(args) > 1 else "lora"
    precision = args[2] if len(args) > 2 else "fp32"
    device = torch.device(args[3] if len(args) > 3 else "cpu")
    batch = int(args[4]) if len(args) > 4 else 4
    seq = int(args[5]) if len(args) > 5 else 256
    steps = int(args[6]) if len(args) > 6 else 4
    if precision not in ("fp32", "bf16"):
        sys.exit(f"precision must be fp32 or bf16, not {precision}")
    if method not in TARGETS and method != "full":
        sys.exit(f"unknown method {method} (lora, lora_all, full)")
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    if model_name == "random-smollm2":
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
    model = model.to(device)
    config = model.config
    if method in TARGETS:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS[method], lora_dropout=0.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=2e-4)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    step()
    step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - start) / steps
    result = {"impl": "pytorch", "device": device.type, "method": method,
              "precision": "bf16 autocast" if precision == "bf16" else "fp32", "batch": batch, "seq": seq,
              "s_per_step": round(dt, 4), "tokens_per_s": round(batch * seq / dt, 1),
              "tflops": round(step_flops(config, trainable_count, method != "full", batch, seq) / dt / 1e12, 3),
              "trainable": trainable_count,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "torch": torch.__version__}
    if cuda:
        result.update(peak_device_mb=round(torch.cuda.max_memory_allocated() / 2**20), gpu=torch.cuda.get_device_name())
    else:
        result.update(threads=torch.get_num_threads())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
