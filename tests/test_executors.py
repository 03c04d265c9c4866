"""Executors: a 4-shard generate stage on a real local Ray cluster and as a submitit array, against a local run.

    .venv/bin/pytest tests/test_executors.py -q

The teacher is the embedded SmolLM2-135M on the hf engine (greedy, a few tokens): each worker loads its own
copy in a few seconds, where a vLLM engine per worker would cost ~30 s and 2 GiB each on a 2-core box. What
is tested is the executors and the store contract, the same for every engine.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from pipeline import store
from pipeline.executors import ExecutorConfig, RayExecutor, SlurmExecutor
from pipeline.recipe import ModelConfig, RunContext
from pipeline.runner import merge
from pipeline.stages import generate
from pipeline.tasks import load_task

SHARDS = 4
TIMING = ("wall_s", "tokens_per_s", "generate_s", "engine_load_s", "started_at", "finished_at")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("executors") / "prompts.jsonl"
    rows = load_task("arithmetic", split="train", n=8, seed=3)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config() -> generate.Config:
    return generate.Config(n=1, temperature=0.0, max_tokens=12, seed=0)


def _context() -> RunContext:
    return RunContext(teachers=[ModelConfig(model="smollm2-135m-instruct", engine="hf", batch_size=2)])


@pytest.fixture(scope="module")
def local_run(prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "gen"
    manifest = generate.run(_config(), prompts, out, context=_context(), num_shards=SHARDS, progress=False)
    return manifest, store.load_table(out / "data").to_pylist()


def _without_timings(obj):
    """A manifest minus what differs between any two runs: timings, the host and which process ran what."""
    if isinstance(obj, dict):
        return {
            k: _without_timings(v)
            for k, v in obj.items()
            if k not in TIMING and k not in ("host", "shard_runs")
        }
    return obj


def _without_paths(obj):
    """A manifest minus the folders it names (two runs in two folders)."""
    if isinstance(obj, dict):
        return {k: _without_paths(v) for k, v in obj.items() if k not in ("path", "output_dir")}
    if isinstance(obj, list):
        return [_without_paths(v) for v in obj]
    return obj


def _worker_pids() -> list[int]:
    """Processes of Ray actors that are running a shard right now (Ray names them after the method)."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::ShardWorker.run"):
            pids.append(p.info["pid"])
    return pids


@pytest.fixture(scope="module")
def ray_cluster():
    import ray  # a dependency of the package (pyproject.toml): missing, the test fails rather than skips

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_rows_equal_local_and_survive_a_killed_worker(prompts, tmp_path, local_run, ray_cluster):
    local_manifest, local_rows = local_run
    out = tmp_path / "gen"
    executor = RayExecutor(ExecutorConfig(kind="ray", workers=2, max_retries=2))
    killed: list[int] = []

    def kill_one_worker_mid_shard():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            pids = _worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_mid_shard, daemon=True)
    killer.start()
    manifest = generate.run(
        _config(), prompts, out, context=_context(), num_shards=SHARDS, progress=False, executor=executor
    )
    killer.join(timeout=5)
    assert killed, "no Ray worker was seen running a shard"
    rows = store.load_table(out / "data").to_pylist()
    ids = [(r["id"], r["sample_index"]) for r in rows]
    assert len(ids) == len(set(ids)) == 8, "a duplicate or a lost row"
    assert rows == local_rows
    assert manifest["fingerprint"] == local_manifest["fingerprint"]
    assert _without_timings(manifest) == _without_timings(local_manifest)
    assert not (out / "shards").exists()


def test_submitit_local_array_then_merge_equals_one_process_run(prompts, tmp_path, local_run):
    local_manifest, local_rows = local_run
    out = tmp_path / "gen"
    executor = SlurmExecutor(ExecutorConfig(kind="slurm", cluster="local", time_min=10, wait=False))
    # Submitted without waiting: the stage is not complete when run() returns.
    assert (
        generate.run(
            _config(), prompts, out, context=_context(), num_shards=SHARDS, progress=False, executor=executor
        )
        is None
    )
    deadline = time.time() + 300
    while store.stage_status(out)["status"] != "complete" and time.time() < deadline:
        status = store.stage_status(out)
        if status["status"] == "partial" and status["shards_done"] == SHARDS:
            break  # every task wrote its shard; merge below (the last task may be merging right now)
        time.sleep(1)
    manifest = merge(out)
    assert manifest["shards"] == SHARDS
    assert _without_timings(manifest) == _without_timings(local_manifest)
    assert manifest["tokens_by_teacher"].keys() == local_manifest["tokens_by_teacher"].keys()
    assert store.load_table(out / "data").to_pylist() == local_rows


