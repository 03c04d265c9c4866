"""Stages: each is `run(config, input_dir, output_dir, *, context, ...) -> manifest`, one module each.

Inside, a stage is a small object (`Stage` below) that an executor can ship to another process or machine:
it names itself and its version, declares the columns it reads and writes, does `work(shard, index) ->
ShardOutput`, and turns the per-shard stats into its manifest fields with `summarize`. The store alone writes
shards, markers and the manifest (pipeline/store.py). Stages do not import other stages: what they share
lives one floor down (engines/, rows.py, this module).

Helpers shared by every stage: reading an input (a stage folder, a datasets folder, JSONL or Parquet),
the input's fingerprint for lineage, and the column check each stage makes before it starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa

from pipeline.errors import UserError
from pipeline.sharding import run_sharded
from pipeline.store import ShardOutput, StageStore, in_flight, load_table, read_manifest

# The stage that writes each column of the row schemas (DESIGN.md, "Row schemas"): a stage whose input lacks
# a column names it, so the fix ("feed it the output of generate") is in the error.
WRITTEN_BY = {
    **dict.fromkeys(("id", "task", "messages", "prompt", "reference", "meta"), "prompts"),
    **dict.fromkeys(
        (
            "sample_index",
            "completion",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
            "teacher",
            "seed",
        ),
        "generate",
    ),
    **dict.fromkeys(("topk_ids", "topk_logprobs"), "generate (with logprobs)"),
    **dict.fromkeys(("passed", "score", "verifier", "reason"), "verify"),
    **dict.fromkeys(("student_pass_rate", "student_completion"), "mine"),
}


class Stage:
    """The unit an executor ships: configuration plus `work` and `summarize`, no open resources.

    Attributes whose names start with `_` (loaded engines, progress bars) stay in the process that made
    them: they are dropped when the stage is pickled for a worker, which loads its own on first use.

    Every stage's `run()` has the same opening and close, written once here: `read(input)` loads the input
    and checks the columns the stage `requires` (naming the stage that writes a missing one), and
    `run_shards(rows, output, parts)` opens the stage's folder under its identity (`parts`: what the
    fingerprint covers), runs the shards not done yet (here, or where an executor says) and frees what
    `work` loaded, also on error. What differs between stages (their identity, how the rows are prepared) is
    all that is left in their `run()`.
    """

    name: str = "stage"
    version: str = "1"
    requires: tuple[str, ...] = ()  # input columns a run cannot start without (checked by `read`)
    reads: tuple[str, ...] = ()  # columns of the shard rows `work` relies on
    writes: tuple[str, ...] = ()  # columns it adds
    gpus: int = 0  # GPUs one worker needs (an executor places it on that many)

    @classmethod
    def read(cls, input_dir: str | Path) -> pa.Table:
        """The input rows (a stage folder, a datasets folder, JSONL or Parquet), checked for `requires`."""
        rows = input_table(input_dir)
        require_columns(rows, list(cls.requires), cls.name, input_dir)
        return rows

    @classmethod
    def open(cls, output_dir: str | Path, parts: dict, overwrite: bool = False) -> StageStore:
        """The stage's folder under its identity (refuses a different run there unless `overwrite`)."""
        return StageStore(Path(output_dir), cls.name, cls.version, parts, overwrite=overwrite)

    def run_shards(
        self,
        rows: pa.Table,
        output_dir: str | Path,
        parts: dict,
        *,
        num_shards: int,
        shard_index: int | None = None,
        overwrite: bool = False,
        executor=None,
        store: StageStore | None = None,
    ) -> dict | None:
        """Run the shards of `rows` that are not done yet and join them into the manifest (None while shards
        remain). `store` is the folder when the caller opened it already (to skip a finished stage early)."""
        st = store or self.open(output_dir, parts, overwrite)
        try:
            return run_sharded(
                st, rows, self, num_shards=num_shards, shard_index=shard_index, executor=executor
            )
        finally:
            self.close()

    def work(self, shard: pa.Table, index: int) -> ShardOutput:
        raise NotImplementedError

    def summarize(self, shard_stats: list[dict]) -> dict:
        """Stage-specific manifest fields from every shard's stats, in shard order. The store calls it in a
        one-process run and in `distill merge`, so both write the same manifest."""
        return {}

    def engine(self, role: str, load):
        """The engine for `role` ('teacher', 'rewriter', 'critic'), loaded with `load()` on first use and
        freed by `close`; one given ready (`self._engines[role]`, e.g. a test's shared engine) is used as it is
        and left open. A stage shipped to a worker arrives without engines and loads its own there."""
        engines = self.__dict__.setdefault("_engines", {})
        if engines.get(role) is None:
            engines[role] = load()
            self.__dict__.setdefault("_owned", []).append(engines[role])
        return engines[role]

    def close(self) -> None:
        """Free what `work` loaded (the engines `engine` loaded; ready ones stay open)."""
        owned = self.__dict__.pop("_owned", [])
        engines = self.__dict__.get("_engines", {})
        for role, engine in engines.items():
            if any(engine is o for o in owned):
                engines[role] = None
        for engine in owned:
            engine.close()

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        if "progress" in state:
            state["progress"] = False  # a worker elsewhere has no terminal to draw a bar on
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def input_table(path: str | Path) -> pa.Table:
    """Rows of a stage input: a stage folder (its data/), a datasets folder, a JSONL or a Parquet file."""
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"input {path} does not exist; pass a stage folder, a datasets folder, .jsonl or .parquet"
        )
    if p.is_dir():
        if in_flight(p):
            raise UserError(
                f"input {path} is an unfinished stage; finish it first, or run `distill merge {path}`"
            )
        return load_table(p / "data" if (p / "data").is_dir() else p)
    from pipeline.tasks.files import read_records

    records = read_records(p)
    for row in records:  # nested columns written as JSON text in a JSONL file stay usable
        if isinstance(row.get("messages"), str):
            try:
                row["messages"] = json.loads(row["messages"])
            except ValueError:
                pass
    return pa.Table.from_pylist(records)


def input_ref(path: str | Path) -> dict:
    """Lineage of an input: its path and fingerprint (the stage's own, or a hash of the file)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"input {p} does not exist; run the stage that writes it, or fix --input")
    manifest = read_manifest(p) if p.is_dir() else None
    if manifest is not None:
        return {"path": str(p), "fingerprint": manifest["fingerprint"], "stage": manifest["stage"]}
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return {"path": str(p), "fingerprint": h.hexdigest()}


def require_columns(table: pa.Table, columns: list[str], stage: str, source: str | Path) -> None:
    """Check a stage's input before any work: each missing column is named with the stage that writes it."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        writers = [WRITTEN_BY.get(c) for c in missing]
        named = ", ".join(f"{c} (written by {w})" if w else c for c, w in zip(missing, writers, strict=True))
        manifest = read_manifest(Path(source)) if Path(source).is_dir() else None
        origin = f", the output of {manifest['stage']}," if manifest else ""
        writer = next((w for w in writers if w), None)
        fix = (
            f"feed it the output of {writer}" if writer else f"feed it the output of the stage before {stage}"
        )
        raise UserError(
            f"{stage}: input {source}{origin} lacks column(s) {named} (has: {', '.join(table.column_names)}); "
            f"{fix}"
        )
    if table.num_rows == 0:
        raise UserError(f"{stage}: input {source} has no rows; check the previous stage's rejected/ folder")
