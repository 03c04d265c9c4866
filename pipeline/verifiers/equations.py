"""The equations an answer writes down: find them, check them, and spell them out digit by digit.

An equation here is a chain of whole-number expressions with ``+``, ``-`` and ``*`` joined by ``=``, as in
``44 + 86 = 130`` or ``17 * 6 = 60 + 42 = 102``. Anything that could be part of a larger expression is left
alone, so a check never fails an answer for a number it misread: a chain next to a decimal point, a
thousands comma, a fraction bar, a power, a percent sign, a bracket or another operator is not read
(``(65 + 93) * 5 = 790`` contains no checkable chain; ``65 + 93 = 158`` does).

- ``wrong_equation(text)``: the first chain whose sides differ ("44 + 86 = 120"), or None. The math verifier
  fails an answer that writes one (``check_steps``): its final answer may be right, but its working teaches
  a student a slip.
- ``place_value(text)``: every right two-term equation written as place-value steps,
  ``44 + 86 = 44 + 80 + 6 = 124 + 6 = 130``, ``130 - 18 = 130 - 10 - 8 = 120 - 8 = 112``,
  ``17 * 6 = 10 * 6 + 7 * 6 = 60 + 42 = 102``. Each step then adds, takes away or multiplies one digit,
  which a small student can learn where a whole two-digit sum in one step is beyond it. Other text is kept
  as written. ``sign_first=True`` keeps every step on whole numbers >= 0: an equation with a negative
  number in it is worked on the sizes, then given its sign, ``48 - 13 = 48 - 10 - 3 = 38 - 3 = 35, so 13 -
  48 = -35`` (where the plain steps cross zero: ``13 - 48 = 13 - 40 - 8 = -27 - 8 = -35``).

``WRONG_STEP`` starts the math verifier's reason for such an answer; the step filter counts it by that prefix.

    python -m pipeline.verifiers.equations "First 44 + 86 = 130. Then 130 - 18 = 112."
"""

from __future__ import annotations

import re

WRONG_STEP = "wrong: step "  # + the wrong chain, as written: the reason a right answer with a slip fails
_TERM = r"-?\d+"
_EXPR = rf"{_TERM}(?:[ \t]*[-+*][ \t]*{_TERM})*"
_CHAIN = re.compile(rf"{_EXPR}(?:[ \t]*=[ \t]*{_EXPR})+")
_SCAN = re.compile(r"(-?\d+)[ \t]*([-+*]?)[ \t]*")
# Characters that, before or after a chain (spaces aside), make it part of something larger than it looks.
_BEFORE = set("/^)*+-=([{%$\\_") | {"\u00d7", "\u00f7"}
_AFTER = set("/^(*+-=%\\_") | {"\u00d7", "\u00f7"}
# Words that make the number after them the end of a sum written in words ("4 plus 3 = 7").
_OPERATOR_WORDS = set(
    "plus minus times than over divided multiplied added subtracted into twice double triple half".split()
)


def _value(expr: str) -> int:
    """A whole-number expression of + - * over signed terms (the shape `_EXPR` matches), * first."""
    terms = _SCAN.findall(expr)  # [(term, operator after it), ...]
    total, product = 0, int(terms[0][0])
    for (_, op), (term, _) in zip(terms, terms[1:], strict=False):
        if op == "*":
            product *= int(term)
        else:
            total += product
            product = int(term) if op == "+" else -int(term)
    return total + product


def chains(text: str) -> list[str]:
    """The checkable equation chains of a text, as written."""
    out = []
    for m in _CHAIN.finditer(text):
        touching = text[m.start() - 1 : m.start()] + text[m.end() : m.end() + 1]
        if any(c.isalnum() or c == "_" for c in touching):  # "x2 + 3 = 5", "5 = 5x"
            continue
        before = text[: m.start()].rstrip(" \t")
        after = text[m.end() :].lstrip(" \t")
        prev = text[max(m.start() - 2, 0) : m.start()]
        if len(prev) == 2 and prev[0].isdigit() and prev[1] in ".,:":
            continue  # "1,000 + 2 = 1,002", "0.5 + 0.25", "3:2 = 6:4": part of a number, not prose
        if before and before[-1] in _BEFORE:
            continue
        if after and (after[0] in _AFTER or after[0] in ".,:" and after[1:2].isdigit()):
            continue
        if re.search(r"(?:^|\s)[xX]$", before) or re.match(r"[xX](?:\s|$)", after):  # "3 x 4 = 12"
            continue
        word = re.search(r"([A-Za-z]+)$", before)
        if word and (
            word[1].lower() in _OPERATOR_WORDS or re.fullmatch(r"[ \t]*-?\d+[ \t]*", m[0].split("=")[0])
        ):
            continue  # "4 apples plus 3 = 7", "8 multiplied by 4 = 32": the left side is not all written down
        out.append(m.group(0))
    return out


