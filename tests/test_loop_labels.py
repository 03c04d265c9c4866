"""The PGKD loop beyond arithmetic: the teacher writes new problems with a checkable answer
(`method: teacher`), and the loop runs on user data (a labelled JSONL with its own validation file)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline import store
from pipeline.engines import GenResult, Sample
from pipeline.recipe import ModelConfig, RunContext
from pipeline.stages import regenerate
from pipeline.stages.regenerate import TEACHER_REASONS, parse_reply
from pipeline.verifiers.label import LabelVerifier
from tests.conftest import run_cli

LABELS = ["positive", "negative"]
QUESTION = "Is this review positive or negative?"
TRAIN = [
    ("The pasta was cold and the waiter was rude.", "negative"),
    ("I loved every minute of this film.", "positive"),
    ("The battery died after two days.", "negative"),
    ("Friendly staff and a spotless room.", "positive"),
    ("The plot made no sense and the acting was wooden.", "negative"),
    ("Best coffee I have had in years.", "positive"),
    ("The package arrived broken and late.", "negative"),
    ("A warm, funny and moving story.", "positive"),
    ("Support never answered my emails.", "negative"),
    ("The shoes fit perfectly and look great.", "positive"),
    ("Too loud, too crowded, too expensive.", "negative"),
    ("My kids begged to come back the next day.", "positive"),
]
VALIDATION = [
    ("The soup was bland and the bread was stale.", "negative"),
    ("What a delightful little hotel.", "positive"),
    ("The app crashes every time I open it.", "negative"),
    ("Great value and fast delivery.", "positive"),
]


def _write_jsonl(path, pairs):
    path.write_text(
        "".join(json.dumps({"text": f"Review: {t}\n{QUESTION}", "label": y}) + "\n" for t, y in pairs)
    )


@pytest.mark.parametrize(
    ("reply", "problem", "answer"),
    [
        ("Problem: Review: Awful food.\nAnswer: negative", "Review: Awful food.", "negative"),
        ("**Problem:** What is 12 + 30?\n**Answer:** 42", "What is 12 + 30?", "42"),
        ("Problem: What is 2 + 3? Answer: 5", "What is 2 + 3?", "5"),  # one line
        ('Sure!\nNew problem: "What is 7 + 6?"\n\nAnswer: 13', "What is 7 + 6?", "13"),
        ("Here is one:\n\nWhat is 9 * 3?\nAnswer: 27", "What is 9 * 3?", "27"),  # no marker, a preamble
        (
            "Problem 1: Review: I hated it.\nIs this review positive or negative?\n\n"
            "The correct answer is: Negative.",
            "Review: I hated it.\nIs this review positive or negative?",
            "Negative.",
        ),
        (
            "Problem: A train leaves at 3 pm.\nSolution: it is 3 + 2 = 5.\nAnswer: 5",
            "A train leaves at 3 pm.",
            "5",
        ),
        (
            "Problem: Tom has 4 pears and eats 1. How many are left?",
            "Tom has 4 pears and eats 1. How many are left?",
            None,
        ),
        ("Problem: What is 10 - 4?\nAnswer:\n\n6", "What is 10 - 4?", "6"),
        ("Problem: What is 10 - 4?\nAnswer:", "What is 10 - 4?", None),
        (
            "The correct answer is: positive",
            "The correct answer is: positive",
            None,
        ),  # an echo, no problem+answer
        ("Problem: ok\nAnswer: 3", None, "3"),  # too short to be a problem
        ("Answer: positive", None, "positive"),
        ("", None, None),
        (None, None, None),
    ],
)
def test_parse_reply(reply, problem, answer):
    assert parse_reply(reply) == (problem, answer)


class ScriptedTeacher:
    """A teacher whose replies are fixed: plumbing only (parsing and row building are under test)."""

    def __init__(self, replies: list[str]):
        self.replies, self.requests = replies, []

    def generate(self, requests):
        self.requests += requests
        return [
            GenResult(id=r.id, prompt_tokens=50, samples=[Sample(t, "stop", 10) for t in self.replies])
            for r in requests
        ]


def test_teacher_regeneration_keeps_labelled_answers_and_rejects_with_reasons(tmp_path):
    hard = [
        {
            "id": f"h{i}",
            "task": "sentiment",
            "messages": [{"role": "user", "content": f"Review: {t}\n{QUESTION}"}],
            "prompt": f"Review: {t}\n{QUESTION}",
            "reference": y,
            "meta": json.dumps({"verifier": "label", "source_file": "x"}),
            "student_pass_rate": 0.0,
            "student_completion": "I think it is neutral.",
        }
        for i, (t, y) in enumerate(TRAIN[:2])
    ]
    store.save_table(pa.Table.from_pylist(hard), tmp_path / "mine" / "data")
    teacher = ScriptedTeacher(
        [
            f"Problem: Review: The fries were soggy.\n{QUESTION}\nAnswer: **Negative**",
            "Problem: Review: The fries were soggy.\nIs this review positive or negative?\nAnswer: negative",
            "Problem: Review: A gorgeous view.\nIs this review positive or negative?\nAnswer: neutral",
            "Problem: Review: Nice.\nIs this review positive or negative?",
            "Sure, here it is:\nAnswer: positive",
            f"Problem: {hard[0]['prompt']}\nAnswer: negative",
        ]
    )
    context = RunContext(teachers=[ModelConfig(model="smollm2-135m-instruct", engine="hf")])
    config = regenerate.Config(per_prompt=6, method="teacher", labels=["Positive", "Negative"])
    manifest = regenerate.run(config, tmp_path / "mine", tmp_path / "regen", context=context, engine=teacher)
    from pipeline.models import resolve

    assert manifest["models"]["teacher"]["identity"] == resolve("smollm2-135m-instruct").identity, (
        "weights hash"
    )

    shown = teacher.requests[0].messages[0]["content"]  # PGKD: the teacher sees the failure itself
    assert hard[0]["prompt"] in shown and "I think it is neutral." in shown and "Positive, Negative" in shown
    assert teacher.requests[0].n == 6
    rows = store.load_table(tmp_path / "regen" / "data").to_pylist()
    # the same problem written for both hard prompts is one row (the second is a duplicate_prompt)
    assert [(r["prompt"].split("\n")[0], r["reference"]) for r in rows] == [
        ("Review: The fries were soggy.", "Negative")
    ]
    meta = json.loads(rows[0]["meta"])
    assert rows[0]["task"] == "sentiment" and rows[0]["messages"][0]["content"] == rows[0]["prompt"]
    assert meta == {"modelled_on": "h0", "method": "teacher", "verifier": "label"}
    rejected = store.load_table(tmp_path / "regen" / "rejected").to_pylist()
    assert all(r["reply"] for r in rejected)
    assert manifest["rejected_by_reason"] == {
        "duplicate_prompt": 3,  # the second reply for h0, and both for h1
        "unknown_label": 2,
        "no_answer": 2,
        "no_problem": 2,
        "copies_hard_prompt": 2,  # h0's prompt, for h0 and for h1
    }
    assert set(manifest["rejected_by_reason"]) <= {*TEACHER_REASONS, "duplicate_prompt"}
    assert manifest["rows_out"] + sum(manifest["rejected_by_reason"].values()) == 12
    assert manifest["tokens"] == {"prompt": 100, "completion": 120}
    assert manifest["config"]["labels"] == ["Positive", "Negative"]


def _recipe(tmp_path, **loop) -> str:
    train, val = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    _write_jsonl(train, TRAIN)
    _write_jsonl(val, VALIDATION)
    settings = {
        "iterations": 2,
        "patience": 5,
        "validation_n": 4,
        "mine_n": 4,
        "max_steps": 2,
        "per_prompt": 3,
        "max_tokens": 40,
        "hard_samples": 3,
        "stop_at": 1,
        "method": "teacher",
        "generator": "teacher",
        "engine": "hf",  # the student is evaluated with HF generate: no vLLM start-up for four prompts
        "validation_path": str(val),
        **loop,
    }
    recipe = tmp_path / "labels.yaml"
    recipe.write_text(
        f"""
