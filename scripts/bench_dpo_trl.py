# PyTorch + TRL half of the DPO training-step benchmark; runner's half is the example
# `bench_dpo_step`, and both print one JSON line per run in the same format.
#
#   python scripts/bench_dpo_trl.py MODEL [PAIRS] [SEQ] [STEPS]      (defaults 4, 256, 4)
#
# MODEL is a Hugging Face model directory (f32), or `random-smollm2`: a randomly initialised
# model of SmolLM2-135M's shape. The data are PAIRS random preference pairs (fixed seed) of
# token ids drawn uniformly from [3, vocab): a prompt of SEQ/2 tokens, a chosen and a rejected
# completion of SEQ/2 tokens each, so every sequence the model sees is SEQ tokens and a step
# runs 2 * PAIRS sequences (chosen and rejected) through the policy and the reference.
#
# The step is TRL's own: DPOTrainer.train() with a PEFT LoRA (r=8, alpha=16, dropout 0, on
# q_proj and v_proj) and ref_model=None, so the reference is the same model with the adapter
# disabled; sigmoid loss, beta 0.1, batch PAIRS pairs, no gradient accumulation, AdamW (the
# Trainer's default, the fused torch AdamW) at lr 5e-6, f32 throughout, reference log-probs
# computed in the step. Per step that is the trainer's batch collation, the policy forward,
# the reference forward, the DPO loss, the backward, gradient clipping (TRL's default max norm
# 1.0), the AdamW update and the scheduler step. Only tokenization is skipped: the pairs are
# already token ids, so the trainer's dataset preparation is replaced by the identity and a
# three-token stand-in tokenizer supplies the pad id (no padding occurs: all lengths match).
# Gradient checkpointing, which TRL turns on by default, is turned off so that activations are
# kept as runner keeps them. Runs on the CPU.
#
# Timing: 2 warm-up steps, then the mean wall-clock time of STEPS steps, measured between the
# ends of optimizer steps, so it covers everything the training loop does per step.
# `peak_rss_mb` is the process's peak RSS after the steps; `rss_before_mb` the resident set
# just before training starts (model loaded, adapter added, trainer built). `loss_first` is the
# loss of the first step: ln 2 = 0.6931 when the fresh adapter leaves policy = reference.
# Everything but the JSON line goes to stderr.
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
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

import trl
from trl import DPOConfig, DPOTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_bench import SMOLLM2_135M  # noqa: E402

WARMUP = 2


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def stand_in_tokenizer():
    # Ids 0..2 are the special tokens; the random data use ids from 3 on.
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


class PreTokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer fed token ids: the dataset already has prompt_ids, chosen_ids and rejected_ids."""

    def __init__(self, *args, **kwargs):
        self.step_losses = []
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.step_losses.append(loss.detach())
        return loss


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: bench_dpo_trl.py MODEL [PAIRS] [SEQ] [STEPS]")
    model_name = args[0]
    pairs = int(args[1]) if len(args) > 1 else 4
    seq = int(args[2]) if len(args) > 2 else 256
    steps = int(args[3]) if len(args) > 3 else 4
    if seq % 2 or seq < 2 or pairs < 1 or steps < 1:
        sys.exit("PAIRS and STEPS must be positive, SEQ even and positive")
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

    torch.manual_seed(0)
    if model_name == "random-smollm2":
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
    vocab = model.config.vocab_size

    half = seq // 2
    gen = torch.Generator().manual_seed(1234)
    ids = lambda: torch.randint(3, vocab, (pairs, half), generator=gen).tolist()  # noqa: E731
    data = Dataset.from_dict({"prompt_ids": ids(), "chosen_ids": ids(), "rejected_ids": ids()})

    out_dir = tempfile.mkdtemp(prefix="bench_dpo_trl_")
    config = DPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=pairs, gradient_accumulation_steps=1, max_steps=WARMUP + steps,
        learning_rate=5e-6, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=False,
        max_length=None, dataloader_num_workers=0, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, seed=0)
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                             task_type="CAUSAL_LM")
    clock = StepClock()
    try:
        # The trainer prints its end-of-training log to stdout; keep stdout for the JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            trainer = PreTokenizedDPOTrainer(model=model, ref_model=None, args=config, train_dataset=data,
                                             processing_class=stand_in_tokenizer(), peft_config=peft_config,
                                             callbacks=[clock])
            assert trainer.ref_model is None, "expected the adapter-disabled model as the reference"
            rss_before = rss_mb()
            trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if len(clock.ends) != WARMUP + steps:
        sys.exit(f"expected {WARMUP + steps} optimizer steps, saw {len(clock.ends)}")
    dt = (clock.ends[-1] - clock.ends[WARMUP - 1]) / steps
    losses = [round(float(loss), 6) for loss in trainer.step_losses]
    checkpointing = any(getattr(m, "gradient_checkpointing", False) is True for m in trainer.model.modules())
    print(f"losses per step: {losses}; optimizer {type(trainer.optimizer.optimizer).__name__} "
          f"{trainer.optimizer.defaults}; activation checkpointing {checkpointing}", file=sys.stderr)
    result = {"impl": "trl", "method": "dpo_lora", "pairs": pairs, "seq": seq, "steps": steps,
              "s_per_step": round(dt, 4), "tokens_per_s": round(2 * pairs * seq / dt, 1),
              "peak_rss_mb": round(peak_rss), "rss_before_mb": round(rss_before),
              "loss_first": losses[0], "trl_version": trl.__version__, "torch_version": torch.__version__,
              "threads": torch.get_num_threads()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
