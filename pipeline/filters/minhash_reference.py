"""The previous MinHash near-dedup (numpy signatures + datasketch LSH), kept as the reference.

``pipeline.filters.dedup.minhash_dedup`` (rensa) replaced it; this copy stays so that
``scripts/bench_verify.py`` can time both in one run and ``tests/test_dedup.py`` can compare their
kept-sets. Nothing in the pipeline calls it.

    from pipeline.filters.minhash_reference import reference_minhash_dedup
    keep, reasons = reference_minhash_dedup(texts, threshold=0.85)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from pipeline.filters.dedup import _TOKEN, normalize_text

_MASK32 = np.uint64(0xFFFFFFFF)


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def reference_signatures(
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


def reference_minhash_dedup(
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
    sig = reference_signatures(texts, num_perm=num_perm, shingle=shingle, seed=seed)
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
