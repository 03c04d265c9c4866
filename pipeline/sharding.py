"""Run a stage's shards: the ones not done yet, here or through an executor, then the join.

`run_sharded(store, rows, stage)` is what every stage's `run()` ends with (through `Stage.run_shards`). The store
(pipeline/store.py) owns the folder, the markers and the manifest; this module only decides which shards
still run and hands them to the executor (pipeline/executors.py: local by default, Ray or a Slurm array),
then asks the store to join them.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.errors import RetryPending, UserError


def run_sharded(
    store,
    rows: pa.Table,
    work,
    *,
    num_shards: int,
    shard_index: int | None = None,
    executor=None,
) -> dict | None:
    """Run the shards that are not done yet, then join them and write the manifest (`store` is the stage's
    `pipeline.store.StageStore`).

    `work` is a stage object (`work(shard, index)`, `summarize(shard_stats)`; what executors ship) or a plain
    function `work(shard, index) -> ShardOutput` (runs in this process only; it adds no manifest
    fields). `executor` (pipeline/executors.py) decides where shards run; the default runs them here, one
    after another. With `shard_index`, only that shard runs and the manifest is written
    only if every shard is now done (`distill merge` joins the shards of a run whose last shard ran
    elsewhere). Returns the manifest, or None when shards remain. Raises RetryPending when every shard ran
    but some rows failed for a transient reason (a rerun retries just those rows).
    """
    done = store.completed_manifest()
    if done is not None:
        return done
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index {shard_index} is out of range; use 0..{num_shards - 1}")
    is_stage = hasattr(work, "work")
    store.begin(num_shards, rows.num_rows, work if is_stage else None, rows if is_stage else None)
    todo = [shard_index] if shard_index is not None else list(range(num_shards))
    todo = [i for i in todo if not store.shard_done(i)]
    if todo:
        if executor is None or getattr(executor, "name", "local") == "local":
            for i in todo:
                store.run_shard(work, rows, num_shards, i)
        else:
            if not is_stage:
                raise UserError(
                    f"{store.stage}: this stage runs only with --executor local (it is not a stage object)"
                )
            finished = executor.run(store, num_shards, todo)
            if not finished:
                return None  # submitted without waiting: `distill merge` finishes the stage later
    pending = store.pending(num_shards)
    if pending:
        waiting = [i for i in pending if store.shard_retry(i) is not None]
        if shard_index is None and waiting and len(waiting) == len(pending):
            owed = sum(len(store.shard_retry(i)) for i in waiting)
            raise RetryPending(
                f"{store.out_dir}: {owed} rows failed for a transient reason (server errors, timeouts); "
                f"rerun the same command or `distill retry {store.out_dir}` to retry them, or "
                f"`distill merge {store.out_dir} --keep-failed` to finish without them"
            )
        return None
    return store.finalize(work if is_stage else None)