run: labels
teacher: {{model: smollm2-135m-instruct, engine: hf}}
student: {{model: smollm2-135m-instruct}}
source: {{path: {train}, prompt_column: text, reference_column: label, task: sentiment, verifier: label}}
stages:
  - generate: {{n: 2, temperature: 0.8, max_tokens: 40, seed: 0}}
  - verify: {{verifiers: [label], label: {{labels: {json.dumps(LABELS)}}}}}
  - export: {{formats: [sft]}}
loop: {json.dumps({k: v for k, v in settings.items() if v is not None})}
"""
    )
    return str(recipe)


def test_loop_on_user_data_needs_a_validation_file(tmp_path):
    r = run_cli("loop", _recipe(tmp_path, validation_path=None), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "validation_path" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_loop_on_labelled_user_data_with_teacher_written_problems(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli("loop", _recipe(tmp_path), "--run-dir", str(run_dir), timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    loop = run_dir / "loop"
    summary = json.loads((loop / "summary.json").read_text())
    assert [m["iteration"] for m in summary["history"]] == [0, 1]

    # validation comes from its own file; the student is mined on the training rows themselves
    val = store.load_table(loop / "validation" / "data").to_pylist()
    assert sorted(r["prompt"] for r in val) == sorted(f"Review: {t}\n{QUESTION}" for t, _ in VALIDATION)
    pool = store.load_table(loop / "mine-pool" / "data").to_pylist()
    assert [r["prompt"] for r in pool] == [f"Review: {t}\n{QUESTION}" for t, _ in TRAIN[:4]]

    it = loop / "iter_0"
    mined = store.read_manifest(it / "mine")
    hard = {r["id"]: r for r in store.load_table(it / "mine" / "data").to_pylist()}
    regen = store.read_manifest(it / "regenerate")
    assert regen["rows_in"] == mined["rows_out"] == len(hard) > 0
    assert regen["config"]["method"] == "teacher" and regen["config"]["labels"] == LABELS
    # every teacher reply is a new row or a rejected one with its reason and raw text: none is lost
    replies = regen["stats"]["teacher_replies"]
    assert replies == 3 * len(hard) and regen["tokens"]["completion"] > 0
    assert regen["rows_out"] + sum(regen["rejected_by_reason"].values()) == replies
    assert set(regen["rejected_by_reason"]) <= {*TEACHER_REASONS, "duplicate_prompt"}
    if regen["rejected_by_reason"]:
        rejected = store.load_table(it / "regenerate" / "rejected").to_pylist()
        assert all(r["reject_reason"] and r["reply"] is not None for r in rejected)
    new = store.load_table(it / "regenerate" / "data").to_pylist()
    assert len(new) == regen["rows_out"] > 0, regen["rejected_by_reason"]
    for row in new:
        meta = json.loads(row["meta"])
        assert row["reference"] in LABELS and row["task"] == "sentiment"
        assert meta["method"] == "teacher" and meta["modelled_on"] in hard and meta["verifier"] == "label"
        assert row["prompt"] not in {h["prompt"] for h in hard.values()}
    metrics = summary["history"][0]
    assert metrics["new_prompts"] == len(new)

    # the new rows (and the hard prompts themselves: the chosen side of the hard negatives) went through
    # generate -> verify: a fresh sample must agree with the teacher's answer
    gen = store.read_manifest(it / "generate")
    answered = set(hard) | {r["id"] for r in new}
    assert gen["rows_in"] == len(answered)
    assert {r["id"] for r in store.load_table(it / "generate" / "data").to_pylist()} <= answered
    verified = store.read_manifest(it / "verify")
    assert verified["rows_in"] == gen["rows_out"]
    assert verified["rows_out"] + sum(verified["rejected_by_reason"].values()) == verified["rows_in"]
    accepted = store.load_table(it / "verify" / "data").to_pylist()
    for more in ("verify-more",):
        if (it / more / "data").exists():
            accepted += store.load_table(it / more / "data").to_pylist()
    for row in accepted:  # luck decides how many; each one agrees with a valid label
        assert row["passed"] is True and row["reference"] in LABELS
        assert LabelVerifier.answer(row["completion"], LABELS) == row["reference"]
    # generation tokens count the teacher's problem writing too
    base = store.read_manifest(next(run_dir.glob("*-generate")))["tokens"]["completion"]
    assert summary["generation_tokens"] >= base + regen["tokens"]["completion"] + gen["tokens"]["completion"]
    second = json.loads((loop / "iter_1" / "train" / "manifest.json").read_text())
    assert second["config"]["adapter"] == metrics["adapter"]  # round 1 keeps training round 0's student
