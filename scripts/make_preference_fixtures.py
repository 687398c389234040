#!/usr/bin/env python3
"""Generates the preference-training fixtures in tests/fixtures/preference/.

    python3 -m venv /some/venv && /some/venv/bin/pip install torch transformers safetensors peft trl datasets accelerate
    /some/venv/bin/python scripts/make_preference_fixtures.py

Uses the tiny random Llama of tests/fixtures/parity/tiny_hf (make_parity_fixtures.py) and the LoRA
adapter of tests/fixtures/peft/lora (make_peft_fixtures.py). Everything runs on the CPU in float32.

Writes:
  dpo.json         TRL's DPOTrainer on 3 fixed token-id pairs: loss, the metrics TRL logs for the batch and
                   the gradient of the loss for every LoRA weight, for several loss types.
  tiny_reward_hf/  a LlamaForSequenceClassification (num_labels=1, pad_token_id=0) with tiny_hf's backbone
                   and a random score head, and tiny_hf's tokenizer (pad token "<unk>", id 0).
  reward_lora/     a PEFT SEQ_CLS LoRA adapter for it (q_proj, v_proj, plus PEFT's saved copy of `score`).
  reward.json      rewards of both on right- and left-padded input, and TRL's RewardTrainer.compute_loss:
                   loss, logged metrics, gradients of every trainable weight.
  tokenized.json   TRL's DPOTrainer dataset preparation of 3 text rows with tiny_hf's tokenizer.

What comes from TRL itself and what is computed here:
  * DPO losses, metrics and gradients: DPOTrainer.compute_loss on a batch made by the trainer's own
    collator (DataCollatorForPreference, fed pre-tokenized prompt_ids/chosen_ids/rejected_ids), then
    loss.backward(); the metrics are what DPOTrainer.log averages and logs.
  * The DPO reference is the policy with its adapters disabled. TRL does this for a *new* adapter
    (peft_config passed to the trainer); for a PeftModel with a pretrained adapter it instead copies that
    adapter as a frozen "ref" adapter. So the trainer is given the LoRA config of tests/fixtures/peft/lora
    as peft_config and the adapter's saved weights are then loaded into the trainer's model.
  * TRL's `sigmoid` loss ignores label_smoothing, so the cDPO case `sigmoid_smoothed`,
    -(1-e)*logsigmoid(b*d) - e*logsigmoid(-b*d), is computed by TRL as the weighted combination
    2(1-e)*sigmoid - (1-2e)*robust (loss_type=["sigmoid", "robust"], loss_weights=[1.8, -0.8]).
  * Per-sequence log-probs: TRL's fused LM head (the call DPOTrainer makes), the reference one through
    DPOTrainer.compute_ref_log_probs.
  * Reward model: plain transformers/PEFT forwards; RewardTrainer.compute_loss on a batch made by the
    trainer's own collator, then loss.backward(); metrics from RewardTrainer.log.
  * Independent checks (asserted, not recorded): every DPO loss and metric is recomputed here by hand from
    a plain transformers forward (log_softmax), the gradients from that recomputation; the reward loss
    likewise.
"""
import json
import os
import shutil
import tempfile

import datasets
import numpy as np
import peft
import torch
import torch.nn.functional as F
import transformers
import trl
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaForSequenceClassification, PrinterCallback,
                          ProgressCallback)
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TINY = "tests/fixtures/parity/tiny_hf"
ADAPTER = "tests/fixtures/peft/lora"
OUT = "tests/fixtures/preference"
RM_DIR = os.path.join(OUT, "tiny_reward_hf")
RM_LORA = os.path.join(OUT, "reward_lora")
os.makedirs(OUT, exist_ok=True)
datasets.disable_progress_bar()
transformers.logging.set_verbosity_error()
torch.use_deterministic_algorithms(True)
SCRATCH = tempfile.mkdtemp()  # the trainers' output_dir; nothing is written there


