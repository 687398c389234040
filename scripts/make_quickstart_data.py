#!/usr/bin/env python3
"""Writes data/quickstart.jsonl: small, deterministic prompt/response pairs (written for this
project, no outside source) that a tiny byte-level model can learn in seconds.

    python3 scripts/make_quickstart_data.py > data/quickstart.jsonl
"""
import json
import random

rng = random.Random(0)
capitals = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
    "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Chile": "Santiago", "Norway": "Oslo",
    "Greece": "Athens", "Cuba": "Havana", "Canada": "Ottawa", "India": "New Delhi", "China": "Beijing",
    "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "Portugal": "Lisbon", "Sweden": "Stockholm",
}
opposites = {
    "hot": "cold", "up": "down", "big": "small", "fast": "slow", "light": "dark", "open": "closed",
    "early": "late", "full": "empty", "hard": "soft", "happy": "sad", "old": "new", "wet": "dry",
}
words = ["cat", "dog", "sun", "tree", "book", "river", "stone", "cloud", "apple", "house", "bird", "lamp"]

rows = []
for country, city in capitals.items():
    rows.append({"prompt": f"Q: What is the capital of {country}?\nA:", "response": f" The capital of {country} is {city}.\n"})
for a, b in opposites.items():
    rows.append({"prompt": f"Q: What is the opposite of {a}?\nA:", "response": f" The opposite of {a} is {b}.\n"})
    rows.append({"prompt": f"Q: What is the opposite of {b}?\nA:", "response": f" The opposite of {b} is {a}.\n"})
for _ in range(120):
    x, y = rng.randint(0, 9), rng.randint(0, 9)
    rows.append({"prompt": f"Q: What is {x} plus {y}?\nA:", "response": f" {x} plus {y} is {x + y}.\n"})
for w in words:
    rows.append({"prompt": f"Q: Spell {w} backwards.\nA:", "response": f" {w} backwards is {w[::-1]}.\n"})
    rows.append({"prompt": f"Q: How many letters are in {w}?\nA:", "response": f" {w} has {len(w)} letters.\n"})
rng.shuffle(rows)
for r in rows:
    print(json.dumps(r))
