#!/usr/bin/env python3
"""Generates the PPO and GRPO parity fixtures in tests/fixtures/rl/ (ppo.json, grpo.json).

Three TRL versions are needed, since no single release has all three pieces, so the script has three
entry points, each run with its own virtualenv (paths relative to the repo root):

    # 1. PPO math (masked_whiten/masked_var, k1/k3, GAE, the PPO losses) -> tests/fixtures/rl/ppo.json
    #    in a virtualenv with trl==0.25.1 (the newest release with a real trl/trainer/ppo_trainer.py;
    #    later ones move PPOTrainer to trl/experimental/ppo with the same math), e.g.
    #    pip install "trl==0.25.1" "transformers==4.57.*" torch
    python scripts/make_rl_fixtures.py ppo
    # 2. AdaptiveKLController (only in trl<=0.11) -> the "adaptive_kl" entry of tests/fixtures/rl/ppo.json
    #    in a virtualenv with trl==0.11.4, e.g. pip install "trl==0.11.4" "transformers==4.46.*" torch pandas rich
    python scripts/make_rl_fixtures.py adaptive_kl
    # 3. GRPO advantages and losses -> tests/fixtures/rl/grpo.json
    #    in a virtualenv with trl==1.16.0 (plus torch, transformers, accelerate)
    python scripts/make_rl_fixtures.py grpo

`ppo` and `adaptive_kl` each rewrite only their own keys of ppo.json and keep the other's, so they can be run
in either order. Everything is computed on the CPU in float64 (torch default dtype set to float64, so that
TRL's integer-count divisions, e.g. masked_var's n/(n-1), are float64 too). Seeds are fixed; values are
written with Python's repr (shortest round-trip float64).

Masks in the fixtures are 0/1, right-padded (ones first), ragged, with one sequence of length 1.

What comes from TRL itself and what is written here
---------------------------------------------------
PPO (trl 0.25.1, trl/trainer/ppo_trainer.py):
  * masked_mean, masked_var, masked_whiten: TRL's own module-level functions, called directly.
  * k1/k3, the reward assembly, GAE and the policy/value losses are inline in PPOTrainer.train(). They are
    computed here by hand (these are the recorded values), and, as a check, the corresponding statements
    are cut out of inspect.getsource(PPOTrainer.train) at run time and executed on the same tensors; the two
    must agree to 1e-13 relative (asserted). Nothing from TRL is copied into this file.
  * TRL computes pg_clipfrac and vf_clipfrac from `(...).float()`, i.e. in float32; the fixture records the
    exact float64 fraction k/n (asserted within 1e-7 of TRL's float32 value).
  * TRL's masks: `sequence_lengths` is the index of the last response token (first pad index - 1);
    padding_mask = idx > sequence_lengths (the response tokens are kept); padding_mask_p1 =
    idx > sequence_lengths + 1 keeps one more position, the first pad token. Logprobs (old, new, ref) are
    filled with INVALID_LOGPROB = 1.0 at padding_mask; values and vpred are zeroed at padding_mask_p1. The
    score is added at index sequence_lengths + 1 (the first pad position), or at the last index when the
    response fills the whole width (see "trl_rewards"). The policy loss, pg_clipfrac and the advantage
    whitening use padding_mask; the value loss and vf_clipfrac use padding_mask_p1.
  * runner uses the response tokens for both, so "gae" and "losses" use ONE mask (the response tokens)
    for policy and value alike: TRL's statements are executed with padding_mask_p1 := padding_mask, and
    rewards/values are zero at padding.
  * approxkl: TRL computes 0.5 * (logprobs_diff**2).mean() over the whole [B, T] tensor, unmasked; since
    both logprobs are INVALID_LOGPROB at padding, the padding terms are 0 but still count in the
    denominator B*T. "approxkl" is that value; "approxkl_masked" is the masked mean. Likewise TRL logs
    ratio.mean() unmasked (ratio = 1 at padding): "ratio_mean" vs "ratio_mean_masked".
  * Gradients (grad_logprobs_new, grad_vpred) are torch autograd of `loss`; they are 0 at padding because
    TRL masked_fill's new_logprobs and vpred there.
AdaptiveKLController (trl 0.11.4, trl/trainer/utils.py): TRL's own class, called directly.
GRPO (trl 1.16.0, trl/trainer/grpo_trainer.py):
  * Losses: GRPOTrainer._compute_loss itself, on an object made with object.__new__(GRPOTrainer) that has
    the attributes __init__ would set (from a real GRPOConfig), a real CPU Accelerator, and
    _get_per_token_logps_and_entropies replaced by a stub returning the given logps (a leaf tensor, so
    loss.backward() gives d loss / d logps). loss, grad_logps and kl are TRL's values (kl read from the
    trainer's _metrics); every value is also recomputed here by hand (asserted equal). The clip ratios are
    logged by TRL in float32 ((is_clipped.float() * mask).sum() / mask.sum()); the fixture records the exact
    float64 fraction (asserted within 1e-7). Definitions, per token over the mask, with coef = exp(logp - old):
    low = coef < 1 - epsilon_low and A < 0; high = coef > 1 + epsilon_high and A > 0; region = low or high.
  * TRL 1.16 defaults (recorded under "defaults"): loss_type "dapo", scale_rewards "group", beta 0,
    use_bias_correction_kl True (the per-token KL exp(ref - logp) - (ref - logp) - 1 is multiplied by coef,
    in the loss and in the logged kl). Normalizers: grpo = mean over sequences of the per-sequence masked
    token mean; bnpo = masked token mean of the micro-batch; dr_grpo = masked sum / (B * max_completion_length);
    dapo = masked sum / (num_items_in_batch / num_processes * gradient_accumulation_steps /
    steps_per_generation), where num_items_in_batch is the mask sum of the whole generation batch gathered
    over processes. grpo, bnpo and dr_grpo are further divided by gradient_accumulation_steps in training.
  * Advantages are inline in _generate_and_score_completions (not callable without generation), so they
    are computed here by hand with TRL's own nanstd; as a check the block of TRL statements from
    `unscorable_mask = ...` to `advantages = torch.nan_to_num(...)` is cut out of the method's source at
    run time and executed on the same rewards (asserted equal). The std is Bessel-corrected (n - 1), and
    the advantage is (r - group mean) / (std + 1e-4) ("group": std within the group; "batch": std of the
    whole batch, still minus the group mean; "none": no division). TRL keeps reward_weights in float32, so
    the fixture uses weights exact in float32.
"""
import inspect
import json
import os
import sys
import textwrap
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import torch

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT_DIR = "tests/fixtures/rl"
PPO_JSON = os.path.join(OUT_DIR, "ppo.json")
GRPO_JSON = os.path.join(OUT_DIR, "grpo.json")

