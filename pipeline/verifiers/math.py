"""Math verifier: compare the completion's final answer with the reference using ``math-verify``.

``math-verify`` extracts the answer (``\\boxed{}`` first, then "the answer is ...", then the last expression),
normalizes LaTeX, units, thousands separators and fractions, and compares symbolically, so ``1/2`` equals
``0.5`` and ``1,000`` equals ``1000``. A completion with no answer that can be parsed gives ``passed=None``
with the reason ``unparseable``: it is counted neither as wrong nor as right.

    python -m pipeline.verifiers.math "The answer is \\boxed{1/2}." 0.5     # print the verdict
"""

from __future__ import annotations

import threading

from pipeline.verifiers import Verdict

# Characters models write that math-verify does not read: unicode minus, non-breaking and thin spaces.
_TRANSLATE = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " "})


class MathVerifier:
    """``passed`` is True when the final answer equals the reference, None when no answer can be parsed."""

    name = "math"

    def __init__(self, float_rounding: int = 6, timeout_s: int = 5):
        self.float_rounding = float_rounding
        self.timeout_s = timeout_s

    def check(self, rows: list[dict]) -> list[Verdict]:
        return [self.check_one(row.get("completion") or "", row.get("reference")) for row in rows]

    def check_one(self, completion: str, reference: str | None) -> Verdict:
        from math_verify import parse, verify

        if reference is None or not str(reference).strip():
            return Verdict(None, None, "no_reference")
        # math-verify times out with SIGALRM, which only the main thread may use.
        timeout = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        try:
            gold = parse(str(reference).translate(_TRANSLATE), parsing_timeout=timeout)
            if not gold:
                return Verdict(None, None, "unparseable_reference")
            answer = parse(completion.translate(_TRANSLATE), parsing_timeout=timeout)
            if not answer:
                return Verdict(None, None, "unparseable")
            ok = verify(gold, answer, float_rounding=self.float_rounding, timeout_seconds=timeout)
        except Exception as e:  # noqa: BLE001 - sympy can fail in many ways on model output
            return Verdict(None, None, f"unparseable: {type(e).__name__}")
        shown = str(answer[-1])[:80]
        return Verdict(bool(ok), 1.0 if ok else 0.0, f"{'correct' if ok else 'wrong'}: {shown}")


if __name__ == "__main__":
    import sys

    print(MathVerifier().check_one(sys.argv[1], sys.argv[2]))
