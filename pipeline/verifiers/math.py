"""Math verifier: the answer a completion commits to must equal the reference; no other number counts.

The final answer is, in this order of precedence:
1. the last ``Answer:`` line (also "the final answer is ...", "the answer is ...", "35 is the answer");
2. else the last ``\\boxed{...}``;
3. else the last number in the text, when it is stated as a result (after "=", "is", "equals", "gives",
   "has", ...) or stands alone on its line; "2 is the additive inverse of 1" commits to nothing.

Only that answer is compared with the reference, with ``math-verify`` (so ``1/2`` equals ``0.5``, ``1,000``
equals ``1000`` and ``\\frac{1}{2}`` is read as LaTeX). A correct number elsewhere in a wrong answer is not
enough: math-verify's own extraction returns several candidates and passes when any of them matches, which
let "... 7 * 2 = 14 ... The answer is 4." through. Two more rules keep "passed" honest:

- a completion that states a different result after its committed answer (``Answer: 14`` then
  ``... so 7 * 2 = 12``) contradicts itself and fails (``wrong: contradicts its answer``);
- with ``check_steps`` (the verify stage's default), a completion whose written working has an equation
  whose sides differ (``44 + 86 = 120``, see ``equations.py``) fails even when its answer is right
  (``wrong: step 44 + 86 = 120``): its working would teach a student the slip. Evaluation scores the
  answer only;
- a completion cut off by the token limit (``finish_reason == "length"``) with no ``Answer:`` line or
  ``\\boxed{}`` has not committed to anything: ``passed=None`` (``truncated``).

A completion with no answer that can be parsed gives ``passed=None`` with the reason ``unparseable``: it is
counted neither as wrong nor as right.

    python -m pipeline.verifiers.math "The answer is \\boxed{1/2}." 0.5     # print the verdict
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from pipeline.verifiers import Verdict
from pipeline.verifiers.equations import WRONG_STEP, wrong_equation

# Characters models write that math-verify does not read: unicode minus, non-breaking and thin spaces.
_TRANSLATE = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " "})
# "Answer: 12", "**Final answer:** 12", "The answer is 12", "answer = 12".
_ANSWER = re.compile(r"(?:final\s+)?answer\s*(?:\*\*)?\s*(?:is\s*:?|:|=)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")
# "35 is the answer", "81, which is the final answer".
_IS_ANSWER = re.compile(
    r"(-?\d[\d,]*(?:\.\d+)?)\s*,?\s*(?:which\s+)?(?:is|was)\s+(?:the|our|my|an?)\s+(?:final\s+|correct\s+)?answer",
    re.IGNORECASE,
)
# A number: optional sign, digits with thousands separators, decimals, or a plain fraction a/b.
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+(?!\.\d))?")
# Words that state a result just before a number: "= 12", "is 12", "gives us 12", "Ben has 12 apples".
_RESULT_CUE = re.compile(
    r"(?:=|\b(?:is|are|was|equals?|gives?|(?:results?|resulted)\s+in|gets?|makes?|leaves?|has|have|had|becomes?|"
    r"contains?|total\s+of|to|as|wait|actually|so|therefore|thus|hence)"
    r"(?:\s+(?:us|you|simply|just|now|actually|really|still|also|exactly))?\b)[\s$*:,]*$",
    re.IGNORECASE,
)
# A result stated after the committed answer: "= 12", "equals 12", "is 12", "is actually 12".
_RESULT = re.compile(
    r"(?:=|\bequals?\b|\bis\b(?:\s+(?:actually|really|now|just))?)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)(?![\d/])",
    re.IGNORECASE,
)


@dataclass
class FinalAnswer:
    text: str  # what the completion commits to, e.g. "14" or "\\frac{1}{2}"
    source: str  # "answer_line", "boxed" or "last_number"
    end: int  # where the committed answer ends in the completion


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the contents of every balanced ``\\boxed{...}``."""
    spans = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append((m.end(), i - 1))
    return spans