def tokenizer():
    tok = AutoTokenizer.from_pretrained(TINY)
    tok.pad_token = "<unk>"  # id 0: pad with 0, as the fixtures do (tiny_hf has no pad token)
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2
    return tok


def nested(t):
    """A float32 tensor as nested lists, each value written as the shortest decimal that reads back as the
    same float32 (the gradients are float32; this keeps the files small without losing anything)."""
    def conv(a):
        if a.ndim:
            return [conv(x) for x in a]
        v = float(str(a))  # numpy prints a float32 scalar as its shortest round-trip decimal
        assert np.float32(v) == a
        return v
    return conv(t.detach().to(torch.float32).numpy())


def adapter_key(param_name):
    """A trainable parameter's name as PEFT writes it in adapter_model.safetensors."""
    return param_name.replace("modules_to_save.default.", "").replace(".default.", ".")


def logged_metrics(trainer):
    """The metrics the trainer's `log` averages and logs (what a training log line shows), without step/epoch."""
    trainer.remove_callback(PrinterCallback)  # quiet: they would print the log line
    trainer.remove_callback(ProgressCallback)
    trainer.log({})
    entry = dict(trainer.state.log_history[-1])
    for k in ("step", "epoch"):
        entry.pop(k, None)
    return entry


# ---------------------------------------------------------------------------------------------------------
# 1. DPO
# ---------------------------------------------------------------------------------------------------------
PAIRS = [
    # chosen longer than rejected
    {"prompt_ids": [5, 17, 42], "chosen_ids": [88, 23, 54, 9], "rejected_ids": [61, 7]},
    # rejected longer than chosen
    {"prompt_ids": [11, 64, 99, 120, 33, 8], "chosen_ids": [77, 4], "rejected_ids": [101, 45, 66, 12, 90, 3, 127]},
    # chosen longer, completions share their first two tokens
    {"prompt_ids": [27, 3, 115, 60], "chosen_ids": [19, 84, 71, 36, 102], "rejected_ids": [19, 84, 50]},
]
DUMMY_TEXT = Dataset.from_list([{"prompt": "hello", "chosen": " world", "rejected": " there"}])
ADAPTER_SD = load_file(os.path.join(ADAPTER, "adapter_model.safetensors"))


def dpo_trainer(loss_type, beta, label_smoothing, loss_weights=None):
    """A DPOTrainer training a new LoRA (reference = adapters disabled), whose weights are then set to the
    fixture adapter's."""
    base = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    lora = LoraConfig.from_pretrained(ADAPTER)
    lora.inference_mode = False
    args = DPOConfig(output_dir=SCRATCH, report_to="none", use_cpu=True, bf16=False, beta=beta, loss_type=loss_type,
                     label_smoothing=label_smoothing, loss_weights=loss_weights)
    trainer = DPOTrainer(model=base, args=args, train_dataset=DUMMY_TEXT, processing_class=tokenizer(),
                         peft_config=lora)
    model = trainer.model
    assert list(model.peft_config) == ["default"]  # no "ref" adapter: the reference is the base model
    res = set_peft_model_state_dict(model, ADAPTER_SD)
    assert not res.unexpected_keys
    assert all(".lora_" not in k for k in res.missing_keys)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ADAPTER_SD[adapter_key(name)]), name
    model.train()  # dropout is 0 everywhere (TRL also disables it); train mode so the metrics are train ones
    return trainer


