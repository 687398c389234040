#!/usr/bin/env python3
"""Writes preference-pair datasets for reward-model and DPO training, written for this project
(no outside source), in TRL's standard preference format: one JSON object per line with the
string fields "prompt", "chosen" and "rejected".

    data/prefs/tasks_train.jsonl    1500 pairs: every row of data/instruct.jsonl (the first 600
                                     lines); chosen is its output, rejected a plausible wrong
                                     answer of the same form; then 75 new task instances per
                                     family (900 lines), none with a held-out prompt or answer
    data/prefs/tasks_heldout.jsonl   100 pairs: new task instances (8-9 per family) whose prompts
                                     are in neither data/instruct.jsonl nor any train file
    data/prefs/style_train.jsonl     300 pairs: 25 instruct.jsonl rows per family; chosen is the
                                     concise answer, rejected the same correct answer wrapped in
                                     rambling filler (8 templates)
    data/prefs/style_heldout.jsonl    60 pairs: new task instances (5 per family), disjoint from
                                     instruct.jsonl, every train file and tasks_heldout
    data/prefs/tasks_heldout.families  the task family of each line of tasks_heldout.jsonl, one
                                     name a line (for scoring by family; the pairs themselves
                                     keep TRL's three fields)
    data/prefs/count_words_train.jsonl    1000 pairs and
    data/prefs/count_words_heldout.jsonl   200 pairs of the word-count family alone (rejected:
                                     the count off by one), new sentences in no other file: can a
                                     reward model learn to count with eight times the examples?
    data/prefs/add_train.jsonl      1000 more sums and
    data/prefs/reverse_train.jsonl   all the reversals left (the word list runs out), new
                                     prompts, no held-out word reversed: with
                                     count_words_train.jsonl, more of the families a scorer must
                                     check against the prompt

    python3 scripts/make_preference_data.py

The prompt is the Alpaca prompt that runner's `alpaca` template (src/data/template.rs) renders
for the row's instruction and input, so prompt+chosen is byte for byte the text a model
fine-tuned on data/instruct.jsonl was trained on. New task instances come from the generators
of scripts/make_task_data.py (imported, so the templates and vocabularies are the same).
The wrong answers use one strategy per task family (see REJECTERS). Standard library only,
fixed seeds, no unordered iteration: two runs give byte-identical files.
"""
import json
import os
import random
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.dont_write_bytecode = True  # no __pycache__ left in scripts/
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_task_data as mtd  # noqa: E402  (same templates and vocabularies as instruct.jsonl)

SEED = 20240907
OUT_DIR = os.path.join("data", "prefs")
N_STYLE_TRAIN = 25  # per family
N_STYLE_HELDOUT = 5  # per family
N_TASKS_HELDOUT = 100  # 8 or 9 per family
N_TASKS_EXTRA = 75  # new train instances per family, after the instruct.jsonl rows
EXTRA_SEED = 20261206  # their own stream: the other files stay as they were
N_COUNT_TRAIN, N_COUNT_HELDOUT = 1000, 200
COUNT_SEED = 20261207  # the word-count files' own stream, for the same reason
CHECK_FAMILIES, N_CHECK_TRAIN = ("add", "reverse"), 1000  # at most 1000 each
CHECK_SEED = 20261208  # their own stream too

# The two prompts of runner's `alpaca` template (src/data/template.rs), verbatim.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def render_prompt(ins, inp):
    if inp.strip() == "":
        return ALPACA_NO_INPUT.replace("{instruction}", ins)
    return ALPACA_WITH_INPUT.replace("{instruction}", ins).replace("{input}", inp)


# ---------------------------------------------------------------------------------------------
# Wrong answers: one strategy per family, same form as the right answer
# ---------------------------------------------------------------------------------------------

