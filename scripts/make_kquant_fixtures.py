#!/usr/bin/env python3
"""Generates the GGUF K-quant and rope-scaling fixtures in tests/fixtures/kquant/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors gguf accelerate
    /some/venv/bin/python scripts/make_kquant_fixtures.py

Writes:
  blocks.json        for each K-quant type (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K): three super-blocks
                     of random bytes (hex) whose f16 scales are set to moderate values, and their
                     dequantization by gguf-py (gguf.quants.dequantize). gguf-py has no Q8_K
                     (ggml uses it only as the dot-product operand), so Q8_K's expected values are
                     ggml's formula d * q, computed here with numpy.
  tiny_kquant.gguf   a tiny Llama (hidden 256, one layer) whose projections and embeddings are
                     K-quant tensors of random blocks (gguf-py cannot quantize to K-quants);
  kquant_expected.json  input ids and the logits transformers computes from tiny_kquant.gguf (its
                     GGUF loader dequantizes with gguf-py).
  llama3_freqs.gguf  the weights of tests/fixtures/parity/tiny_llama3_hf (Llama 3.1 rope scaling)
                     in F32, with the scaling stored as llama.cpp's converter stores it: the
                     tensor rope_freqs.weight (one divisor per rotary frequency) and no scaling
                     metadata; runner's logits must equal parity/llama3_expected.json.
  llama3_freqs_meta.gguf  the same, plus llama.rope.scaling.factor and
                     llama.rope.scaling.original_context_length metadata (then runner recognises
                     the Llama 3 scaling and can save it back to a transformers config).
Everything is seeded; reruns give the same files.
"""
import json
import math
import os

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES
from transformers import AutoModelForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
OUT = os.path.join(ROOT, "tests", "fixtures", "kquant")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(20261206)

# Byte offsets of the super-block scales in each type's block (ggml's block_q*_K structs):
# (offset, kind) with kind "f16" or "f32"; positive d for all, a smaller dmin where there is one.
SCALES = {
    Q.Q2_K: [(80, "d"), (82, "dmin")],
    Q.Q3_K: [(108, "d")],
    Q.Q4_K: [(0, "d"), (2, "dmin")],
    Q.Q5_K: [(0, "d"), (2, "dmin")],
    Q.Q6_K: [(208, "d")],
    Q.Q8_K: [(0, "d32")],
}


def random_blocks(qtype, n_blocks, d_scale):
    """n_blocks random blocks of qtype with finite, moderate super-block scales."""
    _, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for b in range(n_blocks):
        for offset, kind in SCALES[qtype]:
            if kind == "d32":
                raw[b, offset:offset + 4] = np.frombuffer(np.float32(d_scale * rng.uniform(0.5, 1.5)).tobytes(), np.uint8)
            else:
                v = d_scale * rng.uniform(0.5, 1.5) * (0.5 if kind == "dmin" else 1.0)
                raw[b, offset:offset + 2] = np.frombuffer(np.float16(v).tobytes(), np.uint8)
    return raw


def dequantize(raw, qtype):
    if qtype == Q.Q8_K:  # ggml's dequantize_row_q8_K: y = d * q
        d = raw[:, 0:4].copy().view(np.float32)
        q = raw[:, 4:260].view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    return gguf.quants.dequantize(raw, qtype).reshape(-1)


# 1. Single blocks of every type.
blocks = {}
for qtype in SCALES:
    raw = random_blocks(qtype, 3, 0.05)
    values = dequantize(raw, qtype)
    assert values.shape == (3 * 256,) and np.isfinite(values).all()
    blocks[qtype.name] = {
        "type_id": int(qtype),
        "hex": raw.tobytes().hex(),
        "values": [float(x) for x in values],  # float32 values, exact in a double
        "reference": "numpy: d * q (gguf-py has no Q8_K)" if qtype == Q.Q8_K else f"gguf-py {gguf.__name__}.quants.dequantize",
    }
with open(os.path.join(OUT, "blocks.json"), "w") as f:
    json.dump(blocks, f, separators=(",", ":"))


# 2. A tiny Llama of K-quant tensors (random blocks, scaled so that activations stay moderate).
def writer(path, hidden, inter, layers, heads, kv_heads, vocab, ctx):
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<{i}>" for i in range(vocab)])
    w.add_token_merges([])
    w.add_token_types([1] * vocab)
    return w


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


HIDDEN, INTER, HEADS, KV, VOCAB = 256, 256, 4, 2, 64
HD = HIDDEN // HEADS
kq_path = os.path.join(OUT, "tiny_kquant.gguf")
w = writer(kq_path, HIDDEN, INTER, 1, HEADS, KV, VOCAB, 256)


def unit_std(qtype):
    """The spread of a type's dequantized random blocks per unit of super-block scale."""
    return float(dequantize(random_blocks(qtype, 16, 1.0), qtype).std())


