"""The tables the loop builds between its stages, each written as a step folder with a manifest.

The loop (pipeline/loop.py) chains stage folders, and between stages it builds a few tables of its own: a
round's training data (`train-data`), the prompts the generator answers (`to-answer`), the prompts that need
more samples (`hard-prompts`) and the DPO pairs of the mined prompts (`hard-negatives`). `table_step` writes
each like a stage does (data/, then manifest.json last, under a fingerprint of its settings and its inputs'
fingerprints), so a killed loop rebuilds only a step it was inside, and a stage fed by a step sees the same
input fingerprint on every resume.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from pipeline import store
from pipeline.stages import input_ref

VERSION = "1"
_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
PAIR_SCHEMA = pa.schema(
    [("id", pa.string()), ("prompt", _MESSAGES), ("chosen", _MESSAGES), ("rejected", _MESSAGES)]
)


def table_step(
    folder: Path, name: str, inputs: list[Path], config: dict, build: Callable[[], pa.Table], table: str = ""
) -> dict:
    """Write `build()` into `folder` (as data/<table>/ when `table` is named, e.g. sft for training) with a
    manifest; a step already complete with the same settings and inputs is returned as it is, unbuilt."""
    st = store.StageStore(
        folder,
        name,
        VERSION,
        {"config": config, "inputs": [input_ref(p) for p in inputs], "version": VERSION},
    )
    done = st.completed_manifest()
    if done is not None:
        return done
    rows = build()

    def work(shard: pa.Table, index: int) -> store.ShardOutput:
        return store.ShardOutput(data=shard, tables={table: shard} if table else None)

    return store.run_sharded(st, rows, work, num_shards=1)


def training_table(base: list[Path], new: list[Path], weight: int) -> pa.Table:
    """All verified rows so far: duplicates across rounds dropped (same prompt, same answer), and each row
    of a later round repeated `weight` times."""
    seen: set[tuple[str, str]] = set()
    parts = []
    for folders, times in ((base, 1), (new, weight)):
        for folder in folders:
            table = store.load_table(folder)
            keep = []
            for i, (rid, messages) in enumerate(
                zip(table.column("id").to_pylist(), table.column("messages").to_pylist(), strict=True)
            ):
                key = (rid, messages[-1]["content"].strip())
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
            parts += [table.take(pa.array(keep, pa.int64()))] * times
    return store.concat(parts)


def warm_table(old: list[Path], new: list[Path], weight: int, replay: float, seed: int) -> pa.Table:
    """A warm-started round's data: the new verified rows (not seen in `old`) repeated `weight` times, plus
    a replay sample of `replay` old rows per new row, so the student keeps what it learned before."""
    everything = training_table(old, new, 1)
    n_old = training_table(old, [], 1).num_rows
    fresh = everything.slice(n_old)
    if fresh.num_rows == 0:
        return fresh
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(n_old), min(n_old, round(replay * fresh.num_rows))))
    return store.concat([fresh] * weight + [everything.take(pa.array(picked, pa.int64()))])


def answer_set(hard_dir: Path, regen_dir: Path) -> pa.Table:
    """The prompts the generator answers: the mined hard prompts themselves (their verified answers are the
    `chosen` side of the hard negatives), then the regenerated ones, each id once."""
    from pipeline.stages.prompts import SCHEMA

    seen: set[str] = set()
    rows = []
    for folder in (hard_dir, regen_dir):
        for row in store.load_table(folder / "data").select(SCHEMA.names).to_pylist():
            if row["id"] not in seen:
                seen.add(row["id"])
                rows.append(row)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def hard_negative_pairs(
    hard_dir: Path, verified: list[Path], shape: Callable[[str], str] | None = None
) -> pa.Table:
    """DPO pairs for the mined prompts: chosen = the shortest verified answer to the prompt (written as the
    sft rows are: `shape`, e.g. place-value steps), rejected = the student's own failing answer (from
    `mine`)."""
    answers: dict[str, list[str]] = {}
    for folder in verified:
        table = store.load_table(folder / "data")
        for rid, text in zip(
            table.column("id").to_pylist(), table.column("completion").to_pylist(), strict=True
        ):
            answers.setdefault(rid, []).append(text.strip())
    pairs = []
    for row in store.load_table(hard_dir / "data").to_pylist():
        wrong = (row.get("student_completion") or "").strip()
        right = sorted((a for a in answers.get(row["id"], []) if a and a != wrong), key=len)
        if wrong and right:
            pairs.append(
                {
                    "id": row["id"],
                    "prompt": row["messages"],
                    "chosen": [{"role": "assistant", "content": shape(right[0]) if shape else right[0]}],
                    "rejected": [{"role": "assistant", "content": wrong}],
                }
            )
    if not pairs:  # an empty step still has the columns DPO reads
        return pa.Table.from_pylist([], schema=PAIR_SCHEMA)
    return pa.Table.from_pylist(pairs)


def short_prompts(answer_dir: Path, verify_dir: Path, stop_at: int) -> pa.Table:
    """The prompts answered with fewer than `stop_at` verified answers: they get more samples."""
    counts: dict[str, int] = {}
    for rid in store.load_table(verify_dir / "data").column("id").to_pylist():
        counts[rid] = counts.get(rid, 0) + 1
    prompts = store.load_table(answer_dir / "data")
    short = [i for i, rid in enumerate(prompts.column("id").to_pylist()) if counts.get(rid, 0) < stop_at]
    return prompts.take(pa.array(short, pa.int64()))


def solved_prompts(prompts_dir: Path, verify_dir: Path) -> pa.Table:
    """The prompts with at least one verified answer (the others' answers sit in verify_dir/rejected/)."""
    solved = set(store.load_table(verify_dir / "data").column("id").to_pylist())
    prompts = store.load_table(prompts_dir / "data")
    keep = [i for i, rid in enumerate(prompts.column("id").to_pylist()) if rid in solved]
    return prompts.take(pa.array(keep, pa.int64()))