def hand_dpo(batch, loss_type, beta, ls, policy_fn, ref_fn, sft_weight=0.0):
    """Independent recomputation from plain transformers logits (not recorded, only compared)."""
    ids, mask, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]

    def seq_logps(fn):
        logits = fn(input_ids=ids, attention_mask=mask).logits[:, :-1]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        return (lp * comp[:, 1:]).sum(1)

    pol = seq_logps(policy_fn)
    n = len(PAIRS)
    # The sft term: mean NLL over every chosen completion token of the batch.
    nll = -pol[:n].sum() / comp[:n, 1:].sum()
    with torch.no_grad():
        ref = seq_logps(ref_fn)
    n = len(PAIRS)
    cr = pol[:n] - ref[:n]
    rr = pol[n:] - ref[n:]
    d = cr - rr
    lens = comp.sum(1).float()
    if loss_type == "sigmoid":
        losses = -(1 - ls) * F.logsigmoid(beta * d) - ls * F.logsigmoid(-beta * d)  # cDPO when ls > 0
    elif loss_type == "ipo":
        d_avg = cr / lens[:n] - rr / lens[n:]
        losses = (d_avg - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * d)
    elif loss_type == "robust":
        losses = (-(1 - ls) * F.logsigmoid(beta * d) + ls * F.logsigmoid(-beta * d)) / (1 - 2 * ls)
    loss = losses.mean() + sft_weight * nll
    metrics = {
        "rewards/chosen": (beta * cr).mean().item(),
        "rewards/rejected": (beta * rr).mean().item(),
        "rewards/accuracies": (cr > rr).float().mean().item(),
        "rewards/margins": (beta * d).mean().item(),
        "logps/chosen": pol[:n].mean().item(),
        "logps/rejected": pol[n:].mean().item(),
    }
    return loss, metrics, pol.detach(), ref, nll.item()


DPO_CASES = {
    # name: (fixture loss_type, beta, label_smoothing, TRL loss_type list, TRL loss_weights)
    "sigmoid": ("sigmoid", 0.1, 0.0, ["sigmoid"], None),
    "sigmoid_smoothed": ("sigmoid", 0.1, 0.1, ["sigmoid", "robust"], [1.8, -0.8]),
    "ipo": ("ipo", 0.1, 0.0, ["ipo"], None),
    "hinge": ("hinge", 0.1, 0.0, ["hinge"], None),
    "robust": ("robust", 0.1, 0.1, ["robust"], None),
    "sigmoid_beta05": ("sigmoid", 0.5, 0.0, ["sigmoid"], None),
    # RPO: the preference loss plus the chosen tokens' NLL (older TRL's rpo_alpha).
    "sigmoid_sft": ("sigmoid", 0.1, 0.0, ["sigmoid", "sft"], [1.0, 1.0]),
    "ipo_sft": ("ipo", 0.1, 0.0, ["ipo", "sft"], [1.0, 0.5]),
}

