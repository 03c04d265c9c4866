"""Math verifier parse tables: equivalent answers, wrong answers and non-answers.

.venv/bin/pytest tests/test_verifiers_math.py -q     # a few seconds
"""

from __future__ import annotations

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