torch.set_default_dtype(torch.float64)
DT = torch.float64


# ----------------------------------------------------------------------------------------------- helpers
def lst(t):
    """Tensor -> nested python lists of floats (or ints for integer tensors)."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.bool:
            return t.long().tolist()
        if not t.is_floating_point():
            return t.tolist()
        return t.to(DT).tolist()
    return t


def num(x):
    return float(x.detach().item()) if isinstance(x, torch.Tensor) else float(x)


def right_mask(lengths, width):
    idx = torch.arange(width).unsqueeze(0)
    return idx < torch.tensor(lengths).unsqueeze(1)  # bool [B, T], ones first


def trl_block(func, start, end):
    """Source of `func` from the first line containing `start` through the next line containing `end`,
    dedented, for executing TRL's own inline statements as a cross-check."""
    lines = inspect.getsource(func).splitlines()
    i0 = next(i for i, line in enumerate(lines) if start in line)
    i1 = next(i for i in range(i0, len(lines)) if end in lines[i])
    return textwrap.dedent("\n".join(lines[i0 : i1 + 1]))


def run_block(code, namespace):
    exec(compile(code, "<trl-block>", "exec"), namespace)
    return namespace


def same(a, b, what):
    a, b = torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert torch.equal(a, b) or torch.allclose(a, b, rtol=1e-13, atol=1e-14), (what, a, b)


def update_json(path, entries):
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data.update(entries)
    order = ["trl_version", "torch_version", "adaptive_kl_trl_version", "defaults", "invalid_logprob", "notes"]
    data = {k: data[k] for k in sorted(data, key=lambda k: (order.index(k) if k in order else len(order), k))}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# --------------------------------------------------------------------------------------------------- PPO