# The capital of a real neighbour (a land border, or the nearest sea neighbour for island
# countries: Japan, Cuba, Australia, New Zealand, Philippines, Iceland), keyed by country.
NEIGHBOUR_CAPITAL = {
    "France": "Brussels", "Spain": "Lisbon", "Italy": "Bern", "Germany": "Vienna",
    "Japan": "Seoul", "Egypt": "Khartoum", "Peru": "Quito", "Kenya": "Kampala",
    "Chile": "Buenos Aires", "Norway": "Stockholm", "Greece": "Tirana", "Cuba": "Kingston",
    "Canada": "Washington", "India": "Islamabad", "China": "Ulaanbaatar", "Poland": "Berlin",
    "Austria": "Bratislava", "Ireland": "London", "Portugal": "Madrid", "Sweden": "Oslo",
    "Finland": "Stockholm", "Denmark": "Berlin", "Belgium": "Amsterdam",
    "Netherlands": "Brussels", "Hungary": "Vienna", "Czechia": "Bratislava",
    "Romania": "Budapest", "Bulgaria": "Bucharest", "Serbia": "Sarajevo", "Croatia": "Ljubljana",
    "Ukraine": "Minsk", "Russia": "Astana", "Turkey": "Athens", "Iran": "Baghdad",
    "Iraq": "Damascus", "Israel": "Beirut", "Jordan": "Damascus", "Saudi Arabia": "Doha",
    "Pakistan": "Kabul", "Bangladesh": "New Delhi", "Nepal": "New Delhi",
    "Thailand": "Phnom Penh", "Vietnam": "Vientiane", "Indonesia": "Kuala Lumpur",
    "Philippines": "Jakarta", "South Korea": "Pyongyang", "Mongolia": "Beijing",
    "Australia": "Wellington", "New Zealand": "Canberra", "Mexico": "Guatemala City",
    "Argentina": "Montevideo", "Brazil": "Buenos Aires", "Colombia": "Quito",
    "Venezuela": "Bogota", "Ecuador": "Lima", "Morocco": "Algiers", "Nigeria": "Niamey",
    "Ghana": "Lome", "Ethiopia": "Nairobi", "Iceland": "Oslo",
}
CAPITAL_TO_COUNTRY = {cap: c for c, cap in mtd.COUNTRIES}

# Antonym pairs whose words are close enough in meaning that one pair's word could pass as an
# answer for another pair ("easy" -> "hard"); a wrong antonym is never drawn from the same group.
ANTONYM_GROUPS = [
    {"up", "down", "above", "below", "high", "low"},
    {"early", "late", "before", "after", "first", "last", "begin", "end"},
    {"hard", "soft", "easy", "difficult", "strong", "weak"},
    {"light", "dark", "day", "night"},
]
ANTONYM_WORDS = [w for pair in mtd.ANTONYMS for w in pair]


def word_in(ins, inp, pattern):
    """The task's word: the input when there is one, else the pattern's group in the text."""
    if inp:
        return inp
    m = re.search(pattern, ins)
    assert m, (ins, pattern)
    return m.group(1)


def rej_capital(rng, ins, inp, out):
    # The capital of a neighbouring country.
    return NEIGHBOUR_CAPITAL[CAPITAL_TO_COUNTRY[out]]


def rej_reverse(rng, ins, inp, out):
    # The reversed word with two adjacent (different) letters swapped.
    spots = [i for i in range(len(out) - 1) if out[i] != out[i + 1]]
    i = rng.choice(spots)
    return out[:i] + out[i + 1] + out[i] + out[i + 2:]


def rej_case(rng, ins, inp, out):
    # Every word converted except the last, which keeps its original case.
    src = inp if inp else re.search(r"'([^']+)'", ins).group(1)
    words, src_words = out.split(" "), src.split(" ")
    return " ".join(words[:-1] + src_words[-1:])


def rej_letter(rng, ins, inp, out):
    # The neighbouring letter: the second for "first", the second-to-last for "last"
    # (moving further in while it equals the right letter).
    w = word_in(ins, inp, r"(?:word|does) (\w+)")
    first = "first" in ins or "start" in ins
    order = list(w[1:]) if first else list(reversed(w[:-1]))
    return next(c for c in order if c != out)


