# PyTorch + TRL half of the PPO-iteration peak-memory benchmark; runner's half is the example
# `bench_ppo_step`, and both print one JSON line per run with the same keys. Needs a virtualenv
# with trl==0.25.1 (its PPOTrainer; later TRL releases move it to trl.experimental) and peft.
#
#   python scripts/bench_ppo_trl.py MODEL MODE [BATCH] [PROMPT_LEN] [RESPONSE_LEN]   (defaults 4, 64, 64)
#
# MODEL is a Hugging Face f32 Llama directory, or `random-smollm2`: a randomly initialised model
# of SmolLM2-135M's shape. MODE is one of
#   full  TRL's standard PPO setup, four models: the policy (AutoModelForCausalLM, trained in
#         full), the reference policy (a second copy of it), the value model and the reward model
#         (AutoModelForSequenceClassification, num_labels=1, from the same weights; their score
#         heads are random, initialised from the same fixed seed, so value = reward model at start).
#   lora  the policy wrapped by TRL with a PEFT LoRA (r=8, alpha=16, dropout 0, on q_proj and
#         v_proj), ref_model=None so the reference is the policy with the adapter disabled, plus
#         the value and reward models: three models. The value model is still trained in full
#         (TRL trains policy and value model together through one optimizer).
# The data are 2 * BATCH prompts of PROMPT_LEN token ids drawn uniformly from [3, vocab) (fixed
# seed); a three-token stand-in tokenizer (pad 0, unk 1, eos 2) supplies the ids TRL asks for.
#
# The iteration is TRL's own: PPOTrainer.train() with
#   per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_mini_batches=1,
#   local_rollout_forward_batch_size=BATCH, num_ppo_epochs=4, response_length=RESPONSE_LEN,
#   temperature=1.0 (TRL's default is 0.7), kl_coef=0.05 (k1 estimator), stop_token=None,
#   stop_token_id=None, missing_eos_penalty=None, num_sample_generations=0, total_episodes=2*BATCH,
#   learning_rate 5e-5 (the TrainingArguments default, linear decay), the Trainer's default AdamW (fused torch AdamW),
#   f32 throughout, use_cpu, no gradient checkpointing (PPOTrainer never applies it anyway).
# So one iteration is: sample BATCH responses of RESPONSE_LEN tokens from the policy (KV-cached
# generation, keeping the per-step logits for the rollout log-probs), one no-grad forward each of
# the reference, the value model and the reward model over the BATCH prompt+response sequences,
# rewards (score - kl_coef * KL), GAE advantages and returns, then num_ppo_epochs optimizer steps,
# each a forward and backward of policy and value model over the whole batch, the clipped policy
# loss plus 0.1 * the clipped value loss, and an AdamW update (TRL's PPO does not clip gradients).
# With stop_token/stop_token_id None, TRL sets the policy's generation_config.eos_token_id to
# None, so generation never stops at an EOS and every response is RESPONSE_LEN tokens; the mean
# response length actually generated is measured (from the sampled sequences) and reported.
#
# Timing: total_episodes = 2 * BATCH gives exactly two PPO iterations; the first is a warm-up.
# PPOTrainer calls the callbacks' on_step_end once per PPO iteration (after the optimizer steps
# and its metrics logging), so `s_per_iteration` is the wall-clock time between the ends of
# iterations 1 and 2. `peak_rss_mb` is the process's peak RSS (getrusage) after training;
# `rss_before_mb` the resident set just before trainer.train() (all models loaded, adapter
# added, trainer and optimizer built; AdamW state is allocated lazily in the first step).
# `models_in_memory` counts the distinct models the trainer holds, `param_mb` their parameter
# bytes (LoRA weights included). Runs on the CPU. Everything but the JSON line goes to stderr.
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                          LlamaForSequenceClassification, PreTrainedTokenizerFast, TrainerCallback)

import trl
from trl import PPOConfig, PPOTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_bench import SMOLLM2_135M  # noqa: E402

ITERATIONS = 2  # one warm-up, one timed
NUM_PPO_EPOCHS = 4
MODEL_SEED = 0
SCORE_SEED = 42  # the value and reward models' random score heads


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def stand_in_tokenizer():
    # Ids 0..2 are the special tokens; the random prompts use ids from 3 on.
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def causal_lm(model_name):
    torch.manual_seed(MODEL_SEED)
    if model_name == "random-smollm2":
        return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    return AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)


def scorer(model_name, policy):
    """A sequence classifier with one label on the policy's weights; the score head is random (SCORE_SEED)."""
    torch.manual_seed(SCORE_SEED)
    if model_name == "random-smollm2":
        model = LlamaForSequenceClassification(LlamaConfig(**SMOLLM2_135M, num_labels=1))
        model.model.load_state_dict(policy.model.state_dict())
        return model
    return AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=1, dtype=torch.float32)


