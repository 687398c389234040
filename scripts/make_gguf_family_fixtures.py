#!/usr/bin/env python3
"""Generates GGUF fixtures of the non-llama families in tests/fixtures/parity/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors gguf peft accelerate
    /some/venv/bin/python scripts/make_qwen_fixtures.py   # first: the Qwen models are reused
    /some/venv/bin/python scripts/make_gguf_family_fixtures.py

Writes tiny_<arch>.gguf for qwen2, qwen3, gemma2 and gemma3 the way llama.cpp's converter lays
them out: tensor names from gguf-py's own name map, q/k rows NOT permuted (llama.cpp permutes
only llama's), Gemma's norm weights stored as 1 + w, a mix of F32, F16, BF16, Q8_0, Q4_0 and
Q4_1 tensors. The reference logits (gguf_families_expected.json) are transformers' on the same
model with every tensor replaced by gguf-py's dequantization of what was written. Where
transformers' own GGUF loader can read the file (not qwen3: it ignores key_length, so a
head_dim other than hidden/heads), its logits must agree, a check of the layout by an
independent reader.

qwen2 and qwen3 are the committed tiny_qwen2_hf / tiny_qwen3_hf models. The Gemma models are
built here with a shape on which llama.cpp and transformers' GGUF loader agree about what GGUF
does not store: head_dim 256 (llama.cpp scales attention by head_dim, transformers' loader by
its default query_pre_attn_scalar of 256), Gemma 2's default soft-capping (50, 30) written
into the metadata, and the sliding patterns both assume (every other layer; five in six).
"""
import json
import os

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM,
                          Gemma3TextConfig)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "fixtures", "parity")
ids = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 88, 23, 54], [7, 7, 7, 100, 12, 31, 45, 2, 77, 66, 9, 120]])
ARCH = {"qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3,
        "gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3": gguf.MODEL_ARCH.GEMMA3}
# Projection weights cycle through these; norms and biases stay F32 as llama.cpp keeps them.
TYPES = [Q.Q8_0, Q.F16, Q.Q4_1, Q.BF16, Q.Q4_0, Q.F32]


def gemma(arch):
    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
                  max_position_embeddings=256, sliding_window=4, attn_implementation="eager")
    if arch == "gemma2":
        return Gemma2ForCausalLM(Gemma2Config(**common, num_hidden_layers=3, rope_theta=10000.0))
    return Gemma3ForCausalLM(Gemma3TextConfig(**common, num_hidden_layers=7, rope_theta=1000000.0))


def write(arch, model, path):
    """Writes the GGUF file; returns the state dict as dequantized from what was written."""
    cfg = model.config
    name_map = gguf.get_tensor_name_map(ARCH[arch], cfg.num_hidden_layers)
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    theta = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)["rope_theta"]
    w.add_rope_freq_base(theta)
    if arch.startswith("gemma"):
        w.add_sliding_window(cfg.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    # A minimal gpt2 tokenizer, so that loaders that expect one find it.
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<{i}>" for i in range(cfg.vocab_size)])
    w.add_token_merges([])
    w.add_token_types([1] * cfg.vocab_size)
    k = 0
    dequantized = {}
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        arr = t.detach().numpy().astype(np.float32)
        if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
            arr = arr + 1.0
        base, suffix = hf_name.rsplit(".", 1)
        name = name_map.get_name(base)
        assert name is not None, hf_name
        name = f"{name}.{suffix}"
        qtype = Q.F32
        if arr.ndim == 2:
            qtype = TYPES[k % len(TYPES)]
            k += 1
        if qtype == Q.F32:
            w.add_tensor(name, arr)
            back = arr
        elif qtype == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
            back = arr.astype(np.float16).astype(np.float32)
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
            back = gguf.quants.dequantize(q, qtype).reshape(arr.shape)
        if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
            back = back - 1.0
        dequantized[hf_name] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dequantized


expected = {}
for seed, arch in enumerate(ARCH):
    if arch.startswith("qwen"):
        model = AutoModelForCausalLM.from_pretrained(os.path.join(OUT, f"tiny_{arch}_hf"), dtype=torch.float32)
    else:
        torch.manual_seed(300 + seed)
        model = gemma(arch)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    model.eval()
    path = os.path.join(OUT, f"tiny_{arch}.gguf")
    dequantized = write(arch, model, path)
    with torch.no_grad():
        direct = model(input_ids=ids).logits
        model.load_state_dict(dequantized, strict=False)  # a tied head is the embedding
        logits = model(input_ids=ids).logits
    check = "not readable by transformers' GGUF loader"
    if arch != "qwen3":
        loaded = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=f"tiny_{arch}.gguf", dtype=torch.float32).eval()
        with torch.no_grad():
            diff = (loaded(input_ids=ids).logits - logits).abs().max().item()
        assert diff < 1e-4, f"{arch}: transformers' GGUF loader disagrees by {diff}"
        check = f"transformers' GGUF loader within {diff:.1e}"
    expected[arch] = {"input_ids": ids.tolist(), "logits": [round(x, 7) for x in logits.flatten().tolist()]}
    print(arch, check, "| quantization moved the logits by", (direct - logits).abs().max().item(),
          "| bytes:", os.path.getsize(path))
