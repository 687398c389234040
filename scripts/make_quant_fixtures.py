#!/usr/bin/env python3
"""Generates the bitsandbytes quantization fixtures in tests/fixtures/quant/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors bitsandbytes accelerate
    /some/venv/bin/python scripts/make_quant_fixtures.py

Everything runs on the CPU (bitsandbytes' CPU kernels). Writes:
  blockwise.safetensors  for each case: the f32 input, bitsandbytes' packed 4-bit bytes, its
              absmax (or, with double quantization, the 8-bit absmax codes, nested absmax,
              offset and nested quant map) and the dequantized values; the 8-bit dynamic map;
              an 8-bit blockwise case (the quantizer double quantization uses); PyTorch's
              float32 sums of a few vectors
  tiny_bf16_hf/  a tiny random Llama (one layer, hidden 64, so that every row holds whole
              64-value blocks as in real models) whose weights are bf16 numbers, saved as bf16
              (half the bytes; loading it as f32 gives exactly the weights quantized below)
  tiny_bnb_nf4/  that model quantized by transformers + bitsandbytes (NF4, double
              quantization, f32 compute) and saved
  tiny_bnb_fp4/  the same with FP4, no double quantization
  expected.safetensors  input ids and the logits of both quantized models (f32 compute)
"""
import json
import os

import torch
import bitsandbytes.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "quant")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)


def edge_input(rows, cols, quant_type):
    """Random normal values with blocks that probe the corner cases: all zeros, exact code
    values, values exactly halfway between two codes (ties), negative zero, tiny values."""
    a = torch.randn(rows, cols)
    flat = a.view(-1)
    flat[0:64] = 0.0
    code = F.get_4bit_type(quant_type, device="cpu")
    sorted_code = torch.sort(code).values
    mid = (sorted_code[:-1] + sorted_code[1:]) / 2
    flat[64:80] = code
    flat[80:95] = mid
    flat[95] = -0.0
    flat[96:127] = mid[:15].repeat(3)[:31]
    flat[127] = 1.0  # the block's absmax is exactly 1, so scaled values are exact ties
    flat[128:192] = torch.randn(64) * 1e-30
    return a


tensors = {}
cases = []


def quant4(name, a, quant_type, block, double):
    q, st = F.quantize_4bit(a, blocksize=block, quant_type=quant_type, compress_statistics=double)
    deq = F.dequantize_4bit(q, st)
    tensors[f"{name}.input"] = a.contiguous()
    tensors[f"{name}.packed"] = q.view(-1).contiguous()
    tensors[f"{name}.dequant"] = deq.contiguous()
    tensors[f"{name}.quant_map"] = st.code.contiguous()
    if double:
        tensors[f"{name}.absmax_codes"] = st.absmax.contiguous()
        tensors[f"{name}.nested_absmax"] = st.state2.absmax.contiguous()
        tensors[f"{name}.nested_quant_map"] = st.state2.code.contiguous()
        tensors[f"{name}.offset"] = st.offset.reshape(1).contiguous()
    else:
        tensors[f"{name}.absmax"] = st.absmax.contiguous()
    cases.append({"name": name, "quant_type": quant_type, "block": block, "double": double, "shape": list(a.shape)})


# Row lengths are multiples of the block, as in real weights: bitsandbytes' CPU dequantization
# kernel indexes blocks per row and gives wrong values when a block straddles two rows.
quant4("nf4_b64", edge_input(40, 128, "nf4"), "nf4", 64, False)
quant4("fp4_b64", edge_input(40, 128, "fp4"), "fp4", 64, False)
quant4("nf4_b32_dq", edge_input(75, 128, "nf4") * 0.05, "nf4", 32, True)  # 300 blocks: two nested blocks
quant4("fp4_b128_dq", edge_input(40, 128, "fp4") * 3.0, "fp4", 128, True)
quant4("nf4_b64_ragged", torch.randn(5, 39), "nf4", 64, True)   # 195 values: a partial last block
quant4("fp4_b32_ragged", torch.randn(7, 9), "fp4", 32, False)   # 63 values: an odd count

# The 8-bit blockwise quantizer on its own (double quantization applies it to the absmax values).
x = torch.randn(700) * 0.3
x[0:256] = 0.0
x[256] = 1.0
q8, st8 = F.quantize_blockwise(x, blocksize=256)
tensors["dyn8.input"] = x
tensors["dyn8.codes"] = q8.contiguous()
tensors["dyn8.absmax"] = st8.absmax.contiguous()
tensors["dyn8.quant_map"] = st8.code.contiguous()
tensors["dyn8.dequant"] = F.dequantize_blockwise(q8, st8).contiguous()
tensors["dynamic_map"] = F.create_dynamic_map(signed=True).contiguous()
# PyTorch's float32 sums (double quantization's offset is a mean; its last bit depends on the
# order PyTorch adds in).
for n in [1, 5, 7, 8, 13, 40, 300, 3000]:
    v = torch.rand(n) * 10
    tensors[f"sum{n}.input"] = v
    tensors[f"sum{n}.value"] = v.sum().reshape(1)
save_file(tensors, os.path.join(OUT, "blockwise.safetensors"), metadata={"cases": json.dumps(cases)})

# Whole models through transformers. bitsandbytes' CPU kernels index blocks per row, so rows
# must hold whole blocks (hidden 64, intermediate 128 with transformers' block size 64).
cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                  max_position_embeddings=256, tie_word_embeddings=True)
tiny = LlamaForCausalLM(cfg).eval()
with torch.no_grad():
    for pname, p in tiny.named_parameters():
        v = 1.0 + 0.1 * torch.randn_like(p) if "norm" in pname else 0.2 * torch.randn_like(p)
        p.copy_(v.to(torch.bfloat16).float())
TINY = os.path.join(OUT, "tiny_bf16_hf")
tiny.to(torch.bfloat16).save_pretrained(TINY, safe_serialization=True)
os.remove(os.path.join(TINY, "generation_config.json"))

ids = torch.tensor([[1, 5, 17, 42, 99, 3, 64, 127, 8, 2], [7, 7, 7, 30, 31, 32, 90, 1, 0, 4]])
expected = {"input_ids": ids.to(torch.int64)}
for name, qtype, dq in [("tiny_bnb_nf4", "nf4", True), ("tiny_bnb_fp4", "fp4", False)]:
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qtype, bnb_4bit_use_double_quant=dq,
                             bnb_4bit_compute_dtype=torch.float32)
    m = AutoModelForCausalLM.from_pretrained(TINY, quantization_config=cfg, device_map="cpu", dtype=torch.float32)
    m.save_pretrained(os.path.join(OUT, name), safe_serialization=True)
    os.remove(os.path.join(OUT, name, "generation_config.json"))
    # train() keeps bitsandbytes on its plain f32 path: in eval mode on an AVX512-BF16 CPU it
    # repacks the weights with bf16 block constants first. Llama has no dropout, so the logits
    # are those of eval mode.
    m.train()
    with torch.no_grad():
        logits = m(ids).logits
    expected[f"{name}.logits"] = logits.contiguous()
save_file(expected, os.path.join(OUT, "expected.safetensors"))
print("wrote", OUT)