class IterationClock(TrainerCallback):
    """Wall-clock time at the end of every PPO iteration (PPOTrainer's on_step_end), and its logs."""

    def __init__(self):
        self.begin = None
        self.ends = []
        self.logs = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def record_generations(model, context_length, pad_id, lengths, seconds):
    """Wraps model.generate (instance attribute) to record each sampled response's length (the tokens
    before the first pad id, as TRL counts them) and the time each generate call takes."""
    generate = model.generate

    def recording_generate(*args, **kwargs):
        start = time.perf_counter()
        out = generate(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        responses = out.sequences[:, context_length:]
        is_pad = responses == pad_id
        first_pad = torch.where(is_pad.any(1), is_pad.int().argmax(1), responses.shape[1])
        lengths.extend(first_pad.tolist())
        return out

    model.generate = recording_generate


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit("usage: bench_ppo_trl.py MODEL full|lora [BATCH] [PROMPT_LEN] [RESPONSE_LEN]")
    model_name, mode = args[0], args[1]
    batch = int(args[2]) if len(args) > 2 else 4
    prompt_len = int(args[3]) if len(args) > 3 else 64
    response_len = int(args[4]) if len(args) > 4 else 64
    if mode not in ("full", "lora"):
        sys.exit(f"MODE must be full or lora, not {mode}")
    if batch < 1 or prompt_len < 1 or response_len < 1:
        sys.exit("BATCH, PROMPT_LEN and RESPONSE_LEN must be positive")
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

    policy = causal_lm(model_name)
    ref_policy = causal_lm(model_name) if mode == "full" else None
    value_model = scorer(model_name, policy)
    reward_model = scorer(model_name, policy)
    vocab = policy.config.vocab_size

    gen = torch.Generator().manual_seed(1234)
    prompts = torch.randint(3, vocab, (ITERATIONS * batch, prompt_len), generator=gen).tolist()
    data = Dataset.from_dict({"input_ids": prompts})
    tokenizer = stand_in_tokenizer()

    out_dir = tempfile.mkdtemp(prefix="bench_ppo_trl_")
    config = PPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_mini_batches=1,
        local_rollout_forward_batch_size=batch, num_ppo_epochs=NUM_PPO_EPOCHS, response_length=response_len,
        stop_token=None, stop_token_id=None, temperature=1.0, kl_coef=0.05, missing_eos_penalty=None,
        total_episodes=ITERATIONS * batch, num_sample_generations=0, report_to=[], save_strategy="no",
        eval_strategy="no", logging_steps=1, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    peft_config = None
    if mode == "lora":
        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                 task_type="CAUSAL_LM")
    clock = IterationClock()
    lengths, gen_seconds = [], []
    try:
        # TRL prints its progress and logs to stdout; keep stdout for the JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                                 reward_model=reward_model, value_model=value_model, train_dataset=data,
                                 eval_dataset=data, peft_config=peft_config, callbacks=[clock])
            if mode == "lora":
                assert trainer.ref_model is None and trainer.is_peft_model, "expected the adapter-disabled reference"
            models = [m for m in (trainer.model.policy, trainer.ref_model, trainer.model.value_model,
                                  trainer.reward_model) if m is not None]
            generation_eos = trainer.policy_model.generation_config.eos_token_id
            record_generations(trainer.model.policy, prompt_len, tokenizer.pad_token_id, lengths, gen_seconds)
            rss_before = rss_mb()
            trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if len(clock.ends) != ITERATIONS:
        sys.exit(f"expected {ITERATIONS} PPO iterations, saw {len(clock.ends)}")
    dt = clock.ends[1] - clock.ends[0]

    params = {p.data_ptr(): p.numel() * p.element_size() for m in models for p in m.parameters()}
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    mean_len = sum(lengths) / len(lengths)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    print(f"iteration seconds {[round(clock.ends[0] - clock.begin, 2), round(dt, 2)]} "
          f"(of which generate {[round(s, 2) for s in gen_seconds]})", file=sys.stderr)
    keys = ("loss/policy_avg", "loss/value_avg", "objective/kl", "objective/scores", "val/num_eos_tokens", "lr")
    for i, logs in enumerate(log for log in clock.logs if "loss/policy_avg" in log):
        print(f"iteration {i + 1}: " + ", ".join(f"{k}={logs.get(k)}" for k in keys), file=sys.stderr)
    print(f"models {[type(m).__name__ for m in models]}; trainable parameters {trainable}; "
          f"generation eos_token_id {generation_eos}; response lengths {lengths}; "
          f"optimizer {type(optimizer).__name__} {optimizer.defaults}", file=sys.stderr)
    result = {"impl": "trl", "mode": mode, "model": model_name, "batch": batch, "prompt_len": prompt_len,
              "response_len": response_len, "num_ppo_epochs": NUM_PPO_EPOCHS, "s_per_iteration": round(dt, 3),
              "peak_rss_mb": round(peak_rss), "rss_before_mb": round(rss_before), "models_in_memory": len(models),
              "param_mb": round(sum(params.values()) / 2**20), "mean_response_len": round(mean_len, 2),
              "trl_version": trl.__version__, "torch_version": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