def rej_plus_minus_one(rng, ins, inp, out):
    # The right count, off by one.
    n = int(out)
    return str(n + rng.choice([-1, 1]))


def rej_sort(rng, ins, inp, out):
    # The sorted list with one adjacent pair swapped (partly sorted).
    xs = out.split(", ")
    i = rng.randrange(len(xs) - 1)
    xs[i], xs[i + 1] = xs[i + 1], xs[i]
    return ", ".join(xs)


def rej_larger(rng, ins, inp, out):
    # The smaller of the two numbers.
    a, b = [int(x) for x in re.findall(r"\d+", ins + " " + inp)]
    return str(min(a, b))


def rej_add(rng, ins, inp, out):
    # The sum off by one or by ten.
    n = int(out)
    deltas = [-1, 1, 10] + ([-10] if n > 10 else [])
    return str(n + rng.choice(deltas))


def wrong_plural(w):
    """A plural made with the wrong regular rule, or with a grocer's apostrophe."""
    if w.endswith("y") and w[-2] not in "aeiou":
        return w + "s"  # city -> citys
    if w.endswith(("x", "z", "ch", "sh")):
        return w + "s"  # box -> boxs
    if w.endswith("y"):
        return w[:-1] + "ies"  # day -> daies
    return w + "'s"  # cat -> cat's, glass -> glass's


def rej_plural(rng, ins, inp, out):
    w = word_in(ins, inp, r"plural of (?:the word )?(\w+)")
    assert mtd.plural(w) == out, (w, out)
    return wrong_plural(w)


def rej_antonym(rng, ins, inp, out):
    # A word from another antonym pair (not a related one), of about the same length.
    w = word_in(ins, inp, r"(?:opposite of|the word) (\w+)")
    banned = {w, out}
    for g in ANTONYM_GROUPS:
        if w in g or out in g:
            banned |= g
    for slack in (1, 2, 3, 100):
        cands = [x for x in ANTONYM_WORDS if x not in banned and abs(len(x) - len(out)) <= slack]
        if cands:
            return rng.choice(cands)
    raise AssertionError(out)


def rej_slug(rng, ins, inp, out):
    # Words joined by underscores instead of hyphens.
    return out.replace("-", "_")


def rej_year(rng, ins, inp, out):
    # The year off by one or by ten.
    return str(int(out) + rng.choice([-10, -1, 1, 10]))


REJECTERS = {
    "capital": rej_capital,
    "reverse": rej_reverse,
    "case": rej_case,
    "letter": rej_letter,
    "count_words": rej_plus_minus_one,
    "sort": rej_sort,
    "larger": rej_larger,
    "add": rej_add,
    "plural": rej_plural,
    "antonym": rej_antonym,
    "slug": rej_slug,
    "year": rej_year,
}

# ---------------------------------------------------------------------------------------------
# Rambling answers: correct, but padded with filler and a restatement of the question
# ---------------------------------------------------------------------------------------------

RAMBLES = [
    "Great question! Let me think about this step by step. {q} Having thought it through, the "
    "answer is {a}. So, to restate it, the answer is {a}.",
    "Sure, I would be happy to help with that! You asked: {q} Let me work through it. The "
    "answer is {a}. I hope this helps!",
    "Okay, so the task here is as follows. {q} Let me consider it for a moment. I can say that "
    "the answer is {a}. Once again, that is {a}.",
    "Thanks for asking! Let me restate the request: {q} Thinking about it step by step, I "
    "arrive at {a}. My final answer is {a}.",
    "Let me start by reading the question again. {q} Alright, the key point is simple. The "
    "correct answer is {a}. To be clear: {a}.",
    "What an interesting request! To make sure I understood: {q} Yes, I understand. Let me "
    "think... The answer is {a}. Again, it is {a}.",
    "Of course! This is something I can answer. {q} Let me break it down and think it through. "
    "When you work it out, you get {a}. So there you have it: {a}.",
    "Hmm, good one. The question is: {q} I want to be careful here, so let me go slowly. "
    "Having checked my reasoning, the answer is {a}.",
]


