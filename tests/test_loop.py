"""The performance-guided loop: mine hard validation prompts, regenerate similar ones, retrain, stop on patience."""

from __future__ import annotations

import json
import re
import shutil
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline import loop, loop_reuse, store
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.stages import regenerate
from pipeline.stages.regenerate import parse_problem
from pipeline.tasks import load_task
from tests.conftest import REPO, LocalServer, kill_at_first_done, run_cli


def _hard_prompts(tmp_path, n=3):
    rows = load_task("arithmetic", "validation", n=n)
    table = pa.Table.from_pylist(
        [{**r, "student_pass_rate": 0.0, "student_completion": "I think 12"} for r in rows]
    )
    store.save_table(table, tmp_path / "mine" / "data")
    return rows


def test_regenerate_task_method_makes_similar_training_problems(tmp_path):
    hard = _hard_prompts(tmp_path)
    cfg = regenerate.Config(per_prompt=4, seed=1, method="task")
    manifest = regenerate.run(cfg, tmp_path / "mine", tmp_path / "regen", context=RunContext())
    new = store.load_table(tmp_path / "regen" / "data").to_pylist()
    assert manifest["config"]["method"] == "task" and 8 <= len(new) <= 12
    train_prompts = {r["prompt"] for r in load_task("arithmetic", "train", n=1500)}
    val_prompts = {r["prompt"] for r in load_task("arithmetic", "validation", n=150)}
    hard_ops = sorted(
        next(t for t in json.loads(r["meta"])["expression"].split() if t in "+-*") for r in hard
    )
    new_ops = {next(t for t in json.loads(r["meta"])["expression"].split() if t in "+-*") for r in new}
    assert new_ops <= set(hard_ops), "new problems keep the structure of the failures"
    for r in new:
        meta = json.loads(r["meta"])
        assert meta["split"] == "train" and meta["phrasing"] == "train"
        assert str(eval(meta["expression"])) == r["reference"]  # noqa: S307 - our own digits
        assert r["prompt"] not in val_prompts
    assert any(r["prompt"] in train_prompts for r in new)  # same distribution as the training split
    again = regenerate.run(cfg, tmp_path / "mine", tmp_path / "regen", context=RunContext())
    assert again["fingerprint"] == manifest["fingerprint"]


def test_regenerate_teacher_method_needs_a_teacher(tmp_path):
    _hard_prompts(tmp_path)
    with pytest.raises(UserError, match="needs a teacher"):
        regenerate.run(
            regenerate.Config(method="teacher"), tmp_path / "mine", tmp_path / "r", context=RunContext()
        )


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "Problem: Tom has 4 pears and eats 1. How many are left?",
            "Tom has 4 pears and eats 1. How many are left?",
        ),
        ('Sure!\nNew problem: "What is 7 + 6?"\n\nAnswer: 13', "What is 7 + 6?"),
        ("What is 9 * 3?", "What is 9 * 3?"),
        ("ok", None),
        ("", None),
    ],
)
def test_parse_problem(reply, expected):
    assert parse_problem(reply) == expected


RECIPE = """
run: loop
teacher: {model: smollm2-135m-instruct, engine: vllm}
student: {model: smollm2-135m-instruct}
source: {task: arithmetic, n: 6, seed: 0}
stages:
  - generate: {n: 2, temperature: 0.8, max_tokens: 32, seed: 0}
  - verify: {verifiers: [math]}
  - export: {formats: [sft]}
loop: {iterations: 2, patience: 5, validation_n: 6, mine_n: 6, max_steps: 2, per_prompt: 2,
       hard_samples: 4, stop_at: 1, lora_mode: vllm}
"""