dpo = {
    "trl_version": trl.__version__, "torch_version": torch.__version__,
    "transformers_version": transformers.__version__, "peft_version": peft.__version__,
    "base": TINY, "adapter": ADAPTER, "pad_token_id": 0, "pairs": PAIRS,
}
cases = {}
for name, (loss_type, beta, ls, trl_types, trl_weights) in DPO_CASES.items():
    trainer = dpo_trainer(trl_types, beta, ls, trl_weights)
    model = trainer.model
    batch = trainer.data_collator(PAIRS)  # TRL's DataCollatorForPreference: [chosen..., rejected...], right-padded
    if "batch" not in dpo:
        dpo["batch"] = {k: batch[k].tolist() for k in ("input_ids", "attention_mask", "completion_mask")}
        # Per-sequence log-probs, with the calls DPOTrainer makes: the fused LM head on the policy, and
        # compute_ref_log_probs (adapters disabled) for the reference.
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        with torch.no_grad():
            pol = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                        labels=labels, fused_lm_head=True).log_probs.sum(1)
            ref_c, ref_r = trainer.compute_ref_log_probs(model, batch)
        n = len(PAIRS)
        dpo["policy_logps"] = {"chosen": pol[:n].tolist(), "rejected": pol[n:].tolist()}
        dpo["ref_logps"] = {"chosen": ref_c.tolist(), "rejected": ref_r.tolist()}
        dpo["completion_lengths"] = {"chosen": [len(p["chosen_ids"]) for p in PAIRS],
                                     "rejected": [len(p["rejected_ids"]) for p in PAIRS]}
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {adapter_key(n): nested(p.grad) for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == set(ADAPTER_SD), sorted(set(grads) ^ set(ADAPTER_SD))
    metrics = logged_metrics(trainer)
    sft_weight = trl_weights[trl_types.index("sft")] if "sft" in trl_types else 0.0
    case = {"loss_type": loss_type, "beta": beta, "label_smoothing": ls, "sft_weight": sft_weight}
    if loss_type == "ipo":
        case["ipo_divides_logratios_by_completion_length"] = True
        case["logged_logps_are_length_averaged"] = False
    if trl_types != [loss_type]:
        case["trl_loss_type"] = trl_types
        case["trl_loss_weights"] = trl_weights
    case.update({"loss": loss.item(), "metrics": metrics, "grads": grads})
    cases[name] = case

    # Independent check of the recorded values.
    model.zero_grad(set_to_none=True)

    def ref_fn(**kw):
        with model.disable_adapter():
            return model(**kw)

    h_loss, h_metrics, h_pol, h_ref, h_nll = hand_dpo(batch, loss_type, beta, ls, model, ref_fn, sft_weight)
    case["nll_loss"] = h_nll
    h_loss.backward()
    assert abs(h_loss.item() - loss.item()) < 1e-5 * max(1, abs(loss.item())), (name, h_loss.item(), loss.item())
    for k, v in h_metrics.items():
        assert abs(v - metrics[k]) < 1e-5 * max(1, abs(v)), (name, k, v, metrics[k])
    for n_, p in model.named_parameters():
        if p.requires_grad:
            g = torch.tensor(grads[adapter_key(n_)])
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6), (name, n_, (p.grad - g).abs().max())
    assert torch.allclose(h_pol, torch.tensor(dpo["policy_logps"]["chosen"] + dpo["policy_logps"]["rejected"]),
                          atol=1e-5)
    assert torch.allclose(h_ref, torch.tensor(dpo["ref_logps"]["chosen"] + dpo["ref_logps"]["rejected"]), atol=1e-5)
    print(f"dpo {name}: loss {loss.item():.6f}  {metrics}")

# TRL's own sigmoid loss with label_smoothing set: the same values as without it.
trainer = dpo_trainer(["sigmoid"], 0.1, 0.1)
loss_ls = trainer.compute_loss(trainer.model, trainer.data_collator(PAIRS)).item()
assert loss_ls == cases["sigmoid"]["loss"], (loss_ls, cases["sigmoid"]["loss"])

dpo["cases"] = cases
dpo["notes"] = (
    "Values from trl.DPOTrainer.compute_loss (training mode, dropout 0) on the batch made by the trainer's "
    "DataCollatorForPreference (batch: chosen sequences first, then rejected, right-padded with 0; "
    "completion_mask marks completion tokens); grads from loss.backward(), keyed as in PEFT's adapter file, "
    "[out, in]. Policy = tiny_hf + the adapter; reference = the same model with adapters disabled (TRL's "
    "behaviour when it wraps a new adapter; given a PeftModel with a pretrained adapter, TRL 1.x instead copies "
    "it as a frozen 'ref' adapter, so the fixture builds the trainer with the adapter's LoraConfig as peft_config "
    "and loads the adapter weights afterwards). "
    "logps = sum over completion tokens of log p(token | prefix); chosen_logratios = policy - ref; "
    "rewards/* = beta * logratios (mean over the 3 pairs); rewards/margins = mean of beta*(chosen-rejected "
    "logratios); rewards/accuracies = mean of (chosen reward > rejected reward), strict >; logps/* = mean policy "
    "logps (summed, never length-averaged, also for ipo). Every loss is the mean over pairs of a per-pair loss "
    "with d = chosen_logratios - rejected_logratios: sigmoid -logsigmoid(beta*d); hinge relu(1 - beta*d); "
    "robust (-(1-e)*logsigmoid(beta*d) + e*logsigmoid(-beta*d)) / (1-2e); ipo (d_avg - 1/(2*beta))**2 with "
    "d_avg = chosen_logratios/len_chosen - rejected_logratios/len_rejected (TRL divides by the completion token "
    "counts for ipo only; the logged logps/rewards stay the summed ones). TRL 1.x's sigmoid loss ignores "
    "label_smoothing (asserted: sigmoid with label_smoothing 0.1 gives the sigmoid case's loss); the case "
    "sigmoid_smoothed is cDPO, -(1-e)*logsigmoid(beta*d) - e*logsigmoid(-beta*d), computed by TRL as "
    "loss_type ['sigmoid','robust'] with loss_weights [1.8, -0.8] (= 2(1-e)*sigmoid - (1-2e)*robust). "
    "Other logged metrics: entropy = mean per-token entropy of the policy over all completion tokens; "
    "logits/chosen, logits/rejected = mean over completion tokens of the mean logit over the vocabulary at the "
    "position predicting that token; mean_token_accuracy = fraction of chosen completion tokens that are the "
    "argmax; num_tokens = sum of the attention mask (all 6 sequences). "
    "Cases *_sft add TRL 1.16's 'sft' loss with its weight (sft_weight): the mean NLL over every chosen "
    "completion token of the batch (RPO; older TRL's rpo_alpha). nll_loss (every case) is that mean NLL, "
    "recomputed by hand because TRL 1.16 does not log it."
)
with open(os.path.join(OUT, "dpo.json"), "w") as f:
    json.dump(dpo, f, separators=(",", ":"))

