"""The `self-distill` stage: the original model rewrites the fine-tuning answers in its own words.

Self-data distillation (Thangarasa et al., 2024): before healing a pruned student with SFT, let the
unpruned model restate each target answer, so the healing data stays close to the model's own
distribution. A rewrite is kept only when the task's verifier still accepts it (same final answer);
otherwise the original answer is kept, and the manifest counts both.

Input: verified rows (`verify` output) or any dataset with `messages`/`prompt` and `completion`.
Output: the same rows with `completion` replaced by the rewrite, `original_completion`, `self_distilled`
(bool) and `passed`, ready for `export`.

    distill self-distill --input runs/demo/02-verify --output runs/demo/03-self-distill --model smollm2-135m-instruct
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import store, templates
from pipeline.errors import UserError
from pipeline.recipe import ModelConfig, RunContext
from pipeline.stages import input_ref, input_table, require_columns

STAGE = "self-distill"
VERSION = "1"
TEMPLATE = "self_distill.jinja"


@dataclass
class Config:
    model: str | None = field(
        default=None, metadata={"help": "the original model (default: the run's student model)"}
    )
    engine: Literal["vllm", "hf"] = field(default="vllm", metadata={"help": "engine of the original model"})
    max_tokens: int = field(default=256, metadata={"help": "most tokens per rewrite"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy rewrites"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    shard_size: int = field(default=512, metadata={"help": "rows per shard (the unit of resume)"})


def _user_text(row: dict) -> str:
    turns = row.get("messages") or []
    users = [t["content"] for t in turns if t["role"] == "user"]
    return users[-1] if users else row.get("prompt") or ""


def run(
    config: Config,
    input_dir: Path | None,
    output_dir: Path,
    *,
    context: RunContext,
    num_shards: int | None = None,
    shard_index: int | None = None,
    overwrite: bool = False,
    engine=None,
) -> dict | None:
    from pipeline.models import resolve
    from pipeline.train.evaluate import check

    if input_dir is None:
        raise UserError("self-distill: no input; pass --input with verified rows (the verify stage's folder)")
    model = config.model or (context.student.model if context.student else None)
    if model is None:
        raise UserError(
            "self-distill: no model; pass --model (the original, unpruned model) or set `student:`"
        )
    rows = input_table(input_dir)
    require_columns(rows, ["id", "completion"], STAGE, input_dir)
    if "passed" in rows.column_names:  # rewrite only what a student should learn
        rows = rows.filter(pc.equal(rows.column("passed"), True))
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": {**asdict(config), "model": model},
        "templates": {TEMPLATE: templates.template_hash(TEMPLATE)},
        "inputs": [input_ref(input_dir)],
        "models": {"original": resolve(model).identity},
        "sampling": {"temperature": config.temperature, "max_tokens": config.max_tokens, "seed": config.seed},
    }
    st = store.StageStore(Path(output_dir), STAGE, VERSION, parts, overwrite=overwrite)
    owned = []

    def get_engine():
        nonlocal engine
        if engine is None:
            from pipeline.stages.generate import load_teacher

            engine = load_teacher(ModelConfig(model=model, engine=config.engine))
            owned.append(engine)
        return engine

    def work(shard: pa.Table, index: int) -> store.ShardOutput:
        from pipeline.engines import GenRequest

        items = shard.to_pylist()
        requests = [
            GenRequest(
                id=f"{r['id']}:{i}",
                messages=[
                    {
                        "role": "user",
                        "content": templates.render(TEMPLATE, question=_user_text(r), answer=r["completion"]),
                    }
                ],
                max_tokens=config.max_tokens,
                temperature=config.temperature,
                seed=config.seed,
            )
            for i, r in enumerate(items)
        ]
        results = get_engine().generate(requests)
        rewrites = [res.samples[0].text.strip() if res.samples else "" for res in results]
        candidates = [{**r, "completion": text} for r, text in zip(items, rewrites, strict=True)]
        verdicts = _verdicts(candidates, check)
        out, kept, fallback = [], 0, 0
        for r, text, ok in zip(items, rewrites, verdicts, strict=True):
            use = ok is True and bool(text)
            kept += use
            fallback += not use
            out.append(
                {
                    **r,
                    "original_completion": r["completion"],
                    "completion": text if use else r["completion"],
                    "self_distilled": use,
                    "passed": True,
                }
            )
        tokens = sum(s.completion_tokens for res in results for s in res.samples)
        stats = {
            "self_distilled": kept,
            "kept_original": fallback,
            "tokens": {"prompt": 0, "completion": tokens},
        }
        return store.ShardOutput(data=pa.Table.from_pylist(out), stats=stats)

    try:
        n = num_shards or store.default_num_shards(rows.num_rows, config.shard_size)
        return store.run_sharded(st, rows, work, num_shards=n, shard_index=shard_index)
    finally:
        for e in owned:
            e.close()


def _verdicts(rows: list[dict], check) -> list[bool | None]:
    """Does the rewrite still pass? Rows without a reference keep the rewrite (nothing to check against)."""
    out: list[bool | None] = [True] * len(rows)
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("reference") is not None:
            by_task.setdefault(r.get("task") or "custom", []).append(i)
    for task, idx in by_task.items():
        for i, ok in zip(idx, check(task, [rows[i] for i in idx]), strict=True):
            out[i] = ok
    return out


def summary(manifest: dict) -> str:
    stats = manifest.get("stats", {})
    return f"{stats.get('self_distilled', 0)} answers rewritten, {stats.get('kept_original', 0)} kept as they were"
