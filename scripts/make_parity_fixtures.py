#!/usr/bin/env python3
"""Generates the transformers parity fixtures in tests/fixtures/parity/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors gguf accelerate
    /some/venv/bin/python scripts/make_parity_fixtures.py [SMOLLM2.gguf]

Writes:
  tiny_hf/config.json, tiny_hf/model.safetensors  a tiny random Llama (untied head, GQA), f32,
               with a small BPE tokenizer (tokenizer.json, tokenizer_config.json)
  tiny_tokens.json  that tokenizer's ids for a few strings
  tiny.gguf    the same weights as llama.cpp writes them (q/k rows permuted for its rotary
               kernel), in a different ggml type per tensor: Q8_0, Q4_1, Q4_0, F16, BF16, F32
  expected.json  input ids; logits of transformers on tiny_hf and on tiny.gguf (dequantized by
               transformers' own GGUF loader)
  tiny_llama3_hf/, llama3_expected.json  a tiny Llama with Llama 3.1 rope scaling, and its logits
  smollm2_tokens.json (only when SMOLLM2.gguf is given) token ids that transformers' GGUF
               tokenizer conversion gives for a set of strings
"""
import json
import os
import sys

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "parity")
torch.manual_seed(0)

cfg = LlamaConfig(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
    max_position_embeddings=256, tie_word_embeddings=False,
)
model = LlamaForCausalLM(cfg).eval()
with torch.no_grad():
    # Non-trivial norms, so that a mix-up of norm weights shows.
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        else:
            p.copy_(0.2 * torch.randn_like(p))
hf_dir = os.path.join(OUT, "tiny_hf")
model.save_pretrained(hf_dir, safe_serialization=True)

# A small BPE tokenizer (fits the 128-token vocabulary), saved beside it as tokenizer.json.
from tokenizers import Tokenizer, decoders, models as tk_models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
corpus = [
    "the quick brown fox jumps over the lazy dog", "hello world, hello there", "a tiny tokenizer for tests",
    "what is the capital of france? paris.", "one two three four five six seven eight nine ten",
] * 20
tk = Tokenizer(tk_models.BPE(unk_token="<unk>"))
tk.pre_tokenizer = pre_tokenizers.Metaspace()
tk.decoder = decoders.Metaspace()
alphabet = list("abcdefghijklmnopqrstuvwxyz,.?!'\u2581")
tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=128, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet))
fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
fast.save_pretrained(hf_dir)
tiny_texts = ["hello world", "the lazy fox, jumps!", "what is the capital of france?", "zebra quiz"]
with open(os.path.join(OUT, "tiny_tokens.json"), "w") as f:
    json.dump([{"text": t, "ids": fast.encode(t, add_special_tokens=False), "decoded": fast.decode(fast.encode(t, add_special_tokens=False))} for t in tiny_texts], f, indent=0)

ids = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 88, 23, 54], [7, 7, 7, 100, 12, 31, 45, 2, 77, 66, 9, 120]])
with torch.no_grad():
    hf_logits = model(input_ids=ids).logits

# The same weights as a GGUF file, the way llama.cpp's converter lays them out.
def permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
gguf_path = os.path.join(OUT, "tiny.gguf")
w = gguf.GGUFWriter(gguf_path, "llama")
w.add_block_count(cfg.num_hidden_layers)
w.add_context_length(cfg.max_position_embeddings)
w.add_embedding_length(cfg.hidden_size)
w.add_feed_forward_length(cfg.intermediate_size)
w.add_head_count(cfg.num_attention_heads)
w.add_head_count_kv(cfg.num_key_value_heads)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
w.add_vocab_size(cfg.vocab_size)
# A minimal byte-ish gpt2 tokenizer, so that loaders that expect one find it.
w.add_tokenizer_model("gpt2")
w.add_token_list([f"<{i}>" for i in range(cfg.vocab_size)])
w.add_token_merges([])
w.add_token_types([1] * cfg.vocab_size)

def put(name, arr, qtype):
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == Q.F32:
        w.add_tensor(name, arr)
    elif qtype == Q.F16:
        w.add_tensor(name, arr.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)