# ---------------------------------------------------------------------------------------------------------
# 2. Reward model
# ---------------------------------------------------------------------------------------------------------
gen = torch.Generator().manual_seed(1234)
rm = LlamaForSequenceClassification.from_pretrained(TINY, num_labels=1, pad_token_id=0, dtype=torch.float32)
with torch.no_grad():
    rm.score.weight.copy_(0.2 * torch.randn(rm.score.weight.shape, generator=gen))
shutil.rmtree(RM_DIR, ignore_errors=True)
rm.save_pretrained(RM_DIR)
tokenizer().save_pretrained(RM_DIR)

lcfg = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
pm = get_peft_model(LlamaForSequenceClassification.from_pretrained(RM_DIR, dtype=torch.float32), lcfg)
with torch.no_grad():
    for name, p in pm.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_" in name:
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        else:  # PEFT's trainable copy of the score head
            assert "score.modules_to_save" in name, name
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
shutil.rmtree(RM_LORA, ignore_errors=True)
pm.save_pretrained(RM_LORA)
os.remove(os.path.join(RM_LORA, "README.md"))  # a generated model card, not needed
# PEFT keeps target_modules as a set, written in hash order; sort it so that reruns give the same file.
with open(os.path.join(RM_LORA, "adapter_config.json")) as f:
    rm_lora_cfg = json.load(f)
rm_lora_cfg["target_modules"] = sorted(rm_lora_cfg["target_modules"])
with open(os.path.join(RM_LORA, "adapter_config.json"), "w") as f:
    f.write(json.dumps(rm_lora_cfg, indent=2, sort_keys=True))  # as PEFT writes it, no final newline
RM_LORA_SD = load_file(os.path.join(RM_LORA, "adapter_model.safetensors"))

SEQS = [
    [66, 12, 90, 127, 5],
    [9, 31, 120, 44, 7, 88, 102, 56, 19],
    [14, 75, 3],
    [40, 101, 23, 8, 77, 33, 61],
]
L = max(len(s) for s in SEQS)
right_ids = torch.tensor([s + [0] * (L - len(s)) for s in SEQS])
right_mask = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in SEQS])
left_ids = torch.tensor([[0] * (L - len(s)) + s for s in SEQS])
left_mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in SEQS])


def rewards(model):
    model.eval()
    out = {}
    with torch.no_grad():
        for side, ids, mask in (("right", right_ids, right_mask), ("left", left_ids, left_mask)):
            out[side] = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    return out