def ppo():
    import trl
    from trl.trainer import ppo_trainer as P

    INVALID = P.INVALID_LOGPROB
    train_src = P.PPOTrainer.train
    g = torch.Generator().manual_seed(1234)

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=DT) * std + mean

    B, T = 4, 6
    lengths = [6, 3, 1, 5]
    mask = right_mask(lengths, T)  # bool, True at response tokens
    pad = ~mask  # TRL's padding_mask

    # -- masked_whiten / masked_var: TRL's own functions
    whiten, mvar = [], []
    cases = [
        (randn(B, T, std=2.0, mean=0.5), mask, True),
        (randn(B, T, std=2.0, mean=0.5), mask, False),
        (randn(3, 7, std=0.7, mean=-1.3), right_mask([7, 1, 4], 7), True),
    ]
    for x, m, shift in cases:
        out = P.masked_whiten(x, m, shift_mean=shift)
        # hand check: unbiased masked variance, eps 1e-8 inside the rsqrt, mean added back if not shift_mean
        sel = x[m]
        ref = (x - sel.mean()) / torch.sqrt(sel.var(unbiased=True) + 1e-8) + (0 if shift else sel.mean())
        same(out[m], ref[m], "whiten")
        whiten.append({"x": lst(x), "mask": lst(m), "shift_mean": shift, "out": lst(out)})
    for (x, m, _), unbiased in [(cases[0], True), (cases[0], False), (cases[2], True)]:
        out = P.masked_var(x, m, unbiased=unbiased)
        same(out, x[m].var(unbiased=unbiased), "masked_var")
        mvar.append({"x": lst(x), "mask": lst(m), "unbiased": unbiased, "out": num(out)})

    # -- k1 / k3 and TRL's reward assembly (score placement), statements from PPOTrainer.train
    g.manual_seed(2)  # each section has its own seed, so adding a case changes no other section
    reward_code = trl_block(train_src, "logr = ref_logprobs - logprobs", "rewards[actual_start, actual_end] += scores")
    kl_cases, trl_rewards = [], []
    for lens, identical in (([6, 3, 1, 5], False), ([2, 6, 4], False), ([4, 1, 6], True)):
        m = right_mask(lens, T)
        logprobs = torch.masked_fill(randn(len(lens), T, std=0.8, mean=-2.0), ~m, INVALID)
        ref_logprobs = logprobs.clone() if identical else logprobs + randn(len(lens), T, std=0.5)
        ref_logprobs = torch.masked_fill(ref_logprobs, ~m, INVALID)
        logr = ref_logprobs - logprobs
        k1 = -logr
        k3 = (logr.exp() - 1) - logr
        for est, mine in (("k1", k1), ("k3", k3)):
            ns = run_block(reward_code, {
                "torch": torch, "ref_logprobs": ref_logprobs, "logprobs": logprobs,
                "args": SimpleNamespace(kl_estimator=est, kl_coef=0.05),
                "sequence_lengths": torch.tensor(lens) - 1, "sequence_lengths_p1": torch.tensor(lens),
                "scores": torch.zeros(len(lens), dtype=DT)})
            same(ns["kl"], mine, "kl " + est)
        assert torch.all(k1[~m] == 0) and torch.all(k3[~m] == 0)
        assert not identical or (torch.all(k1 == 0) and torch.all(k3 == 0))
        kl_cases.append({"logprobs": lst(logprobs), "ref_logprobs": lst(ref_logprobs), "mask": lst(m),
                         "k1": lst(k1), "k3": lst(k3),
                         "objective_kl_k1": num(k1.sum(1).mean()), "objective_kl_k3": num(k3.sum(1).mean())})
        # TRL's own reward tensor: -kl_coef * kl, score added at index sequence_lengths + 1 (first pad) or the
        # last index when the response fills the width
        scores = randn(len(lens), std=1.0)
        ns = run_block(reward_code, {
            "torch": torch, "ref_logprobs": ref_logprobs, "logprobs": logprobs,
            "args": SimpleNamespace(kl_estimator="k1", kl_coef=0.05),
            "sequence_lengths": torch.tensor(lens) - 1, "sequence_lengths_p1": torch.tensor(lens),
            "scores": scores})
        score_index = [n if n < T else n - 1 for n in lens]
        mine = -0.05 * k1
        mine[torch.arange(len(lens)), torch.tensor(score_index)] += scores
        same(ns["rewards"], mine, "trl rewards")
        trl_rewards.append({"kl_estimator": "k1", "kl_coef": 0.05, "lengths": lens, "logprobs": lst(logprobs),
                            "ref_logprobs": lst(ref_logprobs), "scores": lst(scores), "score_index": score_index,
                            "rewards": lst(ns["rewards"])})

    # -- GAE over the padded [B, T] tensors; one mask (the response tokens) for everything
    g.manual_seed(3)
    gae_code = trl_block(train_src, "lastgaelam = 0", "advantages = torch.masked_fill(advantages, padding_mask, 0)")
    gae = []
    for gamma, lam in ((1.0, 0.95), (0.99, 0.9)):
        rewards = torch.masked_fill(randn(B, T, std=0.5), pad, 0.0)
        values = torch.masked_fill(randn(B, T, std=1.0), pad, 0.0)
        adv = torch.zeros(B, T, dtype=DT)  # hand version, per sequence
        for b, n in enumerate(lengths):
            last = 0.0
            for t in reversed(range(n)):
                nv = values[b, t + 1] if t + 1 < n else 0.0
                last = rewards[b, t] + gamma * nv - values[b, t] + gamma * lam * last
                adv[b, t] = last
        returns = adv + values
        whit = torch.masked_fill(P.masked_whiten(adv, mask), pad, 0)
        ns = run_block(gae_code, {
            "torch": torch, "masked_whiten": P.masked_whiten, "empty_cache": lambda: None,
            "args": SimpleNamespace(gamma=gamma, lam=lam), "rewards": rewards, "values": values,
            "responses": torch.zeros(B, T, dtype=torch.long), "padding_mask": pad})
        same(torch.stack(ns["advantages_reversed"][::-1], 1), adv, "gae advantages")
        same(ns["returns"], returns, "gae returns")
        same(ns["advantages"], whit, "gae whitened")
        gae.append({"gamma": gamma, "lam": lam, "rewards": lst(rewards), "values": lst(values), "mask": lst(mask),
                    "advantages": lst(adv), "returns": lst(returns), "advantages_whitened": lst(whit)})

    # -- policy and value losses
    g.manual_seed(4)
    loss_code = trl_block(train_src, "vpredclipped = torch.clamp(", "loss = pg_loss + args.vf_coef * vf_loss")
    stats_code = trl_block(train_src, "pg_clipfrac = masked_mean(", "approxkl = 0.5 * (logprobs_diff**2).mean()")
    assert "ratio_stats[ppo_epoch_idx, minibatch_idx, gradient_accumulation_idx] = ratio.mean()" in \
        inspect.getsource(train_src)
    losses = []
    for name, cliprange, cliprange_value, vf_coef, on_policy in (
            ("clipped", 0.2, 0.2, 0.1, False), ("clipped_other_ranges", 0.1, 0.3, 0.5, False),
            ("on_policy", 0.2, 0.2, 0.1, True)):
        advantages = torch.masked_fill(randn(B, T, std=1.0), pad, 0.0)
        lp_old = torch.masked_fill(randn(B, T, std=0.8, mean=-2.0), pad, INVALID)
        delta = randn(B, T, std=0.35)
        if not on_policy:
            # make sure every region of the clipped objective is present: ratio above 1+eps with A>0 (clipped)
            # and with A<0 (not clipped), ratio below 1-eps with A<0 (clipped) and with A>0 (not clipped)
            for (b, t), a, d in (((0, 1), 0.9, 0.45), ((3, 2), -0.8, 0.5), ((1, 0), -1.1, -0.4), ((0, 3), 0.7, -0.45)):
                advantages[b, t], delta[b, t] = a, d
        lp_new = lp_old.clone() if on_policy else lp_old + delta
        lp_new = torch.masked_fill(lp_new, pad, INVALID)
        values_old = torch.masked_fill(randn(B, T), pad, 0.0)
        vpred = values_old.clone() if on_policy else values_old + randn(B, T, std=0.35)
        vpred = torch.masked_fill(vpred, pad, 0.0)
        returns = torch.masked_fill(values_old + randn(B, T, std=0.6), pad, 0.0)

        # hand version
        lp_leaf = lp_new.clone().requires_grad_(True)
        v_leaf = vpred.clone().requires_grad_(True)
        nl = torch.masked_fill(lp_leaf, pad, INVALID)
        vp = torch.masked_fill(v_leaf, pad, 0.0)
        mf = mask.to(DT)
        vclip = torch.maximum(torch.minimum(vp, values_old + cliprange_value), values_old - cliprange_value)
        vl1, vl2 = (vp - returns) ** 2, (vclip - returns) ** 2
        vf_loss = 0.5 * (torch.maximum(vl1, vl2) * mf).sum() / mf.sum()
        vf_clipfrac = ((vl2 > vl1).to(DT) * mf).sum() / mf.sum()
        diff = nl - lp_old
        ratio = diff.exp()
        pl1 = -advantages * ratio
        pl2 = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
        pg_loss = (torch.maximum(pl1, pl2) * mf).sum() / mf.sum()
        pg_clipfrac = ((pl2 > pl1).to(DT) * mf).sum() / mf.sum()
        loss = pg_loss + vf_coef * vf_loss
        loss.backward()
        approxkl = 0.5 * (diff.detach() ** 2).mean()
        approxkl_masked = 0.5 * ((diff.detach() ** 2) * mf).sum() / mf.sum()

        # TRL's statements on the same tensors (value mask := policy mask)
        lp_leaf2 = lp_new.clone().requires_grad_(True)
        v_leaf2 = vpred.clone().requires_grad_(True)
        ns = {"torch": torch, "masked_mean": P.masked_mean,
              "args": SimpleNamespace(cliprange=cliprange, cliprange_value=cliprange_value, vf_coef=vf_coef),
              "new_logprobs": torch.masked_fill(lp_leaf2, pad, INVALID), "vpred": torch.masked_fill(v_leaf2, pad, 0.0),
              "mb_values": values_old, "mb_return": returns, "mb_logprobs": lp_old, "mb_advantage": advantages,
              "padding_mask": pad, "padding_mask_p1": pad, "micro_batch_inds": np.arange(B),
              "logits": torch.zeros(B, T, 3, dtype=DT)}
        run_block(loss_code, ns)
        ns["loss"].backward()
        with torch.no_grad():
            run_block(stats_code, ns)
        for k, mine in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("loss", loss), ("pg_clipfrac", pg_clipfrac),
                        ("vf_clipfrac", vf_clipfrac), ("approxkl", approxkl), ("ratio", ratio)):
            if k.endswith("clipfrac"):  # TRL casts the comparison with .float(): float32; recorded as exact k/n
                assert ns[k].dtype == torch.float32 and abs(num(ns[k]) - num(mine)) < 1e-7, (k, ns[k], mine)
            else:
                same(ns[k], mine.detach(), "ppo " + k)
        same(lp_leaf2.grad, lp_leaf.grad, "grad logprobs")
        same(v_leaf2.grad, v_leaf.grad, "grad vpred")
        assert torch.all(lp_leaf.grad[pad] == 0) and torch.all(v_leaf.grad[pad] == 0)

        r, a = ratio.detach(), advantages
        if on_policy:
            assert num(pg_clipfrac) == 0 and num(vf_clipfrac) == 0 and num(approxkl) == 0 and num(r.mean()) == 1
        else:
            hi_pos = (r > 1 + cliprange) & (a > 0) & mask  # clipped (pg_losses2 > pg_losses)
            lo_neg = (r < 1 - cliprange) & (a < 0) & mask  # clipped
            hi_neg = (r > 1 + cliprange) & (a < 0) & mask  # outside the range, not clipped
            lo_pos = (r < 1 - cliprange) & (a > 0) & mask  # outside the range, not clipped
            assert hi_pos.any() and lo_neg.any() and hi_neg.any() and lo_pos.any(), name
            assert 0 < num(vf_clipfrac) < 1, name
        losses.append({
            "name": name, "cliprange": cliprange, "cliprange_value": cliprange_value, "vf_coef": vf_coef,
            "advantages": lst(advantages), "mask": lst(mask), "logprobs_old": lst(lp_old), "logprobs_new": lst(lp_new),
            "values_old": lst(values_old), "vpred": lst(vpred), "returns": lst(returns),
            "pg_loss": num(pg_loss), "pg_clipfrac": num(pg_clipfrac), "approxkl": num(approxkl),
            "approxkl_masked": num(approxkl_masked), "ratio_mean": num(r.mean()),
            "ratio_mean_masked": num((r * mf).sum() / mf.sum()), "vf_loss": num(vf_loss),
            "vf_clipfrac": num(vf_clipfrac), "loss": num(loss),
            "grad_logprobs_new": lst(lp_leaf.grad), "grad_vpred": lst(v_leaf.grad)})

    update_json(PPO_JSON, {
        "trl_version": trl.__version__, "torch_version": torch.__version__,
        "invalid_logprob": INVALID,
        "notes": "logprobs are INVALID_LOGPROB at padding as in TRL; compare only mask=1 positions of per-token "
                 "arrays. approxkl and ratio_mean are TRL's unmasked means over [B,T]; *_masked are masked means. "
                 "gae/losses use one mask (the response tokens) for policy and value; TRL's value mask keeps one "
                 "more position. trl_rewards: TRL's reward tensor, score at index length (first pad) or T-1.",
        "whiten": whiten, "masked_var": mvar, "kl": kl_cases, "trl_rewards": trl_rewards, "gae": gae,
        "losses": losses})