def wrong_equation(text: str) -> str | None:
    """The first written chain whose sides are not all equal, or None."""
    for chain in chains(text):
        values = [_value(side) for side in chain.split("=")]
        if any(a != b for a, b in zip(values, values[1:], strict=False)):
            return chain
    return None


def _parts(n: int) -> list[int]:
    """Place-value parts of a non-negative number, largest first, zero digits left out: 806 -> [800, 6]."""
    digits = str(n)
    return [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"] or [0]


def _add(a: int, b: int, sign: str) -> list[str] | None:
    """``a + b`` (sign "+") or ``a - b`` (sign "-") with b >= 0, one place of b at a time."""
    parts = _parts(b)
    if len(parts) < 2:
        return None
    steps, acc = [], a
    for i in range(len(parts)):
        steps.append(f" {sign} ".join([str(acc), *map(str, parts[i:])]))
        acc = acc + parts[i] if sign == "+" else acc - parts[i]
    return steps


def _spelled(a: int, op: str, b: int) -> list[str] | None:
    """The middle steps of ``a op b``, or None when it is already one step."""
    if op == "*":
        if abs(a) < abs(b):
            a, b = b, a
        if a < 0 or b < 0:
            return None
        parts = _parts(a)
        if len(parts) < 2:
            return None
        return [" + ".join(f"{p} * {b}" for p in parts), " + ".join(str(p * b) for p in parts)]
    if (op == "+") == (b >= 0):
        return _add(a, abs(b), "+")
    return _add(a, abs(b), "-")


def _sizes(a: int, op: str, b: int) -> tuple[int, str, int] | None:
    """``a op b`` as an expression on whole numbers >= 0 whose value is the size of its result, or None when
    it already is one (no negative number in it, a difference that does not cross zero)."""
    if op == "*":
        return None if a >= 0 and b >= 0 else (abs(a), "*", abs(b))
    y = b if op == "+" else -b  # the result is a + y
    if a >= 0 and (y >= 0 or a >= -y):
        return None
    if a >= 0:  # 13 - 48: the size is 48 - 13
        return (-y, "-", a)
    if y < 0:  # -9 - 13: 9 + 13
        return (-a, "+", -y)
    return (y, "-", -a) if y >= -a else (-a, "-", y)  # -1 + 90: 90 - 1; -51 + 17: 51 - 17


_BINARY = re.compile(r"^(-?\d+)[ \t]*([-+*])[ \t]*(-?\d+)[ \t]*=[ \t]*(-?\d+)$")


def place_value(text: str, sign_first: bool = False) -> str:
    """The text with each right two-term equation ``a op b = c`` spelled out in place-value steps;
    ``sign_first``: one with a negative number is worked on the sizes, then signed."""
    out, at = [], 0
    for chain in chains(text):
        start = text.index(chain, at)
        out.append(text[at:start])
        at = start + len(chain)
        m = _BINARY.match(chain)
        if m is None or wrong_equation(chain):
            out.append(chain)
            continue
        a, op, b, c = int(m[1]), m[2], int(m[3]), m[4]
        sizes = _sizes(a, op, b) if sign_first else None
        if sizes is not None:
            x, op2, y = sizes
            steps = " = ".join([f"{x} {op2} {y}", *(_spelled(x, op2, y) or []), str(abs(int(c)))])
            out.append(f"{steps}, so {a} {op} {b} = {c}")
            continue
        middle = _spelled(a, op, b)
        out.append(chain if middle is None else " = ".join([f"{a} {op} {b}", *middle, c]))
    out.append(text[at:])
    return "".join(out)


if __name__ == "__main__":
    import sys

    print("wrong equation:", wrong_equation(sys.argv[1]))
    print(place_value(sys.argv[1]))
    print(place_value(sys.argv[1], sign_first=True))
