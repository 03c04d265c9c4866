"""Seeded arithmetic word problems with exact answers, at controllable difficulty.

Difficulty: `ops` operations per problem, `digits` digits per operand (`mul_digits` for a factor after a
``*``, so that 47 * 6 can be asked without 47 * 63), operators from `+-*`. Two-operation
problems are also told as word problems (prompts/tasks/arithmetic_story2_{train,heldout,wide}.jinja), read
left to right as the expression is: ``(a + b) * c`` is "a boys and b girls each bring c pencils".
Splits are disjoint by construction: each candidate question is assigned to train / validation / test by a
hash of its text (80/10/10), so a question never appears in two splits whatever `n` and `seed` are.
The wording comes from prompts/tasks/arithmetic_{train,heldout,wide}.jinja; validation and test use the
held-out wording by default, so evaluation measures arithmetic, not memorized phrasing. ``wide`` is a second,
wider held-out family (other verbs and symbols, imperative and story forms, numbers in another order): a
student that learned the training format instead of the skill falls behind there first.

    python -c "from pipeline.tasks.arithmetic import generate; print(generate(3, 'train')[0])"
"""

from __future__ import annotations

import hashlib
import json
import random

from pipeline import templates
from pipeline.errors import UserError
from pipeline.tasks.ids import prompt_id

VERIFIER = "math"  # the checker this task names for its answers
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jamal", "Kim", "Leo"]
PHRASINGS = ("train", "heldout", "wide")
HELDOUT_FAMILIES = ("heldout", "wide")  # the test families every test score is reported on
SPLIT_OF_BUCKET = {**{b: "train" for b in range(8)}, 8: "validation", 9: "test"}  # 80/10/10


def split_of(question: str) -> str:
    return SPLIT_OF_BUCKET[int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10]


def _evaluate_left_to_right(terms: list[int], ops: list[str]) -> int:
    value = terms[0]
    for op, t in zip(ops, terms[1:], strict=True):
        value = value + t if op == "+" else value - t if op == "-" else value * t
    return value


def _expression(terms: list[int], ops: list[str]) -> str:
    # Parenthesize so that left-to-right evaluation is also the conventional reading.
    text = str(terms[0])
    for i, (op, t) in enumerate(zip(ops, terms[1:], strict=True)):
        text = (
            f"({text} {op} {t})"
            if i < len(ops) - 1 and ops[i + 1] == "*" and op != "*"
            else f"{text} {op} {t}"
        )
    return text


def generate(
    n: int,
    split: str = "train",
    seed: int = 0,
    ops: int = 1,
    digits: int = 1,
    operators: str = "+-*",
    phrasing: str | None = None,
    mul_digits: int | None = None,
) -> list[dict]:
    if not 1 <= ops <= 4 or not 1 <= digits <= 4:
        raise UserError("arithmetic: ops and digits must each be between 1 and 4")
    if mul_digits is not None and not 1 <= mul_digits <= digits:
        raise UserError(f"arithmetic: mul_digits must be between 1 and digits ({digits}), or unset")
    if not operators or set(operators) - set("+-*"):
        raise UserError(f"arithmetic: operators '{operators}' must be a non-empty subset of '+-*'")
    if split not in ("train", "validation", "test"):
        raise UserError(f"arithmetic: split '{split}' must be train, validation or test")
    phrasing = phrasing or ("train" if split == "train" else "heldout")
    if phrasing not in PHRASINGS:
        raise UserError(f"arithmetic: phrasing '{phrasing}' must be one of {', '.join(PHRASINGS)}")
    rng = random.Random(
        f"arithmetic:{seed}:{ops}:{digits}:{operators}" + (f":{mul_digits}" if mul_digits else "")
    )
    draw_ops = lambda: [rng.choice(operators) for _ in range(ops)]  # noqa: E731
    return _draw(n, rng, split, phrasing, digits, draw_ops, mul_digits=mul_digits)


def similar(meta: dict, k: int, rng: random.Random) -> list[dict]:
    """k new training problems with the structure of `meta`'s problem: same operators in the same order,
    same number of digits, new numbers, training wording. Used to regenerate data aimed at failures."""
    op_list = [t for t in meta["expression"].split() if t in ("+", "-", "*")]
    digits, mul_digits = int(meta.get("digits", 1)), meta.get("mul_digits")
    return _draw(
        k, rng, "train", "train", digits, lambda: list(op_list), max_misses=2000, mul_digits=mul_digits
    )


def _told_as_story(terms: list[int], op_list: list[str], variant: int, phrasing: str) -> bool:
    """Whether a two-operation problem is a word problem (prompts/tasks/arithmetic_story2_*.jinja): half of
    the variants, when both steps, read left to right, stay non-negative (a story cannot lose more apples
    than there are). One-operation stories live in the main templates, as before."""
    if len(op_list) != 2:
        return False
    picked = variant % 6 in (0, 2, 4) if phrasing == "wide" else variant % 4 in (0, 1)
    first = _evaluate_left_to_right(terms[:2], op_list[:1])
    return picked and first >= 0 and _evaluate_left_to_right(terms, op_list) >= 0


