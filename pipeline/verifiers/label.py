"""Label verifier for classification tasks: normalized label match.

Normalization: case-folded, punctuation and markdown stripped, whitespace collapsed. With a label set
(``labels`` option or ``meta.labels``) the answer is the label the completion names; naming none of them,
or several different ones, gives ``passed=None`` (``unparseable`` / ``ambiguous``). Without a label set the
whole completion, or its last line, or an "Answer: ..." / "Label: ..." line must equal the reference.

    python -m pipeline.verifiers.label "The sentiment is Positive." positive
"""

from __future__ import annotations

import re
import unicodedata

from pipeline.rows import meta_of
from pipeline.verifiers import Verdict

_ANSWER_LINE = re.compile(
    r"^\W*(?:final\s+)?(?:answer|label|sentiment|category|class)\W*:\s*(.+)$", re.I | re.M
)


def normalize_label(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s-]", " ", text)
    return " ".join(text.replace("_", " ").split())


class LabelVerifier:
    """``passed`` when the label the completion gives equals the reference label."""

    name = "label"

    def __init__(self, labels: list[str] | None = None):
        self.labels = labels

    def check(self, rows: list[dict]) -> list[Verdict]:
        return [self.check_one(row) for row in rows]

    def check_one(self, row: dict) -> Verdict:
        reference = row.get("reference")
        if reference is None or not normalize_label(str(reference)):
            return Verdict(None, None, "no_reference")
        gold = normalize_label(str(reference))
        labels = meta_of(row).get("labels") or self.labels
        answer = self.answer(row.get("completion") or "", labels)
        if answer.startswith("?"):
            return Verdict(None, None, answer[1:])
        ok = answer == gold
        return Verdict(ok, 1.0 if ok else 0.0, f"{'correct' if ok else 'wrong'}: {answer[:80]}")

    @staticmethod
    def answer(completion: str, labels: list[str] | None) -> str:
        """The normalized label given, or '?unparseable' / '?ambiguous'."""
        text = normalize_label(completion)
        if not text:
            return "?unparseable"
        explicit = [normalize_label(m) for m in _ANSWER_LINE.findall(completion)]
        if labels:
            names = {normalize_label(str(label)) for label in labels}
            for candidate in [text, *explicit[::-1]]:
                if candidate in names:
                    return candidate
            found = {n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text)}
            # "negative" inside "not negative" style answers stays ambiguous only if two labels show up.
            if len(found) == 1:
                return found.pop()
            return "?ambiguous" if found else "?unparseable"
        lines = [normalize_label(line) for line in completion.strip().splitlines() if normalize_label(line)]
        return explicit[-1] if explicit else (text if len(lines) <= 1 else lines[-1])


if __name__ == "__main__":
    import sys

    print(LabelVerifier().check([{"completion": sys.argv[1], "reference": sys.argv[2]}]))
