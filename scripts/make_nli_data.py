"""A small natural-language-inference task in MultiNLI's spirit, made from templates:
a premise, a hypothesis, and whether the premise entails it (" yes"), contradicts it (" no")
or neither (" maybe"). Each label word is one token of SmolLM2's vocabulary, so a label is
scored by the next-token logits at the answer position.

    python3 scripts/make_nli_data.py    # writes data/nli/train.jsonl and data/nli/heldout.jsonl

Hypotheses are built by three kinds of rule per label, so that no single cue (a negation,
a length) gives the label away:
- entailment: a hypernym of the subject or the activity, the place dropped, or the scene
  restated with the place first;
- contradiction: an incompatible activity, an incompatible place, or "nobody";
- neutral: an added detail the premise does not settle (a reason, a time, a companion, a
  feeling).
The held-out split uses subjects, activities and places of its own, so its premises never
occur in training.
"""

import json
import random
from pathlib import Path

# (subject, hypernym)
SUBJECTS = [
    ("a man", "a person"), ("a woman", "a person"), ("a boy", "a child"), ("a girl", "a child"),
    ("an old man", "a person"), ("a young woman", "a person"), ("two boys", "two children"),
    ("a teacher", "an adult"), ("a doctor", "an adult"), ("a farmer", "a worker"),
    ("a chef", "a cook"), ("a dog", "an animal"), ("a cat", "an animal"), ("a horse", "an animal"),
    ("three friends", "some people"), ("a nurse", "a worker"), ("a pilot", "an adult"),
    ("a student", "a person"), ("a baby", "a child"), ("a soldier", "a person"),
]
# (activity, hypernym, incompatible activity); the subject may be an animal, so activities
# are ones a person or an animal can do.
ACTIVITIES = [
    ("running", "moving", "sleeping"), ("swimming", "in the water", "sitting on a sofa"),
    ("eating an apple", "eating", "starving"), ("playing a guitar", "playing music", "sleeping"),
    ("reading a book", "reading", "sleeping"), ("jumping over a fence", "jumping", "lying down"),
    ("drinking water", "drinking", "asleep"), ("climbing a tree", "climbing", "lying in bed"),
    ("riding a bicycle", "riding", "standing still"), ("singing a song", "singing", "silent"),
    ("painting a wall", "painting", "asleep"), ("cooking soup", "cooking", "asleep"),
    ("walking slowly", "walking", "running fast"), ("laughing loudly", "laughing", "crying"),
    ("writing a letter", "writing", "asleep"), ("dancing", "moving", "sitting still"),
    ("digging a hole", "digging", "asleep"), ("carrying a box", "carrying something", "empty-handed"),
    ("washing a car", "washing something", "asleep"), ("kicking a ball", "playing", "asleep"),
]
# (place, incompatible place)
PLACES = [
    ("in a park", "in a submarine"), ("on a beach", "on a mountain top"),
    ("in a kitchen", "on a boat"), ("in the snow", "in a desert"), ("on a street", "underwater"),
    ("in a garden", "in space"), ("at a school", "on a ship"), ("in a forest", "in a city mall"),
    ("by a river", "on the moon"), ("in a field", "inside a cave"), ("on a roof", "in a basement"),
    ("at a market", "in a spaceship"), ("in a stadium", "in a library"),
    ("on a farm", "in an airplane"), ("near a lake", "in a prison cell"),
]
DETAILS = [
    "because it is their birthday", "for the first time", "with a friend", "before breakfast",
    "to win a prize", "while feeling happy", "on a Sunday", "after a long day",
    "for money", "with their brother", "because a teacher asked", "while it rains lightly",
]
LABELS = {"entailment": " yes", "neutral": " maybe", "contradiction": " no"}


def verb(subject):
    plural = subject.startswith(("two", "three", "some"))
    return "are" if plural else "is"


def cap(s):
    return s[0].upper() + s[1:]


def pair(rng, subj, act, place):
    s, s_hyper = subj
    a, a_hyper, a_bad = act
    p, p_bad = place
    premise = f"{cap(s)} {verb(s)} {a} {p}."
    label = rng.choice(list(LABELS))
    kind = rng.randrange(3)
    if label == "entailment":
        hyp = [
            f"{cap(s_hyper)} {verb(s_hyper)} {a} {p}.",
            f"{cap(s)} {verb(s)} {a_hyper}.",
            f"{cap(p)}, {s} {verb(s)} {a}.",
        ][kind]
    elif label == "contradiction":
        hyp = [
            f"{cap(s)} {verb(s)} {a_bad} {p}.",
            f"{cap(s)} {verb(s)} {a} {p_bad}.",
            f"Nobody is {a} {p}.",
        ][kind]
    else:
        d = rng.choice(DETAILS)
        hyp = [
            f"{cap(s)} {verb(s)} {a} {d}.",
            f"{cap(s_hyper)} {verb(s_hyper)} {a} {p} {d}.",
            f"{cap(s)} {verb(s)} {a_hyper} {d}.",
        ][kind]
    prompt = (
        f"Premise: {premise}\nHypothesis: {hyp}\n"
        "Does the premise entail the hypothesis? Answer yes, maybe or no.\nAnswer:"
    )
    return {"prompt": prompt, "response": LABELS[label], "label": label}


def split(items, held):
    return items[:-held], items[-held:]


def main():
    rng = random.Random(0)
    subj_tr, subj_ho = split(SUBJECTS, 5)
    act_tr, act_ho = split(ACTIVITIES, 5)
    place_tr, place_ho = split(PLACES, 4)
    out = Path(__file__).resolve().parent.parent / "data" / "nli"
    out.mkdir(parents=True, exist_ok=True)
    for name, subjects, acts, places, n in [
        ("train", subj_tr, act_tr, place_tr, 1200),
        ("heldout", subj_ho, act_ho, place_ho, 300),
    ]:
        seen, rows = set(), []
        while len(rows) < n:
            row = pair(rng, rng.choice(subjects), rng.choice(acts), rng.choice(places))
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                rows.append(row)
        with open(out / f"{name}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        counts = {k: sum(r["label"] == k for r in rows) for k in LABELS}
        print(name, len(rows), counts)


if __name__ == "__main__":
    main()