def question_text(ins, inp):
    return ins if not inp else f'{ins} The input is "{inp}".'


def ramble(rng, ins, inp, out):
    return rng.choice(RAMBLES).format(q=question_text(ins, inp), a=out)


# ---------------------------------------------------------------------------------------------
# Task instances
# ---------------------------------------------------------------------------------------------

FAMILY_NAMES = [name for name, _, _ in mtd.FAMILIES]
GENERATORS = {name: gen for name, gen, _ in mtd.FAMILIES}
# How many candidates to ask each generator for (the table size where it samples a table).
CANDIDATES = {"capital": len(mtd.COUNTRIES), "plural": len(mtd.NOUNS),
              "antonym": len(mtd.ANTONYMS), "reverse": 60}


def instruct_families():
    """(instruction, input) -> family for every row of instruct.jsonl, found by running
    make_task_data's generators with its own seed exactly as make_instruct does."""
    rng = random.Random(mtd.SEED)
    fam, rows = {}, []
    for name, gen, n in mtd.FAMILIES:
        got = 0
        for ins, inp, out in gen(rng, n):
            if (ins, inp) in fam:
                continue
            fam[(ins, inp)] = name
            rows.append({"instruction": ins, "input": inp, "output": out})
            got += 1
            if got == n:
                break
    rng.shuffle(rows)
    return fam, rows


