"""The verify stage on real Arrow files: verdicts, rejections with reasons, selection, pass rates, resume, CLI.

.venv/bin/pytest tests/test_verify_stage.py -q     # about 15 s (the code test needs root, else it skips)
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline import store
from pipeline.cli import main
from pipeline.config import from_dict
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.stages import verify

LEAKED = "Compute the following carefully and show every single step of your work please: what is 12 plus 30"


def _gen(rid: str, question: str, reference: str, completions: list[str], teacher: str = "t1") -> list[dict]:
    return [
        {
            "id": rid,
            "task": "arithmetic",
            "messages": [{"role": "user", "content": question}],
            "prompt": None,
            "reference": reference,
            "meta": "{}",
            "sample_index": k,
            "completion": c,
            "finish_reason": "stop",
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "teacher": teacher,
            "seed": 0,
        }
        for k, c in enumerate(completions)
    ]


@pytest.fixture
def generations(tmp_path):
    rows = (
        _gen(
            "p1",
            "What is 3 + 5?",
            "8",
            ["3 + 5 = 8. Answer: 8", "Answer: 9", "3 + 5 = 8. Answer: 8", "no idea"],
        )
        + _gen("p2", "What is 2 * 4?", "8", ["Answer: 6", "Answer: 7"])
        + _gen("p3", LEAKED, "42", ["Answer: 42"])
        # A second teacher, written after the first (generate is teacher-major).
        + _gen("p1", "What is 3 + 5?", "8", ["Eight, so the answer is 8.", "I think 5"], teacher="t2")
    )
    path = tmp_path / "gens"
    store.save_table(pa.Table.from_pylist(rows), path)
    evalset = tmp_path / "eval.jsonl"
    evalset.write_text(json.dumps({"prompt": LEAKED, "reference": "42"}) + "\n")
    return path, evalset


def _config(**overrides) -> verify.VerifyConfig:
    return from_dict(verify.VerifyConfig, overrides, "verify")


def _read(out):
    data = store.load_table(out / "data").to_pylist()
    rejected = store.load_table(out / "rejected").to_pylist()
    return data, rejected, store.read_manifest(out)


def test_verify_math_dedup_decontaminate(generations, tmp_path):
    gens, evalset = generations
    config = _config(verifiers=["math"], decontaminate={"against": [str(evalset)]})
    out = tmp_path / "02-verify"
    manifest = verify.run(config, gens, out, context=RunContext())
    data, rejected, on_disk = _read(out)
    assert manifest == on_disk
    assert manifest["rows_in"] == 9
    assert manifest["rows_out"] == len(data) == 2
    assert manifest["rejected_by_reason"] == {
        "contaminated": 1,
        "exact_duplicate": 1,
        "failed": 4,
        "unparseable": 1,
    }
    assert sorted((r["teacher"], r["sample_index"]) for r in data) == [("t1", 0), ("t2", 0)]
    assert all(r["passed"] is True and r["score"] == 1.0 and r["verifier"] == "math" for r in data)
    by_reason = {(r["id"], r["teacher"], r["sample_index"]): r for r in rejected}
    assert by_reason[("p1", "t1", 3)]["passed"] is None  # "no idea": neither right nor wrong
    assert by_reason[("p1", "t1", 3)]["reject_reason"] == "unparseable"
    assert by_reason[("p3", "t1", 0)]["reject_reason"] == "contaminated"
    # Pass rate of p1: 3 right of 5 decided samples (the unparseable one does not count), per teacher too.
    p1 = next(r for r in data if r["id"] == "p1")
    assert p1["teacher_pass_rate"] == pytest.approx(3 / 5)
    assert json.loads(p1["teacher_pass_rate_by_teacher"]) == {"t1": 2 / 3, "t2": 0.5}
    p2 = [r for r in rejected if r["id"] == "p2"]
    assert all(r["teacher_pass_rate"] == 0.0 and r["reject_reason"] == "failed" for r in p2)
    # The data/ folder loads with datasets too.
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "data"))) == 2
    # Same config again: skipped (same manifest); a different one refuses and names the field.
    assert verify.run(config, gens, out, context=RunContext())["finished_at"] == manifest["finished_at"]
    with pytest.raises(UserError, match="config.select"):
        verify.run(_config(verifiers=["math"], select="first_pass"), gens, out, context=RunContext())


@pytest.mark.parametrize(("select", "kept"), [("first_pass", [("t1", 0)]), ("best_of_n", [("t1", 0)])])
def test_selection(generations, tmp_path, select, kept):
    gens, _ = generations
    out = tmp_path / select
    manifest = verify.run(
        _config(verifiers=["math"], select=select), gens, out, context=RunContext(), num_shards=2
    )
    data, rejected, _ = _read(out)
    assert sorted((r["teacher"], r["sample_index"]) for r in data if r["id"] == "p1") == kept
    assert manifest["rejected_by_reason"]["not_selected"] == 1  # t2's correct answer
    assert manifest["shards"] == 2


class _Judge:
    """A judge that scores by answer length (plumbing for best_of_n by critic score; the parser is real)."""

    def generate(self, requests):
        from pipeline.engines import GenResult, Sample

        out = []
        for r in requests:
            answer = r.messages[0]["content"].split("ANSWER:\n", 1)[1].split("\n\nReply", 1)[0]
            text = (
                f"Rationale: ok.\nScore: {min(10, len(answer) // 3)}/10" if "Eight" not in answer else "dunno"
            )
            out.append(
                GenResult(id=r.id, samples=[Sample(text=text, finish_reason="stop", completion_tokens=5)])
            )
        return out


def test_critic_after_math_best_of_n(tmp_path):
    completions = [
        "Answer: 8",
        "So 3 + 5 = 8. Answer: 8",
        "Three plus five makes 8. Answer: 8",
        "Eight, so 8.",
        "Answer: 9",
    ]
    gens = tmp_path / "g.jsonl"
    gens.write_text("\n".join(json.dumps(r) for r in _gen("p1", "What is 3 + 5?", "8", completions)))
    config = _config(verifiers=["math", "critic"], select="best_of_n", critic={"threshold": 5})
    out = tmp_path / "critic"
    verify.run(config, gens, out, context=RunContext(), engines={"critic": _Judge()})
    data, rejected, manifest = _read(out)
    assert [(r["completion"], r["verifier"], r["score"]) for r in data] == [(completions[2], "critic", 10.0)]
    assert manifest["rejected_by_reason"] == {"failed": 2, "not_selected": 1, "unparseable_judgement": 1}
    reasons = {r["completion"]: r for r in rejected}
    assert reasons["Answer: 8"]["verifier"] == "critic" and reasons["Answer: 8"]["score"] == 3.0
    assert reasons["Answer: 9"]["verifier"] == "math"  # the judge never saw the wrong answer
    eight = reasons["Eight, so 8."]
    assert eight["passed"] is None and eight["reason"] == "unparseable_judgement: dunno"
    assert eight["reject_reason"] == "unparseable_judgement"
    assert "critic.jinja" in manifest["fingerprint_parts"]["templates"]


def test_near_duplicate_prompts(tmp_path):
    q = (
        "Tom has 3 apples in a basket at home. He walks to the market on a sunny morning and buys 5 more "
        "apples from a friendly farmer. How many apples does Tom have now, if none were eaten on the way?"
    )
    rows = _gen("a", q, "8", ["Answer: 8"]) + _gen("b", q.replace("sunny", "rainy"), "8", ["Answer: 8"])
    rows += _gen("c", "What is 3 + 5?", "8", ["Answer: 8"]) + _gen(
        "d", "What is 3 - 5?", "-2", ["Answer: -2"]
    )
    gens = tmp_path / "g.jsonl"
    gens.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "v"
    config = _config(dedup={"over": "both", "minhash_threshold": 0.7})
    manifest = verify.run(config, gens, out, context=RunContext())
    assert manifest["rows_out"] == 3
    assert manifest["rejected_by_reason"] == {"near_duplicate_prompt": 1}


def test_a_right_answer_with_a_wrong_step_is_rejected_unless_steps_are_off(tmp_path):
    rows = _gen(
        "a",
        "What is 44 + 86 - 18?",
        "112",
        [
            "First 44 + 86 = 120. Then 120 - 18 = 112.\nAnswer: 112",
            "First 44 + 86 = 130. Then 130 - 18 = 112.\nAnswer: 112",
        ],
    )
    gens = tmp_path / "g.jsonl"
    gens.write_text("\n".join(json.dumps(r) for r in rows))
    manifest = verify.run(_config(), gens, tmp_path / "v", context=RunContext())
    data, rejected, _ = _read(tmp_path / "v")
    assert [r["sample_index"] for r in data] == [1]
    assert manifest["rejected_by_reason"] == {"wrong_step": 1}
    assert rejected[0]["reason"] == "wrong: step 44 + 86 = 120" and rejected[0]["passed"] is False
    loose = verify.run(_config(math={"check_steps": False}), gens, tmp_path / "v2", context=RunContext())
    assert loose["rows_out"] == 2


def _no_sandbox() -> str | None:
    from pipeline.verifiers.sandbox import check_available

    return check_available()


@pytest.mark.skipif(_no_sandbox() is not None, reason="no code sandbox works here (see check_available)")
def test_code_verifier_in_the_stage(tmp_path):
    from pipeline.verifiers.code import humaneval_rows

    rows = humaneval_rows()[:2]
    gens = [dict(rows[0], sample_index=0), dict(rows[0], sample_index=1, completion="    return True\n")]
    gens += [dict(rows[1], sample_index=0, completion="```python\nimport os\nos._exit(0)\n```")]
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in gens))
    config = _config(verifiers=["code"], decontaminate={"against": []})
    manifest = verify.run(config, path, tmp_path / "v", context=RunContext())
    data, rejected, _ = _read(tmp_path / "v")
    assert [(r["id"], r["sample_index"]) for r in data] == [("HumanEval/0", 0)]
    # Exiting before the tests run games the checker: its own reason, not a plain failure.
    assert manifest["rejected_by_reason"] == {"failed": 1, "reward_hack: exited_early": 1}
    assert sorted(r["reject_reason"] for r in rejected) == ["failed", "reward_hack: exited_early"]
    assert sorted(r["reason"].split(":")[0] for r in rejected) == ["reward_hack", "tests_failed"]
    from pipeline.verifiers.sandbox import default_backend

    assert manifest["code_sandbox"] == {"backend": default_backend()}  # the sandbox that judged, on record


def test_cli(generations, tmp_path, capsys):
    gens, _ = generations
    assert main(["verify", "--input", str(gens), "--output", str(tmp_path / "v"), "--verifiers", "math"]) == 0
    assert "3 of 9 rows accepted" in capsys.readouterr().out  # no decontamination here
    assert main(["verify", "--input", str(gens), "--output", str(tmp_path / "w"), "--verifiers", "nope"]) == 2
    assert "unknown verifier 'nope'" in capsys.readouterr().err
    assert (
        main(["verify", "--input", str(gens), "--output", str(tmp_path / "x"), "--verifiers", "critic"]) == 2
    )
    assert "needs a judge model" in capsys.readouterr().err


def test_decontaminate_against_the_validation_split(tmp_path):
    from pipeline.tasks import SourceConfig, load_source

    source = SourceConfig(task="arithmetic", n=20)
    held_out = load_source(SourceConfig(task="arithmetic", split="validation", n=20))[0]
    train = load_source(source)[0]
    rows = _gen("leak", held_out["prompt"], held_out["reference"], [f"Answer: {held_out['reference']}"])
    rows += _gen(train["id"], train["prompt"], train["reference"], [f"Answer: {train['reference']}"])
    gens = tmp_path / "g.jsonl"
    gens.write_text("\n".join(json.dumps(r) for r in rows))
    # Arithmetic questions are a few words long: they count whole from min_words words.
    config = _config(decontaminate={"against": ["validation"], "min_words": 3, "over": "prompt"})
    manifest = verify.run(config, gens, tmp_path / "v", context=RunContext(source=source))
    assert manifest["rejected_by_reason"] == {"contaminated": 1}
    assert [r["id"] for r in store.load_table(tmp_path / "v" / "data").to_pylist()] == [train["id"]]
    with pytest.raises(UserError, match="needs the run's source"):
        verify.run(config, gens, tmp_path / "w", context=RunContext())


def test_reward_hack_verdicts_get_their_own_reason(generations, tmp_path, monkeypatch):
    """A verdict whose reason starts with `reward_hack: ` is rejected as `reward_hack: <kind>`, counted apart
    from `failed` in the manifest. The verifier is plumbing: it flags one completion, grades the rest by math."""
    from pipeline.verifiers import Verdict
    from pipeline.verifiers.math import MathVerifier

    class HackAware(MathVerifier):
        def check(self, rows):
            verdicts = super().check(rows)
            return [
                Verdict(False, 0.0, "reward_hack: non_plain_return: __eq__ always True")
                if r["completion"] == "Eight, so the answer is 8."
                else v
                for r, v in zip(rows, verdicts, strict=True)
            ]

    monkeypatch.setattr(verify, "build_verifier", lambda name, **options: HackAware())
    gens, _ = generations
    out = tmp_path / "v"
    manifest = verify.run(_config(verifiers=["math"]), gens, out, context=RunContext())
    assert manifest["rejected_by_reason"] == {
        "exact_duplicate": 1,
        "failed": 4,
        "reward_hack: non_plain_return": 1,
        "unparseable": 1,
    }
    data, rejected, _ = _read(out)
    hack = next(r for r in rejected if r["reject_reason"].startswith("reward_hack"))
    assert (hack["teacher"], hack["passed"], hack["reason"]) == (
        "t2",
        False,
        "reward_hack: non_plain_return: __eq__ always True",
    )
    assert manifest["stats"]["verdicts"]["failed"] == 5  # a hack is still a failed verdict
    assert "reward_hack: non_plain_return 1" in verify.summary(manifest)
