"""The command line: bad input exits 2 with one line naming the fix, and never marks a stage complete."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

RECIPE = """
run: t
teacher: {model: smollm2-135m-instruct}
source: {task: arithmetic, n: 10}
stages:
  - generate: {n: 1}
"""


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("content", "args", "expect"),
    [
        (b"", [], "is empty"),
        (b'{"question": "hi"}\n', [], "no column 'prompt'"),
        (b'{"prompt": "\xff\xfe caf\xe9"}\n', [], "not UTF-8"),
        (b'{"id": 7, "prompt": "a"}\n{"id": 7, "prompt": "b"}\n', [], "duplicate id '7'"),
        (b'{"prompt": "a"}\n', ["--reference-column", "answer"], "set reference_column"),
    ],
    ids=["empty", "missing-column", "non-utf8", "duplicate-ids", "missing-reference"],
)
def test_bad_data_exits_2_and_names_the_fix(tmp_path, content, args, expect):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    out = tmp_path / "run" / "00-prompts"
    line = _one_line_error(run_cli("prompts", "--input", str(data), "--output", str(out), *args))
    assert expect in line
    assert not (out / "manifest.json").exists()
    # Whatever the failed stage left (here: nothing), `status` must list its folder as not done. The folder is
    # made here so status has a stage to report on: an empty listing would prove nothing.
    out.mkdir(parents=True, exist_ok=True)
    status = run_cli("status", str(tmp_path / "run"), "--json")
    assert status.returncode == 0, status.stderr
    rows = [json.loads(r) for r in status.stdout.splitlines()]
    assert rows == [{"name": "prompts", "status": "missing", "rows_out": None, "fingerprint": None}]


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda r: r + "colour: blue\n", "'colour' is not a known key"),
        (
            lambda r: r.replace("{n: 1}", "{n: 1, temprature: 0.5}"),
            "recipe.stages[0].generate.temprature is not a known key",
        ),
        (lambda r: r.replace("{n: 1}", "{n: many}"), "recipe.stages[0].generate.n must be an integer"),
        (lambda r: r.replace("task: arithmetic", "task: poetry"), "not a built-in task"),
        (lambda r: r.replace("- generate", "- translate"), "unknown stage 'translate'"),
        (lambda r: r.replace("source:", "source: [1]\nx:"), "not a known key"),
        (lambda r: r + "  - verify: {\n", "not valid YAML"),
        (lambda r: "", "is empty"),
        (
            lambda r: r.replace("instruct}", "instruct, adapter: no/such/adapter}"),
            "recipe.teacher.adapter: no/such/adapter has no adapter_config.json",
        ),
        (lambda r: r + "loop: {max_tokens: 0}\n", "recipe.loop.max_tokens must be at least 1, not 0"),
    ],
    ids=[
        "unknown-top-key",
        "typo-in-stage",
        "wrong-type",
        "unknown-task",
        "unknown-stage",
        "junk",
        "bad-yaml",
        "empty",
        "missing-adapter",
        "loop-zero-tokens",
    ],
)
def test_bad_recipe_exits_2_with_the_key_path(tmp_path, edit, expect):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(edit(RECIPE))
    line = _one_line_error(run_cli("run", str(recipe), "--run-dir", str(tmp_path / "run")))
    assert expect in line, line
    assert not list((tmp_path).glob("run/*/manifest.json"))


def test_missing_files_and_paths():
    assert "does not exist" in _one_line_error(run_cli("run", "no/such/recipe.yaml"))
    assert "not a run folder" in _one_line_error(run_cli("status", "no/such/run"))


def test_help_lists_every_command():
    out = run_cli("--help").stdout
    for cmd in ("run", "status", "merge", "prompts", "train", "eval"):
        assert cmd in out
    assert "--shard-size" in run_cli("prompts", "--help").stdout


def test_prompts_stage_end_to_end(tmp_path):
    out = tmp_path / "r" / "00-prompts"
    r = run_cli("prompts", "--task", "arithmetic", "--n", "25", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "25 prompts" in r.stdout
    (row,) = [
        json.loads(line) for line in run_cli("status", str(tmp_path / "r"), "--json").stdout.splitlines()
    ]
    assert row["name"] == "prompts" and row["status"] == "complete" and row["rows_out"] == 25


def test_a_stage_fed_the_wrong_folder_names_the_stage_that_writes_the_missing_column(tmp_path):
    prompts_dir = tmp_path / "run" / "00-prompts"
    assert (
        run_cli("prompts", "--task", "arithmetic", "--n", "3", "--output", str(prompts_dir)).returncode == 0
    )
    line = _one_line_error(run_cli("verify", "--input", str(prompts_dir), "--output", str(tmp_path / "v")))
    assert "the output of prompts, lacks column(s) completion (written by generate)" in line
    assert line.endswith("feed it the output of generate")
    assert not (tmp_path / "v" / "manifest.json").exists()


@pytest.mark.parametrize(
    "args",
    [["export"], ["verify"], ["regenerate"], ["generate", "--teacher", "smollm2-135m-instruct"]],
    ids=["export", "verify", "regenerate", "generate"],
)
def test_a_stage_fed_a_missing_folder_exits_2(tmp_path, args):
    out = tmp_path / "out"
    line = _one_line_error(run_cli(*args, "--input", str(tmp_path / "no-such-stage"), "--output", str(out)))
    assert "no-such-stage does not exist" in line, line
    assert not (out / "manifest.json").exists()


def test_a_loop_with_a_missing_training_config_exits_2_before_any_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE + "student: {model: smollm2-135m-instruct}\n")
    run = tmp_path / "run"
    line = _one_line_error(
        run_cli("loop", str(recipe), "--run-dir", str(run), "--train-config", "no/such.yaml")
    )
    assert "loop.train_config: no/such.yaml does not exist" in line, line
    assert not run.exists()
