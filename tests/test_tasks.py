"""Prompt sources: arithmetic (seeded, exact, disjoint splits), HumanEval, and user data with column mapping."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.stages import prompts
from pipeline.store import load_table
from pipeline.tasks import SourceConfig, load_source, load_task
from pipeline.tasks.arithmetic import _evaluate_left_to_right, _told_as_story


def test_arithmetic_is_seeded_exact_and_splits_are_disjoint():
    a = load_task("arithmetic", "train", n=150, seed=3)
    assert a == load_task("arithmetic", "train", n=150, seed=3)
    assert a != load_task("arithmetic", "train", n=150, seed=4)
    for row in a:
        meta = json.loads(row["meta"])
        expr = meta["expression"]
        assert str(eval(expr)) == row["reference"], (expr, row["reference"])  # noqa: S307 - our own digits
    splits = {
        s: {r["prompt"] for r in load_task("arithmetic", s, n=100)} for s in ("train", "validation", "test")
    }
    assert not splits["train"] & splits["validation"] and not splits["train"] & splits["test"]
    assert not splits["validation"] & splits["test"]
    assert len({r["id"] for r in a}) == 150


def test_arithmetic_difficulty_knobs():
    rows = load_task("arithmetic", "train", n=50, ops=3, digits=2, operators="+-")
    for row in rows:
        meta = json.loads(row["meta"])
        numbers = [
            int(t) for t in meta["expression"].replace("(", " ").replace(")", " ").split() if t.isdigit()
        ]
        assert len(numbers) == 4 and all(10 <= x <= 99 for x in numbers)
        assert "*" not in meta["expression"]
    assert _evaluate_left_to_right([2, 3, 4], ["+", "*"]) == 20
    with pytest.raises(UserError, match="operators"):
        load_task("arithmetic", "train", n=5, operators="/")
    with pytest.raises(UserError, match="lower n"):
        load_task("arithmetic", "test", n=100000)


def _numbers(expression: str) -> list[int]:
    return [int(t) for t in expression.replace("(", " ").replace(")", " ").split() if t.lstrip("-").isdigit()]


@pytest.mark.parametrize("phrasing", ["train", "heldout", "wide"])
def test_two_operation_word_problems_are_told_left_to_right(phrasing):
    """The harder setting: two operations, two-digit operands, one-digit factors. Half the variants are word
    problems (one story per operator pair and wording family), told only when both steps stay non-negative;
    every story names its three numbers, and every reference is the left-to-right value."""
    split = "train" if phrasing == "train" else "test"
    rows = load_task("arithmetic", split, n=400, ops=2, digits=2, mul_digits=1, phrasing=phrasing)
    stories, pairs = 0, set()
    for row in rows:
        meta = json.loads(row["meta"])
        numbers, ops = _numbers(meta["expression"]), [t for t in meta["expression"].split() if t in "+-*"]
        assert row["reference"] == str(_evaluate_left_to_right(numbers, ops))
        for i, op in enumerate(ops):  # a factor after '*' has one digit, every other operand two
            assert (1 <= numbers[i + 1] <= 9) if op == "*" else (10 <= numbers[i + 1] <= 99)
        assert 10 <= numbers[0] <= 99 and meta["mul_digits"] == 1
        expression_form = (
            meta["expression"].replace("*", "×") in row["prompt"] or meta["expression"] in row["prompt"]
        )
        if not expression_form:
            stories += 1
            pairs.add("".join(ops))
            assert all(str(x) in row["prompt"] for x in numbers), row["prompt"]
            first = _evaluate_left_to_right(numbers[:2], ops[:1])
            assert first >= 0 and int(row["reference"]) >= 0, row["prompt"]
    assert not _told_as_story([10, 20, 5], ["-", "+"], 0, phrasing)  # 10 - 20 < 0: no story
    assert _told_as_story([20, 10, 5], ["-", "+"], 1, phrasing) == (phrasing != "wide")
    assert stories >= len(rows) // 5 and pairs == {a + b for a in "+-*" for b in "+-*"}


def test_one_operation_questions_and_fingerprints_are_unchanged_by_the_harder_setting():
    """Adding two-operation stories and `mul_digits` must not move a single one-operation question (the
    quickstart's data and every run's fingerprint stand on them): golden hashes from before the change."""
    import hashlib

    from pipeline.stages.prompts import source_identity, source_templates

    golden = {
        ("train", None, 300): "ac5b7a2295f6c5c0",
        ("test", None, 100): "d168941d17fd833c",
        ("test", "wide", 100): "cae1fed95ec75672",
        ("validation", None, 100): "63059298416f9055",
    }
    for (split, phrasing, n), digest in golden.items():
        rows = load_task("arithmetic", split, n=n, **({"phrasing": phrasing} if phrasing else {}))
        assert hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16] == digest
    source = SourceConfig(task="arithmetic", n=240)
    assert "mul_digits" not in source_identity(source) and "mul_digits" in source_identity(
        SourceConfig(task="arithmetic", n=240, ops=2, digits=2, mul_digits=1)
    )
    assert not any("story2" in t for t in source_templates(source))
    assert any("story2" in t for t in source_templates(SourceConfig(task="arithmetic", ops=2, digits=2)))
    with pytest.raises(UserError, match="mul_digits"):
        load_task("arithmetic", "train", n=5, digits=1, mul_digits=2)


def test_regeneration_of_a_harder_failure_keeps_its_shape():
    """similar() and variants() of a two-operation, one-digit-factor problem keep the factor at one digit."""
    import random

    from pipeline.tasks.arithmetic import similar, variants

    failed = next(
        r for r in load_task("arithmetic", "test", n=50, ops=2, digits=2, mul_digits=1) if "*" in r["prompt"]
    )
    meta = json.loads(failed["meta"])
    for row in similar(meta, 20, random.Random(0)) + variants(meta, 20, random.Random(0)):
        m = json.loads(row["meta"])
        numbers, ops = _numbers(m["expression"]), [t for t in m["expression"].split() if t in "+-*"]
        assert ops == [t for t in meta["expression"].split() if t in "+-*"]
        assert all(1 <= numbers[i + 1] <= 9 for i, op in enumerate(ops) if op == "*")
        assert row["reference"] == str(_evaluate_left_to_right(numbers, ops))


def test_heldout_phrasing_differs_from_training_phrasing():
    train = load_task("arithmetic", "train", n=200)
    test = load_task("arithmetic", "test", n=100)
    train_openers = {r["prompt"].split()[0] for r in train}
    test_openers = {r["prompt"].split()[0] for r in test}
    assert "Find" in test_openers and "Find" not in train_openers


def test_humaneval_ships_164_problems_with_tests():
    rows = load_task("humaneval")
    assert len(rows) == 164 and rows[0]["id"] == "HumanEval/0"
    meta = json.loads(rows[0]["meta"])
    assert meta["entry_point"] == "has_close_elements" and "def check" in meta["test"]
    assert "```python" in rows[0]["messages"][0]["content"]


def _src(path, **kw):
    return SourceConfig(path=str(path), **kw)


def test_user_data_formats_and_column_mapping(tmp_path):
    records = [
        {"q": "What is 2+2?", "a": 4, "topic": "math"},
        {"q": "Capital of France?", "a": "Paris", "topic": "geo"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    pq.write_table(pa.Table.from_pylist([{**r, "a": str(r["a"])} for r in records]), tmp_path / "d.parquet")
    (tmp_path / "d.csv").write_text("q,a,topic\nWhat is 2+2?,4,math\nCapital of France?,Paris,geo\n")
    for name in ("d.jsonl", "d.parquet", "d.csv"):
        rows = load_source(_src(tmp_path / name, prompt_column="q", reference_column="a", task="qa"))
        assert [r["prompt"] for r in rows] == ["What is 2+2?", "Capital of France?"], name
        assert [r["reference"] for r in rows] == ["4", "Paris"], name
        assert json.loads(rows[0]["meta"]) == {"topic": "math"}
        assert rows[0]["task"] == "qa" and len(rows[0]["id"]) == 16
    chats = [
        {"id": "a", "msgs": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    ]
    (tmp_path / "c.jsonl").write_text(json.dumps(chats[0]) + "\n")
    (row,) = load_source(_src(tmp_path / "c.jsonl", messages_column="msgs"))
    assert row["id"] == "a" and row["prompt"] == "hi" and len(row["messages"]) == 2


@pytest.mark.parametrize(
    ("content", "kw", "message"),
    [
        (b"", {}, "is empty"),
        (b'{"prompt": "a"}\n{"prompt": "b"\n', {}, "line 2 is not valid JSON"),
        (b'{"prompt": "caf\xe9"}\n', {}, "line 1 is not UTF-8"),
        (b'{"text": "a"}\n', {}, "no column 'prompt'"),
        (b'{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', {}, "duplicate id '1' \\(rows 1, 2\\)"),
        (b'{"prompt": "  "}\n', {}, "row 1 has an empty prompt"),
        (b'{"prompt": "a"}\n', {"reference_column": "answer"}, "no column 'answer'"),
        (b'{"m": "nope"}\n', {"messages_column": "m"}, "messages column must be a list"),
    ],
)
def test_bad_user_data_names_the_fix(tmp_path, content, kw, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_source(_src(path, **kw))


def test_duplicate_prompts_collapse_and_are_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Hi there", "hi   THERE", "Other"]) + "\n")
    manifest = prompts.run(prompts.Config(), None, tmp_path / "out", context=RunContext(source=_src(path)))
    assert manifest["rows_out"] == 2 and manifest["rejected_by_reason"] == {"duplicate_prompt": 1}
    rejected = load_table(tmp_path / "out" / "rejected")
    assert rejected.column("reject_reason").to_pylist() == ["duplicate_prompt"]
    assert manifest["inputs"][0]["path"] == str(path) and len(manifest["inputs"][0]["fingerprint"]) == 64