def put_random(name, rows, cols, qtype, std):
    # GGUF shapes are fastest-first: a [rows, cols] PyTorch weight has ne = (cols, rows).
    raw = random_blocks(qtype, rows * cols // 256, std / unit_std(qtype))
    w.add_tensor(name, raw.reshape(rows, cols // 256 * GGML_QUANT_SIZES[qtype][1]), raw_dtype=qtype)


def put_f32(name, arr):
    w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))


# Each K-quant type a model can hold (not Q8_K) on at least one tensor, each weight's spread
# about 1/sqrt(fan_in).
STD = 1 / math.sqrt(HIDDEN)
put_random("token_embd.weight", VOCAB, HIDDEN, Q.Q6_K, 1.0)
put_random("output.weight", VOCAB, HIDDEN, Q.Q4_K, STD)
put_f32("output_norm.weight", 1.0 + 0.1 * rng.standard_normal(HIDDEN))
put_f32("blk.0.attn_norm.weight", 1.0 + 0.1 * rng.standard_normal(HIDDEN))
put_f32("blk.0.ffn_norm.weight", 1.0 + 0.1 * rng.standard_normal(HIDDEN))
put_random("blk.0.attn_q.weight", HEADS * HD, HIDDEN, Q.Q2_K, STD)
put_random("blk.0.attn_k.weight", KV * HD, HIDDEN, Q.Q3_K, STD)
put_random("blk.0.attn_v.weight", KV * HD, HIDDEN, Q.Q5_K, STD)
put_random("blk.0.attn_output.weight", HIDDEN, HEADS * HD, Q.Q6_K, STD)
put_random("blk.0.ffn_gate.weight", INTER, HIDDEN, Q.Q4_K, STD)
put_random("blk.0.ffn_up.weight", INTER, HIDDEN, Q.Q5_K, STD)
put_random("blk.0.ffn_down.weight", HIDDEN, INTER, Q.Q2_K, STD)
finish(w)

ids = torch.tensor([[1, 17, 42, 9, 3, 63, 5, 27, 0, 38], [7, 7, 7, 10, 12, 31, 45, 2, 57, 60]])
model = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="tiny_kquant.gguf", dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(input_ids=ids).logits
assert torch.isfinite(logits).all()
with open(os.path.join(OUT, "kquant_expected.json"), "w") as f:
    json.dump({"input_ids": ids.tolist(), "shape": list(logits.shape),
               "logits": [round(x, 6) for x in logits.flatten().tolist()],
               "versions": {"torch": torch.__version__.split("+")[0],
                            "transformers": __import__("transformers").__version__,
                            "gguf": getattr(gguf, "__version__", "0.19")}}, f)
print("tiny_kquant logits: std", logits.std().item(), "max", logits.abs().max().item())

# 3. Llama 3.1 rope scaling as rope_freqs.weight, from the HF fixture's weights.
from safetensors.numpy import load_file  # noqa: E402

hf = os.path.join(ROOT, "tests", "fixtures", "parity", "tiny_llama3_hf")
cfg = json.load(open(os.path.join(hf, "config.json")))
rope = cfg.get("rope_parameters") or cfg["rope_scaling"]
sd = load_file(os.path.join(hf, "model.safetensors"))
heads, kv, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
hd = hidden // heads
base = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))


def rope_divisors():
    """One divisor per frequency, computed the way llama.cpp's converter does for Llama 3."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for i in range(0, hd, 2):
        freq = 1.0 / base ** (i / hd)
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def permute(a, n_head):
    return a.reshape(n_head, 2, a.shape[0] // n_head // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


for name, meta in [("llama3_freqs.gguf", None),
                   ("llama3_freqs_meta.gguf", {"llama.rope.scaling.factor": rope["factor"],
                                               "llama.rope.scaling.original_context_length":
                                                   rope["original_max_position_embeddings"]})]:
    w = writer(os.path.join(OUT, name), hidden, cfg["intermediate_size"], cfg["num_hidden_layers"], heads, kv,
               cfg["vocab_size"], cfg["max_position_embeddings"])
    if meta:
        w.add_float32("llama.rope.scaling.factor", meta["llama.rope.scaling.factor"])
        w.add_uint32("llama.rope.scaling.original_context_length",
                     meta["llama.rope.scaling.original_context_length"])
    put_f32("token_embd.weight", sd["model.embed_tokens.weight"])
    if "lm_head.weight" in sd:
        put_f32("output.weight", sd["lm_head.weight"])
    put_f32("output_norm.weight", sd["model.norm.weight"])
    put_f32("rope_freqs.weight", rope_divisors())
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        put_f32(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        put_f32(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        put_f32(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], heads))
        put_f32(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], kv))
        put_f32(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put_f32(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put_f32(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        put_f32(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        put_f32(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    finish(w)
print("rope divisors", rope_divisors())
for name in sorted(os.listdir(OUT)):
    print(f"{os.path.getsize(os.path.join(OUT, name)):>9} tests/fixtures/kquant/{name}")
