"""The `regenerate` stage: new training prompts aimed at the student's failures (PGKD).

Input: the hard prompts from `mine`. Output: a prompts dataset of new prompts modelled on them, ready for
`generate -> verify -> export`. Methods:

- `targeted` (arithmetic; the default there): aim at the failure itself. The same operands in every training
  wording first (and in swapped order for + and *), then neighbouring problems with one operand off by one.
- `task` (arithmetic): new problems with the same structure as each hard one (same operators, same number
  of operations and digits), new numbers.
- `random` (arithmetic): the control arm. The same number of random training problems, unrelated to the
  failures, so an experiment can tell "targeted" from "more data".
  For all three the answers are exact, and the new questions fall in the train split, so validation and test
  prompts never leak into training.
- `teacher` (any task): the teacher writes new problems from prompts/regenerate.jinja, one per sample.
  They carry no reference answer, so verify them with a critic (or a verifier that needs none).

    distill regenerate --input runs/demo/loop/iter_0/mine --output runs/demo/loop/iter_0/regenerate --per-prompt 4
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa

from pipeline import store, templates
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.stages import input_ref, input_table, require_columns
from pipeline.stages.prompts import SCHEMA
from pipeline.tasks.ids import prompt_id

STAGE = "regenerate"
VERSION = "2"
TEMPLATE = "regenerate.jinja"
ARITHMETIC_METHODS = ("targeted", "task", "random")


@dataclass
class Config:
    per_prompt: int = field(default=4, metadata={"help": "new prompts per hard prompt"})
    method: Literal["auto", "targeted", "task", "random", "teacher"] = field(
        default="auto",
        metadata={
            "help": "targeted: same operands in new wordings + neighbours; task: same structure, new numbers; "
            "random: unrelated training problems (control arm); teacher: the teacher writes them; "
            "auto: targeted for arithmetic, else teacher"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for new problems / teacher sampling"})
    temperature: float = field(default=1.0, metadata={"help": "teacher method: sampling temperature"})
    max_tokens: int = field(default=128, metadata={"help": "teacher method: most tokens per new problem"})

    def validate(self, path: str) -> None:
        if self.per_prompt < 1:
            raise UserError(f"{path}.per_prompt must be at least 1")


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
    if input_dir is None:
        raise UserError("regenerate: no input; pass --input with the output of `mine`")
    rows = input_table(input_dir)
    if rows.num_rows == 0:
        raise UserError(f"regenerate: {input_dir} has no hard prompts; the student solves them all")
    require_columns(rows, ["id", "task", "prompt", "meta"], STAGE, input_dir)
    tasks = set(rows.column("task").to_pylist())
    method = config.method
    if method == "auto":
        method = "targeted" if tasks == {"arithmetic"} else "teacher"
    if method in ARITHMETIC_METHODS and tasks != {"arithmetic"}:
        raise UserError(
            f"regenerate: method '{method}' only knows arithmetic, not {sorted(tasks)}; use method: teacher"
        )
    if method == "teacher" and not context.teachers:
        raise UserError("regenerate: method 'teacher' needs a teacher; set `teacher:` or pass --teacher")
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": {**asdict(config), "method": method},
        "templates": {TEMPLATE: templates.template_hash(TEMPLATE)} if method == "teacher" else {},
        "inputs": [input_ref(input_dir)],
        "models": {} if method in ARITHMETIC_METHODS else {"teacher": context.teachers[0].model},
    }
    st = store.StageStore(Path(output_dir), STAGE, VERSION, parts, overwrite=overwrite)

    def work(shard: pa.Table, index: int) -> store.ShardOutput:
        hard = shard.to_pylist()
        if method in ARITHMETIC_METHODS:
            new = _from_task(hard, config, method)
        else:
            new = _from_teacher(hard, config, context, engine)
        seen, unique, dups = set(), [], []
        for row in new:
            (dups if row["id"] in seen else unique).append(row)
            seen.add(row["id"])
        rejected = pa.Table.from_pylist(
            [{**r, "reject_reason": "duplicate_prompt"} for r in dups],
            schema=SCHEMA.append(pa.field("reject_reason", pa.string())),
        )
        return store.ShardOutput(data=pa.Table.from_pylist(unique, schema=SCHEMA), rejected=rejected)

    return store.run_sharded(st, rows, work, num_shards=num_shards or 1, shard_index=shard_index)


def _from_task(hard: list[dict], config: Config, method: str) -> list[dict]:
    from pipeline.tasks import arithmetic

    out = []
    for row in hard:
        rng = random.Random(f"{config.seed}:{row['id']}")
        meta = json.loads(row["meta"])
        if method == "targeted":
            out += arithmetic.variants(meta, config.per_prompt, rng)
        elif method == "task":
            out += arithmetic.similar(meta, config.per_prompt, rng)
        else:  # random: as many training problems of the same difficulty, whatever the failure was
            out += arithmetic.generate(
                config.per_prompt, "train", seed=rng.randrange(2**31), ops=meta["ops"], digits=meta["digits"]
            )
    return out


_PROBLEM = re.compile(r"(?:^|\n)\s*(?:new\s+)?problem\s*:\s*(.+)", re.IGNORECASE | re.DOTALL)


def parse_problem(text: str) -> str | None:
    """The new problem in a teacher's reply: the text after 'Problem:', else the first non-empty line."""
    m = _PROBLEM.search(text or "")
    body = (m.group(1) if m else text or "").strip().split("\n\n")[0]
    body = body.strip().strip('"').strip()
    return body if len(body) >= 8 else None


def _from_teacher(hard: list[dict], config: Config, context: RunContext, engine) -> list[dict]:
    from pipeline.engines import GenRequest

    owned = None
    if engine is None:
        from pipeline.stages.generate import load_teacher

        engine = owned = load_teacher(context.teachers[0])
    try:
        requests = [
            GenRequest(
                id=row["id"],
                messages=[{"role": "user", "content": templates.render(TEMPLATE, problem=row["prompt"])}],
                n=config.per_prompt,
                temperature=config.temperature,
                max_tokens=config.max_tokens,
                seed=config.seed,
            )
            for row in hard
        ]
        results = engine.generate(requests)
    finally:
        if owned is not None:
            owned.close()
    out = []
    for row, res in zip(hard, results, strict=True):
        for sample in res.samples:
            problem = parse_problem(sample.text)
            if problem is None:
                continue
            out.append(
                {
                    "id": prompt_id(row["task"], problem),
                    "task": row["task"],
                    "messages": [{"role": "user", "content": problem}],
                    "prompt": problem,
                    "reference": None,
                    "meta": json.dumps({"modelled_on": row["id"], "method": "teacher"}),
                }
            )
    return out


def summary(manifest: dict) -> str:
    return f"{manifest['rows_out']} new prompts from {manifest['rows_in']} hard ones"
