"""Depth pruning and self-data distillation on the real embedded model (hf engine)."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from pipeline import store
from pipeline.errors import UserError
from pipeline.prune import prune
from pipeline.recipe import RunContext, StudentConfig
from pipeline.stages import self_distill


def test_prune_drops_the_least_changing_block_and_still_generates(embedded, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = prune(embedded.spec, 2, tmp_path / "pruned", prompts=["What is 2 + 3?", "Calculate 4 * 5."])
    assert info["layers"] == 28 and len(info["dropped"]) == 2 and info["dropped"][1] == info["dropped"][0] + 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    tok = AutoTokenizer.from_pretrained(tmp_path / "pruned")
    assert model.config.num_hidden_layers == 28 and len(model.model.layers) == 28
    ids = tok("Hello", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    assert json.loads((tmp_path / "pruned" / "pruning.json").read_text())["dropped"] == info["dropped"]
    # kl (the default): every block is scored by how far dropping it moves the model's own answers.
    scores = info["scores"]
    assert info["chosen_by"] == "kl" and len(scores) == 29 and info["score"] == min(scores)
    assert scores[0] > 5 * info["score"], "dropping the first layers breaks the model: a far larger KL"
    assert tok.padding_side == AutoTokenizer.from_pretrained(embedded.path).padding_side, "saved unpadded"
    angular = prune(embedded.spec, 2, tmp_path / "angular", prompts=["What is 2 + 3?"], by="angular")
    assert angular["chosen_by"] == "angular" and angular["score"] == min(angular["scores"])
    with pytest.raises(UserError, match="--layers must be between"):
        prune(embedded.spec, 30, tmp_path / "x")
    with pytest.raises(UserError, match="--by must be one of kl, angular"):
        prune(embedded.spec, 2, tmp_path / "x", by="random")


def test_self_distill_rewrites_and_keeps_originals_that_fail(embedded, tmp_path):
    from pipeline.engines.hf import HFEngine

    rows = [
        {
            "id": f"r{i}",
            "task": "arithmetic",
            "messages": [{"role": "user", "content": q}],
            "prompt": q,
            "reference": ref,
            "completion": ans,
            "passed": ok,
        }
        for i, (q, ref, ans, ok) in enumerate(
            [
                ("What is 2 + 3?", "5", "2 + 3 = 5. Answer: 5", True),
                ("What is 4 * 2?", "8", "4 * 2 = 8. Answer: 8", True),
                ("What is 9 - 7?", "2", "9 - 7 = 3. Answer: 3", False),
            ]
        )
    ]
    store.save_table(pa.Table.from_pylist(rows), tmp_path / "in" / "data")
    engine = HFEngine(embedded, batch_size=4)
    cfg = self_distill.Config(engine="hf", max_tokens=48)
    ctx = RunContext(student=StudentConfig(model=embedded.spec))
    manifest = self_distill.run(cfg, tmp_path / "in", tmp_path / "out", context=ctx, engine=engine)
    out = store.load_table(tmp_path / "out" / "data").to_pylist()
    assert [r["id"] for r in out] == ["r0", "r1"], "only verified answers are rewritten"
    rejected = store.load_table(tmp_path / "out" / "rejected").to_pylist()
    assert [(r["id"], r["reject_reason"]) for r in rejected] == [("r2", "verify_failed")], "nothing vanishes"
    assert manifest["rows_in"] == 3 and manifest["rejected_by_reason"] == {"verify_failed": 1}
    # Whatever the model wrote, each row's outcome must follow from its rewrite: re-derive it here.
    from pipeline.verifiers.math import MathVerifier

    for r, original in zip(out, rows, strict=False):
        assert r["original_completion"] == original["completion"] and r["rewrite"] is not None
        check, rewrite = r["self_distill_check"], r["rewrite"]
        if check in ("passed", "failed", "undecided"):
            verdict = MathVerifier().check_one(rewrite, r["reference"], "stop").passed
            assert check == {True: "passed", False: "failed", None: "undecided"}[verdict]
            assert r["self_distill_verifier"] == "math"  # the verifier arithmetic names
        elif check == "shortened":
            assert 0 < len(rewrite) < cfg.min_length_ratio * len(original["completion"])
        else:
            assert (check, bool(rewrite)) in (("empty", False), ("truncated", True))
        assert r["self_distilled"] == (check == "passed")
        assert r["completion"] == (rewrite if check == "passed" else r["original_completion"])
    stats = manifest["stats"]
    assert stats["self_distilled"] == sum(r["self_distilled"] for r in out)
    assert stats["checks"] == dict(Counter(r["self_distill_check"] for r in out))
    assert manifest["models"]["original"]["sha256"] == embedded.identity["sha256"]


class ScriptedRewriter:
    """Plumbing only: answers each rewrite request with a fixed text, so the checks can be pinned."""

    name = "scripted"

    def __init__(self, replies: dict[str, tuple[str, str]]):
        self.replies = replies  # question -> (text, finish_reason)

    def generate(self, requests):
        from pipeline.engines import GenResult, Sample

        out = []
        for r in requests:
            question = next(q for q in self.replies if f"Question: {q}" in r.messages[0]["content"])
            text, finish = self.replies[question]
            out.append(GenResult(id=r.id, prompt_tokens=20, samples=[Sample(text, finish, 99)]))
        return out


def _verified_row(i: int, task: str, question: str, reference, completion: str, meta: str = "{}") -> dict:
    return {
        "id": f"r{i}",
        "task": task,
        "messages": [{"role": "user", "content": question}],
        "prompt": question,
        "reference": reference,
        "meta": meta,
        "completion": completion,
        "finish_reason": "stop",
        "completion_tokens": 7,
        "topk_ids": [[1, 2]] * 7,
        "topk_logprobs": [[-0.1, -2.0]] * 7,
        "passed": True,
        "verifier": "label",
    }


def test_self_distill_checks_each_task_with_its_own_verifier_and_refreshes_columns(tmp_path):
    from pipeline.stages import export
    from pipeline.tasks import load_task

    capitals = {json.loads(r["meta"])["country"]: r for r in load_task("capitals", "test")}
    labels = json.loads(next(iter(capitals.values()))["meta"])["labels"]
    meta = json.dumps({"labels": labels})
    q_fr, q_jp, q_de = (
        "What is the capital of France?",
        "What is the capital of Japan?",
        "Capital of Germany?",
    )
    q_free = "Write a haiku about rain."
    rows = [
        _verified_row(0, "capitals", q_fr, "Paris", "Paris.", meta),
        _verified_row(1, "capitals", q_jp, "Tokyo", "Tokyo.", meta),
        _verified_row(2, "capitals", q_de, "Berlin", "Berlin.", meta),
        _verified_row(3, "custom", q_free, None, "Rain taps the window."),
    ]
    rows[3]["verifier"] = "critic"  # accepted by a judge, but no judge is configured for this stage
    replies = {
        q_fr: (
            "Sure! Here is the rewritten answer:\n\nThe capital of France is Paris.\n\nI hope this helps!",
            "stop",
        ),
        q_jp: ("The capital of Japan is Seoul.", "stop"),
        q_de: ("The capital of Germany is Berlin, a city that", "length"),
        q_free: ("Soft rain on the roof.", "stop"),
    }
    store.save_table(pa.Table.from_pylist(rows), tmp_path / "in" / "data")
    ctx = RunContext(student=StudentConfig(model="smollm2-135m-instruct"))
    cfg = self_distill.Config(engine="hf")
    manifest = self_distill.run(
        cfg, tmp_path / "in", tmp_path / "out", context=ctx, engine=ScriptedRewriter(replies)
    )
    out = {r["id"]: r for r in store.load_table(tmp_path / "out" / "data").to_pylist()}
    assert {k: (r["self_distill_check"], r["self_distill_verifier"]) for k, r in out.items()} == {
        "r0": ("passed", "label"),  # the math verifier would find no number here: label is the task's own
        "r1": ("failed", "label"),
        "r2": ("truncated", None),
        "r3": ("unchecked", None),
    }
    assert manifest["stats"]["checks"] == {"passed": 1, "failed": 1, "truncated": 1, "unchecked": 1}
    used = out["r0"]
    assert used["self_distilled"] and used["completion"] == "The capital of France is Paris."
    assert used["finish_reason"] == "stop" and used["topk_ids"] is None and used["topk_logprobs"] is None
    assert 5 <= used["completion_tokens"] <= 12, "counted on the cleaned rewrite, not copied from the row"
    for rid in ("r1", "r2", "r3"):  # the verified original stays, with its own columns
        r = out[rid]
        assert not r["self_distilled"] and r["completion"] == r["original_completion"]
        assert r["finish_reason"] == "stop" and r["topk_ids"] == [[1, 2]] * 7

    exported = export.run(export.Config(formats=["sft", "kd"]), tmp_path / "out", tmp_path / "export")
    sft = store.load_table(tmp_path / "export" / "data" / "sft").to_pylist()
    texts = {r["messages"][-1]["content"] for r in sft}
    assert texts == {"The capital of France is Paris.", "Tokyo.", "Berlin.", "Rain taps the window."}
    kd = store.load_table(tmp_path / "export" / "data" / "kd").to_pylist()
    assert {r["id"] for r in kd} == {"r1", "r2", "r3"}, "no teacher logprobs paired with a rewritten text"
    assert exported["skipped"]["no_topk"] == 1

    keep = self_distill.Config(engine="hf", keep_unchecked=True)
    self_distill.run(keep, tmp_path / "in", tmp_path / "keep", context=ctx, engine=ScriptedRewriter(replies))
    kept = {r["id"]: r for r in store.load_table(tmp_path / "keep" / "data").to_pylist()}
    assert kept["r3"]["self_distilled"] and kept["r3"]["completion"] == "Soft rain on the roof."
    assert not kept["r2"]["self_distilled"], "a truncated rewrite is never used"


def test_truncated_rewrite_is_not_exported_even_when_it_passes(tmp_path):
    """A rewrite cut off by max_tokens may still contain the right answer; it must not become training data."""
    from pipeline.stages import export

    q = "What is 2 + 3?"
    row = {**_verified_row(0, "arithmetic", q, "5", "2 + 3 = 5. Answer: 5"), "verifier": "math"}
    store.save_table(pa.Table.from_pylist([row]), tmp_path / "in" / "data")
    cut = "Answer: 5. To see why, add 2 and 3, which"
    engine = ScriptedRewriter({q: (cut, "length")})
    ctx = RunContext(student=StudentConfig(model="smollm2-135m-instruct"))
    self_distill.run(
        self_distill.Config(engine="hf"), tmp_path / "in", tmp_path / "out", context=ctx, engine=engine
    )
    export.run(export.Config(formats=["sft"]), tmp_path / "out", tmp_path / "export")
    sft = store.load_table(tmp_path / "export" / "data" / "sft").to_pylist()
    assert [r["messages"][-1]["content"] for r in sft] == ["2 + 3 = 5. Answer: 5"]


def test_rewrite_that_drops_the_working_keeps_the_original(tmp_path):
    """A correct bare answer ("The answer is 12.") for a worked solution teaches guessing: the original stays."""
    q1, q2 = "What is 7 + 5?", "What is 9 - 4?"
    worked1 = "We add 7 and 5. 7 + 5 = 12, since 7 + 3 = 10 and 2 more is 12. Answer: 12"
    worked2 = "Take 4 away from 9: 9 - 4 = 5. Answer: 5"
    rows = [
        {**_verified_row(0, "arithmetic", q1, "12", worked1), "verifier": "math"},
        {**_verified_row(1, "arithmetic", q2, "5", worked2), "verifier": "math"},
    ]
    store.save_table(pa.Table.from_pylist(rows), tmp_path / "in" / "data")
    replies = {q1: ("The answer is 12.", "stop"), q2: ("Nine minus four: 9 - 4 = 5. Answer: 5", "stop")}
    ctx = RunContext(student=StudentConfig(model="smollm2-135m-instruct"))
    manifest = self_distill.run(
        self_distill.Config(engine="hf"),
        tmp_path / "in",
        tmp_path / "out",
        context=ctx,
        engine=ScriptedRewriter(replies),
    )
    out = {r["id"]: r for r in store.load_table(tmp_path / "out" / "data").to_pylist()}
    assert out["r0"]["self_distill_check"] == "shortened" and out["r0"]["completion"] == worked1
    assert out["r1"]["self_distill_check"] == "passed" and out["r1"]["completion"].startswith("Nine minus")
    assert manifest["stats"]["checks"] == {"shortened": 1, "passed": 1}

    off = self_distill.Config(engine="hf", min_length_ratio=0.0)
    self_distill.run(off, tmp_path / "in", tmp_path / "off", context=ctx, engine=ScriptedRewriter(replies))
    kept = {r["id"]: r for r in store.load_table(tmp_path / "off" / "data").to_pylist()}
    assert kept["r0"]["self_distilled"] and kept["r0"]["completion"] == "The answer is 12."


def test_min_length_ratio_out_of_range_is_a_one_line_error():
    from pipeline.config import from_dict

    with pytest.raises(UserError, match="min_length_ratio must be between 0 and 1"):
        from_dict(self_distill.Config, {"min_length_ratio": 2}, "self-distill")


MESSY = [
    # (raw model output, cleaned rewrite)
    ("Sure! Here is the rewritten answer:\n\n2 + 3 = 5. Answer: 5", "2 + 3 = 5. Answer: 5"),
    ("Here's a rewritten version of the answer: 4 times 2 is 8.\nAnswer: 8", "4 times 2 is 8.\nAnswer: 8"),
    (
        "Certainly. Here is the answer in my own words.\nSeven minus two leaves 5.",
        "Seven minus two leaves 5.",
    ),
    ("**Rewritten answer:** The capital of France is Paris.", "The capital of France is Paris."),
    ("Rephrased version:\nWe add 1 and 1 to get 2.", "We add 1 and 1 to get 2."),
    ("The sum is 9. I hope this helps!", "The sum is 9."),
    ("The sum is 9.\n\nLet me know if you have any other questions.", "The sum is 9."),
    ('Of course! "Three plus four makes 7."\nHope this helps.', "Three plus four makes 7."),
    ("Answer: 5", "Answer: 5"),  # an answer line is content, not chatter
    ("Here is how it works: 6 / 2 = 3.", "Here is how it works: 6 / 2 = 3."),  # not an announcement
    ("Sure!", ""),
    ("", ""),
]


@pytest.mark.parametrize(("raw", "clean"), MESSY)
def test_clean_rewrite_strips_chatter(raw, clean):
    assert self_distill.clean_rewrite(raw) == clean


def test_rewrite_prompt_is_pinned():
    from pipeline import templates

    text = templates.render("self_distill.jinja", question="What is 2 + 3?", answer="5")
    assert text == (
        "Question: What is 2 + 3?\nReference answer: 5\n\n"
        "Restate the reference answer in your own words. It must end with the same final result."
    )


def test_rows_verify_did_not_pass_are_rejected_with_a_reason_not_dropped(tmp_path):
    q1, q2, q3 = "What is 1 + 1?", "What is 2 + 2?", "What is 3 + 3?"
    rows = [
        {**_verified_row(0, "arithmetic", q1, "2", "1 + 1 = 2. Answer: 2"), "verifier": "math"},
        {
            **_verified_row(1, "arithmetic", q2, "4", "2 + 2 = 5. Answer: 5"),
            "verifier": "math",
            "passed": False,
        },
        {**_verified_row(2, "arithmetic", q3, "6", "Six-ish."), "verifier": "math", "passed": None},
    ]
    store.save_table(pa.Table.from_pylist(rows), tmp_path / "in" / "data")
    engine = ScriptedRewriter({q: ("Adding them: 1 + 1 = 2. Answer: 2", "stop") for q in (q1, q2, q3)})
    ctx = RunContext(student=StudentConfig(model="smollm2-135m-instruct"))
    manifest = self_distill.run(
        self_distill.Config(engine="hf"), tmp_path / "in", tmp_path / "out", context=ctx, engine=engine
    )
    assert [r["id"] for r in store.load_table(tmp_path / "out" / "data").to_pylist()] == ["r0"]
    rejected = store.load_table(tmp_path / "out" / "rejected").to_pylist()
    assert {r["id"]: r["reject_reason"] for r in rejected} == {
        "r1": "verify_failed",
        "r2": "verify_undecided",
    }
    assert rejected[0]["completion"] == rows[1]["completion"], "rejected rows keep their own columns"
    assert manifest["rows_in"] == 3 and manifest["rows_out"] == 1
    assert manifest["rejected_by_reason"] == {"verify_failed": 1, "verify_undecided": 1}
    assert "not verified, rejected: verify_failed 1, verify_undecided 1" in self_distill.summary(manifest)
