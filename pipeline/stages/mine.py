"""The `mine` stage: evaluate the student on held-out prompts and keep the ones it fails (hard prompts).

Input: a prompts dataset, normally the task's validation split. The student (the run's `student`, plus an
optional LoRA `adapter`) answers every prompt `samples` times; the task's verifier scores the answers.
Output: `data/` holds the hard prompts (student pass rate below `hard_below`) with their
`student_pass_rate` and the student's first failing answer in `student_completion`; `rejected/` holds
the prompts the student already solves (`reject_reason = solved`). The manifest's `student_accuracy` is
the validation score the performance-guided loop (`distill loop`) tracks.

    distill mine --input runs/demo/loop/validation --output runs/demo/loop/iter_0/mine \
        --student smollm2-135m-instruct --adapter runs/demo/loop/iter_0/train/adapter
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa

from pipeline import store
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.stages import Stage, input_ref

STAGE = "mine"
VERSION = "1"


@dataclass
class Config:
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter folder of the student to evaluate"}
    )
    samples: int = field(default=1, metadata={"help": "answers per prompt (1 = greedy)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature when samples > 1"})
    max_tokens: int = field(default=128, metadata={"help": "most new tokens per answer"})
    hard_below: float = field(
        default=0.5, metadata={"help": "a prompt is hard when the pass rate is below this"}
    )
    student_engine: Literal["hf", "vllm"] = field(
        default="hf", metadata={"help": "engine the student runs on"}
    )
    batch_size: int = field(default=32, metadata={"help": "hf engine: prompts per batch"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def validate(self, path: str) -> None:
        if self.samples < 1:
            raise UserError(f"{path}.samples must be at least 1")
        if not 0 < self.hard_below <= 1:
            raise UserError(f"{path}.hard_below must be in (0, 1]")


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
    executor=None,
) -> dict | None:
    from pipeline.models import resolve

    if input_dir is None:
        raise UserError("mine: no input; pass --input with a prompts folder (e.g. the validation split)")
    if context.student is None:
        raise UserError("mine: no student; set `student:` in the recipe or pass --student MODEL")
    rows = MineStage.read(input_dir)
    student = resolve(context.student.model)
    adapter_id = None
    if config.adapter:
        adapter_file = Path(config.adapter) / "adapter_model.safetensors"
        if not adapter_file.is_file():
            raise UserError(
                f"mine: {config.adapter} has no adapter_model.safetensors; pass a LoRA adapter folder"
            )
        adapter_id = store.sha256_text(adapter_file.read_bytes().hex()[:1_000_000])
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": asdict(config),
        "templates": {},
        "inputs": [input_ref(input_dir)],
        "models": {"student": {**student.identity, "adapter": adapter_id}},
        "sampling": {
            "samples": config.samples,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
        },
    }
    task = rows.column("task")[0].as_py()
    stage = MineStage(config, context.student.model, task, engine=engine)
    n = num_shards or 1  # one evaluation pass: the student is loaded once
    return stage.run_shards(
        rows, output_dir, parts, num_shards=n, shard_index=shard_index, overwrite=overwrite, executor=executor
    )


class MineStage(Stage):
    """The student answers one shard of prompts; the ones it fails are kept. What an executor ships."""

    name = STAGE
    version = VERSION
    requires = ("id", "task", "messages", "reference")
    reads = requires
    writes = ("student_pass_rate", "student_completion")

    def __init__(self, config: Config, student_model: str, task: str, engine=None) -> None:
        self.config = config
        self.student_model = student_model
        self.task = task
        self._engine = engine

    def work(self, shard: pa.Table, index: int) -> store.ShardOutput:
        from pipeline.evaluate import evaluate

        prompt_rows = shard.to_pylist()
        result = evaluate(
            self.student_model,
            adapter=self.config.adapter,
            task=self.task,
            n=self.config.samples,
            engine=self.config.student_engine,
            limit=None,
            seed=self.config.seed,
            temperature=self.config.temperature if self.config.samples > 1 else None,
            max_tokens=self.config.max_tokens,
            batch_size=self.config.batch_size,
            rows=prompt_rows,
            engine_obj=self.__dict__.get("_engine"),
        )
        by_id: dict[str, list[dict]] = {}
        for r in result["rows"]:
            by_id.setdefault(r["id"], []).append(r)
        hard, solved = [], []
        for row in prompt_rows:
            answers = by_id.get(row["id"], [])
            rate = sum(1 for a in answers if a["passed"]) / max(1, len(answers))
            failing = next(
                (a["completion"] for a in answers if not a["passed"]),
                answers[0]["completion"] if answers else None,
            )
            item = {**row, "student_pass_rate": rate, "student_completion": failing}
            (hard if rate < self.config.hard_below else solved).append(item)
        solved = [{**r, "reject_reason": "solved"} for r in solved]
        stats = {
            "evaluated": len(prompt_rows),
            "passed_samples": sum(1 for r in result["rows"] if r["passed"]),
            "samples": len(result["rows"]),
            "tokens": {"prompt": 0, "completion": result["completion_tokens"]},
        }
        schema = shard.schema.append(pa.field("student_pass_rate", pa.float64())).append(
            pa.field("student_completion", pa.string())
        )
        return store.ShardOutput(
            data=pa.Table.from_pylist(hard, schema=schema),
            rejected=pa.Table.from_pylist(
                solved, schema=schema.append(pa.field("reject_reason", pa.string()))
            ),
            stats=stats,
        )

    def summarize(self, shard_stats: list[dict]) -> dict:
        passed = sum(s.get("passed_samples", 0) for s in shard_stats)
        samples = sum(s.get("samples", 0) for s in shard_stats)
        return {"student_accuracy": round(passed / max(1, samples), 4)}


def summary(manifest: dict) -> str:
    return f"student accuracy {manifest['student_accuracy']:.1%}; {manifest['rows_out']} hard prompts"
