"""Math verifier: parse tables (equivalent, wrong, non-answers) and a labelled audit of real teacher output.

tests/data/math_audit.jsonl holds 53 real SmolLM2-135M-Instruct completions from the quickstart, labelled by
hand: right (the committed final answer is the reference), wrong (including self-contradicting answers and
wrong answers the old any-candidate check accepted) and no_answer (truncated, or never commits to a number).

.venv/bin/pytest tests/test_verifiers_math.py -q     # a few seconds
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.verifiers import build_verifier

EQUIVALENT = [
    ("0.5", "1/2"),
    ("0.5", "The answer is \\frac{1}{2}."),
    ("1/2", "0.5"),
    ("42", "\\boxed{42}"),
    ("42", "First 40, then 2 more, so the final answer is $\\boxed{42}$."),
    ("42", "The answer is: **42**"),
    ("12", "12 apples"),
    ("12", "\\boxed{12 \\text{ cm}}"),
    ("1000", "The total is 1,000 apples."),
    ("1234567", "1,234,567"),
    ("-7", "the answer is -7."),
    ("-7", "The result is \u22127."),  # unicode minus
    ("3.5", "$3.50"),
    ("8", "3 + 5 = 8"),
    ("7", "3 + 5 = 8, no wait, 7"),  # the final answer counts
    ("2", "x = 2"),
    ("25", "25\\%"),
]
# A correct number elsewhere in the text does not save a wrong final answer.
WRONG_FINAL = [
    ("14", "7 * 2 = 14. Then 2 + 2 = 4.\n\nThe answer is 4."),
    ("30", '6 * 5 = 30\n\nThe answer is "5".'),
    ("17", "The answer is 17. The remainder is 0."),  # contradicts itself after committing
    ("1", "1 is the answer to 2 - 1, which is 2."),
    ("12", "Answer: 12\nWait, actually it is 13."),
]
NO_COMMITMENT = [
    ("5", "You're right, 5 is indeed 1. You're right, 1 is the only possible result of 5 * 1."),
    ("1", "In this case, 2 is the additive inverse of 1."),
    ("8", "7 + 1 is not a number, but rather a mathematical expression."),
]
WRONG = [
    ("42", "\\boxed{41}"),
    ("0.5", "1/3"),
    ("8", "3 + 5 = 9"),
    ("-7", "7"),
    ("1000", "100"),
]
UNPARSEABLE = ["", "I don't know.", "five", "The answer is unclear.", "```python\nprint('hi')\n```"]


@pytest.fixture(scope="module")
def verifier():
    return build_verifier("math")


@pytest.mark.parametrize(("reference", "completion"), EQUIVALENT)
def test_equivalent_answers_pass(verifier, reference, completion):
    (v,) = verifier.check([{"completion": completion, "reference": reference}])
    assert v.passed is True, v
    assert v.score == 1.0


@pytest.mark.parametrize(("reference", "completion"), WRONG)
def test_wrong_answers_fail(verifier, reference, completion):
    (v,) = verifier.check([{"completion": completion, "reference": reference}])
    assert v.passed is False, v
    assert v.score == 0.0
    assert v.reason.startswith("wrong")


@pytest.mark.parametrize(("reference", "completion"), WRONG_FINAL)
def test_only_the_final_answer_counts(verifier, reference, completion):
    (v,) = verifier.check([{"completion": completion, "reference": reference}])
    assert v.passed is False, v


@pytest.mark.parametrize(("reference", "completion"), NO_COMMITMENT)
def test_a_number_that_is_not_stated_as_a_result_commits_to_nothing(verifier, reference, completion):
    (v,) = verifier.check([{"completion": completion, "reference": reference}])
    assert v.passed is None, v


def test_truncated_without_a_committed_answer_is_undecided(verifier):
    row = {"completion": "First 7 * 2 = 14, and then we", "reference": "14", "finish_reason": "length"}
    committed = {**row, "completion": "Answer: 14\nNow let us check it by", "finish_reason": "length"}
    a, b = verifier.check([row, committed])
    assert (a.passed, a.reason) == (None, "truncated")
    assert b.passed is True


def test_audit_set_of_real_teacher_completions(verifier):
    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / "math_audit.jsonl").open()]
    assert len(rows) >= 50
    assert {r["label"] for r in rows} == {"right", "wrong", "no_answer"}
    verdicts = verifier.check(rows)
    accepted_wrong = [
        r["completion"] for r, v in zip(rows, verdicts, strict=True) if v.passed and r["label"] != "right"
    ]
    assert accepted_wrong == []  # precision: no wrong or uncommitted answer passes
    right = [v.passed for r, v in zip(rows, verdicts, strict=True) if r["label"] == "right"]
    assert sum(p is True for p in right) / len(right) >= 0.85  # recall on hand-labelled right answers
    assert not any(p is False for p in right)  # a right answer is never called wrong


@pytest.mark.parametrize("completion", UNPARSEABLE)
def test_non_answers_are_neither_right_nor_wrong(verifier, completion):
    (v,) = verifier.check([{"completion": completion, "reference": "5"}])
    assert v.passed is None, v
    assert v.score is None
    assert v.reason == "unparseable"


def test_missing_reference_is_undecided(verifier):
    a, b = verifier.check([{"completion": "5", "reference": None}, {"completion": "5", "reference": "???"}])
    assert (a.passed, a.reason) == (None, "no_reference")
    assert (b.passed, b.reason) == (None, "unparseable_reference")


def test_works_off_the_main_thread(verifier):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        verdicts = list(
            pool.map(lambda c: verifier.check([{"completion": c, "reference": "4"}])[0], ["4", "5"])
        )
    assert [v.passed for v in verdicts] == [True, False]


# Written working: equations whose sides differ, and text that only looks like an equation.
WRONG_STEPS = [  # (completion, reference, the wrong step)
    ("First 44 + 86 = 120. Then 120 + 10 = 130.\nAnswer: 130", "130", "44 + 86 = 120"),
    ("First 45 * 4 = 180 + 32 = 212.\nAnswer: 212", "212", "45 * 4 = 180 + 32 = 212"),  # a running total
    ("46 - 92 = -36, so\nAnswer: -36", "-36", "46 - 92 = -36"),
    ("6 - 4 = 2 + 2 = 4, which is the answer.", "4", "6 - 4 = 2 + 2 = 4"),
    ("5 + 3 = 8, 1 + 1 = 3, so 8 - 5 = 3", "3", "1 + 1 = 3"),
]
NOT_EQUATIONS = [
    "3/4 = 0.75",
    "(65 + 93) * 5 = 790",
    "1,000 + 2 = 1,002",
    "2^3 = 8",
    "50% * 20 = 10",
    "x = 5 + 1",
    "3 x 4 = 13",
    "0.5 + 0.25 = 0.75",
    "x2 + 3 = 6",
    "3:2 = 6:4",
    "4 \u00f7 2 = 3",
    "63 bags = 63 * 4 = 242",
    "4 apples plus 3 = 7 apples",  # the sum is written in words: its left side is not all there
    "8 multiplied by 4 = 33",
    "the sum of 3 and 4 = 8",  # the left side is not a number: not checked (nor read as 63 * 4 = 242)
]


@pytest.mark.parametrize(("completion", "reference", "step"), WRONG_STEPS)
def test_a_wrong_step_fails_a_right_answer_when_steps_are_checked(completion, reference, step):
    from pipeline.verifiers.equations import wrong_equation

    assert wrong_equation(completion) == step
    plain, checked = build_verifier("math"), build_verifier("math", check_steps=True)
    (a,), (b,) = (
        plain.check([{"completion": completion, "reference": reference}]),
        checked.check([{"completion": completion, "reference": reference}]),
    )
    assert a.passed is True, a  # the answer alone is right ...
    assert (b.passed, b.reason) == (False, f"wrong: step {step}")  # ... its working is not


@pytest.mark.parametrize("text", NOT_EQUATIONS)
def test_text_that_only_looks_like_an_equation_is_not_checked(text):
    from pipeline.verifiers.equations import chains, wrong_equation

    assert wrong_equation(text) is None
    assert chains(text) == [] or text.startswith("63 bags")


def test_right_working_passes_with_steps_checked():
    checked = build_verifier("math", check_steps=True)
    rows = [
        {
            "completion": "First 17 * 6 = 10 * 6 + 7 * 6 = 60 + 42 = 102. Then 102 - 5 = 97.\nAnswer: 97",
            "reference": "97",
        },
        {"completion": "-10 - 13 = -23, and -23 * -2 = 46.\nAnswer: 46", "reference": "46"},
        {"completion": "1. 2 + 3 * 4 = 14\n2. 14 - 1 = 13\nAnswer: 13", "reference": "13"},
    ]
    assert [v.passed for v in checked.check(rows)] == [True, True, True]


def test_place_value_steps_are_right_and_keep_the_result():
    import random

    from pipeline.verifiers.equations import chains, place_value, wrong_equation

    text = (
        "First 44 + 86 = 130. Then 130 - 18 = 112. So 17 * 6 = 102 and 45 - 48 = -3; 7 + 8 = 15.\nAnswer: 112"
    )
    assert place_value(text) == (
        "First 44 + 86 = 44 + 80 + 6 = 124 + 6 = 130. Then 130 - 18 = 130 - 10 - 8 = 120 - 8 = 112. "
        "So 17 * 6 = 10 * 6 + 7 * 6 = 60 + 42 = 102 and 45 - 48 = 45 - 40 - 8 = 5 - 8 = -3; 7 + 8 = 15.\n"
        "Answer: 112"
    )
    assert place_value("44 + 86 = 120.") == "44 + 86 = 120."  # a wrong equation is left as written
    rng = random.Random(0)
    for _ in range(2000):
        a, b = rng.randint(-999, 999), rng.randint(-99, 99)
        op = rng.choice("+-*")
        c = a + b if op == "+" else a - b if op == "-" else a * b
        spelled = place_value(f"So {a} {op} {b} = {c}.")
        (chain,) = chains(spelled)
        assert (
            wrong_equation(spelled) is None
            and chain.startswith(f"{a} {op} {b} = ")
            and chain.endswith(f" {c}")
        )
        # sign_first: every step is on whole numbers >= 0, and the equation as written comes last, signed
        signed = place_value(f"So {a} {op} {b} = {c}.", sign_first=True)
        *steps, last = chains(signed)
        assert wrong_equation(signed) is None and last.endswith(f" {c}")
        assert last == f"{a} {op} {b} = {c}" if steps else last.startswith(f"{a} {op} {b} = ")
        assert not any(re.search(r"-\d", step) for step in steps), signed  # no negative number


def test_sign_first_works_on_the_sizes():
    from pipeline.verifiers.equations import place_value

    cases = {
        "13 - 48 = -35": "48 - 13 = 48 - 10 - 3 = 38 - 3 = 35, so 13 - 48 = -35",
        "-9 - 96 = -105": "9 + 96 = 9 + 90 + 6 = 99 + 6 = 105, so -9 - 96 = -105",
        "-51 + 17 = -34": "51 - 17 = 51 - 10 - 7 = 41 - 7 = 34, so -51 + 17 = -34",
        "-1 + 90 = 89": "90 - 1 = 89, so -1 + 90 = 89",
        "-18 * 5 = -90": "18 * 5 = 10 * 5 + 8 * 5 = 50 + 40 = 90, so -18 * 5 = -90",
        "93 - 71 = 22": "93 - 71 = 93 - 70 - 1 = 23 - 1 = 22",  # no negative number: the plain steps
        "13 - 48 = -30": "13 - 48 = -30",  # a wrong equation is left as written
    }
    for written, spelled in cases.items():
        assert place_value(f"Then {written}.", sign_first=True) == f"Then {spelled}.", written
