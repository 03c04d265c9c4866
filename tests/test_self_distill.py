"""Depth pruning and self-data distillation on the real embedded model (hf engine)."""

from __future__ import annotations

import json

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
    with pytest.raises(UserError, match="--layers must be between"):
        prune(embedded.spec, 30, tmp_path / "x")


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
    stats = manifest["stats"]
    assert stats["self_distilled"] + stats["kept_original"] == 2
    for r in out:
        assert r["original_completion"] in (rows[0]["completion"], rows[1]["completion"])
        if not r["self_distilled"]:
            assert r["completion"] == r["original_completion"]
        else:
            assert r["reference"] in r["completion"]
    assert manifest["models"]["original"]["sha256"] == embedded.identity["sha256"]
