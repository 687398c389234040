#!/usr/bin/env python3
"""Generates the text-metric fixtures in tests/fixtures/metrics/.

    python3 -m venv /some/venv && /some/venv/bin/pip install rouge-score
    /some/venv/bin/python scripts/make_metric_fixtures.py

Writes (UTF-8, "\n" line ends, a header line first):
  rouge_l.tsv      reference, candidate, precision, recall, fmeasure: Google's rouge-score
                   `RougeScorer(['rougeL'], use_stemmer=False).score(reference, candidate)`
                   (score's first argument is the target, the second the prediction).
  exact_match.tsv  reference, candidate, 0/1, normalized reference, normalized candidate: the
                   SQuAD v1.1 evaluation script's normalize_answer and exact match (its logic is
                   restated below, it needs no download).

Text fields escape backslash as \\, tab as \t, newline as \n and carriage return as \r; floats
are Python's repr (shortest text that parses back to the same double). src/train/metrics.rs
checks every row.
"""
import os
import re
import string

from rouge_score import rouge_scorer

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = "tests/fixtures/metrics"
os.makedirs(OUT, exist_ok=True)


def squad_normalize(s):
    """SQuAD v1.1's normalize_answer: lowercase, drop string.punctuation, replace the whole
    words a/an/the (Unicode \\b) by a space, then collapse str.split() whitespace."""
    s = s.lower()
    s = "".join(c for c in s if c not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


LONG_A = ("the committee met on tuesday to review the annual budget and after a long debate "
          "it approved the proposal to expand the library with two new reading rooms and a "
          "small cafe for students")
LONG_B = ("after a long debate on tuesday the committee approved a proposal to expand the city "
          "library with three new reading rooms but rejected the plan for a cafe")
LONG_C = ("machine learning models are trained on large datasets and evaluated on held out "
          "data to estimate how well they generalize to examples they have never seen before "
          "during training")
LONG_D = ("models trained on large data sets are usually evaluated on held out examples to "
          "estimate how well they will generalize to inputs never seen in training")

# (reference, candidate): shared by both fixtures.
CASES = [
    # identical / disjoint / partial overlap
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("Paris", "Paris"),
    ("the cat sat on the mat", "a dog ran in the park"),
    ("alpha beta gamma", "delta epsilon"),
    ("the cat sat on the mat", "the cat was on the mat"),
    ("the quick brown fox jumps over the lazy dog", "the quick brown dog jumps on the log"),
    ("police killed the gunman", "the gunman killed police"),
    ("a b c d e f", "f e d c b a"),
    ("one two three four", "two four"),
    ("two four", "one two three four"),
    ("the capital of france is paris", "paris"),
    ("paris", "the capital of france is paris"),
    # repeated words
    ("the the the the", "the"),
    ("the", "the the the the"),
    ("a a b b a a", "a b a b a b"),
    ("yes yes yes no", "no yes no yes"),
    ("buffalo buffalo buffalo buffalo buffalo", "buffalo buffalo"),
    # punctuation
    ("Hello, world!", "hello world"),
    ("don't stop", "dont stop"),
    ("state-of-the-art model", "state of the art model"),
    ("e.g. the U.S.A.", "eg the usa"),
    ("snake_case_name", "snake case name"),
    ("(42)", "42"),
    ("$3.50 per item", "3 50 per item"),
    ("\"quoted\" text", "quoted text"),
    ("a+b=c; x*y/z", "a b c x y z"),
    ("...", "!!!"),
    ("The end.", "the end"),
    ("it's 5 o'clock", "its 5 oclock"),
    # case
    ("The Cat", "the cat"),
    ("HELLO WORLD", "hello world"),
    ("MiXeD CaSe WoRdS", "mixed case words"),
    ("Apple", "APPLE"),
    # numbers
    ("1 2 3", "1 2 3"),
    ("in 1999 there were 42 cases", "there were 42 cases in 1999"),
    ("3.14159", "3 14159"),
    ("100,000 people", "100000 people"),
    ("version 2", "version two"),
    ("abc123 def456", "abc123 def 456"),
    # unicode
    ("café", "cafe"),
    ("café au lait", "caf au lait"),
    ("naïve approach", "naive approach"),
    ("naïve", "na ve"),
    ("I love pizza 🍕", "i love pizza"),
    ("🍕🍕🍕", "pizza"),
    ("emoji🙂between", "emoji between"),
    ("Straße", "strasse"),
    ("ÉCOLE normale", "école normale"),
    ("東京 is Tokyo", "tokyo"),
    ("東京", "東京"),
    ("Ωmega ΟΔΟΣ", "ωmega οδος"),
    ("İstanbul", "i stanbul"),
    ("10 \u212a", "10 k"),
    ("ＡＢＣ full width", "abc full width"),
    ("٣ apples", "3 apples"),
    ("x² + y²", "x2 y2"),
    ("the—end", "end"),
    ("\u00a0non\u00a0breaking\u00a0space", "non breaking space"),
    ("a\u001cb", "a b"),
    ("an\u001fapple", "apple"),
    ("the\u0301 cat", "cat"),
    ("thé cat", "cat"),
    ("1the 2a an3", "1the 2a an3"),
    ("東京the tower", "東京 tower"),
    ("éa bête", "é bête"),
    ("x²the end", "x² end"),
    # empty and whitespace-only
    ("", "something"),
    ("something", ""),
    ("", ""),
    ("   ", "   "),
    ("\t\n", "word"),
    ("word", " \t\n "),
    ("!!!", "word"),
    ("🍕", ""),
    ("the", ""),
    ("a an the", ""),
    ("  leading and trailing  ", "leading and trailing"),
    ("tabs\tand\nnewlines", "tabs and newlines"),
    ("back\\slash", "back slash"),
    ("carriage\r\nreturn", "carriage return"),
    # articles (SQuAD) and near-articles
    ("the Eiffel Tower", "Eiffel Tower"),
    ("an apple", "apple"),
    ("A", ""),
    ("theater", "ater"),
    ("another answer", "other answer"),
    ("The Beatles", "Beatles, the"),
    ("a.n apple", "an apple"),
    ("th-e band", "band"),
    # long sentences (30+ words)
    (LONG_A, LONG_B),
    (LONG_B, LONG_A),
    (LONG_C, LONG_D),
    (LONG_A, LONG_A.upper() + "."),
    (LONG_C, LONG_A),
    (LONG_A + " " + LONG_C, LONG_D),
]


def esc(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def main():
    assert len(set(CASES)) == len(CASES), "duplicate case"
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    with open(os.path.join(OUT, "rouge_l.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write("reference\tcandidate\tprecision\trecall\tfmeasure\n")
        for ref, cand in CASES:
            s = scorer.score(ref, cand)["rougeL"]
            nums = [repr(float(x)) for x in (s.precision, s.recall, s.fmeasure)]
            f.write("\t".join([esc(ref), esc(cand)] + nums) + "\n")
    with open(os.path.join(OUT, "exact_match.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write("reference\tcandidate\texact_match\tnormalized_reference\tnormalized_candidate\n")
        for ref, cand in CASES:
            nr, nc = squad_normalize(ref), squad_normalize(cand)
            f.write("\t".join([esc(ref), esc(cand), str(int(nr == nc)), esc(nr), esc(nc)]) + "\n")
    print(f"{len(CASES)} cases written to {OUT}")


if __name__ == "__main__":
    main()
