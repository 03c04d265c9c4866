"""The `prompts` stage: materialize a prompt source into a prompts dataset.

It is the first stage of every run, and the simplest user of the store: a source (built-in task or user
data) becomes rows ``{id, task, messages, prompt, reference, meta}``, sharded, with a manifest.
Exact-duplicate prompts (same task and normalized text, when the source has no id column) collapse into one
row; the others go to ``rejected/`` with ``reject_reason = duplicate_prompt``.

    distill prompts --task arithmetic --n 200 --output runs/demo/00-prompts
    distill prompts --input data.jsonl --prompt-column question --reference-column answer --output out/
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import store, templates
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.rows import MESSAGES, PROMPT_SCHEMA  # noqa: F401 - MESSAGES: the name other modules used
from pipeline.stages import Stage, input_ref
from pipeline.tasks import SourceConfig, load_source

STAGE = "prompts"
VERSION = "1"  # bump when the code changes what this stage writes

SCHEMA = PROMPT_SCHEMA  # the prompt rows' schema lives in pipeline/rows.py, shared with other stages


@dataclass
class Config:
    shard_size: int = field(default=5000, metadata={"help": "rows per shard (the unit of resume)"})


# Source fields added after runs were made, with the value that draws what those runs drew: left out of the
# fingerprint at that value, so the runs keep their identity.
LATER_FIELDS = {"mul_digits": None}


def source_identity(source: SourceConfig) -> dict:
    """The source as its fingerprint covers it."""
    return {k: v for k, v in asdict(source).items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}


def source_templates(source: SourceConfig) -> dict[str, str]:
    if source.path or source.dataset:
        return {}
    if source.task == "arithmetic":
        from pipeline.tasks.arithmetic import template_names

        names = template_names(source.phrasing, source.ops)
    else:
        from pipeline.tasks.humaneval import TEMPLATE

        names = [TEMPLATE]
    return {n: templates.template_hash(n) for n in names}


def run(
    config: Config,
    input_dir: Path | None,
    output_dir: Path,
    *,
    context: RunContext,
    num_shards: int | None = None,
    shard_index: int | None = None,
    overwrite: bool = False,
    executor=None,
) -> dict | None:
    source = context.source
    if source is None:
        raise UserError("prompts: no source given; set `source:` in the recipe or pass --task / --input")
    rows = load_source(source)
    if not rows:
        raise UserError("prompts: the source yielded no rows; check n, split and the data file")
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    inputs = [input_ref(source.path)] if source.path else []
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": {**asdict(config), "source": source_identity(source)},
        "templates": source_templates(source),
        "inputs": inputs,
        "models": {},
    }
    # Duplicates are found over the whole source before sharding, so the result does not depend on shards.
    seen: set[str] = set()
    first = []
    for rid in table.column("id").to_pylist():
        first.append(rid not in seen)
        seen.add(rid)
    table = table.append_column("_first", pa.array(first))

    n = num_shards or store.default_num_shards(table.num_rows, config.shard_size)
    return PromptsStage().run_shards(
        table,
        output_dir,
        parts,
        num_shards=n,
        shard_index=shard_index,
        overwrite=overwrite,
        executor=executor,
    )


class PromptsStage(Stage):
    """Keeps the first row of each id; later duplicates go to rejected/ (found before sharding)."""

    name = STAGE
    version = VERSION
    reads = ("id", "_first")
    writes = tuple(SCHEMA.names)

    def work(self, shard: pa.Table, index: int) -> store.ShardOutput:
        keep = shard.column("_first")
        data = shard.filter(keep).drop_columns(["_first"])
        dups = shard.filter(pc.invert(keep)).drop_columns(["_first"])
        dups = dups.append_column(
            "reject_reason", pa.array(["duplicate_prompt"] * dups.num_rows, pa.string())
        )
        return store.ShardOutput(data=data, rejected=dups, stats={"rejected_by_reason": _count(dups)})


def _count(rejected: pa.Table) -> dict[str, int]:
    return {"duplicate_prompt": rejected.num_rows} if rejected.num_rows else {}


def summary(manifest: dict) -> str:
    dup = manifest["rejected_by_reason"].get("duplicate_prompt", 0)
    return f"{manifest['rows_out']} prompts" + (f" ({dup} duplicate prompts collapsed)" if dup else "")
