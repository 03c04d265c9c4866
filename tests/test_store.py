"""The stage store: shards, resume after SIGKILL, fingerprints, status, merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import store
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.stages import prompts
from pipeline.tasks import SourceConfig
from tests.conftest import REPO, run_cli

# A stage whose shards take real time, driven through the real store in a child process we can SIGKILL.
SLOW_STAGE = textwrap.dedent(
    """
    import hashlib, sys, time
    import pyarrow as pa
    from pipeline import store

    out, delay = sys.argv[1], float(sys.argv[2])
    rows = pa.table({"id": [f"r{i:03d}" for i in range(120)], "x": list(range(120))})

    def work(shard, index):
        time.sleep(delay)
        digest = [hashlib.sha256(str(x).encode()).hexdigest() for x in shard.column("x").to_pylist()]
        data = shard.append_column("digest", pa.array(digest))
        odd = data.filter(pa.array([x % 7 == 0 for x in shard.column("x").to_pylist()]))
        rejected = odd.append_column("reject_reason", pa.array(["multiple_of_7"] * odd.num_rows))
        return store.ShardOutput(data=data, rejected=rejected, stats={"tokens": {"completion": shard.num_rows}})

    st = store.StageStore(out, "slow", "1", {"config": {"rows": 120}})
    store.run_sharded(st, rows, work, num_shards=6)
    """
)


def _run_slow(out: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(out), str(delay)], cwd=REPO)


def test_sigkill_mid_run_resumes_only_unfinished_shards(tmp_path):
    killed = tmp_path / "killed"
    proc = _run_slow(killed, delay=0.8)
    deadline = time.time() + 60
    while not (killed / "shards" / "00001" / ".done").exists():
        assert time.time() < deadline, "the stage never finished a shard"
        assert proc.poll() is None, "the stage ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.parent.name for p in (killed / "shards").glob("*/.done"))
    assert 2 <= len(done_before) < 6, done_before
    assert not (killed / store.MANIFEST).exists(), "a killed stage must not look complete"

    assert _run_slow(killed, delay=0.0).wait() == 0
    manifest = json.loads((killed / store.MANIFEST).read_text())
    runs = list(manifest["shard_runs"].values())
    assert len(runs) == 2, manifest["shard_runs"]
    assert sorted(runs[0] + runs[1]) == list(range(6)), "every shard written exactly once"
    assert {int(name) for name in done_before} in [set(r) for r in runs], "the rerun redid a finished shard"

    clean = tmp_path / "clean"
    assert _run_slow(clean, delay=0.0).wait() == 0
    assert store.load_table(killed / "data").equals(store.load_table(clean / "data"))
    assert store.load_table(killed / "rejected").equals(store.load_table(clean / "rejected"))
    assert manifest["rows_out"] == 120 and manifest["rejected_by_reason"] == {"multiple_of_7": 18}
    assert manifest["tokens"]["completion"] == 120
    assert not (killed / "shards").exists()


def _prompts(out: Path, overwrite=False, **source) -> dict | None:
    src = SourceConfig(**{"task": "arithmetic", "n": 30, **source})
    return prompts.run(
        prompts.Config(shard_size=10), None, out, context=RunContext(source=src), overwrite=overwrite
    )


def test_complete_stage_is_skipped_and_changed_config_is_refused(tmp_path):
    out = tmp_path / "00-prompts"
    first = _prompts(out)
    assert first["rows_out"] == 30 and first["shards"] == 3
    again = _prompts(out)
    assert again["finished_at"] == first["finished_at"] and again["fingerprint"] == first["fingerprint"]
    with pytest.raises(UserError, match=r"changed: config\.source\.n.*--overwrite"):
        _prompts(out, n=40)
    assert json.loads((out / store.MANIFEST).read_text())["rows_out"] == 30  # untouched
    assert _prompts(out, overwrite=True, n=40)["rows_out"] == 40


def test_manifest_has_the_contract_fields(tmp_path):
    manifest = _prompts(tmp_path / "p")
    for key in (
        "stage",
        "version",
        "fingerprint",
        "inputs",
        "config",
        "models",
        "sampling",
        "rows_in",
        "rows_out",
        "rejected_by_reason",
        "tokens",
        "wall_s",
        "tokens_per_s",
        "started_at",
        "finished_at",
        "shards",
        "host",
    ):
        assert key in manifest, key
    assert set(manifest["tokens"]) == {"prompt", "completion"}
    from datasets import load_from_disk

    assert load_from_disk(str(tmp_path / "p" / "data")).num_rows == 30


def test_secrets_are_redacted_but_token_counts_are_not():
    cfg = {
        "api_key": "sk-123",
        "hf_token": "hf_x",
        "max_tokens": 64,
        "api_key_env": "OPENAI_API_KEY",
        "nested": [{"password": "p"}],
    }
    red = store.redact(cfg)
    assert red["api_key"] == red["hf_token"] == red["nested"][0]["password"] == "<redacted>"
    assert red["max_tokens"] == 64 and red["api_key_env"] == "OPENAI_API_KEY"


def test_shard_index_then_merge(tmp_path):
    out = tmp_path / "run" / "00-prompts"
    for i in (0, 1):
        r = run_cli(
            "prompts",
            "--task",
            "arithmetic",
            "--n",
            "30",
            "--output",
            str(out),
            "--num-shards",
            "3",
            "--shard-index",
            str(i),
        )
        assert r.returncode == 0, r.stderr
    status = [
        json.loads(line) for line in run_cli("status", str(tmp_path / "run"), "--json").stdout.splitlines()
    ]
    assert status == [
        {
            "name": "prompts",
            "status": "partial",
            "rows_out": None,
            "fingerprint": status[0]["fingerprint"],
            "shards_done": 2,
            "shards": 3,
        }
    ]
    r = run_cli("merge", str(out))
    assert r.returncode == 2 and "shards 2 are not done" in r.stderr
    r = run_cli("prompts", "--task", "arithmetic", "--n", "30", "--output", str(out), "--num-shards", "4")
    assert r.returncode == 2 and "--num-shards 3" in r.stderr
    r = run_cli(
        "prompts",
        "--task",
        "arithmetic",
        "--n",
        "30",
        "--output",
        str(out),
        "--num-shards",
        "3",
        "--shard-index",
        "2",
    )
    assert r.returncode == 0, r.stderr
    (line,) = run_cli("status", str(tmp_path / "run"), "--json").stdout.splitlines()
    row = json.loads(line)
    assert row["status"] == "complete" and row["rows_out"] == 30 and len(row["fingerprint"]) == 64
    whole = _prompts(tmp_path / "whole")
    assert store.load_table(out / "data").equals(store.load_table(tmp_path / "whole" / "data"))
    assert row["fingerprint"] == whole["fingerprint"]  # the shard layout is not part of the identity


def test_concat_keeps_schema_of_empty_shards():
    a = pa.table({"x": pa.array([], pa.int64())})
    b = pa.table({"x": [1, 2]})
    assert store.concat([a, b]).num_rows == 2
    assert store.concat([a]).schema == a.schema


def test_atomic_json_leaves_no_temp_files(tmp_path):
    store.write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert os.listdir(tmp_path) == ["m.json"]


def test_a_moved_or_copied_run_keeps_its_identity(tmp_path):
    """Inputs count by fingerprint, not by path: a stage copied into another run folder is complete there,
    a changed input is still refused, and a manifest whose fingerprint covered the input path still matches."""
    import shutil

    rows = pa.table({"id": ["a", "b"], "x": [1, 2]})

    def work(shard, index):
        return store.ShardOutput(data=shard, rejected=shard.slice(0, 0), stats={})

    def stage(run: str, input_fingerprint: str = "f0") -> store.StageStore:
        parts = {"config": {"k": 1}, "inputs": [{"path": f"{run}/00-in", "fingerprint": input_fingerprint}]}
        return store.StageStore(tmp_path / run / "01-t", "t", "1", parts)

    first = store.run_sharded(stage("a"), rows, work, num_shards=1)
    shutil.copytree(tmp_path / "a" / "01-t", tmp_path / "b" / "01-t")
    copied = stage("b")
    assert copied.fingerprint == first["fingerprint"]
    assert copied.completed_manifest()["finished_at"] == first["finished_at"]
    with pytest.raises(UserError, match=r"changed: inputs"):
        stage("b", input_fingerprint="f1").completed_manifest()
    # A manifest from when the fingerprint hashed the input paths too
    manifest = json.loads((tmp_path / "a" / "01-t" / store.MANIFEST).read_text())
    manifest["fingerprint"] = store.sha256_text(store.canonical_json(manifest["fingerprint_parts"]))
    (tmp_path / "a" / "01-t" / store.MANIFEST).write_text(json.dumps(manifest))
    assert stage("a").completed_manifest()["fingerprint"] == manifest["fingerprint"]


def test_an_empty_table_round_trips(tmp_path):
    """A table of no rows (for which `datasets` writes no data file) loads back, with its columns, both here
    and with datasets.load_from_disk (what training reads)."""
    from datasets import load_from_disk

    table = pa.table({"id": pa.array([], pa.string()), "x": pa.array([], pa.int64())})
    store.save_table(table, tmp_path / "empty")
    assert len(load_from_disk(str(tmp_path / "empty"))) == 0
    loaded = store.load_table(tmp_path / "empty")
    assert loaded.num_rows == 0 and loaded.schema.names == ["id", "x"]
    assert loaded.schema.field("x").type == pa.int64()


def test_save_table_writes_what_datasets_writes_without_importing_it(tmp_path):
    """The folder is the one Dataset.save_to_disk writes (the same dataset_info.json, Arrow file and state),
    and writing it does not import `datasets` (most of a second of every stage command's start-up)."""
    from datasets import Dataset, load_from_disk

    from pipeline import tables

    table = pa.table(
        {
            "id": ["a", "b"],
            "messages": [[{"role": "user", "content": "2+2"}], []],
            "topk_ids": pa.array([[[1, 2]], None], pa.list_(pa.list_(pa.int32()))),
            "score": pa.array([0.5, None], pa.float32()),
            "ok": [True, False],
            "fixed": pa.array([[1, 2], [3, 4]], pa.list_(pa.int64(), 2)),
            "big": pa.array(["x", "y"], pa.large_string()),
            "none": pa.nulls(2),
        }
    )
    code = (
        "import sys; from pathlib import Path; import pyarrow as pa; from pipeline import tables; "
        f"tables.save_table(pa.ipc.open_file({str(tmp_path / 't.arrow')!r}).read_all(), Path({str(tmp_path / 'ours')!r})); "
        "print('datasets' in sys.modules)"
    )
    with pa.OSFile(str(tmp_path / "t.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    imported = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert imported.stdout.strip() == "False"
    Dataset(table).save_to_disk(str(tmp_path / "theirs"))

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    assert json.loads((ours / "dataset_info.json").read_text()) == json.loads(
        (theirs / "dataset_info.json").read_text()
    )
    state, their_state = (json.loads((d / "state.json").read_text()) for d in (ours, theirs))
    assert state.keys() == their_state.keys() and state["_data_files"] == their_state["_data_files"]
    assert store.load_table(ours).equals(store.load_table(theirs), check_metadata=True)
    assert load_from_disk(str(ours)).to_list() == load_from_disk(str(theirs)).to_list()
    assert load_from_disk(str(ours)).features == load_from_disk(str(theirs)).features
    # A type mapped only by `datasets` (a dictionary column) still goes through it.
    assert tables.hf_features(pa.schema([("c", pa.dictionary(pa.int8(), pa.string()))])) is None
    store.save_table(pa.table({"c": pa.array(["u", "v"]).dictionary_encode()}), tmp_path / "dict")
    assert load_from_disk(str(tmp_path / "dict"))["c"] == ["u", "v"]