@pytest.mark.parametrize(
    "args, expect",
    [
        (["generate", "--input", "x", "--output", "y", "--address", "ray://h:1"], "need --executor"),
        (
            ["generate", "--input", "x", "--output", "y", "--executor", "ray", "--shard-index", "0"],
            "drop it to let --executor run the shards",
        ),
        (["retry", "nowhere"], "has no shards"),
        (["merge", "nowhere"], "has no shards"),
    ],
)
def test_executor_misuse_exits_2_and_names_the_fix(tmp_path, args, expect):
    from conftest import run_cli

    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and expect in proc.stderr
    assert "Traceback" not in proc.stderr


def test_submitit_array_waits_then_merges_prompts_stage(tmp_path):
    """`wait` (the default): run() returns the joined stage, equal to a one-process run's."""
    from pipeline.stages import prompts
    from pipeline.tasks import SourceConfig

    ctx = RunContext(source=SourceConfig(task="arithmetic", n=40, seed=1))
    local = prompts.run(prompts.Config(), None, tmp_path / "local", context=ctx, num_shards=4)
    executor = SlurmExecutor(ExecutorConfig(kind="slurm", cluster="local", time_min=5))
    out = tmp_path / "array"
    manifest = prompts.run(prompts.Config(), None, out, context=ctx, num_shards=4, executor=executor)
    assert manifest is not None and store.read_manifest(out) == manifest
    assert _without_timings(manifest) == _without_timings(local)
    assert (
        store.load_table(out / "data").to_pylist()
        == store.load_table(tmp_path / "local" / "data").to_pylist()
    )


RECIPE = """run: shipped
teacher: {model: smollm2-135m-instruct, engine: hf, batch_size: 4}
student: {model: smollm2-135m-instruct}
source: {task: arithmetic, n: 4, seed: 5, split: train}
stages:
  - generate: {n: 2, temperature: 0.0, max_tokens: 20, seed: 0, shard_size: 2}
  - verify: {verifiers: [math], shard_size: 2, dedup: {minhash_threshold: null}}
  - self-distill: {engine: hf, max_tokens: 20, shard_size: 2}
  - export: {formats: [sft]}
"""


def test_distill_run_ships_every_stage_to_ray_and_matches_a_local_run(tmp_path, ray_cluster):
    """`distill run --executor ray`: every stage of a recipe (prompts, generate, verify, self-distill,
    export) runs its shards on Ray actors, and each stage's rows and manifest equal a local run's."""
    from pipeline.runner import load_recipe, run_recipe, stage_dirs

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    local = run_recipe(recipe, run_dir=tmp_path / "local", log=lambda _: None)
    executor = RayExecutor(ExecutorConfig(kind="ray", workers=2))
    shipped = run_recipe(recipe, run_dir=tmp_path / "ray", executor=executor, log=lambda _: None)
    assert set(shipped["stages"]) == set(local["stages"])
    folders = [folder.name for _, folder, _ in stage_dirs(load_recipe(recipe), tmp_path)]
    assert folders == ["00-prompts", "01-generate", "02-verify", "03-self-distill", "04-export"]
    for name in folders:
        ours, theirs = (
            store.read_manifest(tmp_path / "ray" / name),
            store.read_manifest(tmp_path / "local" / name),
        )
        assert ours["fingerprint"] == theirs["fingerprint"], name
        assert _without_paths(_without_timings(ours)) == _without_paths(_without_timings(theirs)), name
        assert not (tmp_path / "ray" / name / "shards").exists(), name
    for name in ("01-generate", "02-verify", "03-self-distill"):
        assert (
            store.load_table(tmp_path / "ray" / name / "data").to_pylist()
            == store.load_table(tmp_path / "local" / name / "data").to_pylist()
        ), name
    verify = store.read_manifest(tmp_path / "ray" / "02-verify")
    assert verify["shards"] == 2 and verify["rows_in"] == 8 and verify["prompts_in"] == 4
    assert store.read_manifest(tmp_path / "ray" / "03-self-distill")["stats"]["checks"]
