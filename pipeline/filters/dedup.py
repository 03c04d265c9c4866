"""Exact and near-duplicate dedup as pure functions over lists of strings: keep masks plus reasons.

- ``exact_dedup``: the first row of each normalized text (NFKC, case-folded, whitespace collapsed) is kept;
  later copies get ``exact_duplicate``.
- ``minhash_dedup``: near-duplicates by MinHash over shingles of 3 tokens (words and punctuation marks).
  Signatures come from ``rensa`` (Rust R-MinHash); its LSH flags the rows that share a band with another
  row, and only those are paired and confirmed on the signatures' agreement (``near_duplicate``). With
  ``groups``, rows are only compared inside their group (e.g. the samples of one prompt).

The old numpy + datasketch implementation is kept as the reference in ``minhash_reference.py``
(``scripts/bench_verify.py`` times both; ``tests/test_dedup.py`` compares their kept-sets).

    from pipeline.filters.dedup import minhash_dedup
    keep, reasons = minhash_dedup(texts, threshold=0.85)
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence

import numpy as np

# Shingle tokens: words and single punctuation marks, on UTF-8 bytes (non-ASCII bytes count as letters),
# so "today." and "today!" share the word, and crc32 gives hashes that are the same in every process.
_TOKEN = re.compile(rb"[\w\x80-\xff]+|[^\w\s\x80-\xff]")
_MIX = [np.uint64(0x9E3779B97F4A7C15 * (j + 1) % 2**64) for j in range(16)]
# LSH banding: the fewest bands whose chance of proposing a pair at exactly the threshold is at least this.
# Recall first: a false candidate costs one comparison, a missed one is a duplicate left in the data.
_BAND_RECALL = 0.995


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


def shingle_hashes(texts: Sequence[str | None], shingle: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every window of ``shingle`` tokens, flat, and the row offsets into them (len(texts) + 1).

    A text shorter than ``shingle`` tokens is one shingle (zero-padded), so even "" has a signature."""
    if not 1 <= shingle <= len(_MIX):
        raise ValueError(f"shingle must be in 1..{len(_MIX)}, not {shingle}")
    flat: list[int] = []
    counts = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        tokens = _TOKEN.findall(normalize_text(text).encode())
        flat.extend(map(zlib.crc32, tokens))
        if len(tokens) < shingle:
            flat.extend([0] * (shingle - len(tokens)))
        counts[i] = max(len(tokens), shingle)
    t = np.asarray(flat, dtype=np.uint64)
    g = np.zeros(len(t) - shingle + 1, dtype=np.uint64)
    for j in range(shingle):  # multiply-xor of the window's token hashes; wraps mod 2^64 on purpose
        g ^= t[j : j + len(g)] * _MIX[j]
    windows = counts - shingle + 1
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(windows, out=offsets[1:])
    # Window k of row i starts at token start_i + k; windows that would cross into the next row are skipped.
    token_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    index = np.arange(offsets[-1]) + np.repeat(token_starts - offsets[:-1], windows)
    return g[index], offsets.astype(np.uint64)


def _digest_matrix(texts: Sequence[str | None], num_perm: int, shingle: int, seed: int):
    from rensa import RMinHash

    hashes, offsets = shingle_hashes(texts, shingle)
    return RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, seed), hashes, offsets


def _as_array(matrix, num_perm: int) -> np.ndarray:
    rows = matrix.to_rows()
    return np.asarray(rows, dtype=np.uint32).reshape(len(rows), num_perm)


def minhash_signatures(
    texts: Sequence[str | None], num_perm: int = 128, shingle: int = 3, seed: int = 1
) -> np.ndarray:
    """(rows, num_perm) uint32 R-MinHash signatures over ``shingle``-token windows of the normalized texts.

    The share of equal slots between two rows estimates the Jaccard similarity of their shingle sets."""
    if not texts:
        return np.empty((0, num_perm), dtype=np.uint32)
    return _as_array(_digest_matrix(texts, num_perm, shingle, seed)[0], num_perm)


