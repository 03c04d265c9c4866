"""The `rephrase` stage: teacher-written wordings of the source questions, kept only when they keep the
numbers, change the text, and (arithmetic) stay in the train split. A rewrite inherits its source's reference."""

from __future__ import annotations

import json

import pyarrow as pa

from pipeline import store
from pipeline.engines import GenResult, Sample
from pipeline.recipe import ModelConfig, RunContext
from pipeline.stages import rephrase
from pipeline.tasks.arithmetic import generate, split_of
from pipeline.tasks.ids import prompt_id
from tests.conftest import run_cli

TEACHER = RunContext(teachers=[ModelConfig(model="smollm2-135m-instruct")])


class ScriptedTeacher:
    """A teacher whose replies are fixed, one per request in order: the checks are under test, not a model."""

    def __init__(self, replies: list[str]):
        self.replies, self.requests = replies, []

    def generate(self, requests, progress=None):
        self.requests += requests
        return [
            GenResult(id=r.id, prompt_tokens=40, samples=[Sample(self.replies[i], "stop", 12)])
            for i, r in enumerate(requests)
        ]


def _source(tmp_path, rows):
    store.save_table(pa.Table.from_pylist(rows), tmp_path / "prompts" / "data")
    return tmp_path / "prompts"


def _train_question(text: str) -> str:
    """`text` with "!" added until its hash puts it in the train split (a valid rewrite)."""
    while split_of(text) != "train":
        text += "!"
    return text


def test_rewrites_keep_the_numbers_and_the_reference_and_refused_ones_say_why(tmp_path):
    src = {
        "id": "a1",
        "task": "arithmetic",
        "messages": [{"role": "user", "content": "What is 7 - 3?"}],
        "prompt": "What is 7 - 3?",
        "reference": "4",
        "meta": json.dumps({"expression": "7 - 3", "split": "train", "phrasing": "train"}),
    }
    story = _train_question("A pond has 7 frogs. 3 frogs hop away. How many frogs are left")
    test_split = next(q for k in range(1, 99) if split_of(q := "What is 7 take away 3" + "?" * k) != "train")
    replies = [
        f'Rewrite: "{story}"',  # kept, label and quotes stripped
        "Sam has 7 apples and eats 3, so 4 are left.",  # gives the answer away: numbers_changed
        "What is 7 - 3?",  # copies_source
        test_split,  # hashes into validation/test: eval_split
        "",  # no_rewrite
        story,  # duplicate_prompt
    ]
    teacher = ScriptedTeacher(replies)
    config = rephrase.Config(per_prompt=6)
    manifest = rephrase.run(
        config, _source(tmp_path, [src]), tmp_path / "out", context=TEACHER, engine=teacher
    )

    styles = [r.messages[-1]["content"].split(":")[0] for r in teacher.requests]
    assert styles == [*config.styles, *config.styles]  # one style per rewrite, cycled
    assert teacher.requests[0].messages[0]["role"] == "system" and len(teacher.requests[0].messages) > 3
    rows = store.load_table(tmp_path / "out" / "data").to_pylist()
    assert [r["prompt"] for r in rows] == ["What is 7 - 3?", story]
    new = rows[1]
    assert new["reference"] == "4" and new["id"] == prompt_id("arithmetic", story)
    assert new["messages"] == [{"role": "user", "content": story}]
    meta = json.loads(new["meta"])
    assert meta["rephrased_from"] == "a1" and meta["style"] == config.styles[0]
    assert meta["phrasing"] == "rephrased" and meta["expression"] == "7 - 3"
    rejected = store.load_table(tmp_path / "out" / "rejected").to_pylist()
    reasons = [r["reject_reason"] for r in rejected]
    assert reasons == ["numbers_changed", "copies_source", "eval_split", "no_rewrite", "duplicate_prompt"]
    assert manifest["rejected_by_reason"]["numbers_changed"] == 1
    assert manifest["stats"]["rewrites"] == 1 and manifest["tokens"]["completion"] == 6 * 12
    assert manifest["rows_in"] == 1 and manifest["rows_out"] == 2

    again = rephrase.run(config, tmp_path / "prompts", tmp_path / "out", context=TEACHER, engine=teacher)
    assert (
        again["finished_at"] == manifest["finished_at"] and len(teacher.requests) == 6
    )  # resumed, not rerun


def test_rephrase_with_the_real_teacher_keeps_only_checked_rewrites(tmp_path, vllm_engine):
    sources = generate(6, "train", seed=3)
    config = rephrase.Config(per_prompt=2, max_tokens=48)
    manifest = rephrase.run(
        config, _source(tmp_path, sources), tmp_path / "out", context=TEACHER, engine=vllm_engine
    )
    rows = store.load_table(tmp_path / "out" / "data").to_pylist()
    by_id = {s["id"]: s for s in sources}
    assert [r["id"] for r in rows[: len(sources)]] == list(by_id)  # the sources first, unchanged
    rejected = (
        store.load_table(tmp_path / "out" / "rejected").to_pylist() if manifest["rejected_by_reason"] else []
    )
    assert len(rows) - len(sources) + len(rejected) == 12  # every reply is a row or a reason
    assert {r["reject_reason"] for r in rejected} <= set(rephrase.REASONS)
    for row in rows[len(sources) :]:
        source = by_id[json.loads(row["meta"])["rephrased_from"]]
        assert rephrase.numbers(row["prompt"]) == rephrase.numbers(source["prompt"])
        assert row["reference"] == source["reference"] and split_of(row["prompt"]) == "train"
        assert row["prompt"] != source["prompt"]
    assert manifest["tokens"]["completion"] > 0 and manifest["stats"]["teacher_replies"] == 12


def test_rephrase_without_a_teacher_is_a_one_line_error(tmp_path):
    _source(tmp_path, generate(2, "train"))
    r = run_cli("rephrase", "--input", str(tmp_path / "prompts"), "--output", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--teacher" in r.stderr
