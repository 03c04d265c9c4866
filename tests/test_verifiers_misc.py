"""Regex, JSON-schema and label verifiers, the critic's parser on messy judgements, and one real critic run.

.venv/bin/pytest tests/test_verifiers_misc.py -q     # about 30 s (the real critic loads SmolLM2-135M)
"""

from __future__ import annotations

import json

import pytest

from pipeline import templates
from pipeline.errors import UserError
from pipeline.verifiers import Verdict, build_verifier
from pipeline.verifiers.critic import CriticVerifier, parse_judgement


def _passed(verifier, rows: list[dict]) -> list[bool | None]:
    return [v.passed for v in verifier.check(rows)]


def test_regex_fullmatch_and_search():
    v = build_verifier("regex", pattern=r"\d{3}-\d{4}")
    assert _passed(
        v, [{"completion": " 555-1234\n"}, {"completion": "call 555-1234"}, {"completion": "nope"}]
    ) == [
        True,
        False,
        False,
    ]
    s = build_verifier("regex", pattern=r"\d{3}-\d{4}", mode="search")
    assert _passed(s, [{"completion": "call 555-1234"}]) == [True]
    row_pattern = {"completion": "YES", "meta": json.dumps({"pattern": "yes|no"})}
    assert _passed(build_verifier("regex", ignore_case=True), [row_pattern]) == [True]
    bad_row = {"completion": "x", "meta": {"pattern": "("}}
    assert build_verifier("regex").check([bad_row])[0].reason.startswith("bad_pattern")
    with pytest.raises(UserError, match="invalid"):
        build_verifier("regex", pattern="(")


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def test_json_schema_table():
    v = build_verifier("json_schema", schema=SCHEMA)
    rows = [
        '{"name": "Ada", "age": 36}',
        'Here you go:\n```json\n{"name": "Ada", "age": 36}\n```',
        'Sure! {"name": "Ada", "age": 36} Hope that helps.',
        '{"name": "Ada", "age": -1}',
        '{"name": "Ada"}',
        '{"name": "Ada", "age": 36',
        "no json here",
        "",
    ]
    verdicts = v.check([{"completion": c} for c in rows])
    assert [x.passed for x in verdicts] == [True, True, True, False, False, False, False, False]
    assert verdicts[3].reason.startswith("schema_mismatch: age")
    assert verdicts[5].reason == "invalid_json"
    with pytest.raises(UserError, match="schema"):
        build_verifier("json_schema", schema={"type": "no-such-type"})


def test_label_table():
    v = build_verifier("label", labels=["positive", "negative"])
    table = [
        ("Positive", "positive", True),
        ("positive.", "positive", True),
        ("**Negative**", "positive", False),
        ("The sentiment of this review is positive.", "positive", True),
        ("Answer: NEGATIVE", "negative", True),
        ("It is positive or maybe negative", "positive", None),  # ambiguous
        ("I am not sure.", "positive", None),
        ("", "positive", None),
    ]
    verdicts = v.check([{"completion": c, "reference": r} for c, r, _ in table])
    assert [x.passed for x in verdicts] == [want for *_, want in table]
    assert verdicts[5].reason == "ambiguous"
    assert verdicts[6].reason == "unparseable"
    free = build_verifier("label")  # no label set: the whole answer, or its "Answer:" line
    assert _passed(free, [{"completion": "Paris!", "reference": "paris"}]) == [True]
    assert _passed(free, [{"completion": "Let me think.\nAnswer: Lyon", "reference": "Paris"}]) == [False]
    assert _passed(free, [{"completion": "x", "reference": None}]) == [None]