def read_instruct():
    with open(os.path.join("data", "instruct.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    fam, regenerated = instruct_families()
    assert rows == regenerated, "data/instruct.jsonl differs from scripts/make_task_data.py's output"
    return [(fam[(r["instruction"], r["input"])], r["instruction"], r["input"], r["output"])
            for r in rows]


def new_instances(rng, family, gen, seen_keys, seen_outputs, n):
    """n new (family, ins, inp, out) of one family with (ins, inp) not in seen_keys; in the
    families that draw from a table, answers not in instruct.jsonl (countries, nouns, antonym
    pairs, words it does not use) come first."""
    cands, keys = [], set()
    for ins, inp, out in gen(rng, CANDIDATES.get(family, n * 20)):
        if (ins, inp) in seen_keys or (ins, inp) in keys:
            continue
        keys.add((ins, inp))
        cands.append((family, ins, inp, out))
    if family not in CANDIDATES:
        seen_outputs = set()
    fresh = [c for c in cands if c[3] not in seen_outputs]
    reused = [c for c in cands if c[3] in seen_outputs]
    picked = (fresh + reused)[:n]
    assert len(picked) == n, (family, len(picked), n)
    return picked


# ---------------------------------------------------------------------------------------------
# Checks and output
# ---------------------------------------------------------------------------------------------

NUMERIC = {"count_words", "larger", "add", "year"}
SAME_LENGTH = {"reverse", "case", "slug", "letter"}


def check_pair(kind, family, pair):
    p, c, r = pair["prompt"], pair["chosen"], pair["rejected"]
    for s in (c, r):
        assert s and s == s.strip() and "\n" not in s and "  " not in s, pair
    assert c != r, pair
    assert p.endswith("\n\n### Response:\n") and p.startswith("Below is an instruction"), pair
    assert all(line == line.rstrip() for line in p.split("\n")), pair
    if kind == "style":
        assert f" {c}." in r and len(r) > 4 * len(c), pair
        return
    if family in NUMERIC:
        assert r.isdigit() and c.isdigit(), pair
    if family in SAME_LENGTH:
        assert len(r) == len(c), pair
    if family == "sort":
        assert sorted(r.split(", "), key=int) == c.split(", "), pair


def pair_of(ins, inp, chosen, rejected):
    return {"prompt": render_prompt(ins, inp), "chosen": chosen, "rejected": rejected}


def fresh_pairs(rng, name, n, taken, excluded_answers):
    """Up to n new pairs of one family whose (instruction, input) is not in `taken` (which
    they join) and whose answer is not in `excluded_answers`; the table families draw each
    entry once a call, so the generator is asked again, at most 50 times."""
    pairs = []
    for _ in range(50):
        for ins, inp, out in GENERATORS[name](rng, CANDIDATES.get(name, 40 * n)):
            if (ins, inp) in taken or out in excluded_answers:
                continue
            taken.add((ins, inp))
            pair = pair_of(ins, inp, out, REJECTERS[name](rng, ins, inp, out))
            check_pair("tasks", name, pair)
            pairs.append((name, pair))
            if len(pairs) == n:
                return pairs
    return pairs


def build():
    rng = random.Random(SEED)
    instruct = read_instruct()
    seen_keys = {(ins, inp) for _, ins, inp, _ in instruct}
    by_family = {name: [row for row in instruct if row[0] == name] for name in FAMILY_NAMES}

    # Train: every instruct.jsonl row (tasks); 25 of each family (style).
    tasks_train = [(fam, pair_of(ins, inp, out, REJECTERS[fam](rng, ins, inp, out)))
                   for fam, ins, inp, out in instruct]
    style_train = []
    for name in FAMILY_NAMES:
        for fam, ins, inp, out in rng.sample(by_family[name], N_STYLE_TRAIN):
            style_train.append((fam, pair_of(ins, inp, out, ramble(rng, ins, inp, out))))

    # Held out: new instances, 8 or 9 (tasks) and 5 (style) per family, none seen anywhere.
    base, extra = divmod(N_TASKS_HELDOUT, len(FAMILY_NAMES))
    tasks_heldout, style_heldout = [], []
    for i, (name, gen, _) in enumerate(mtd.FAMILIES):
        n_tasks = base + (1 if i < extra else 0)
        seen_outputs = {row[3] for row in by_family[name]}
        new = new_instances(rng, name, gen, seen_keys, seen_outputs, n_tasks + N_STYLE_HELDOUT)
        for fam, ins, inp, out in new[:n_tasks]:
            tasks_heldout.append((fam, pair_of(ins, inp, out, REJECTERS[fam](rng, ins, inp, out))))
        for fam, ins, inp, out in new[n_tasks:]:
            style_heldout.append((fam, pair_of(ins, inp, out, ramble(rng, ins, inp, out))))

    files = {
        "tasks_train.jsonl": ("tasks", tasks_train),
        "tasks_heldout.jsonl": ("tasks", tasks_heldout),
        "style_train.jsonl": ("style", style_train),
        "style_heldout.jsonl": ("style", style_heldout),
    }
    for kind, rows in files.values():
        for fam, pair in rows:
            check_pair(kind, fam, pair)
        prompts = [pair["prompt"] for _, pair in rows]
        assert len(set(prompts)) == len(prompts)
        rng.shuffle(rows)

    instruct_prompts = {render_prompt(ins, inp) for _, ins, inp, _ in instruct}
    train_prompts = {pair["prompt"] for name in ("tasks_train.jsonl", "style_train.jsonl")
                     for _, pair in files[name][1]}
    heldout = {name: {pair["prompt"] for _, pair in files[name][1]}
               for name in ("tasks_heldout.jsonl", "style_heldout.jsonl")}
    for prompts in heldout.values():
        assert not prompts & train_prompts and not prompts & instruct_prompts
    assert not heldout["tasks_heldout.jsonl"] & heldout["style_heldout.jsonl"]
    assert len(tasks_train) >= 600 and len(style_train) >= 300

    # More train pairs, appended after the shuffled instruct.jsonl rows from a stream of their
    # own: new prompts whose answers are none of the held-out answers (the table families
    # reuse instruct.jsonl's countries, words and nouns under other templates).
    rng = random.Random(EXTRA_SEED)
    taken = seen_keys | {key for key in heldout_keys(files)}
    heldout_answers = {pair["chosen"] for name in ("tasks_heldout.jsonl", "style_heldout.jsonl")
                       for _, pair in files[name][1]}
    extra = []
    for name in FAMILY_NAMES:
        new = fresh_pairs(rng, name, N_TASKS_EXTRA, taken, heldout_answers)
        assert len(new) == N_TASKS_EXTRA, (name, len(new))
        extra += new
    rng.shuffle(extra)
    tasks_train.extend(extra)
    prompts = [pair["prompt"] for _, pair in tasks_train]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & (heldout["tasks_heldout.jsonl"] | heldout["style_heldout.jsonl"])

    # Word counts alone, in sentences no other file has (train and held-out disjoint).
    rng = random.Random(COUNT_SEED)
    sentences = {inp for _, inp in taken}  # every file's prompts; new under any template too
    count = []
    for ins, inp, out in GENERATORS["count_words"](rng, N_COUNT_TRAIN + N_COUNT_HELDOUT):
        if inp in sentences:
            continue
        sentences.add(inp)
        pair = pair_of(ins, inp, out, REJECTERS["count_words"](rng, ins, inp, out))
        check_pair("tasks", "count_words", pair)
        count.append(("count_words", pair))
        if len(count) == N_COUNT_TRAIN + N_COUNT_HELDOUT:
            break
    assert len(count) == N_COUNT_TRAIN + N_COUNT_HELDOUT, len(count)
    files["count_words_train.jsonl"] = ("tasks", count[:N_COUNT_TRAIN])
    files["count_words_heldout.jsonl"] = ("tasks", count[N_COUNT_TRAIN:])

    # More sums and reversals, the other families whose answer must be checked against the
    # prompt: new prompts. A reversal's answer is the held-out word itself, so no held-out word
    # is reversed here (the word list then runs out first: 120 words under 5 templates). A
    # sum's answer is not its prompt: 65 = 26 + 39 is held out, 65 = 30 + 35 is not, and
    # leaving out every held-out sum's value would teach that those values are rarely right
    # (in the 900 extra task pairs, where they were left out, the held-out sums' right
    # answers are chosen 0-2 times, their wrong answers 10-29 times).
    rng = random.Random(CHECK_SEED)
    for name in CHECK_FAMILIES:
        excluded = set() if name in NUMERIC else heldout_answers
        more = fresh_pairs(rng, name, N_CHECK_TRAIN, taken, excluded)
        assert len(more) >= 400, (name, len(more))
        files[f"{name}_train.jsonl"] = ("tasks", more)
    return files


def key_of(prompt):
    """The (instruction, input) a rendered prompt was made from."""
    body = prompt.split("### Instruction:\n", 1)[1][: -len("\n\n### Response:\n")]
    if "\n\n### Input:\n" in body:
        return tuple(body.split("\n\n### Input:\n", 1))
    return (body, "")


def heldout_keys(files):
    """(instruction, input) of every held-out prompt, recovered from the rendered prompt."""
    for name in ("tasks_heldout.jsonl", "style_heldout.jsonl"):
        for _, pair in files[name][1]:
            yield key_of(pair["prompt"])


def main():
    os.chdir(ROOT)
    files = build()
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    for name, (_, rows) in files.items():
        path = os.path.join(OUT_DIR, name)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for _, pair in rows:
                f.write(json.dumps(pair, ensure_ascii=True) + "\n")
        size = os.path.getsize(path)
        total += size
        counts = {}
        for fam, _ in rows:
            counts[fam] = counts.get(fam, 0) + 1
        per = ", ".join(f"{fam} {counts.get(fam, 0)}" for fam in FAMILY_NAMES)
        print(f"wrote {OUT_DIR}/{name}: {len(rows)} pairs, {size} bytes ({per})")
        if name == "tasks_heldout.jsonl":
            families = os.path.join(OUT_DIR, "tasks_heldout.families")
            with open(families, "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(fam + "\n" for fam, _ in rows))
            print(f"wrote {families}: {len(rows)} lines")
    assert total < 1_500_000, total
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
