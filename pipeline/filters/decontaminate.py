"""N-gram decontamination as a pure function: rows sharing a word n-gram with an evaluation set.

``NgramIndex`` holds the word n-grams (13 by default) of the evaluation texts; ``decontaminate`` keeps the
rows that share none and marks the others ``contaminated``. Evaluation texts shorter than n words count
whole, from ``min_words`` words up (a short question must not slip through for being short).

    from pipeline.filters.decontaminate import NgramIndex, decontaminate
    keep, reasons = decontaminate(texts, NgramIndex(eval_texts, n=13))
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pipeline.filters.dedup import normalize_text

_WORD = re.compile(r"\w+")


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
