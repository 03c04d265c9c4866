"""The export stage: verdict rows -> TRL's sft/, dpo/ and kd/ formats, keeping `id`, counting what it skips."""

import json

import pyarrow as pa
import pytest
from datasets import load_from_disk

from pipeline import store
from pipeline.errors import UserError
from pipeline.stages import export

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
VERDICT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("messages", MESSAGES),
        ("reference", pa.string()),
        ("sample_index", pa.int32()),
        ("completion", pa.string()),
        ("finish_reason", pa.string()),
        ("completion_tokens", pa.int32()),
        ("teacher", pa.string()),
        ("system", pa.string()),
        ("topk_ids", pa.list_(pa.list_(pa.int32()))),
        ("topk_logprobs", pa.list_(pa.list_(pa.float32()))),
        ("passed", pa.bool_()),
        ("score", pa.float64()),
        ("verifier", pa.string()),
        ("reason", pa.string()),
    ]
)


def _row(pid, i, completion, passed, finish="stop", topk=True):
    return {
        "id": pid,
        "task": "arithmetic",
        "messages": [{"role": "user", "content": f"question {pid}"}],
        "reference": "4",
        "sample_index": i,
        "completion": completion,
        "finish_reason": finish,
        "completion_tokens": 3,
        "teacher": "smollm2-135m-instruct",
        "system": "Answer briefly.",
        "topk_ids": [[1, 2], [3, 4], [5, 6]] if topk else None,
        "topk_logprobs": [[-0.1, -2.5], [-0.2, -2.0], [-0.3, -1.5]] if topk else None,
        "passed": passed,
        "score": None if passed is None else float(passed),
        "verifier": "math",
        "reason": "",
    }


@pytest.fixture
def verify_dir(tmp_path):
    """A verify stage folder: passing rows in data/, failing ones in rejected/ with their reason."""
    d = tmp_path / "02-verify"
    d.mkdir()
    data = [
        _row("a", 0, "It is 4.", True),
        _row("a", 1, "4", True),
        _row("a", 3, "Maybe", None),  # undecided
        _row("b", 0, "2 + 2 = 4", True),
        _row("b", 2, "2 + 2 = 4 and then I kept go", True, finish="length"),
        _row("c", 0, "Four is 4", True, topk=False),
    ]
    rejected = [
        {**_row("a", 2, "It is 5.", False), "reject_reason": "wrong_answer"},
        {**_row("b", 1, "2 + 2 = 4", True), "reject_reason": "near_duplicate"},  # passed: not a DPO negative
        {**_row("c", 1, "3", False), "reject_reason": "wrong_answer"},
    ]
    schema = VERDICT_SCHEMA.append(pa.field("reject_reason", pa.string()))
    store.save_table(pa.Table.from_pylist(data, schema=VERDICT_SCHEMA), d / "data")
    store.save_table(pa.Table.from_pylist(rejected, schema=schema), d / "rejected")
    (d / "manifest.json").write_text(json.dumps({"stage": "verify", "fingerprint": "f" * 64}))
    return d