def lsh_bands(threshold: float, num_perm: int) -> int:
    """Bands for the LSH: the fewest (longest rows, fewest false candidates) that still propose a pair of
    Jaccard ``threshold`` with probability ``_BAND_RECALL``; bands must divide ``num_perm``."""
    for bands in (b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1 - (1 - threshold**rows) ** bands >= _BAND_RECALL:
            return bands
    return num_perm


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
    if not texts:
        return [], []
    if groups is not None:  # small groups: compare signatures directly, no index needed
        sig = minhash_signatures(texts, num_perm=num_perm, shingle=shingle, seed=seed)
        members: dict = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        drop = np.zeros(len(texts), dtype=bool)
        for rows in members.values():
            for j, i in enumerate(rows[1:], start=1):
                drop[i] = (np.mean(sig[rows[:j]] == sig[i], axis=1) >= threshold).any()
    else:
        drop = _near_duplicates(texts, threshold, num_perm, shingle, seed)
    return [not d for d in drop.tolist()], [("near_duplicate" if d else None) for d in drop.tolist()]


def _near_duplicates(texts: Sequence[str | None], threshold: float, num_perm: int, shingle: int, seed: int):
    from rensa import RMinHash, RMinHashLSH

    matrix, hashes, offsets = _digest_matrix(texts, num_perm, shingle, seed)
    bands = lsh_bands(threshold, num_perm)
    # rensa's LSH flags the rows that share a band with some other row; only those can be duplicates, so
    # only their signatures come back to Python (moving all of them costs more than everything else).
    flagged = np.flatnonzero(
        RMinHashLSH(threshold, num_perm, bands).query_duplicate_flags_matrix_one_shot(matrix)
    )
    drop = np.zeros(len(texts), dtype=bool)
    if len(flagged) < 2:
        return drop
    starts, ends = offsets[flagged].astype(np.int64), offsets[flagged + 1].astype(np.int64)
    sub_offsets = np.zeros(len(flagged) + 1, dtype=np.uint64)
    np.cumsum(ends - starts, out=sub_offsets[1:])
    take = np.arange(int(sub_offsets[-1])) + np.repeat(
        starts - sub_offsets[:-1].astype(np.int64), ends - starts
    )
    sig = _as_array(
        RMinHash.digest_matrix_from_flat_token_hashes(hashes[take], sub_offsets, num_perm, seed), num_perm
    )
    # Rows whose signature equals an earlier one's are duplicates at any threshold; for everything later
    # they compare exactly like that earlier row, so only the first of each signature is paired below.
    _, first, inverse = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    repeat = first[inverse] != np.arange(len(sig))
    drop[flagged[repeat]] = True
    reps = np.sort(first)
    earlier, later = _band_pairs(sig[reps], bands)
    if len(earlier):
        agree = np.empty(len(earlier), dtype=np.float64)
        for lo in range(0, len(earlier), 65536):  # chunks keep the (pairs, num_perm) comparison small
            a, b = sig[reps[earlier[lo : lo + 65536]]], sig[reps[later[lo : lo + 65536]]]
            agree[lo : lo + 65536] = np.mean(a == b, axis=1)
        drop[flagged[reps[later[agree >= threshold]]]] = True
    return drop


def _band_pairs(sig: np.ndarray, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (earlier, later) of rows sharing at least one band (same slot layout as rensa's LSH)."""
    n, num_perm = sig.shape
    rows_per_band = num_perm // bands
    pairs = []
    for band in range(bands):
        block = np.ascontiguousarray(sig[:, band * rows_per_band : (band + 1) * rows_per_band])
        key = np.unique(
            block.view(np.dtype((np.void, block.dtype.itemsize * rows_per_band))).ravel(), return_inverse=True
        )[1]
        order = np.lexsort((np.arange(n), key))  # by bucket, then by row: pairs come out (earlier, later)
        k = key[order]
        for step in range(1, n):  # members `step` apart in one bucket; stops at the largest bucket's size
            same = np.flatnonzero(k[step:] == k[:-step])
            if not len(same):
                break
            pairs.append(order[same].astype(np.int64) * n + order[same + step])
    if not pairs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    unique = np.unique(np.concatenate(pairs))
    return unique // n, unique % n
