#!/usr/bin/env python3
"""Writes a Llama checkpoint with random weights in a given shape, shard by shard, for memory
and scale runs (recipes/qlora_scale.lua). Nothing is committed: the script is the fixture.

    /some/venv/bin/python scripts/make_random_llama.py OUT_DIR [--shape llama-2-7b] [--dtype bf16]

Shapes are the published configurations' (hidden size, layers, heads, MLP width); the
vocabulary is the tiny test tokenizer's (tests/fixtures/parity/tiny_hf, 128 tokens), copied
beside the weights so runner can batch text. Weights are N(0, 0.02), norms one. Tensors are
generated and written one shard (about 2 GB) at a time, so the script never holds the model.
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file

SHAPES = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8),
}
TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests/fixtures/parity/tiny_hf")

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--shape", default="llama-2-7b", choices=sorted(SHAPES))
p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
args = p.parse_args()
dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
s = SHAPES[args.shape]
vocab = 128
d, ff, heads, kv = s["hidden_size"], s["intermediate_size"], s["num_attention_heads"], s["num_key_value_heads"]
hd = d // heads
os.makedirs(args.out, exist_ok=True)
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
          "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
          "head_dim": hd, **s}
json.dump(config, open(os.path.join(args.out, "config.json"), "w"), indent=1)
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(TINY, f), args.out)

gen = torch.Generator().manual_seed(0)


def rand(*shape):
    return (torch.randn(*shape, generator=gen) * 0.02).to(dtype)


def tensors():
    yield "model.embed_tokens.weight", lambda: rand(vocab, d)
    for i in range(s["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        yield pre + "input_layernorm.weight", lambda: torch.ones(d, dtype=dtype)
        yield pre + "post_attention_layernorm.weight", lambda: torch.ones(d, dtype=dtype)
        for name, shape in [("self_attn.q_proj", (heads * hd, d)), ("self_attn.k_proj", (kv * hd, d)),
                            ("self_attn.v_proj", (kv * hd, d)), ("self_attn.o_proj", (d, heads * hd)),
                            ("mlp.gate_proj", (ff, d)), ("mlp.up_proj", (ff, d)), ("mlp.down_proj", (d, ff))]:
            yield pre + name + ".weight", (lambda shape=shape: rand(*shape))
    yield "model.norm.weight", lambda: torch.ones(d, dtype=dtype)
    yield "lm_head.weight", lambda: rand(vocab, d)


SHARD_BYTES = 2 << 30
shard_keys, current, size, total, count = [], {}, 0, 0, 0


def flush():
    shard_keys.append(list(current))
    save_file(current, os.path.join(args.out, f"part-{len(shard_keys):05d}.safetensors"),
              metadata={"format": "pt"})
    current.clear()


for name, make in tensors():
    t = make()
    current[name] = t
    size += t.numel() * t.element_size()
    total += t.numel() * t.element_size()
    count += t.numel()
    if size >= SHARD_BYTES:
        flush()
        size = 0
if current:
    flush()
n = len(shard_keys)
weight_map = {}
for i, keys in enumerate(shard_keys, 1):
    final = f"model-{i:05d}-of-{n:05d}.safetensors"
    os.rename(os.path.join(args.out, f"part-{i:05d}.safetensors"), os.path.join(args.out, final))
    weight_map.update({k: final for k in keys})
json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
          open(os.path.join(args.out, "model.safetensors.index.json"), "w"), indent=1)
print(f"{args.shape}: {count:,} parameters, {total / 1e9:.2f} GB in {n} shards -> {args.out}")