def final_answer(completion: str) -> FinalAnswer | None:
    """The answer the completion commits to, or None when it has none."""
    text = completion.translate(_TRANSLATE)
    marks = list(_ANSWER.finditer(text))
    stated = list(_IS_ANSWER.finditer(text))
    if stated and (not marks or stated[-1].start() > marks[-1].start()):
        number = stated[-1]
        return FinalAnswer(number.group(1), "answer_line", number.end(1))
    if marks:
        start = marks[-1].end()
        rest = text[start:].lstrip(" \t*:")
        offset = len(text) - len(rest)
        line_end = rest.find("\n")
        line = rest if line_end < 0 else rest[:line_end]
        if not line.strip() and line_end >= 0:  # "Answer:\n14": the answer is on the next line
            nxt = rest[line_end + 1 :].lstrip()
            offset = len(text) - len(nxt)
            line_end = nxt.find("\n")
            line = nxt if line_end < 0 else nxt[:line_end]
        answer = _clean(line)
        if re.search(r"[\d\\]", answer):  # "The answer is unclear." commits to nothing
            # The answer ends where its text ends: "The answer is 17. The remainder is 0." states 0 after it.
            at = line.rfind(answer)
            return FinalAnswer(answer, "answer_line", offset + (at + len(answer) if at >= 0 else len(line)))
    boxes = _boxed_spans(text)
    if boxes:
        start, end = boxes[-1]
        return FinalAnswer(text[start:end].strip(), "boxed", end + 1)
    numbers = list(_NUMBER.finditer(text))
    if numbers:
        last = numbers[-1]
        # The sentence around it: "14.", "**14**", "12 apples" state only the answer.
        start = max(text.rfind("\n", 0, last.start()), text.rfind(". ", 0, last.start())) + 1
        end = min(i for i in (text.find("\n", last.end()), text.find(". ", last.end()), len(text)) if i >= 0)
        rest = (text[start : last.start()] + " " + text[last.end() : end]).strip()
        alone = not re.search(r"\d", rest) and len(rest.split()) <= 3
        if alone or _RESULT_CUE.search(text[max(0, last.start() - 30) : last.start()]):
            return FinalAnswer(last.group(0), "last_number", last.end())
    return None


def _clean(line: str) -> str:
    """The answer part of an ``Answer:`` line: after the last '=', without markdown and trailing words."""
    line = line.replace("**", "").strip()
    if "\\boxed" in line:
        boxes = _boxed_spans(line)
        if boxes:
            return line[boxes[-1][0] : boxes[-1][1]].strip()
    if "=" in line:
        line = line.rsplit("=", 1)[1]
    line = line.strip().strip("$\"'\u201c\u201d").strip()
    number = _NUMBER.match(line)
    if number:  # "14 apples.", "14." -> "14"; "1/2" stays whole
        return number.group(0)
    # LaTeX ("\\frac{1}{2}") is an answer; words ("left blank, so ... 4") are not a commitment.
    return line.rstrip(".").strip() if line.startswith("\\") else ""


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


class MathVerifier:
    """``passed`` is True when the final answer equals the reference, None when no answer can be parsed."""

    name = "math"

    def __init__(self, float_rounding: int = 6, timeout_s: int = 5, check_steps: bool = False):
        self.float_rounding = float_rounding
        self.timeout_s = timeout_s
        self.check_steps = check_steps

    def check(self, rows: list[dict]) -> list[Verdict]:
        return [
            self.check_one(row.get("completion") or "", row.get("reference"), row.get("finish_reason"))
            for row in rows
        ]

    def check_one(self, completion: str, reference: str | None, finish_reason: str | None = None) -> Verdict:
        from math_verify import parse, verify

        if reference is None or not str(reference).strip():
            return Verdict(None, None, "no_reference")
        final = final_answer(completion)
        if final is None:
            return Verdict(None, None, "unparseable")
        if finish_reason == "length" and final.source == "last_number":
            return Verdict(None, None, "truncated")
        # math-verify times out with SIGALRM, which only the main thread may use.
        timeout = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        try:
            gold = parse(str(reference).translate(_TRANSLATE), parsing_timeout=timeout)
            if not gold:
                return Verdict(None, None, "unparseable_reference")
            # Dollars make math-verify read the answer as LaTeX, and only the answer is given to it.
            answer = parse(f"${final.text}$", parsing_timeout=timeout) or parse(
                final.text, parsing_timeout=timeout
            )
            if not answer:
                return Verdict(None, None, "unparseable")
            ok = verify(gold, answer, float_rounding=self.float_rounding, timeout_seconds=timeout)
        except Exception as e:  # noqa: BLE001 - sympy can fail in many ways on model output
            return Verdict(None, None, f"unparseable: {type(e).__name__}")
        shown = final.text[:80]
        if ok and self._contradicted(completion, final):
            return Verdict(False, 0.0, f"wrong: contradicts its answer {shown}")
        slip = wrong_equation(completion.translate(_TRANSLATE)) if ok and self.check_steps else None
        if slip:
            return Verdict(False, 0.0, f"{WRONG_STEP}{slip[:80]}")
        return Verdict(bool(ok), 1.0 if ok else 0.0, f"{'correct' if ok else 'wrong'}: {shown}")

    @staticmethod
    def _contradicted(completion: str, final: FinalAnswer) -> bool:
        """A different result stated after the committed answer ("Answer: 14 ... so it is 12")."""
        value = _as_number(final.text)
        if value is None:
            return False
        after = completion.translate(_TRANSLATE)[final.end :]
        return any(_as_number(m.group(1)) not in (None, value) for m in _RESULT.finditer(after))


if __name__ == "__main__":
    import sys

    print(MathVerifier().check_one(sys.argv[1], sys.argv[2]))
