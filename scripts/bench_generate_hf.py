# PyTorch + transformers half of the batched sampled-generation benchmark; runner's half is the
# example `bench_generate`, and both print one JSON line per run in the same format.
#
#   python scripts/bench_generate_hf.py MODEL [BATCH] [PROMPT_LEN] [NEW_TOKENS] [REPEATS]
#                                                            (defaults 8, 64, 64, 3)
#
# MODEL is a Hugging Face model directory (f32 LlamaForCausalLM, as runner's
# `model:save_pretrained` writes it), or `random-smollm2`: a randomly initialised model of
# SmolLM2-135M's shape. The prompts are BATCH rows of random token ids (fixed seed) drawn
# uniformly from [3, vocab), with ragged lengths: row i has PROMPT_LEN - (i % 4) * (PROMPT_LEN // 8)
# tokens, left-padded to the longest row with pad id 0 and an attention mask that is 0 over the
# padding, so left padding is really exercised. The lengths are reported as `prompt_lengths`.
#
# One call is transformers' own `model.generate(input_ids, attention_mask=..., do_sample=True,
# temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
# use_cache=True, pad_token_id=0, eos_token_id=None)` under torch.inference_mode(), f32, on the
# CPU with torch's default thread count. Explicit arguments override the model's generation
# config (a saved model's eos id included), so there is no EOS and every row produces exactly
# NEW_TOKENS tokens: with eos_token_id=None transformers 5 builds no min-length processor, and
# temperature 1, top_k 0 and top_p 1 build no warper either, so each step samples from the full
# softmax of the last position's logits. None of these arguments is renamed or warned about in
# transformers 5 (checked on 5.25). The KV cache is transformers' default DynamicCache and the
# attention its default implementation (printed on stderr). The output shape is checked to be
# [BATCH, max prompt length + NEW_TOKENS].
#
# Timing: one warm-up call (not timed), then REPEATS timed calls; `s_per_call` is the median
# wall-clock seconds of one call, covering the prefill of the padded prompt batch and
# NEW_TOKENS - 1 cached decode steps with sampling (all of generate's own bookkeeping
# included), and `tokens_per_s` = BATCH * NEW_TOKENS / s_per_call (generated tokens only).
# `peak_rss_mb` is the process's peak RSS after the calls; `model` is the MODEL argument as given;
# `threads` is torch's intra-op thread count (the core count unless OMP_NUM_THREADS sets it; on a
# loaded machine more threads than free cores can be many times slower). Everything but the JSON
# line goes to stderr.
import json
import os
import resource
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_bench import SMOLLM2_135M  # noqa: E402

PAD_ID = 0


def prompt_batch(batch, prompt_len, vocab):
    lengths = [prompt_len - (i % 4) * (prompt_len // 8) for i in range(batch)]
    longest = max(lengths)
    gen = torch.Generator().manual_seed(1234)
    ids = torch.full((batch, longest), PAD_ID, dtype=torch.long)
    mask = torch.zeros((batch, longest), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, longest - n:] = torch.randint(3, vocab, (n,), generator=gen)
        mask[row, longest - n:] = 1
    return ids, mask, lengths


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: bench_generate_hf.py MODEL [BATCH] [PROMPT_LEN] [NEW_TOKENS] [REPEATS]")
    model_arg = args[0]
    batch = int(args[1]) if len(args) > 1 else 8
    prompt_len = int(args[2]) if len(args) > 2 else 64
    new_tokens = int(args[3]) if len(args) > 3 else 64
    repeats = int(args[4]) if len(args) > 4 else 3
    if min(batch, prompt_len, new_tokens, repeats) < 1:
        sys.exit("BATCH, PROMPT_LEN, NEW_TOKENS and REPEATS must be positive")
    model_name = model_arg if model_arg == "random-smollm2" else os.path.abspath(model_arg)
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

    torch.manual_seed(0)
    if model_name == "random-smollm2":
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
    model = model.float().eval()
    vocab = model.config.vocab_size
    ids, mask, lengths = prompt_batch(batch, prompt_len, vocab)
    expected = (batch, max(lengths) + new_tokens)
    print(f"model {type(model).__name__}, attention {model.config._attn_implementation}, "
          f"prompt lengths {lengths}, input {list(ids.shape)}, threads {torch.get_num_threads()}",
          file=sys.stderr)

    def generate():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                                 pad_token_id=PAD_ID, eos_token_id=None)
        if tuple(out.shape) != expected:
            raise RuntimeError(f"generate returned shape {list(out.shape)}, expected {list(expected)}")
        if not torch.equal(out[:, :ids.shape[1]], ids):
            raise RuntimeError("generate did not return the prompt unchanged in front of the new tokens")
        return out

    torch.manual_seed(0)
    start = time.perf_counter()
    out = generate()
    print(f"warm-up call {time.perf_counter() - start:.3f} s; first row's first new tokens "
          f"{out[0, ids.shape[1]:ids.shape[1] + 8].tolist()}", file=sys.stderr)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate()
        times.append(time.perf_counter() - start)
    print(f"timed calls (s): {[round(t, 4) for t in times]}", file=sys.stderr)
    dt = statistics.median(times)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"impl": "transformers", "model": model_arg,
              "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "prompt_lengths": lengths,
              "repeats": repeats, "s_per_call": round(dt, 4), "tokens_per_s": round(batch * new_tokens / dt, 1),
              "peak_rss_mb": round(peak_rss), "threads": torch.get_num_threads(),
              "torch_version": torch.__version__, "transformers_version": transformers.__version__}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
