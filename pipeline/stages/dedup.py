"""Dedup and decontamination as pure functions over lists of strings: keep masks plus reasons.

- ``exact_dedup``: the first row of each normalized text (NFKC, case-folded, whitespace collapsed) is kept;
  later copies get ``exact_duplicate``.
- ``minhash_dedup``: near-duplicates by MinHash over shingles of 3 tokens (words and punctuation marks), with ``datasketch.MinHashLSH``
  for candidates and the signature's Jaccard estimate to confirm them (``near_duplicate``). With
  ``groups``, rows are only compared inside their group (e.g. the samples of one prompt).
- ``NgramIndex`` / ``decontaminate``: rows sharing a word n-gram (13 by default) with an evaluation set
  get ``contaminated``. Evaluation texts shorter than n words count whole, from ``min_words`` words up.

The verify stage (``pipeline/stages/verify.py``) calls these; they know nothing about stages or files.

    from pipeline.stages.dedup import minhash_dedup
    keep, reasons = minhash_dedup(texts, threshold=0.85)
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

_WORD = re.compile(r"\w+")
# Shingle tokens: words and single punctuation marks, on UTF-8 bytes (non-ASCII bytes count as letters),
# so "today." and "today!" share the word, and crc32 gives hashes that are the same in every process.
_TOKEN = re.compile(rb"[\w\x80-\xff]+|[^\w\s\x80-\xff]")
_MASK32 = np.uint64(0xFFFFFFFF)


def normalize_text(text: str | None) -> str:
    """NFKC, case-folded, whitespace collapsed: what "the same text" means for exact dedup."""
    return " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def exact_dedup(
    texts: Sequence[str | None], groups: Sequence | None = None
) -> tuple[list[bool], list[str | None]]:
    """Keep the first of each normalized text (within its group, if groups are given)."""
    seen: set = set()
    keep, reasons = [], []
    for i, text in enumerate(texts):
        key = (groups[i] if groups is not None else None, normalize_text(text))
        first = key not in seen
        seen.add(key)
        keep.append(first)
        reasons.append(None if first else "exact_duplicate")
    return keep, reasons


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(
    texts: Sequence[str | None], num_perm: int = 128, shingle: int = 3, seed: int = 1, chunk: int = 256
) -> np.ndarray:
    """(rows, num_perm) uint32 MinHash signatures over word ``shingle``-grams of the normalized texts.

    Vectorized over a chunk of rows at a time: the shingle hashes of the chunk go through all permutations
    (multiply-shift hashing, mod 2^64) in one numpy operation, and ``minimum.reduceat`` takes each row's min.
    """
    a, b = _permutations(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    k = [np.uint64(0x9E3779B97F4A7C15 * (j + 1) % 2**64) for j in range(shingle)]
    for lo in range(0, len(texts), chunk):
        token_hashes, starts, counts = [], [], []
        for text in texts[lo : lo + chunk]:
            words = _TOKEN.findall(normalize_text(text).encode())
            starts.append(len(token_hashes))
            counts.append(max(1, len(words) - shingle + 1))  # a short text is one shingle
            token_hashes.extend(map(zlib.crc32, words))
            token_hashes.extend([0] * max(shingle - 1, shingle - len(words)))  # rows never share a window
        t = np.asarray(token_hashes, dtype=np.uint64)
        t = np.concatenate([t, np.zeros(shingle, dtype=np.uint64)])
        # Hash of each window of `shingle` tokens (windows that cross rows are masked out below).
        g = np.zeros(len(t) - shingle + 1, dtype=np.uint64)
        for j in range(shingle):
            g ^= t[j : j + len(g)] * k[j]
        g = (g >> np.uint64(32)) ^ (g & _MASK32)
        index = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
        g = g[index]
        phv = ((g[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out[lo : lo + len(counts)] = np.minimum.reduceat(phv, offsets, axis=0)
    return out


def minhash_dedup(
    texts: Sequence[str | None],
    threshold: float = 0.85,
    num_perm: int = 128,
    shingle: int = 3,
    groups: Sequence | None = None,
    seed: int = 1,
) -> tuple[list[bool], list[str | None]]:
    """Keep a row unless an earlier row (in its group) has estimated Jaccard >= threshold with it.

    Dropped rows still count as "earlier rows", so a chain of near-copies keeps only its first row."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"minhash threshold must be in (0, 1], not {threshold}")
    sig = minhash_signatures(texts, num_perm=num_perm, shingle=shingle, seed=seed)
    keep = [True] * len(texts)
    if groups is not None:  # small groups: compare signatures directly, no index needed
        members: dict = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        for rows in members.values():
            for j, i in enumerate(rows[1:], start=1):
                earlier = rows[:j]
                keep[i] = not (np.mean(sig[earlier] == sig[i], axis=1) >= threshold).any()
    else:
        from datasketch import LeanMinHash, MinHashLSH

        # Recall first: the LSH only proposes candidates, and each one is confirmed on the signatures below,
        # so a false positive costs one comparison while a false negative is a duplicate left in the data.
        # (datasketch cannot band for thresholds near 1, hence the cap; confirmation keeps the real one.)
        lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=num_perm, weights=(0.1, 0.9))
        for i in range(len(texts)):
            m = LeanMinHash(seed=seed, hashvalues=sig[i], scheme="affine32")  # 32-bit values, like ours
            candidates = lsh.query(m)
            # LSH candidates can be false positives: confirm with the signatures' agreement.
            if candidates and (np.mean(sig[candidates] == sig[i], axis=1) >= threshold).any():
                keep[i] = False
            # Dropped rows stay in the index: a copy of a copy is a duplicate too (each cluster keeps one row).
            lsh.insert(i, m, check_duplication=False)
    return keep, [None if k else "near_duplicate" for k in keep]


class NgramIndex:
    """Word n-grams of evaluation texts, for decontamination."""

    def __init__(self, texts: Iterable[str | None], n: int = 13, min_words: int = 8):
        self.n = n
        self.grams: dict[int, set[int]] = {}  # n-gram length -> hashes
        self.texts = 0
        for text in texts:
            words = _WORD.findall(normalize_text(text))
            if len(words) >= n:
                self.grams.setdefault(n, set()).update(_gram_hashes(words, n))
            elif len(words) >= min_words:  # a short evaluation item counts whole
                self.grams.setdefault(len(words), set()).add(hash(" ".join(words)))
            self.texts += 1

    def __len__(self) -> int:
        return sum(len(s) for s in self.grams.values())

    def hits(self, text: str | None) -> bool:
        words = _WORD.findall(normalize_text(text))
        return any(
            not grams.isdisjoint(_gram_hashes(words, size))
            for size, grams in self.grams.items()
            if len(words) >= size
        )


def _gram_hashes(words: list[str], n: int) -> set[int]:
    return {hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


def decontaminate(texts: Sequence[str | None], index: NgramIndex) -> tuple[list[bool], list[str | None]]:
    """Keep rows that share no n-gram with the evaluation sets in ``index``."""
    keep = [not index.hits(t) for t in texts]
    return keep, [None if k else "contaminated" for k in keep]