base_rm = LlamaForSequenceClassification.from_pretrained(RM_DIR, dtype=torch.float32)
assert base_rm.config.pad_token_id == 0
base_rewards = rewards(base_rm)
lora_rm = PeftModel.from_pretrained(LlamaForSequenceClassification.from_pretrained(RM_DIR, dtype=torch.float32), RM_LORA)
lora_rewards = rewards(lora_rm)
# Unpadded, one at a time: what both paddings should give.
with torch.no_grad():
    for model, got in ((base_rm, base_rewards), (lora_rm, lora_rewards)):
        single = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in SEQS]
        for side in ("right", "left"):
            assert max(abs(a - b) for a, b in zip(single, got[side])) < 1e-5, (side, single, got[side])
print("rewards base", base_rewards, "\nrewards lora", lora_rewards)

RM_CASES = {
    "margin_center": {"margins": [0.5, -0.25], "center_rewards_coefficient": 0.01},
    "plain": {"margins": None, "center_rewards_coefficient": 0.0},
}
rm_cases = {}
for name, c in RM_CASES.items():
    examples = [{"chosen_ids": SEQS[0], "rejected_ids": SEQS[2]}, {"chosen_ids": SEQS[1], "rejected_ids": SEQS[3]}]
    if c["margins"] is not None:
        for ex, m in zip(examples, c["margins"]):
            ex["margin"] = m
    model = PeftModel.from_pretrained(LlamaForSequenceClassification.from_pretrained(RM_DIR, dtype=torch.float32),
                                      RM_LORA, is_trainable=True)
    args = RewardConfig(output_dir=SCRATCH, report_to="none", use_cpu=True, bf16=False,
                        center_rewards_coefficient=c["center_rewards_coefficient"])
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                            processing_class=tokenizer())
    assert trainer.model.config.pad_token_id == 0
    batch = trainer.data_collator(examples)  # TRL's reward DataCollatorForPreference: [chosen..., rejected...]
    batch_record = {k: v.tolist() for k, v in batch.items()}
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {adapter_key(n): nested(p.grad) for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert set(grads) == set(RM_LORA_SD), sorted(set(grads) ^ set(RM_LORA_SD))
    metrics = logged_metrics(trainer)
    # Independent check of the loss.
    with torch.no_grad():
        r = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    rc, rr = r[:2], r[2:]
    margin = torch.tensor(c["margins"]) if c["margins"] is not None else 0.0
    h = -F.logsigmoid(rc - rr - margin).mean() + c["center_rewards_coefficient"] * ((rc + rr) ** 2).mean()
    assert abs(h.item() - loss.item()) < 1e-6, (h.item(), loss.item())
    assert torch.allclose(r, torch.tensor([lora_rewards["right"][i] for i in (0, 1, 2, 3)]), atol=1e-5)
    rm_cases[name] = {**c, "batch": batch_record, "rewards": r.tolist(), "loss": loss.item(), "metrics": metrics,
                      "grads": grads}
    print(f"reward {name}: loss {loss.item():.6f} {metrics}")

reward = {
    "trl_version": trl.__version__, "torch_version": torch.__version__,
    "transformers_version": transformers.__version__, "peft_version": peft.__version__,
    "base": RM_DIR, "adapter": RM_LORA,
    "adapter_keys": sorted(RM_LORA_SD),
    "adapter_modules_to_save": rm_lora_cfg["modules_to_save"], "adapter_task_type": rm_lora_cfg["task_type"],
    "sequences": SEQS,
    "right_padded": {"input_ids": right_ids.tolist(), "attention_mask": right_mask.tolist()},
    "left_padded": {"input_ids": left_ids.tolist(), "attention_mask": left_mask.tolist()},
    "rewards_base": base_rewards, "rewards_lora": lora_rewards,
    "pairs": {"chosen": [0, 1], "rejected": [2, 3]},
    "cases": rm_cases,
    "notes": (
        "rewards_* = model(input_ids, attention_mask).logits[:, 0] of LlamaForSequenceClassification (pad_token_id "
        "0: the score of the last non-pad token; position ids are not shifted for left padding, rope makes that "
        "irrelevant up to rounding) and of PeftModel.from_pretrained(it, reward_lora); both paddings agree with "
        "unpadded single-sequence runs to 1e-5 (asserted). cases: trl.RewardTrainer.compute_loss (training mode, "
        "dropout 0) with the adapter loaded trainable, on the batch of the trainer's collator (chosen sequences "
        "first, then rejected, right-padded with 0); loss = mean over pairs of -logsigmoid(r_chosen - r_rejected "
        "- margin) + center_rewards_coefficient * mean over pairs of (r_chosen + r_rejected)**2; grads keyed as in "
        "adapter_model.safetensors, [out, in] (the score key is PEFT's saved copy). Metrics as RewardTrainer.log "
        "logs them: min_reward/mean_reward/max_reward over all 4 rewards, accuracy = mean of (r_chosen > "
        "r_rejected) strict, margin = mean of (r_chosen - r_rejected) without the margins subtracted, num_tokens = "
        "sum of the attention mask."
    ),
}
with open(os.path.join(OUT, "reward.json"), "w") as f:
    json.dump(reward, f, separators=(",", ":"))

# ---------------------------------------------------------------------------------------------------------
# 3. Tokenization: DPOTrainer's dataset preparation on text rows
# ---------------------------------------------------------------------------------------------------------
ROWS = [
    {"kind": "explicit_prompt", "row": {"prompt": "what is the capital of france?", "chosen": "paris.",
                                        "rejected": "the lazy dog."}},
    {"kind": "implicit_prompt", "row": {"chosen": "hello world, hello there",
                                        "rejected": "hello world, the quick fox"}},
    {"kind": "completion_starts_with_space", "row": {"prompt": "the quick brown fox",
                                                     "chosen": " jumps over the lazy dog",
                                                     "rejected": " is quick"}},
]
trainer = dpo_trainer(["sigmoid"], 0.1, 0.0)
tok = trainer.processing_class
tokenized = {"trl_version": trl.__version__, "transformers_version": transformers.__version__,
             "tokenizer": TINY, "eos_token_id": tok.eos_token_id, "rows": []}
for r in ROWS:
    # One dataset per row: TRL decides from a dataset's first row whether to extract an implicit prompt.
    prepared = trainer._prepare_dataset(Dataset.from_list([r["row"]]), tok, trainer.args, "fixture")[0]
    entry = {"kind": r["kind"], "input": r["row"]}
    for k in ("prompt_ids", "chosen_ids", "rejected_ids"):
        entry[k] = prepared[k]
    for k in ("prompt", "chosen", "rejected"):
        entry[f"prepared_{k}"] = prepared[k]
    entry["eos_appended"] = {k: prepared[k][-1] == tok.eos_token_id for k in ("chosen_ids", "rejected_ids")}
    entry["prompt_ids_of_prompt_alone"] = tok(prepared["prompt"])["input_ids"]
    tokenized["rows"].append(entry)
    print("tokenized", entry)
tokenized["notes"] = (
    "DPOTrainer._prepare_dataset (the trainer's own preparation of a text dataset) with tiny_hf's tokenizer. "
    "Without a 'prompt' column TRL's extract_prompt splits off the shared prefix; TRL appends the EOS token "
    "text to chosen and rejected (non-conversational data), tokenizes prompt, prompt+chosen and prompt+rejected "
    "separately (tokenizer(text), add_special_tokens default), and cuts the completions at the common prefix of "
    "the tokenized prompt and each tokenized prompt+completion (shortest of the two)."
)
with open(os.path.join(OUT, "tokenized.json"), "w") as f:
    json.dump(tokenized, f, indent=1)

shutil.rmtree(SCRATCH, ignore_errors=True)
for root, _, files in sorted(os.walk(OUT)):
    for fn in sorted(files):
        p = os.path.join(root, fn)
        print(f"{os.path.getsize(p):8d} {p}")