put("token_embd.weight", sd["model.embed_tokens.weight"], Q.Q8_0)
put("output.weight", sd["lm_head.weight"], Q.Q8_0)
put("output_norm.weight", sd["model.norm.weight"], Q.F32)
types = {"attn_q": Q.Q4_1, "attn_k": Q.Q4_0, "attn_v": Q.F16, "attn_output": Q.BF16, "ffn_gate": Q.Q8_0, "ffn_up": Q.Q4_1, "ffn_down": Q.F32}
for i in range(cfg.num_hidden_layers):
    p = f"model.layers.{i}."
    put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], Q.F32)
    put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], Q.F32)
    put(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads), types["attn_q"])
    put(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads), types["attn_k"])
    put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"], types["attn_v"])
    put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"], types["attn_output"])
    put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], types["ffn_gate"])
    put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"], types["ffn_up"])
    put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"], types["ffn_down"])
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

gguf_model = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="tiny.gguf", dtype=torch.float32).eval()
with torch.no_grad():
    gguf_logits = gguf_model(input_ids=ids).logits

with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump({
        "input_ids": ids.tolist(),
        "hf_logits": [round(x, 7) for x in hf_logits.flatten().tolist()],
        "gguf_logits": [round(x, 7) for x in gguf_logits.flatten().tolist()],
        "shape": list(hf_logits.shape),
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": __import__("transformers").__version__},
    }, f)
print("max |hf - gguf| (quantization error):", (hf_logits - gguf_logits).abs().max().item())

# Llama 3.1-style rope scaling on another tiny model (its own seed: the fixtures above stay as they are).
torch.manual_seed(1)
cfg3 = LlamaConfig(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
)
m3 = LlamaForCausalLM(cfg3).eval()
with torch.no_grad():
    for name, p in m3.named_parameters():
        p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
m3.save_pretrained(os.path.join(OUT, "tiny_llama3_hf"), safe_serialization=True)
ids3 = torch.arange(40).reshape(1, 40) * 3 % 128
with torch.no_grad():
    l3 = m3(input_ids=ids3).logits
with open(os.path.join(OUT, "llama3_expected.json"), "w") as f:
    json.dump({"input_ids": ids3.tolist(), "logits": [round(x, 7) for x in l3.flatten().tolist()]}, f)

PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
    "Locally nicknamed La dame de fer, it was constructed as the centrepiece of the 1889 World's Fair."
)

def paragraph_perplexity(model, tok):
    """exp(mean next-token NLL) over the whole paragraph in one window, as transformers computes it."""
    ids = torch.tensor([tok.encode(PARAGRAPH, add_special_tokens=False)])
    with torch.no_grad():
        return torch.exp(model(input_ids=ids, labels=ids).loss).item()

if len(sys.argv) > 1:
    path = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    texts = [
        "What is the capital of France?",
        "Hello world",
        "  two leading spaces, tabs\tand\nnewlines\n\n",
        "Numbers: 1234567 and 3.14159, year 2024, phone 555-0199.",
        "naïve café, 日本語, emoji 🙂",
        "<|im_start|>user\nHi<|im_end|>\n",
        "def f(x):\n    return x ** 2  # square",
    ]
    with open(os.path.join(OUT, "smollm2_tokens.json"), "w") as f:
        json.dump([{"text": t, "ids": tok.encode(t, add_special_tokens=False)} for t in texts], f, ensure_ascii=False, indent=0)

    # SmolLM2 itself: transformers dequantizes the GGUF to f32; keep, for each position of a
    # short prompt, the argmax and the logits of a fixed set of token ids (a few KB).
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    prompt = "The capital of France is Paris. The capital of Italy is"
    ids = tok.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    probe = [0, 1, 2, 13, 260, 314, 3575, 4649, 19556, 49151]
    with open(os.path.join(OUT, "smollm2_logits.json"), "w") as f:
        json.dump({
            "prompt": prompt,
            "ids": ids,
            "argmax": logits.argmax(-1).tolist(),
            "probe_ids": probe,
            "probe_logits": [[round(row[i].item(), 5) for i in probe] for row in logits],
            "logsumexp": [round(x, 5) for x in torch.logsumexp(logits, -1).tolist()],
            "paragraph": PARAGRAPH,
            "paragraph_perplexity": paragraph_perplexity(model, tok),
        }, f)