def test_exports_trl_formats_keeping_id(verify_dir, tmp_path):
    out = tmp_path / "03-export"
    manifest = export.run(export.Config(formats=["sft", "dpo", "kd"]), verify_dir, out)

    sft = load_from_disk(str(out / "data" / "sft"))
    assert sorted(zip(sft["id"], sft["sample_index"], strict=True)) == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("c", 0),
    ]
    first = sft[0]
    assert first["messages"] == [
        {"role": "user", "content": "question a"},
        {"role": "assistant", "content": "It is 4."},
    ]

    dpo = load_from_disk(str(out / "data" / "dpo"))
    pairs = {r["id"]: (r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo}
    assert pairs == {"a": ("It is 4.", "It is 5."), "c": ("Four is 4", "3")}  # b has no failing answer
    assert dpo[0]["prompt"] == [{"role": "user", "content": "question a"}]

    kd = load_from_disk(str(out / "data" / "kd"))
    assert sorted(kd["id"]) == ["a", "a", "b"]  # c has no top-k
    assert kd[0]["topk_ids"] == [[1, 2], [3, 4], [5, 6]]
    assert kd[0]["completion"] == [{"role": "assistant", "content": "It is 4."}]
    assert kd.features["topk_logprobs"].feature.feature.dtype == "float32"

    assert manifest["rows_by_format"] == {"sft": 4, "kd": 3, "dpo": 2}
    assert manifest["rows_out"] == 4
    assert manifest["skipped"] == {"undecided": 1, "truncated": 1, "no_topk": 1, "dpo_no_failing_answer": 1}
    assert manifest["inputs"][0]["fingerprint"] == "f" * 64
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == manifest["fingerprint"]


def test_trl_recognizes_the_formats(verify_dir, tmp_path):
    from trl import is_conversational

    out = tmp_path / "exp"
    export.run(export.Config(formats=["sft", "dpo", "kd"]), verify_dir, out)
    for fmt in ("sft", "dpo", "kd"):
        assert is_conversational(load_from_disk(str(out / "data" / fmt))[0]), fmt


def test_options_limit_and_system_prompt(verify_dir, tmp_path):
    config = export.Config(formats=["sft"], max_per_prompt=1, drop_truncated=False, include_system=True)
    manifest = export.run(config, verify_dir, tmp_path / "exp")
    sft = load_from_disk(str(tmp_path / "exp" / "data" / "sft"))
    assert sorted(sft["id"]) == ["a", "b", "c"]
    assert sft[0]["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert manifest["skipped"] == {"undecided": 1, "over_max_per_prompt": 2}


def test_place_value_spells_out_sft_and_dpo_answers_not_kd(tmp_path):
    d = tmp_path / "02-verify"
    right = "First 44 + 86 = 130. Then 130 - 18 = 112.\nAnswer: 112"
    wrong = "First 44 + 86 = 120. Then 120 - 18 = 102.\nAnswer: 102"
    store.save_table(
        pa.Table.from_pylist(
            [_row("a", 0, right, True), _row("b", 0, "Answer: 4", True)], schema=VERDICT_SCHEMA
        ),
        d / "data",
    )
    schema = VERDICT_SCHEMA.append(pa.field("reject_reason", pa.string()))
    store.save_table(
        pa.Table.from_pylist([{**_row("a", 1, wrong, False), "reject_reason": "failed"}], schema=schema),
        d / "rejected",
    )
    (d / "manifest.json").write_text(json.dumps({"stage": "verify", "fingerprint": "f" * 64}))
    manifest = export.run(export.Config(formats=["sft", "dpo", "kd"], place_value=True), d, tmp_path / "out")
    spelled = "First 44 + 86 = 44 + 80 + 6 = 124 + 6 = 130. Then 130 - 18 = 130 - 10 - 8 = 120 - 8 = 112.\nAnswer: 112"
    sft = {
        r["id"]: r["messages"][-1]["content"] for r in load_from_disk(str(tmp_path / "out" / "data" / "sft"))
    }
    assert sft == {"a": spelled, "b": "Answer: 4"}
    (pair,) = load_from_disk(str(tmp_path / "out" / "data" / "dpo"))
    # the rejected answer keeps its wrong equation as written and has its right one spelled out
    assert pair["chosen"][0]["content"] == spelled
    assert pair["rejected"][0]["content"] == (
        "First 44 + 86 = 120. Then 120 - 18 = 120 - 10 - 8 = 110 - 8 = 102.\nAnswer: 102"
    )
    kd = load_from_disk(str(tmp_path / "out" / "data" / "kd"))
    assert kd[0]["completion"][0]["content"] == right  # the teacher's logprobs are for its own tokens
    assert manifest["place_value_rows"] == 1


def test_sign_first_keeps_every_step_at_or_above_zero(tmp_path):
    d = tmp_path / "02-verify"
    answer = "First 13 - 48 = -35. Then -35 + 60 = 25.\nAnswer: 25"
    store.save_table(pa.Table.from_pylist([_row("a", 0, answer, True)], schema=VERDICT_SCHEMA), d / "data")
    (d / "manifest.json").write_text(json.dumps({"stage": "verify", "fingerprint": "f" * 64}))
    config = export.Config(formats=["sft"], place_value=True, sign_first=True)
    manifest = export.run(config, d, tmp_path / "out")
    (row,) = load_from_disk(str(tmp_path / "out" / "data" / "sft"))
    assert row["messages"][-1]["content"] == (
        "First 48 - 13 = 48 - 10 - 3 = 38 - 3 = 35, so 13 - 48 = -35. "
        "Then 60 - 35 = 60 - 30 - 5 = 30 - 5 = 25, so -35 + 60 = 25.\nAnswer: 25"
    )
    assert manifest["place_value_rows"] == 1 and manifest["fingerprint_parts"]["config"]["sign_first"] is True
    plain = export.run(export.Config(formats=["sft"]), d, tmp_path / "plain")
    assert (
        "sign_first" not in plain["fingerprint_parts"]["config"]
    )  # exports made before it keep their identity
    with pytest.raises(UserError, match="sign_first.*set place_value: true"):
        export.run(export.Config(formats=["sft"], sign_first=True), d, tmp_path / "x")


def test_resume_skips_and_changed_config_refuses(verify_dir, tmp_path):
    out = tmp_path / "exp"
    first = export.run(export.Config(formats=["sft"]), verify_dir, out)
    again = export.run(export.Config(formats=["sft"]), verify_dir, out)
    assert again["finished_at"] == first["finished_at"]
    with pytest.raises(UserError, match="changed: config.formats.*--overwrite"):
        export.run(export.Config(formats=["sft", "dpo"]), verify_dir, out)
    replaced = export.run(export.Config(formats=["sft", "dpo"]), verify_dir, out, overwrite=True)
    assert replaced["rows_by_format"]["dpo"] == 2


def test_bad_input_and_config_are_user_errors(verify_dir, tmp_path):
    with pytest.raises(UserError, match="formats must be"):
        export.run(export.Config(formats=["sft", "ppo"]), verify_dir, tmp_path / "x")
    bare = tmp_path / "bare"
    rows = [
        {
            k: v
            for k, v in _row("a", 0, "4", True, topk=False).items()
            if k not in ("topk_ids", "topk_logprobs")
        }
    ]
    bare.mkdir()
    store.save_table(pa.Table.from_pylist(rows), bare / "data")
    with pytest.raises(UserError, match="logprobs"):
        export.run(export.Config(formats=["kd"]), bare, tmp_path / "y")
    no_verdicts = tmp_path / "gen"
    no_verdicts.mkdir()
    store.save_table(pa.Table.from_pylist([{"id": "a", "completion": "4"}]), no_verdicts / "data")
    with pytest.raises(UserError, match="lacks column.*passed"):
        export.run(export.Config(), no_verdicts, tmp_path / "z")


def test_cli_export(verify_dir, tmp_path):
    from conftest import run_cli

    out = tmp_path / "cli-export"
    proc = run_cli("export", "--input", str(verify_dir), "--output", str(out), "--formats", "sft", "dpo")
    assert proc.returncode == 0, proc.stderr
    assert "4 sft rows, 2 dpo rows" in proc.stdout
    bad = run_cli("export", "--input", str(verify_dir), "--output", str(tmp_path / "o2"), "--formats", "rl")
    assert bad.returncode == 2 and "formats must be" in bad.stderr