def adaptive_kl():
    import trl
    from trl.trainer.utils import AdaptiveKLController

    cases = []
    for init, target, horizon, updates in (
            (0.2, 6.0, 10000, [[0.5, 256], [100.0, 256], [6.0, 256], [7.0, 512], [3.0, 512], [0.001, 4000],
                               [60.0, 10000], [6.6, 128], [5.1, 128]]),
            (0.05, 1.0, 1000, [[1.1, 64], [0.0, 64], [3.0, 100], [0.85, 8]])):
        ctl = AdaptiveKLController(init, target, horizon)
        values, mine = [], init
        for current, n_steps in updates:
            ctl.update(current, n_steps)
            values.append(float(ctl.value))
            mine *= 1 + min(max(current / target - 1, -0.2), 0.2) * n_steps / horizon
            assert abs(mine - float(ctl.value)) <= 1e-15 * abs(mine), (mine, ctl.value)
        cases.append({"init": init, "target": target, "horizon": horizon, "updates": updates, "values": values})
    update_json(PPO_JSON, {"adaptive_kl_trl_version": trl.__version__, "adaptive_kl": cases})


# -------------------------------------------------------------------------------------------------- GRPO
def grpo():
    import tempfile

    import accelerate
    import trl
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import nanstd

    g = torch.Generator().manual_seed(4321)

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=DT) * std + mean

    tmp = tempfile.mkdtemp()
    defaults = GRPOConfig(output_dir=tmp, report_to=[], use_cpu=True)

    # -- advantages (sum_then_normalize, the default aggregation)
    adv_code = trl_block(GRPOTrainer._generate_and_score_completions,
                         "unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)",
                         "advantages = torch.nan_to_num(advantages, nan=0.0)")
    rpf_8x2 = torch.round(randn(8, 2, std=1.0) * 4) / 4  # quarter steps: exact in binary
    rpf_8x2[4:8] = torch.tensor([0.5, 1.0])  # group 2 (rows 4..7) all equal -> std 0
    rpf_6x1 = torch.tensor([[1.0], [0.0], [1.0], [0.0], [0.0], [0.0]])
    rpf_8x3 = randn(8, 3, std=0.8)
    adv_cases = []
    for rpf, weights, G, scale in ((rpf_8x2, [1.0, 0.5], 4, "group"), (rpf_8x2, [1.0, 0.5], 4, "batch"),
                                   (rpf_8x2, [1.0, 0.5], 4, "none"), (rpf_6x1, [1.0], 3, "group"),
                                   (rpf_8x3, [1.0, -0.25, 2.0], 2, "group"), (rpf_8x3, [1.0, -0.25, 2.0], 4, "batch")):
        w = torch.tensor(weights, dtype=torch.float32)  # TRL keeps reward_weights in float32
        rewards = (rpf * w.unsqueeze(0)).nansum(dim=1)
        mean_g = rewards.view(-1, G).mean(1).repeat_interleave(G)
        if scale == "batch":
            std = rewards.std(unbiased=True).expand_as(rewards)
        else:
            std = rewards.view(-1, G).std(dim=1, unbiased=True).repeat_interleave(G)
        same(std, nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G) if scale != "batch" else
             nanstd(rewards).expand_as(rewards), "nanstd")
        adv = rewards - mean_g
        if scale != "none":
            adv = adv / (std + 1e-4)
        stub = SimpleNamespace(multi_objective_aggregation="sum_then_normalize", reward_weights=w,
                               scale_rewards=scale, reward_funcs=[None] * rpf.shape[1])
        ns = run_block(adv_code, {"torch": torch, "nanstd": nanstd, "self": stub, "rewards_per_func": rpf,
                                  "num_generations": G, "device": "cpu"})
        same(ns["rewards"], rewards, "grpo rewards")
        same(ns["advantages"], adv, "grpo advantages")
        adv_cases.append({"rewards_per_func": lst(rpf), "reward_weights": weights, "num_generations": G,
                          "scale_rewards": scale, "rewards": lst(rewards), "advantages": lst(adv)})
    assert all(a == 0 for a in adv_cases[0]["advantages"][4:8])

    # -- losses through GRPOTrainer._compute_loss
    B, T = 4, 6
    lengths = [6, 3, 1, 5]
    mask = right_mask(lengths, T).long()  # TRL's completion_mask is an integer tensor
    mf = mask.to(DT)
    logps = torch.where(mask.bool(), randn(B, T, std=0.7, mean=-1.6), torch.zeros(B, T))
    old_logps = torch.where(mask.bool(), logps + randn(B, T, std=0.3), torch.zeros(B, T))
    ref_logps = torch.where(mask.bool(), logps + randn(B, T, std=0.25), torch.zeros(B, T))
    advantages = torch.tensor([1.2, -0.7, 0.4, -1.5])

    def trainer_for(args):
        t = object.__new__(GRPOTrainer)
        t.args = args
        t.accelerator = accelerate.Accelerator(cpu=True)  # after the config: TrainingArguments resets the state
        t.model = SimpleNamespace(training=True)
        t.current_gradient_accumulation_steps = args.gradient_accumulation_steps
        t.loss_type = args.loss_type
        t.beta = args.beta
        t.epsilon_low = args.epsilon
        t.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
        t.max_completion_length = args.max_completion_length
        t.importance_sampling_level = args.importance_sampling_level
        t.off_policy_mask_threshold = args.off_policy_mask_threshold
        t.top_entropy_quantile = args.top_entropy_quantile
        t.use_vllm = args.use_vllm
        t.vllm_importance_sampling_correction = args.vllm_importance_sampling_correction
        t.entropy_coef = args.entropy_coef
        t.use_adaptive_entropy = args.use_adaptive_entropy
        t._entropy_bonus_enabled = t.entropy_coef != 0.0 or t.use_adaptive_entropy
        t.aux_loss_enabled = False
        t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        return t

    loss_cases = []
    # (loss_type, beta, epsilon_high, use_bias_correction_kl, on_policy, gradient_accumulation_steps, tokens of the
    # other micro-batches of the generation batch). The last dapo case is one micro-batch of two: TRL's
    # num_items_in_batch counts the tokens of the whole generation batch (here mask.sum() + 7), and the loss of
    # this micro-batch is its masked token sum / num_items_in_batch (normalizer * gas / steps_per_generation = 1).
    for loss_type, beta, eps_high, bias_kl, on_policy, gas, extra_items in (
            ("grpo", 0.0, None, True, False, 1, 0), ("dapo", 0.0, None, True, False, 1, 0),
            ("dr_grpo", 0.0, None, True, False, 1, 0), ("bnpo", 0.0, None, True, False, 1, 0),
            ("grpo", 0.04, None, True, False, 1, 0), ("dapo", 0.04, None, True, False, 1, 0),
            ("grpo", 0.04, None, False, False, 1, 0), ("dapo", 0.0, 0.28, True, False, 1, 0),
            ("grpo", 0.0, None, True, True, 1, 0), ("dapo", 0.0, None, True, False, 2, 7)):
        args = GRPOConfig(output_dir=tmp, report_to=[], use_cpu=True, loss_type=loss_type, beta=beta, epsilon=0.2,
                          epsilon_high=eps_high, max_completion_length=T, use_bias_correction_kl=bias_kl,
                          per_device_train_batch_size=B, num_generations=B, gradient_accumulation_steps=gas)
        assert args.gradient_accumulation_steps == gas and args.steps_per_generation == gas
        num_items = int(mask.sum()) + extra_items
        trainer = trainer_for(args)
        old = logps.clone() if on_policy else old_logps
        leaf = logps.clone().requires_grad_(True)
        trainer._get_per_token_logps_and_entropies = lambda *a, **k: (leaf, torch.zeros(B, T), None)
        inputs = {"prompt_ids": torch.ones(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
                  "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask,
                  "advantages": advantages, "old_per_token_logps": old, "num_items_in_batch": torch.tensor(num_items)}
        if beta != 0.0:
            inputs["ref_per_token_logps"] = ref_logps
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        metrics = trainer._metrics["train"]

        # hand recomputation
        lp = logps.clone().requires_grad_(True)
        eps_lo, eps_hi = 0.2, (eps_high if eps_high is not None else 0.2)
        A = advantages.unsqueeze(1)
        ratio = torch.exp(lp - old)
        ptl = -torch.minimum(ratio * A, ratio.clamp(1 - eps_lo, 1 + eps_hi) * A)
        if beta != 0.0:
            d = ref_logps - lp
            kl_tok = torch.exp(d) - d - 1
            if bias_kl:
                kl_tok = kl_tok * ratio
            ptl = ptl + beta * kl_tok
        if loss_type == "grpo":
            mine = ((ptl * mf).sum(-1) / mf.sum(-1)).mean()
        elif loss_type == "dr_grpo":
            mine = (ptl * mf).sum() / (B * T)
        elif loss_type == "bnpo":
            mine = (ptl * mf).sum() / mf.sum()
        else:  # dapo, one process: num_items_in_batch * gas / steps_per_generation, and gas == steps_per_generation
            mine = (ptl * mf).sum() / num_items
        if loss_type != "dapo":
            mine = mine / gas  # grpo, bnpo, dr_grpo divide by the accumulation steps
        mine.backward()
        same(loss.detach(), mine.detach(), "grpo loss " + loss_type)
        same(leaf.grad, lp.grad, "grpo grad " + loss_type)
        assert torch.all(leaf.grad[mask == 0] == 0)
        r = ratio.detach()
        low = ((r < 1 - eps_lo) & (A < 0)).to(DT)
        high = ((r > 1 + eps_hi) & (A > 0)).to(DT)
        clip = {}
        for key, mine_m in (("low", low), ("high", high), ("region", torch.maximum(low, high))):
            # TRL logs (is_clipped.float() * mask).sum() / mask.sum() in float32; recorded here as exact k/n
            clip[key] = num((mine_m * mf).sum() / mf.sum())
            assert abs(metrics[f"clip_ratio/{key}_mean"][0] - clip[key]) < 1e-7, (key, metrics, clip)
        if beta != 0.0:
            same(metrics["kl"][0], (kl_tok.detach() * mf).sum() / mf.sum(), "kl")
        if on_policy:
            assert metrics["clip_ratio/region_mean"][0] == 0.0
        else:
            assert metrics["clip_ratio/low_mean"][0] > 0 and metrics["clip_ratio/high_mean"][0] > 0, loss_type

        case = {"loss_type": loss_type, "epsilon_low": 0.2, "epsilon_high": eps_hi, "beta": beta,
                "use_bias_correction_kl": bias_kl, "importance_sampling_level": "token",
                "max_completion_length": T, "num_items_in_batch": num_items,
                "gradient_accumulation_steps": gas, "steps_per_generation": gas, "num_processes": 1,
                "advantages": lst(advantages), "logps": lst(logps), "old_logps": lst(old),
                "ref_logps": lst(ref_logps), "mask": lst(mask), "loss": num(loss)}
        if beta != 0.0:
            case["kl"] = float(metrics["kl"][0])
        case.update({"clip_ratio_low_mean": clip["low"], "clip_ratio_high_mean": clip["high"],
                     "clip_ratio_region_mean": clip["region"],
                     "grad_logps": lst(leaf.grad)})
        loss_cases.append(case)

    update_json(GRPO_JSON, {
        "trl_version": trl.__version__, "torch_version": torch.__version__,
        "defaults": {"loss_type": defaults.loss_type, "scale_rewards": defaults.scale_rewards,
                     "beta": defaults.beta, "epsilon": defaults.epsilon, "epsilon_high": defaults.epsilon_high,
                     "use_bias_correction_kl": defaults.use_bias_correction_kl,
                     "multi_objective_aggregation": defaults.multi_objective_aggregation},
        "notes": "advantages: (r - group mean) / (std + 1e-4), std Bessel-corrected (n-1); scale 'none' skips the "
                 "division. Losses from GRPOTrainer._compute_loss; kl is the logged masked token mean of "
                 "(exp(ref-logp) - (ref-logp) - 1), times the ratio exp(logp-old) when use_bias_correction_kl. "
                 "Padding logps are 0; compare only mask=1 positions.",
        "advantages": adv_cases, "losses": loss_cases})


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("ppo", "adaptive_kl", "grpo"):
        sys.exit("usage: make_rl_fixtures.py ppo|adaptive_kl|grpo (see the docstring for the TRL version of each)")
    {"ppo": ppo, "adaptive_kl": adaptive_kl, "grpo": grpo}[what]()
