#!/usr/bin/env python3
"""Generates the Phi-3 fixtures in tests/fixtures/parity/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors peft accelerate gguf
    /some/venv/bin/python scripts/make_phi3_fixtures.py

A tiny random Phi-3: q, k, v in one projection (`qkv_proj`), gate and up in another
(`gate_up_proj`), GQA, an untied head and a sliding window (4) on every layer. Writes:
  tiny_phi3_hf/       the model
  tiny_phi3_lora/     a PEFT LoRA adapter (r=4) on qkv_proj and gate_up_proj (PEFT has no default
                      targets for Phi-3), random non-zero
  tiny_phi3.gguf      the model in llama.cpp's layout (attn_qkv, ffn_up holding gate and up)
  phi3_expected.json  input ids, transformers' logits, the logits with the adapter and PEFT's
                      trainable count. transformers' GGUF loader reads the GGUF file's weights
                      as written (checked here, without the window, which it does not read).
"""
import json
import os

import gguf
import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "fixtures", "parity")
ids = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 88, 23, 54, 9, 31],
                    [7, 7, 7, 100, 12, 31, 45, 2, 77, 66, 9, 120, 11, 4]])
torch.manual_seed(400)
cfg = Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256, original_max_position_embeddings=256,
                 rope_theta=10000.0, sliding_window=4, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, attn_implementation="eager")
model = Phi3ForCausalLM(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
model.save_pretrained(os.path.join(OUT, "tiny_phi3_hf"), safe_serialization=True)
with torch.no_grad():
    logits = model(input_ids=ids).logits

# llama.cpp's layout: the fused projections keep their rows (no q/k permutation for Phi-3).
names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, cfg.num_hidden_layers)
w = gguf.GGUFWriter(os.path.join(OUT, "tiny_phi3.gguf"), "phi3")
w.add_block_count(cfg.num_hidden_layers)
w.add_context_length(cfg.max_position_embeddings)
w.add_embedding_length(cfg.hidden_size)
w.add_feed_forward_length(cfg.intermediate_size)
w.add_head_count(cfg.num_attention_heads)
w.add_head_count_kv(cfg.num_key_value_heads)
w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
w.add_sliding_window(cfg.sliding_window)
w.add_vocab_size(cfg.vocab_size)
w.add_tokenizer_model("gpt2")
w.add_token_list([f"<{i}>" for i in range(cfg.vocab_size)])
w.add_token_merges([])
w.add_token_types([1] * cfg.vocab_size)
w.add_pad_token_id(0)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
for hf_name, t in model.state_dict().items():
    base, suffix = hf_name.rsplit(".", 1)
    w.add_tensor(f"{names.get_name(base)}.{suffix}", t.detach().numpy().astype(np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
# transformers' GGUF loader reads no sliding window for Phi-3 (llama.cpp does): compare it with
# the model without its window, which must differ from the windowed one.
loaded = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="tiny_phi3.gguf", dtype=torch.float32).eval()
assert loaded.config.sliding_window is None
windowless = Phi3ForCausalLM(Phi3Config(**{**cfg.to_dict(), "sliding_window": None})).eval()
windowless.load_state_dict(model.state_dict())
with torch.no_grad():
    gguf_logits = loaded(input_ids=ids).logits
    full = windowless(input_ids=ids).logits
assert (gguf_logits - full).abs().max() < 1e-4, "transformers' GGUF loader should read the same weights"
assert (full - logits).abs().max() > 1e-2, "the window should change the logits"

peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "gate_up_proj"],
                                              init_lora_weights=False))
trainable, _total = peft_model.get_nb_trainable_parameters()
peft_model.eval()
with torch.no_grad():
    adapted = peft_model(input_ids=ids).logits
assert (adapted - logits).abs().max() > 1e-3, "the adapter should change the logits"
peft_model.save_pretrained(os.path.join(OUT, "tiny_phi3_lora"))
os.remove(os.path.join(OUT, "tiny_phi3_lora", "README.md"))  # boilerplate model card
with open(os.path.join(OUT, "phi3_expected.json"), "w") as f:
    json.dump({
        "input_ids": ids.tolist(),
        "logits": [round(x, 7) for x in logits.flatten().tolist()],
        "lora_logits": [round(x, 7) for x in adapted.flatten().tolist()],
        "lora_r4_trainable": trainable,
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": __import__("transformers").__version__,
                     "peft": __import__("peft").__version__},
    }, f)
print("trainable", trainable, "| transformers GGUF vs windowless:", (gguf_logits - full).abs().max().item())