JUDGEMENTS = [
    ("Rationale: The answer is correct and clear.\nScore: 9/10", 9.0, "The answer is correct and clear."),
    ("Rationale: wrong sum.\nScore: 2/10", 2.0, "wrong sum."),
    ("**Rationale:** fine\n**Score:** 7", 7.0, "fine"),
    ('{"score": 8, "rationale": "good"}', 8.0, "good"),
    ('```json\n{"rationale": "meh", "score": 5}\n```', 5.0, "meh"),
    ("I'd give this a 6/10 because it skips a step.", 6.0, None),
    ("Rating: 4 out of 10. Explanation: misses the point.", 4.0, None),
    ("The rubric says 1 = useless, 10 = perfect. Score: 8/10", 8.0, None),
    ("Score: 7.5/10", 7.5, None),
    ("Score: 11/10", None, None),  # out of range
    ("Score: 0", None, None),
    ('{"score": "high"}', None, None),
    ("This answer is great!", None, None),
    ("", None, None),
]


@pytest.mark.parametrize(("raw", "score", "rationale"), JUDGEMENTS)
def test_critic_parser_table(raw, score, rationale):
    got_score, got_rationale = parse_judgement(raw)
    assert got_score == score
    if rationale is not None:
        assert got_rationale == rationale


def test_critic_threshold_and_unparseable_keep_raw_text():
    critic = CriticVerifier(threshold=7)
    assert critic.verdict("Rationale: ok\nScore: 7/10") == Verdict(True, 7.0, "7/10 (threshold 7): ok")
    assert critic.verdict("Rationale: no\nScore: 6/10").passed is False
    v = critic.verdict("I refuse to grade this.")
    assert v.passed is None and v.score is None
    assert v.reason == "unparseable_judgement: I refuse to grade this."


def test_critic_rubric_renders_pinned():
    text = templates.render("critic.jinja", question="What is 2 + 2?", answer="4", reference="4")
    assert "QUESTION:\nWhat is 2 + 2?" in text
    assert "REFERENCE (a correct answer):\n4" in text
    assert "ANSWER:\n4" in text
    assert text.endswith("Rationale: <one or two sentences>\nScore: <an integer from 1 to 10>/10")
    no_ref = templates.render("critic.jinja", question="q", answer="a", reference=None)
    assert "REFERENCE" not in no_ref


class _FailingEngine:
    """An engine whose server rejects every request (plumbing only: the critic must not crash)."""

    def generate(self, requests):
        from pipeline.engines import GenResult

        return [GenResult(id=r.id, error="prompt too long") for r in requests]


def test_critic_engine_errors_do_not_crash():
    (v,) = CriticVerifier(engine=_FailingEngine()).check([{"prompt": "q", "completion": "a"}])
    assert v == Verdict(None, None, "critic_error: prompt too long")


def test_build_verifier_errors():
    with pytest.raises(UserError, match="unknown verifier 'nope'"):
        build_verifier("nope")
    with pytest.raises(UserError, match="check its options"):
        build_verifier("math", no_such_option=1)


@pytest.mark.slow
def test_critic_with_a_real_model():
    """SmolLM2-135M as the judge: every row gets a verdict (parsed or recorded as unparseable), no crash."""
    from pipeline.engines.hf import HFEngine
    from pipeline.models import resolve

    engine = HFEngine(resolve("smollm2-135m-instruct"), batch_size=4)
    critic = CriticVerifier(engine=engine, threshold=7, max_tokens=32)
    rows = [
        {
            "messages": [{"role": "user", "content": "What is 3 + 5?"}],
            "completion": "3 + 5 = 8",
            "reference": "8",
        },
        {
            "messages": [{"role": "user", "content": "What is 3 + 5?"}],
            "completion": "It is 9.",
            "reference": "8",
        },
        {"prompt": "Name the capital of France.", "completion": "Paris.", "reference": None},
    ]
    verdicts = critic.check(rows)
    assert len(verdicts) == 3
    for v in verdicts:
        assert v.passed in (True, False, None)
        if v.passed is None:
            assert v.reason.startswith("unparseable_judgement: ") and len(v.reason) > len(
                "unparseable_judgement: "
            )
        else:
            assert 1 <= v.score <= 10
