"""Math verifier: parse tables (equivalent, wrong, non-answers) and a labelled audit of real teacher output.

tests/data/math_audit.jsonl holds 53 real SmolLM2-135M-Instruct completions from the quickstart, labelled by
hand: right (the committed final answer is the reference), wrong (including self-contradicting answers and
wrong answers the old any-candidate check accepted) and no_answer (truncated, or never commits to a number).

.venv/bin/pytest tests/test_verifiers_math.py -q     # a few seconds
"""

from __future__ import annotations

import json
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
