#!/usr/bin/env python3
"""Writes the arithmetic prompts of recipes/grpo_arithmetic.lua, written for this project (no
outside source): sums, the larger of two numbers and sorting, from the generators of
scripts/make_task_data.py (so the templates are those of data/instruct.jsonl), as Alpaca prompts
(runner's `alpaca` template, the same text the SFT data renders to) with the exact answer.

    data/arithmetic/train.jsonl     300 rows (100 per family): prompts for GRPO's rollouts
    data/arithmetic/heldout.jsonl    60 rows (20 per family): for exact match before and after

No (instruction, input) of either file is in data/instruct.jsonl, data/prefs/*.jsonl or the other
file. Each row: {"prompt": ..., "answer": ..., "family": "add" | "larger" | "sort"}.

    python3 scripts/make_arithmetic_data.py

Standard library only, fixed seed: two runs give byte-identical files.
"""
import json
import os
import random
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.dont_write_bytecode = True  # no __pycache__ left in scripts/
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_task_data as mtd  # noqa: E402
from make_preference_data import render_prompt  # noqa: E402

SEED = 20261206
FAMILIES = [("add", mtd.fam_add), ("larger", mtd.fam_larger), ("sort", mtd.fam_sort)]
N_TRAIN, N_HELDOUT = 100, 20  # per family


def seen_prompts():
    """Every prompt the project's other data already hold."""
    seen = set()
    with open(os.path.join("data", "instruct.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            seen.add(render_prompt(r["instruction"], r["input"]))
    prefs = os.path.join("data", "prefs")
    for name in sorted(os.listdir(prefs)):
        with open(os.path.join(prefs, name), encoding="utf-8") as f:
            for line in f:
                seen.add(json.loads(line)["prompt"])
    return seen


def main():
    os.chdir(ROOT)
    rng = random.Random(SEED)
    seen = seen_prompts()
    train, heldout = [], []
    for family, gen in FAMILIES:
        rows = []
        for ins, inp, out in gen(rng, (N_TRAIN + N_HELDOUT) * 3):
            prompt = render_prompt(ins, inp)
            if prompt in seen:
                continue
            seen.add(prompt)
            rows.append({"prompt": prompt, "answer": out, "family": family})
            if len(rows) == N_TRAIN + N_HELDOUT:
                break
        assert len(rows) == N_TRAIN + N_HELDOUT, (family, len(rows))
        train += rows[:N_TRAIN]
        heldout += rows[N_TRAIN:]
    rng.shuffle(train)
    os.makedirs(os.path.join("data", "arithmetic"), exist_ok=True)
    for name, rows in (("train", train), ("heldout", heldout)):
        with open(os.path.join("data", "arithmetic", name + ".jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"data/arithmetic/{name}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main()