expected["versions"] = {"torch": torch.__version__.split("+")[0],
                        "transformers": __import__("transformers").__version__,
                        "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "unknown"}
with open(os.path.join(OUT, "gguf_families_expected.json"), "w") as f:
    json.dump(expected, f)

# Pre-tokenizers: a byte-level BPE vocabulary learned here, written as GGUF tokenizers whose
# `tokenizer.ggml.pre` names GPT-2's, Qwen2's and Llama 3's split patterns (digits grouped
# whole, one at a time, three at a time; a space before a digit kept apart by the latter two). transformers' GGUF tokenizer is the reference.
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

corpus = [" ".join(json.loads(line).values())
          for line in open(os.path.join(OUT, os.pardir, os.pardir, os.pardir, "data", "instruct.jsonl"))]
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      special_tokens=["<|endoftext|>"]))
spec = json.loads(bpe.to_str())
vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
texts = ["What is 12345 + 678?", "Line one\n\n  Line two\r\nend", "It's 2024, they'll say: 3.14159!",
         "  leading spaces and trailing   ", "Sort: 9, 10, 100, 1000"]
tokenizers_expected = {"texts": texts}
for pre in ["gpt-2", "qwen2", "llama-bpe"]:
    path = os.path.join(OUT, f"tokenizer_{pre}.gguf")
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([t for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t, _ in vocab])
    w.add_eos_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(OUT, gguf_file=os.path.basename(path))
    tokenizers_expected[pre] = [tok.encode(t, add_special_tokens=False) for t in texts]
    print(pre, [len(ids) for ids in tokenizers_expected[pre]])
for a, b in [("gpt-2", "qwen2"), ("gpt-2", "llama-bpe"), ("qwen2", "llama-bpe")]:
    assert tokenizers_expected[a] != tokenizers_expected[b], f"{a} and {b} should split differently"
with open(os.path.join(OUT, "gguf_tokenizers_expected.json"), "w") as f:
    json.dump(tokenizers_expected, f)

# SentencePiece vocabularies (`tokenizer.ggml.model = llama`), as Llama 2, Phi-3 and Gemma files
# carry them: no merges stored, byte-fallback tokens, a score per token. One vocabulary learned
# here, written under three architectures whose pipelines differ (Metaspace with a prefix;
# Phi-3's normalizer; Gemma's spaces, position-ordered merges and runs of spaces stored as
# spaces). transformers' GGUF tokenizer is the reference.
from tokenizers import SentencePieceBPETokenizer

spm = SentencePieceBPETokenizer()
spm.train_from_iterator(corpus, vocab_size=700, min_frequency=2, special_tokens=[])
pieces = [t for t, _ in sorted(spm.get_vocab().items(), key=lambda kv: kv[1])]
spm_texts = ["What is 12345 + 678?", "  two leading spaces, and   three inside", "Line one\nLine two",
             "café déjà vu", "Think: <think> done", "plural of puppy is puppies"]
spm_expected = {"texts": spm_texts}
for arch in ["llama", "phi3", "gemma2"]:
    if arch == "gemma2":
        head = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2)]
    else:
        head = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    table = head + [(f"<0x{b:02X}>", 6) for b in range(256)] + [("<think>", 4), ("  ", 1), ("   ", 1)]
    table += [(p, 1) for p in pieces if p not in {t for t, _ in table}]
    path = os.path.join(OUT, f"tokenizer_spm_{arch}.gguf")
    w = gguf.GGUFWriter(path, arch)
    w.add_tokenizer_model("llama")
    w.add_token_list([t for t, _ in table])
    w.add_token_types([k for _, k in table])
    w.add_token_scores([0.0 if k != 1 else -float(i) for i, (_, k) in enumerate(table)])
    ids = {t: i for i, (t, _) in enumerate(table)}
    w.add_bos_token_id(ids["<bos>" if arch == "gemma2" else "<s>"])
    w.add_eos_token_id(ids["<eos>" if arch == "gemma2" else "</s>"])
    w.add_unk_token_id(ids["<unk>"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(OUT, gguf_file=os.path.basename(path))
    spm_expected[arch] = [tok.encode(t, add_special_tokens=False) for t in spm_texts]
    spm_expected[arch + "_decoded"] = [tok.decode(tok.encode(t, add_special_tokens=False)) for t in spm_texts]
    print(arch, [len(i) for i in spm_expected[arch]], spm_expected[arch + "_decoded"][1])
with open(os.path.join(OUT, "gguf_spm_tokenizers_expected.json"), "w") as f:
    json.dump(spm_expected, f)
