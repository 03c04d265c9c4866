"""The verify stage's filter steps on short literal rows: each returns keep + reason, and `apply` runs them
in order, records every drop with its reason and counts them.

.venv/bin/pytest tests/test_filters.py -q     # a second
"""

from __future__ import annotations

import pytest

from pipeline.filters import steps
from pipeline.filters.decontaminate import NgramIndex
from pipeline.verifiers import Verdict, build_verifier

LEAK = "the quick brown fox jumps over the lazy dog and then runs far away into the dark green forest"


def _row(
    rid: str, completion: str, k: int = 0, question: str = "What is 3 + 5?", reference: str = "8"
) -> dict:
    return {
        "id": rid,
        "task": "arithmetic",
        "messages": [{"role": "user", "content": question}],
        "prompt": None,
        "reference": reference,
        "meta": "{}",
        "completion": completion,
        "sample_index": k,
        "teacher": "t",
    }


class _Verdicts:
    """Plumbing: a verifier that answers from a table (completion -> verdict), like the code verifier will."""

    name = "table"

    def __init__(self, table: dict[str, Verdict]):
        self.table, self.seen = table, []

    def check(self, rows):
        self.seen.append([r["completion"] for r in rows])
        return [self.table[r["completion"]] for r in rows]


def test_math_then_dedup_then_select():
    rows = [
        _row("p1", "3 + 5 = 8. Answer: 8", 0),
        _row("p1", "Answer: 9", 1),
        _row("p1", "3 + 5 = 8.  answer: 8", 2),  # same text after normalization
        _row("p1", "no idea", 3),
        _row("p1", "So the answer is 8", 4),
        _row("p2", "Answer: 8", 0, question="What is 2 * 4?"),
    ]
    batch = steps.Batch(rows)
    steps.apply(
        [
            steps.Verify(build_verifier("math")),
            steps.CompletionExactDedup(),
            steps.CompletionNearDedup(0.85),
            steps.Select("first_pass"),
        ],
        batch,
    )
    assert batch.reject == [None, "failed", "exact_duplicate", "unparseable", "not_selected", None]
    assert batch.counts() == {"failed": 1, "exact_duplicate": 1, "unparseable": 1, "not_selected": 1}
    assert batch.decided_by == ["math"] * 6
    assert [v.passed for v in batch.verdicts] == [True, False, True, None, True, True]


def test_later_verifier_sees_only_what_earlier_ones_passed_and_reward_hacks_get_their_reason():
    first = _Verdicts(
        {
            "ok": Verdict(True, 1.0, "passed"),
            "wrong": Verdict(False, 0.0, "tests_failed: assert"),
            "hack": Verdict(False, 0.0, "reward_hack: non_plain_return: returns an object equal to anything"),
            "hack2": Verdict(None, None, "reward_hack: exit_before_tests"),
            "odd": Verdict(None, None, "sandbox_error: no bwrap"),
        }
    )
    second = _Verdicts({"ok": Verdict(True, 0.5, "fine")})
    rows = [_row("p", c, k) for k, c in enumerate(["ok", "wrong", "hack", "hack2", "odd"])]
    batch = steps.apply([steps.Verify(first), steps.Verify(second)], steps.Batch(rows))
    assert batch.reject == [
        None,
        "failed",
        "reward_hack: non_plain_return",
        "reward_hack: exit_before_tests",
        "unverified",
    ]
    assert second.seen == [["ok"]]
    assert batch.verdicts[0].score == 0.5  # the last verifier that ran decides the verdict


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [
        (Verdict(False, 0.0, "wrong: 9"), "failed"),
        (Verdict(None, None, "unparseable: no number"), "unparseable"),
        (Verdict(None, None, "unparseable_judgement: dunno"), "unparseable_judgement"),
        (Verdict(None, None, "no_tests"), "unverified"),
        (Verdict(None, None, ""), "unverified"),
        (Verdict(False, 0.0, "reward_hack: non_plain_return"), "reward_hack: non_plain_return"),
        (Verdict(False, 0.0, "reward_hack: "), "reward_hack: unknown"),
        (Verdict(False, 0.0, "tests_failed: reward_hack: x"), "failed"),  # only a leading kind counts
    ],
)
def test_reject_reason(verdict, reason):
    assert steps.reject_reason(verdict) == reason


def test_decontaminate_prompt_and_completion():
    index = NgramIndex([LEAK], n=13)
    rows = [
        _row("a", "Answer: 8", 0, question=f"Please read: {LEAK}"),
        _row("a", "Answer: 8", 1, question=f"Please read: {LEAK}"),
        _row("b", f"Well, {LEAK}.", 0),
        _row("b", "Answer: 8", 1),
    ]
    for over, expected in [
        ("prompt", ["contaminated", "contaminated", None, None]),
        ("completion", [None, None, "contaminated", None]),
        ("both", ["contaminated", "contaminated", "contaminated", None]),
    ]:
        assert steps.apply([steps.Decontaminate(index, over)], steps.Batch(rows)).reject == expected


def test_prompt_dedup_drops_every_sample_of_a_repeated_prompt():
    q = "Tom has 3 apples in a basket at home and buys 5 more apples at the market. How many now?"
    rows = [
        _row("a", "Answer: 8", 0, question=q),
        _row("b", "Answer: 8", 0, question=q.replace("home", "his house")),  # near, not exact
        _row("b", "Answer: 8", 1, question=q.replace("home", "his house")),
        _row("c", "Answer: 8", 0, question=q.upper()),  # exact after normalization
        _row("d", "Answer: 2", 0, question="What is 5 - 3?"),
    ]
    near = steps.apply([steps.PromptDedup(0.7)], steps.Batch(rows))
    assert near.reject == [
        None,
        "near_duplicate_prompt",
        "near_duplicate_prompt",
        "near_duplicate_prompt",
        None,
    ]
    exact = steps.apply([steps.PromptDedup(None, exact=True)], steps.Batch(rows))
    assert exact.reject == [None, None, None, "near_duplicate_prompt", None]
    assert steps.apply([steps.PromptDedup(None, exact=False)], steps.Batch(rows)).reject == [None] * 5


def test_best_of_n_keeps_the_top_score_first_on_ties():
    rows = [_row("p", c, k) for k, c in enumerate(["a", "b", "c"])] + [_row("q", "d")]
    scores = {"a": 0.2, "b": 0.9, "c": 0.9, "d": None}
    batch = steps.Batch(rows, verdicts=[Verdict(True, scores[r["completion"]], "") for r in rows])
    steps.apply([steps.Select("best_of_n")], batch)
    assert batch.reject == ["not_selected", None, "not_selected", None]
    with pytest.raises(ValueError, match="best_of_n or first_pass"):
        steps.Select("all")


def test_a_step_without_a_reason_is_named_and_a_short_answer_is_an_error():
    class Drop:
        name = "drop_everything"

        def filter(self, batch, alive):
            return [(False, None) for _ in alive]

    class Short:
        name = "short"

        def filter(self, batch, alive):
            return []

    assert steps.apply([Drop()], steps.Batch([_row("p", "x")])).reject == ["drop_everything"]
    with pytest.raises(RuntimeError, match="short returned 0 results for 1 rows"):
        steps.apply([Short()], steps.Batch([_row("p", "x")]))