def _row(
    terms: list[int],
    op_list: list[str],
    variant: int,
    name: str,
    split: str,
    phrasing: str,
    digits: int,
    mul_digits: int | None = None,
):
    expression = _expression(terms, op_list)
    story = _told_as_story(terms, op_list, variant, phrasing)
    question = templates.render(
        f"tasks/arithmetic_{'story2_' if story else ''}{phrasing}.jinja",
        expression=expression,
        terms=terms,
        ops=op_list,
        variant=variant,
        name=name,
    )
    meta = {
        "expression": expression,
        "split": split,
        "ops": len(op_list),
        "digits": digits,
        "phrasing": phrasing,
        **({"mul_digits": mul_digits} if mul_digits else {}),
    }
    return {
        "id": prompt_id("arithmetic", question),
        "task": "arithmetic",
        "messages": [{"role": "user", "content": question}],
        "prompt": question,
        "reference": str(_evaluate_left_to_right(terms, op_list)),
        "meta": json.dumps(meta),
    }


def variants(meta: dict, k: int, rng: random.Random) -> list[dict]:
    """Up to k training problems aimed at the failure itself: first the same operands in every training
    wording (and, for + and *, in swapped order), then neighbouring problems (one operand off by one).
    Only questions whose text falls in the train split are returned, so evaluation prompts never leak."""
    tokens = meta["expression"].replace("(", " ").replace(")", " ").split()
    terms = [int(t) for t in tokens if t.lstrip("-").isdigit()]
    op_list = [t for t in tokens if t in ("+", "-", "*")]
    digits, mul_digits = int(meta.get("digits", 1)), meta.get("mul_digits")
    bounds = _term_bounds(op_list, digits, mul_digits)
    same = [terms]
    if len(op_list) == 1 and op_list[0] in "+*":
        same.append(terms[::-1])
    near = []
    for i in range(len(terms)):
        for d in (-1, 1):
            t = list(terms)
            t[i] += d
            if bounds[i][0] <= t[i] <= bounds[i][1] and not (
                len(op_list) == 1 and op_list[0] == "-" and t[0] < t[1]
            ):
                near.append(t)
    rng.shuffle(near)
    out, seen = [], set()
    for group in (same, near):
        candidates = [(t, v) for t in group for v in range(4)]
        rng.shuffle(candidates)
        for t, v in candidates:
            variant, name = v + 4 * rng.randrange(250), rng.choice(NAMES)
            row = _row(t, op_list, variant, name, "train", "train", digits, mul_digits)
            if row["prompt"] not in seen and split_of(row["prompt"]) == "train":
                seen.add(row["prompt"])
                out.append(row)
            if len(out) >= k:
                return out
    return out


def _term_bounds(op_list: list[str], digits: int, mul_digits: int | None) -> list[tuple[int, int]]:
    """Smallest and largest value of each operand: `digits` digits, or `mul_digits` for a factor after '*'."""
    out = []
    for i in range(len(op_list) + 1):
        d = mul_digits if mul_digits and i > 0 and op_list[i - 1] == "*" else digits
        out.append((1 if d == 1 else 10 ** (d - 1), 10**d - 1))
    return out


def _draw(n, rng, split, phrasing, digits, draw_ops, max_misses: int = 20000, mul_digits=None) -> list[dict]:
    """Draw n distinct questions of `split` (a question's split is a hash of its text)."""
    rows, seen = [], set()
    misses = 0  # consecutive draws that gave nothing new: the split's question space is exhausted
    while len(rows) < n:
        misses += 1
        if misses > max_misses:
            if max_misses < 20000:
                break  # similar(): a small structure may have fewer than k new questions; that is fine
            ops = len(draw_ops())
            raise UserError(
                f"arithmetic: only {len(rows)} distinct {split} problems exist at ops={ops}, digits={digits}; "
                "lower n or raise digits/ops"
            )
        op_list = draw_ops()
        terms = [rng.randint(lo, hi) for lo, hi in _term_bounds(op_list, digits, mul_digits)]
        if len(op_list) == 1 and op_list[0] == "-" and terms[0] < terms[1]:
            terms.reverse()  # keep one-step subtraction word problems non-negative
        row = _row(
            terms, op_list, rng.randrange(1000), rng.choice(NAMES), split, phrasing, digits, mul_digits
        )
        if row["prompt"] in seen or split_of(row["prompt"]) != split:
            continue
        seen.add(row["prompt"])
        misses = 0
        rows.append(row)
    return rows


def template_names(phrasing: str | None = None, ops: int = 1) -> list[str]:
    """The templates a source hashes into its fingerprint: train and heldout always (as before the wide
    family existed, so old fingerprints hold), wide when the source draws it, and the two-operation word
    problems' templates only for two-operation sources (one-operation fingerprints are unchanged)."""
    names = ["train", "heldout"] + (["wide"] if phrasing == "wide" else [])
    stories = [f"story2_{p}" for p in names] if ops == 2 else []
    return [f"tasks/arithmetic_{p}.jinja" for p in names + stories]