def test_loop_runs_rounds_and_resumes(tmp_path):
    """The default path: one vLLM engine for teacher and student, each round's adapter applied per request."""
    recipe = tmp_path / "loop.yaml"
    recipe.write_text(RECIPE)
    run_dir = tmp_path / "run"
    r = run_cli("loop", str(recipe), "--run-dir", str(run_dir), timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "loop" / "summary.json").read_text())
    assert [m["iteration"] for m in summary["history"]] == [0, 1]
    for m in summary["history"]:
        assert 0.0 <= m["val_accuracy"] <= 1.0
        assert json.loads((run_dir / "loop" / f"iter_{m['iteration']}" / "metrics.json").read_text()) == m
    regen = json.loads((run_dir / "loop" / "iter_0" / "regenerate" / "manifest.json").read_text())
    mined = json.loads((run_dir / "loop" / "iter_0" / "mine" / "manifest.json").read_text())
    assert regen["rows_in"] == mined["rows_out"] > 0
    # round 1 keeps training round 0's student (warm start) on the new rows plus replayed old ones
    second = json.loads((run_dir / "loop" / "iter_1" / "train" / "manifest.json").read_text())
    assert second["config"]["adapter"] == summary["history"][0]["adapter"]
    assert summary["history"][1]["train_rows"] > 0
    # hard negatives: round 0's mined prompts, each with a verified answer (chosen) and the student's own
    # failing answer (rejected); round 1 then runs DPO on exactly those pairs and keeps the DPO adapter
    it0 = run_dir / "loop" / "iter_0"
    failing = {
        r["id"]: r["student_completion"].strip() for r in store.load_table(it0 / "mine" / "data").to_pylist()
    }
    verified: dict[str, set[str]] = {}
    for folder in (it0 / "verify", it0 / "verify-more"):
        for row in store.load_table(folder / "data").to_pylist() if folder.exists() else []:
            verified.setdefault(row["id"], set()).add(row["completion"].strip())
    pairs = store.load_table(it0 / "hard-negatives" / "data" / "dpo").to_pylist()
    assert 0 < len(pairs) == summary["history"][0]["hard_negative_pairs"] <= len(failing)
    for p in pairs:
        assert p["rejected"][0]["content"] == failing[p["id"]] != p["chosen"][0]["content"]
        assert p["chosen"][0]["content"] in verified[p["id"]]
    dpo = json.loads((run_dir / "loop" / "iter_1" / "train-dpo" / "manifest.json").read_text())
    assert dpo["mode"] == "dpo" and dpo["dataset"]["rows"] == len(pairs) and dpo["steps"] > 0
    assert summary["history"][1]["adapter"].endswith("iter_1/train-dpo/adapter")
    # the pass trained: its adapter moved off the SFT adapter it started from (a step in warm-up has lr 0,
    # and dpo.yaml's warm-up of 5 steps once left 1-4 step passes training nothing)
    sft_weights, dpo_weights = (
        load_file(run_dir / "loop" / "iter_1" / step / "adapter" / "adapter_model.safetensors")
        for step in ("train", "train-dpo")
    )
    assert sft_weights.keys() == dpo_weights.keys()
    assert any(not torch.equal(sft_weights[key], dpo_weights[key]) for key in sft_weights)
    first = summary["history"][0]
    assert first["generator"] in ("teacher", "student of round 0")
    assert summary["generation_tokens"] == first["teacher_tokens"] > 0
    # mining runs on training-split prompts, never on the validation split that decides stopping
    pool = {r["id"] for r in store.load_table(run_dir / "loop" / "mine-pool" / "data").to_pylist()}
    val = {r["id"] for r in store.load_table(run_dir / "loop" / "validation" / "data").to_pylist()}
    assert pool and not pool & val
    # students are scored at the answer length the training answers were cut at (the generate stage's)
    scored = json.loads((run_dir / "loop" / "iter_0" / "validate" / "manifest.json").read_text())
    assert scored["config"]["max_tokens"] == 32
    assert "iteration 1: validation accuracy" in r.stdout
    # where a round's time went: each finished step's seconds, in the order the steps ran
    steps = first["step_s"]
    ran = [
        s
        for s in ("train-data", "train", "validate", "mine", "regenerate", "generate", "verify")
        if s in steps
    ]
    assert ran == ["train-data", "train", "validate", "mine", "regenerate", "generate", "verify"]
    assert set(steps) <= set(loop.ROUND_STEPS)
    assert all(v >= 0 for v in steps.values()) and steps["train"] > 1.0
    assert sum(steps.values()) <= first["round_s"] + 1.0 and 0 <= first["engine_start_s"] <= first["round_s"]
    # the teacher's bar for `generator: best` is measured as it generates (the generate stage's templates)
    teacher = json.loads((run_dir / "loop" / "teacher-validation.json").read_text())
    assert teacher["templates"] == {"system_template": None, "shots_template": None}
    assert "reusing" not in r.stdout + r.stderr  # the run has no training of its own: round 0 trained

    # Round 0 reuses a training the run already has, when it is the same export and the same settings
    again = tmp_path / "again"
    for stage_dir in run_dir.glob("0[0-3]-*"):
        shutil.copytree(stage_dir, again / stage_dir.name)
    config = yaml.safe_load((REPO / "scripts" / "configs" / "sft.yaml").read_text())
    config |= {"dataset": str(again / "03-export"), "output_dir": str(again / "train-sft"), "max_steps": 2}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    assert run_cli("train", "sft", str(tmp_path / "sft.yaml"), timeout=600).returncode == 0
    export, settings = again / "03-export", {"model": "smollm2-135m-instruct", "max_steps": 2}
    train_config = str(REPO / "scripts" / "configs" / "sft.yaml")
    assert loop_reuse.finished_training(again, export, train_config, settings) == again / "train-sft"
    for other in ({"max_steps": 3}, {"learning_rate": 1e-3}, {"model": "qwen2.5-coder-0.5b-instruct"}):
        assert loop_reuse.finished_training(again, export, train_config, settings | other) is None
    r = run_cli("loop", str(recipe), "--run-dir", str(again), "--iterations", "1", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    train0 = json.loads((again / "loop" / "iter_0" / "train" / "manifest.json").read_text())
    assert train0["reused_from"] == str(again / "train-sft") and "loop 0: reusing" in r.stdout + r.stderr
    for f in (again / "train-sft" / "adapter").iterdir():
        assert (again / "loop" / "iter_0" / "train" / "adapter" / f.name).read_bytes() == f.read_bytes()
    assert json.loads((again / "loop" / "summary.json").read_text())["history"][0]["step_s"]["train"] < 5
    # new_weight weights rows of later rounds, so round 0 is the same step with any weight: a weighted loop
    # resumes it (the experiment's weighting row shares round 0) instead of refusing its train-data
    weighted = tmp_path / "weighted.yaml"
    weighted.write_text(RECIPE.replace("per_prompt: 2,", "per_prompt: 2, new_weight: 2,"))
    assert "new_weight: 2" in weighted.read_text()
    data0 = again / "loop" / "iter_0" / "train-data" / "manifest.json"
    built = data0.stat().st_mtime_ns
    r = run_cli("loop", str(weighted), "--run-dir", str(again), "--iterations", "1", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert data0.stat().st_mtime_ns == built
    train_manifest = run_dir / "loop" / "iter_1" / "train" / "manifest.json"
    before = train_manifest.stat().st_mtime_ns
    r = run_cli("loop", str(recipe), "--run-dir", str(run_dir), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert train_manifest.stat().st_mtime_ns == before, "a finished round is not trained again"


def test_targeted_regeneration_aims_at_the_failed_fact_and_random_is_the_control(tmp_path):
    hard = _hard_prompts(tmp_path, n=4)
    targeted = regenerate.run(
        regenerate.Config(per_prompt=6, seed=2), tmp_path / "mine", tmp_path / "t", context=RunContext()
    )
    assert targeted["config"]["method"] == "targeted"
    new = store.load_table(tmp_path / "t" / "data").to_pylist()
    val_prompts = {r["prompt"] for r in load_task("arithmetic", "validation", n=150)}
    hard_terms = {
        tuple(sorted(int(t) for t in json.loads(r["meta"])["expression"].split() if t.isdigit()))
        for r in hard
    }
    same = 0
    for r in new:
        meta = json.loads(r["meta"])
        assert meta["split"] == "train" and r["prompt"] not in val_prompts
        assert str(eval(meta["expression"])) == r["reference"]  # noqa: S307 - our own digits
        terms = tuple(sorted(int(t) for t in meta["expression"].split() if t.isdigit()))
        same += terms in hard_terms
        # every new problem is the failed fact or one operand away from it
        assert any(sum(abs(a - b) for a, b in zip(terms, h, strict=True)) <= 2 for h in hard_terms), r[
            "prompt"
        ]
    assert same >= len(hard)  # each failed fact comes back, in training wording
    control = regenerate.run(
        regenerate.Config(per_prompt=6, seed=2, method="random"),
        tmp_path / "mine",
        tmp_path / "c",
        context=RunContext(),
    )
    assert control["rows_out"] == targeted["rows_out"] or abs(control["rows_out"] - targeted["rows_out"]) <= 4


def test_rounds_merge_without_duplicates_and_weight_new_rows(tmp_path):
    from pipeline.loop_tables import training_table

    def sft(folder, rows):
        table = pa.Table.from_pylist(
            [
                {"id": rid, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                for rid, q, a in rows
            ]
        )
        store.save_table(table, tmp_path / folder)
        return tmp_path / folder

    base = sft("base", [("a", "1+1?", "2"), ("b", "2+2?", "4")])
    new = sft("new", [("a", "1+1?", "2 "), ("c", "3+3?", "6"), ("c", "3+3?", "Answer: 6")])
    table = training_table([base], [new], weight=3)
    pairs = [(r["id"], r["messages"][-1]["content"]) for r in table.to_pylist()]
    assert pairs.count(("a", "2")) == 1  # the same answer again in a later round is not new data
    assert pairs.count(("c", "6")) == 3 and pairs.count(("c", "Answer: 6")) == 3
    assert table.num_rows == 2 + 2 * 3


def _sft_folder(folder, rows):
    table = pa.Table.from_pylist(
        [
            {"id": rid, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for rid, q, a in rows
        ]
    )
    store.save_table(table, folder)
    return folder


def test_warm_round_trains_new_rows_weighted_plus_a_replay_sample(tmp_path):
    from pipeline.loop_tables import warm_table

    old = _sft_folder(tmp_path / "old", [(f"o{i}", f"{i}+1?", str(i + 1)) for i in range(10)])
    new = _sft_folder(tmp_path / "new", [("o1", "1+1?", "2"), ("n1", "7*8?", "56"), ("n2", "6*7?", "42")])
    table = warm_table([old], [new], weight=2, replay=1.5, seed=0)
    ids = table.column("id").to_pylist()
    assert ids.count("n1") == ids.count("n2") == 2  # new rows, weighted
    replayed = [i for i in ids if i.startswith("o")]
    assert len(replayed) == 3 and len(set(replayed)) == 3  # 1.5 old rows per new row, no repeats
    assert table.equals(warm_table([old], [new], weight=2, replay=1.5, seed=0))  # deterministic
    nothing_new = _sft_folder(tmp_path / "again", [("o2", "2+1?", "3")])
    assert warm_table([old], [nothing_new], weight=2, replay=1.0, seed=0).num_rows == 0


def test_hard_negatives_pair_a_verified_answer_with_the_students_failing_one(tmp_path):
    from pipeline.loop_tables import answer_set, hard_negative_pairs
    from pipeline.stages.prompts import SCHEMA

    def prompt(rid, q, **extra):
        return {
            "id": rid,
            "task": "arithmetic",
            "messages": [{"role": "user", "content": q}],
            "prompt": q,
            "reference": "56",
            "meta": "{}",
            **extra,
        }

    hard = [
        prompt("h1", "7*8?", student_completion="Answer: 54"),
        prompt("h2", "6*9?", student_completion="54?"),
    ]
    schema = SCHEMA.append(pa.field("student_completion", pa.string()))
    store.save_table(pa.Table.from_pylist(hard, schema=schema), tmp_path / "mine" / "data")
    store.save_table(
        pa.Table.from_pylist([prompt("r1", "8*7?"), prompt("h1", "7*8?")], schema=SCHEMA),
        tmp_path / "regen" / "data",
    )
    answers = answer_set(tmp_path / "mine", tmp_path / "regen")
    assert answers.column("id").to_pylist() == ["h1", "h2", "r1"] and answers.schema.equals(SCHEMA)
    verified = pa.Table.from_pylist(
        [
            {"id": "h1", "completion": "7 times 8 is 56. Answer: 56"},
            {"id": "h1", "completion": "Answer: 56"},
            {"id": "r1", "completion": "Answer: 56"},
        ]
    )
    store.save_table(verified, tmp_path / "verify" / "data")
    pairs = hard_negative_pairs(tmp_path / "mine", [tmp_path / "verify"]).to_pylist()
    assert pairs == [
        {
            "id": "h1",
            "prompt": [{"role": "user", "content": "7*8?"}],
            "chosen": [{"role": "assistant", "content": "Answer: 56"}],  # the shortest verified answer
            "rejected": [{"role": "assistant", "content": "Answer: 54"}],
        }
    ]  # h2 has no verified answer: no pair
    # a recipe that exports place-value steps gets its chosen answers written the same way
    from pipeline.verifiers.equations import place_value

    store.save_table(
        pa.Table.from_pylist([{"id": "h1", "completion": "44 + 86 = 130. Answer: 130"}]),
        tmp_path / "verify2" / "data",
    )
    shaped = hard_negative_pairs(tmp_path / "mine", [tmp_path / "verify2"], place_value).to_pylist()
    assert shaped[0]["chosen"][0]["content"] == "44 + 86 = 44 + 80 + 6 = 124 + 6 = 130. Answer: 130"


def test_a_loop_step_is_built_once_resumes_whole_and_feeds_a_stable_fingerprint(tmp_path):
    """The loop's own tables (train-data, to-answer, hard-prompts, hard-negatives) are step folders: built once
    with a manifest, rebuilt whole when a kill left no manifest, refused when their inputs changed, and the
    stage they feed sees the same input fingerprint on every resume (a bare rewritten folder did not: its
    datasets state.json is random, so the next stage refused to resume)."""
    from pipeline.loop_tables import answer_set, table_step
    from pipeline.stages import input_ref

    _hard_prompts(tmp_path)
    regen = tmp_path / "regen"
    regenerate.run(
        regenerate.Config(per_prompt=2, seed=1, method="task"), tmp_path / "mine", regen, context=RunContext()
    )
    builds = []

    def build():
        builds.append(1)
        return answer_set(tmp_path / "mine", regen)

    step = tmp_path / "to-answer"
    first = table_step(step, "to-answer", [tmp_path / "mine", regen], {}, build)
    ids = store.load_table(step / "data").column("id").to_pylist()
    assert first["rows_out"] == len(ids) == len(set(ids)) > 3 and first["inputs"][1]["stage"] == "regenerate"
    seen_by_next_stage = input_ref(step)["fingerprint"]
    done = table_step(step, "to-answer", [tmp_path / "mine", regen], {}, build)
    assert done["finished_at"] == first["finished_at"] and len(builds) == 1  # not built again
    # killed after the rows were written but before the manifest: rebuilt whole, same identity
    (step / "manifest.json").unlink()
    again = table_step(step, "to-answer", [tmp_path / "mine", regen], {}, build)
    assert len(builds) == 2 and again["fingerprint"] == first["fingerprint"]
    assert store.load_table(step / "data").column("id").to_pylist() == ids
    assert input_ref(step)["fingerprint"] == seen_by_next_stage
    # different settings in the same folder: refused, naming what changed
    with pytest.raises(UserError, match="config.stop_at"):
        table_step(step, "to-answer", [tmp_path / "mine", regen], {"stop_at": 2}, build)


class ArithmeticTeacher(LocalServer):
    """An OpenAI-compatible teacher on 127.0.0.1 that works out the `a op b` in each problem (the training
    wordings hold it literally) and answers right, one second per request, so a stage of one-prompt shards
    is slow enough to be killed between shards and the loop's time goes to the real student."""

    def __init__(self, delay_s: float = 1.0):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                found = re.search(r"(\d+) ([-+*]) (\d+)", body["messages"][-1]["content"])
                value = eval(found[0]) if found else None  # noqa: S307 - two integers and an operator
                text = f"{found[0]} = {value}. Answer: {value}" if found else "I cannot tell."
                choice = {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                choices = [{"index": i, **choice} for i in range(body.get("n", 1))]
                usage = {"prompt_tokens": 20, "completion_tokens": 10 * len(choices)}
                data = json.dumps({"choices": choices, "usage": usage}).encode()
                time.sleep(delay_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - no /metrics: the engine counts tokens from the answers
                self.send_error(404)

            def log_message(self, *args):
                pass

        super().__init__(Handler, ThreadingHTTPServer)


# The real student on HF generate (no vLLM start-up), the teacher above, one prompt per shard. stop_at 3 with
# n 2: every prompt to answer gets one more sample, so generate-more always runs.
KILLED = """
run: killed
teacher: {{model: arithmetic, engine: openai, base_url: "{url}"}}
student: {{model: smollm2-135m-instruct}}
source: {{task: arithmetic, n: 6, seed: 0}}
stages:
  - generate: {{n: 2, temperature: 0.8, max_tokens: 24, seed: 0, shard_size: 1}}
  - verify: {{verifiers: [math]}}
  - export: {{formats: [sft]}}
loop: {{iterations: 2, patience: 5, validation_n: 4, mine_n: 4, max_steps: 1, per_prompt: 1, method: task,
       hard_samples: 3, stop_at: 3, engine: hf, generator: teacher}}
"""


def test_a_loop_killed_mid_round_resumes_at_its_step_with_nothing_lost_or_duplicated(tmp_path, local_servers):
    """SIGKILL inside round 0's generate-more (after the loop wrote hard-prompts), then the same command: the
    finished steps are not redone, the killed step runs only its missing shards, and round 1 trains on
    exactly the verified rows of both runs."""
    import subprocess
    import sys

    from pipeline.loop_tables import warm_table

    teacher = local_servers(ArithmeticTeacher)
    recipe = tmp_path / "killed.yaml"
    recipe.write_text(KILLED.format(url=teacher.url))
    run_dir = tmp_path / "run"
    it0 = run_dir / "loop" / "iter_0"
    step = it0 / "generate-more"
    command = [sys.executable, "-m", "pipeline.cli", "loop", str(recipe), "--run-dir", str(run_dir)]
    log = tmp_path / "killed.log"  # a file, not a pipe: an unread pipe would block the loop's progress bar
    with open(log, "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, start_new_session=True, stderr=err)
    kill_at_first_done(proc, step, 1200, died="the loop died before generate-more", log=log)
    assert store.read_manifest(step) is None, "the kill landed inside generate-more"
    done_before = {int(p.parent.name) for p in (step / "shards").glob("*/.done")}
    finished = {p: p.read_bytes() for p in run_dir.rglob("manifest.json")}
    assert it0 / "hard-prompts" / "manifest.json" in finished and it0 / "train" / "manifest.json" in finished

    r = run_cli("loop", str(recipe), "--run-dir", str(run_dir), timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loop 0: training" not in r.stderr  # round 0's student is not trained again
    assert {p: p.read_bytes() for p in finished} == finished, "a finished step was redone"

    # the killed step ran only the shards it had not finished, each exactly once
    more = store.read_manifest(step)
    hard = store.load_table(it0 / "hard-prompts" / "data")
    assert more["rows_in"] == hard.num_rows == more["shards"] > len(done_before) >= 1
    runs = list(more["shard_runs"].values())
    assert len(runs) == 2 and sorted(runs[0] + runs[1]) == list(range(more["shards"]))
    assert set(next(v for v in runs if set(v) != done_before)) == set(range(more["shards"])) - done_before
    # every hard prompt got its one extra sample, once, and each one was verified
    kept = store.load_table(step / "data").select(["id", "sample_index"]).to_pylist()
    keys = [(row["id"], row["sample_index"]) for row in kept]
    assert len(keys) == len(set(keys)) == more["rows_out"] == hard.num_rows
    assert {rid for rid, _ in keys} == set(hard.column("id").to_pylist())
    assert store.read_manifest(it0 / "verify-more")["rows_in"] == more["rows_out"]
    # round 1 trains on the base data plus exactly round 0's verified answers (both exports), replay included
    summary = json.loads((run_dir / "loop" / "summary.json").read_text())
    assert [m["iteration"] for m in summary["history"]] == [0, 1]
    exports = [it0 / name / "data" / "sft" for name in ("export", "export-more")]
    base = run_dir / "03-export" / "data" / "sft"
    expected = warm_table([base], exports, weight=1, replay=1.0, seed=1)
    trained = store.load_table(run_dir / "loop" / "iter_1" / "train-data" / "data" / "sft")
    assert expected.num_rows > 0
    assert trained.select(["id", "messages"]).equals(expected.select(["id", "messages"]))


def test_distill_loop_ships_shards_where_the_recipes_executor_says(monkeypatch, tmp_path):
    """`distill loop` takes the recipe's `executor:` as `distill run` does, and --executor overrides it."""
    import pipeline.loop
    from pipeline.cli import main

    seen = []

    def fake_run_loop(recipe, run_dir=None, overrides=None, executor=None):
        seen.append(executor)
        best = {"iteration": 0, "val_accuracy": 0.5, "adapter": "a"}
        return {"history": [], "best": best, "generation_tokens": 0, "wall_s": 0.0}

    monkeypatch.setattr(pipeline.loop, "run_loop", fake_run_loop)
    recipe = str(REPO / "scripts" / "recipes" / "slurm.yaml")
    assert main(["loop", recipe, "--run-dir", str(tmp_path)]) == 0
    assert seen[-1].name == "slurm" and seen[-1].config.partition == "gpu"
    assert main(["loop", recipe, "--run-dir", str(tmp_path), "--partition", "cpu"]) == 0
    assert seen[-1].config.partition == "cpu" and seen[-1].config.time_min == 120
    assert main(["loop", recipe, "--run-dir", str(tmp_path), "--executor", "local"]) == 0
    assert seen[-1] is None
    # and the loop hands it to the stages that ship (a local executor passes nothing)
    from pipeline.executors import LocalExecutor

    assert pipeline.loop.Loop(*[None] * 8, executor=seen[0]).ship == {"executor": seen[0]}
    assert pipeline.loop.Loop(*[None] * 8, executor=LocalExecutor()).ship == {}


REPHRASE_RECIPE = """
run: loop-rephrase
teacher: {model: qwen2.5-coder-0.5b-instruct, engine: vllm}
student: {model: smollm2-135m-instruct}
source: {task: arithmetic, n: 8, seed: 0}
stages:
  - generate: {n: 1, temperature: 0.8, top_p: 1.0, max_tokens: 48, seed: 0}
  - verify: {verifiers: [math]}
  - export: {formats: [sft], place_value: true}
loop: {iterations: 2, validation_n: 4, mine_n: 16, max_steps: 2, per_prompt: 2, hard_samples: 1,
       method: rephrase, mine_rephrased: true, hard_negatives: false, generator: teacher, lora_mode: vllm,
       train_config: scripts/configs/sft_full.yaml}
"""


def test_loop_mines_and_regenerates_in_the_teachers_own_words(tmp_path):
    """`mine_rephrased`: the student is mined on the Qwen teacher's rewrites of the pool; `method: rephrase`:
    the new prompts are the teacher's rewrites of each failed prompt. Both keep the numbers and the
    reference; a mined rewrite is one the teacher solves; all their tokens count against the budget.
    The student trains every weight here (a training config with no `peft:`): each round is a model folder,
    scored on an engine started on it, and the next round keeps training it."""
    from pipeline.stages.rephrase import numbers

    recipe = tmp_path / "loop.yaml"
    recipe.write_text(REPHRASE_RECIPE)
    run_dir = tmp_path / "run"
    r = run_cli("loop", str(recipe), "--run-dir", str(run_dir), timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    loop_dir = run_dir / "loop"

    def rows(folder):
        return {row["id"]: row for row in store.load_table(folder / "data").to_pylist()}

    def manifest(folder):
        return json.loads((folder / "manifest.json").read_text())

    source, pool = rows(loop_dir / "mine-pool"), rows(loop_dir / "mine-pool-rephrased")
    assert manifest(loop_dir / "mine-pool-rephrased")["stage"] == "rephrase" and pool
    for row in pool.values():  # another wording of a pool prompt: same numbers, same reference
        original = source[json.loads(row["meta"])["rephrased_from"]]
        assert row["id"] not in source and row["reference"] == original["reference"]
        assert numbers(row["prompt"]) == numbers(original["prompt"])
    # Mined only on the rewrites the teacher itself solves: a rewrite may keep the numbers and change the
    # question, and the student's right answer to it would count as a failure.
    checked = rows(loop_dir / "mine-pool-rephrased-checked")
    teacher_right = {r["id"] for r in rows(loop_dir / "mine-pool-rephrased-verify").values()}
    assert set(checked) == teacher_right and set(checked) <= set(pool)
    answers = manifest(loop_dir / "mine-pool-rephrased-answers")
    assert answers["config"]["temperature"] == 0.0 and answers["rows_in"] == len(pool)
    mined = rows(loop_dir / "iter_0" / "mine")
    assert mined and set(mined) <= set(checked)  # the student was mined on the checked rewrites
    regen = manifest(loop_dir / "iter_0" / "regenerate")
    assert regen["stage"] == "rephrase" and regen["rows_in"] == len(mined)
    assert regen["config"]["per_prompt"] == 2 and regen["config"]["keep_source"] is False
    for row in rows(loop_dir / "iter_0" / "regenerate").values():
        assert json.loads(row["meta"])["rephrased_from"] in mined
    spent = [
        manifest(run_dir / "01-generate"),
        manifest(loop_dir / "mine-pool-rephrased"),
        answers,
        manifest(loop_dir / "iter_0" / "regenerate"),
    ]
    if (loop_dir / "iter_0" / "generate" / "manifest.json").exists():
        spent.append(manifest(loop_dir / "iter_0" / "generate"))
    summary = json.loads((loop_dir / "summary.json").read_text())
    assert summary["generation_tokens"] == sum(m["tokens"]["completion"] for m in spent)
    # every weight trained: each round's student is its own model folder, with no adapter
    for k, m in enumerate(summary["history"]):
        trained = manifest(loop_dir / f"iter_{k}" / "train")
        assert trained["outputs"] == {"model": m["model"]} and m["adapter"] is None
        assert m["model"].endswith(f"iter_{k}/train/model") and (Path(m["model"]) / "config.json").is_file()
        scored = manifest(loop_dir / f"iter_{k}" / "validate")
        assert scored["models"]["student"]["path"] == str(Path(m["model"]).resolve())
    # round 1 keeps training round 0's weights (warm start)
    assert manifest(loop_dir / "iter_1" / "train")["config"]["model"] == summary["history"][0]["model"]
    # a round's new data is written the recipe's way (place-value steps), as the base data was
    if (loop_dir / "iter_0" / "export").exists():
        assert manifest(loop_dir / "iter_0" / "export")["config"]["place_value"] is True


def test_the_teachers_bar_is_measured_on_the_engine_that_generates(tmp_path, monkeypatch, vllm_engine):
    """`generator: best` scores the teacher as it generates (the generate stage's templates), once, on the
    engine the loop keeps for generation: evaluate starts no engine of its own (a second Qwen start costs
    about 25 s on a CPU)."""
    from pipeline import engines, evaluate
    from pipeline.loop_engines import LoopEngines
    from pipeline.recipe import LoopConfig, SourceConfig
    from pipeline.runner import load_recipe
    from pipeline.stages import prompts

    recipe_path = tmp_path / "bar.yaml"
    recipe_path.write_text(
        "run: bar\n"
        "teacher: {model: smollm2-135m-instruct, engine: vllm, max_model_len: 1024}\n"
        "student: {model: smollm2-135m-instruct}\n"
        "source: {task: arithmetic, n: 4, seed: 0}\n"
        "stages: [{generate: {n: 1, max_tokens: 32}}]\n"
    )
    recipe = load_recipe(recipe_path)
    started = []

    def start_teacher(model_config):  # the session's engine stands in for the teacher's own start
        started.append(model_config.model)
        return vllm_engine

    def second_engine(*args, **kwargs):
        raise AssertionError("evaluate started an engine of its own for the teacher")

    monkeypatch.setattr(engines, "load_teacher", start_teacher)
    monkeypatch.setattr(evaluate, "make_engine", second_engine)
    val = tmp_path / "validation"
    source = SourceConfig(task="arithmetic", split="validation", n=6, seed=0)
    prompts.run(prompts.Config(), None, val, context=RunContext(source=source))
    logs = []
    kept = LoopEngines(recipe, "smollm2-135m-instruct", LoopConfig(), log=logs.append)
    assert not kept.shares_teacher()  # the teacher has engine options of its own: it is a separate engine
    shots = {
        "system_template": "system/arithmetic_worked.jinja",
        "shots_template": "shots/arithmetic_worked.jinja",
    }
    out = tmp_path / "teacher-validation.json"
    acc = kept.teacher_accuracy(val, out, 32, shots)
    assert kept.teacher() is vllm_engine and started == ["smollm2-135m-instruct"]
    assert len(logs) == 1 and logs[0].startswith("[distill] loop: started the teacher engine (smollm2-135m")
    result = json.loads(out.read_text())
    assert result["pass@1"] == acc and result["problems"] == 6 and result["completion_tokens"] > 0
    assert result["templates"] == shots and result["prompted_with"] == list(shots.values())
    out.write_text(json.dumps({**result, "pass@1": 0.5}))  # measured once: the kept figure is read back
    assert kept.teacher_accuracy(val, out, 32, shots) == 0.5
    bare = {"system_template": None, "shots_template": None}  # other templates: measured again
    assert kept.teacher_accuracy(val, out, 32, bare) == json.loads(out.read_text())["pass@1"]
    assert json.loads(out.read_text())["templates"] == bare and started == ["smollm2-135m-instruct"]


def test_the_student_engine_holds_the_rank_of_every_adapter_the_loop_trains():
    """The student engine's LoRA holds the largest adapter of the round's SFT and DPO configs; a loop that
    trains every weight with no DPO pass has no adapter, so its engine runs without LoRA."""
    from pipeline.loop_engines import lora_rank
    from pipeline.recipe import LoopConfig

    configs = REPO / "scripts" / "configs"
    sft, full, dpo = (str(configs / f"{name}.yaml") for name in ("sft", "sft_full", "dpo"))
    dpo_rank = yaml.safe_load(Path(dpo).read_text())["peft"]["r"]
    sft_rank = yaml.safe_load(Path(sft).read_text())["peft"]["r"]
    assert lora_rank(LoopConfig(train_config=full, dpo_config=dpo, hard_negatives=False)) is None
    assert lora_rank(LoopConfig(train_config=full, dpo_config=dpo, hard_negatives=True)) >= dpo_rank
    both = lora_rank(LoopConfig(train_config=sft, dpo_config=dpo, hard_negatives=True))
    assert both >= max(sft_rank, dpo_rank)
