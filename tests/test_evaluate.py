"""Student evaluation: pass@1 / pass@k over a task split, with the task's verifier."""

import pytest

from pipeline.engines import GenResult, Sample
from pipeline.errors import UserError
from pipeline.evaluate import evaluate, last_number_check, pass_at_k

ROWS = [
    {"id": "p1", "messages": [{"role": "user", "content": "What is 3 + 5?"}], "reference": "8"},
    {"id": "p2", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "reference": "4"},
    {"id": "p3", "messages": [{"role": "user", "content": "What is 6 + 1?"}], "reference": "-12345"},
]


class ScriptedEngine:
    """Plumbing only: returns fixed answers, so the pass@k bookkeeping can be checked exactly."""

    name = "scripted"

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers

    def generate(self, requests):
        return [
            GenResult(
                id=r.id,
                prompt_tokens=5,
                samples=[
                    Sample(text=t, finish_reason="stop", completion_tokens=2)
                    for t in self.answers[r.id][: r.n]
                ],
            )
            for r in requests
        ]


def test_pass_at_k_estimator():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)


def test_last_number_fallback():
    rows = [
        {"completion": "so the answer is 8.", "reference": "8"},
        {"completion": "8 apples, minus 1 is 7", "reference": "8"},
        {"completion": "no idea", "reference": "8"},
        {"completion": "1,200", "reference": "1200"},
    ]
    assert last_number_check(rows) == [True, False, None, True]


def test_check_uses_the_verifier_each_task_names():
    from pipeline.evaluate import check
    from pipeline.tasks import load_task

    capitals = load_task("capitals", "test", n=2)
    answers = [f"The capital is {capitals[0]['reference']}.", "I think it is Atlantis."]
    rows = [{**r, "completion": a} for r, a in zip(capitals, answers, strict=True)]
    assert check("capitals", rows) == [True, None], "label verifier: the right capital, then no capital named"
    user = [
        {"completion": "Label: Positive", "reference": "positive", "meta": '{"verifier": "label"}'},
        {"completion": "Answer: 12", "reference": "12", "meta": "{}"},
    ]
    assert check("custom", user[:1]) == [True], "user data: the source's verifier, carried in meta"
    assert check("custom", user[1:], verifier="math") == [True]
    with pytest.raises(UserError, match="names no verifier"):
        check("custom", user[1:])  # no silent fallback to the math verifier


def test_pass_at_1_and_pass_at_k_bookkeeping():
    engine = ScriptedEngine(
        {"p1": ["8", "9", "The answer is 8.", "7"], "p2": ["5", "5", "5", "5"], "p3": ["7", "7", "x", "7"]}
    )
    result = evaluate("scripted", rows=ROWS, n=4, engine_obj=engine)
    assert result["problems"] == 3 and result["samples_per_problem"] == 4
    assert result["pass@1"] == pytest.approx(round((2 / 4 + 0 + 0) / 3, 4))
    assert result["pass@4"] == pytest.approx(round(1 / 3, 4))
    assert len(result["rows"]) == 12 and result["rows"][0]["passed"] is True
    greedy = evaluate("scripted", rows=ROWS, engine_obj=engine)
    assert greedy["pass@1"] == pytest.approx(round(1 / 3, 4)) and "pass@4" not in greedy
    assert greedy["temperature"] == 0.0


def _agrees_with_the_math_verifier(result: dict) -> None:
    """pass@1 (greedy, one sample) is exactly the share of answers the math verifier, run here on its own,
    accepts: every row's verdict and the score follow from the model's real answers, not from a range."""
    from pipeline.verifiers import build_verifier

    rows = result["rows"]
    assert [r["passed"] for r in rows] == [v.passed for v in build_verifier("math").check(rows)]
    assert result["pass@1"] == round(sum(r["passed"] is True for r in rows) / len(rows), 4)
    assert result["undecided"] == sum(r["passed"] is None for r in rows)


def test_bad_requests_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="temperature"):
        evaluate("scripted", rows=ROWS, n=2, temperature=0.0, engine_obj=ScriptedEngine({}))
    with pytest.raises(UserError, match="adapter_config.json"):
        evaluate("smollm2-135m-instruct", adapter=str(tmp_path), rows=ROWS)


@pytest.mark.slow
def test_real_model_on_hf(model_path):
    result = evaluate(model_path, rows=ROWS, engine="hf", max_tokens=16)
    again = evaluate(model_path, rows=ROWS, engine="hf", max_tokens=16)
    assert result["engine"] == "hf" and result["errors"] == 0
    assert result["completion_tokens"] > 0
    assert [r["id"] for r in result["rows"]] == ["p1", "p2", "p3"]
    assert result["rows"][2]["passed"] is not True  # the reference is impossible
    assert [r["completion"] for r in result["rows"]] == [r["completion"] for r in again["rows"]], "greedy"
    _agrees_with_the_math_verifier(result)


@pytest.mark.slow
def test_task_split_through_the_session_vllm_engine(vllm_engine):
    result = evaluate(
        "smollm2-135m-instruct",
        task="arithmetic",
        split="test",
        limit=8,
        engine_obj=vllm_engine,
        max_tokens=48,
    )
    # arithmetic's test split is scored on both held-out wording families, `limit` problems each
    assert result["problems"] == 16 and result["engine"] == "vllm" and result["errors"] == 0
    assert {f: v["problems"] for f, v in result["by_phrasing"].items()} == {"heldout": 8, "wide": 8}
    assert all(r["completion"] for r in result["rows"]), "every problem got a real answer"
    _agrees_with_the_math_verifier(result)
