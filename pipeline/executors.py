"""Where a stage's unfinished shards run: here (`local`), on a Ray cluster (`ray`) or as a Slurm array (`slurm`).

    distill generate --input runs/demo/00-prompts --output runs/demo/01-generate --executor ray
    distill generate ... --executor ray --address ray://head:10001          # join an existing cluster
    distill run recipe.yaml --executor slurm --partition gpu --gpus-per-task 1 --time-min 120
    distill run recipe.yaml --executor slurm --no-wait                      # prints the job id; merge later

No executor schedules anything itself, and none keeps its own record of what is finished: the store's
`.done` markers are the only truth. An executor is handed the stage folder and the indices of the shards
that are not done; each worker reads the stage object and its input rows from `shards/` (written by the
store before any shard runs), runs `store.run_shard`, and the store writes the shard and its marker. A
shard that finished is never redone, a shard whose worker died is simply not done and runs again, and the
final join takes a lock, so array tasks that finish at the same moment write the manifest once.

- `ray`: one actor per worker slot keeps its engine loaded across the shards it takes (a model loads once
  per actor, not once per shard). Actors ask for the GPUs one model copy needs (`tensor_parallel_size x
  pipeline_parallel_size`) when the cluster has GPUs, so N GPUs give N / (tp x pp) data-parallel copies.
  A shard whose actor died (killed, out of memory, node lost) goes back in the queue on a fresh actor, at
  most `max_retries` times.
- `slurm`: one array job over the unfinished shards through `submitit` (partition, time, GPUs per task and
  account from flags or the recipe). It waits, then joins the shards; with `wait=False` it prints the job id
  and the last array task to finish joins them (or `distill merge` does). `cluster="local"` runs the very
  same path with submitit's local executor (tests, a workstation).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.recipe import ExecutorConfig


def build_executor(config: ExecutorConfig | None):
    """The executor for a config (None: local)."""
    if config is None or config.kind == "local":
        return LocalExecutor()
    if config.kind == "ray":
        return RayExecutor(config)
    return SlurmExecutor(config)


class LocalExecutor:
    """Shards run one after another in this process (the store's own loop)."""

    name = "local"


def run_one_shard(stage_dir: str, index: int, finalize: bool = False) -> None:
    """What a worker anywhere runs: shard `index` of the stage saved in `stage_dir/shards/`.

    With `finalize`, the worker that finds every shard done joins them (under the store's lock): the last
    task of a Slurm array submitted without waiting finishes the stage itself.
    """
    from pipeline import store

    st, progress = store.open_stage(Path(stage_dir))
    stage = st.load_stage()
    try:
        if not st.shard_done(index):
            st.run_shard(stage, st.load_input(), progress["num_shards"], index)
    finally:
        stage.close()
    if finalize and not st.pending(progress["num_shards"]) and store.read_manifest(st.out_dir) is None:
        st.finalize(stage)


# --------------------------------------------------------------------------- Ray


class RayExecutor:
    name = "ray"

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config

    def run(self, st, num_shards: int, todo: list[int]) -> bool:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs ray; run scripts/setup.sh (it pins ray)") from None
        cfg = self.config
        if not ray.is_initialized():
            if cfg.address:
                ray.init(address=cfg.address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        stage = st.load_stage()
        gpus_in_cluster = ray.cluster_resources().get("GPU", 0)
        gpus = getattr(stage, "gpus", 0) if gpus_in_cluster else 0
        cpus = ray.cluster_resources().get("CPU", 1)
        if cfg.workers:
            slots = cfg.workers
        elif gpus:
            slots = max(1, int(gpus_in_cluster // gpus))
        else:
            slots = max(1, int(cpus // cfg.cpus_per_worker))
        slots = min(slots, len(todo))

        worker_cls = ray.remote(max_restarts=0)(ShardWorker)

        def new_worker():
            return worker_cls.options(num_cpus=cfg.cpus_per_worker, num_gpus=gpus).remote(str(st.out_dir))

        queue = list(todo)
        attempts = {i: 0 for i in todo}
        idle = [new_worker() for _ in range(slots)]
        inflight: dict = {}
        try:
            while queue or inflight:
                while queue and idle:
                    worker, index = idle.pop(), queue.pop(0)
                    inflight[worker.run.remote(index)] = (worker, index)
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                worker, index = inflight.pop(ref)
                try:
                    ray.get(ref)
                    idle.append(worker)
                except ray.exceptions.RayTaskError as e:  # the stage's own code raised: not a worker loss
                    cause = e.as_instanceof_cause()
                    raise (cause if isinstance(cause, UserError) else RuntimeError(str(e))) from None
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                    ray.kill(worker)
                    idle.append(new_worker())
                    if st.shard_done(index):
                        continue  # it died after writing the shard: nothing to redo
                    attempts[index] += 1
                    if attempts[index] > cfg.max_retries:
                        raise RuntimeError(
                            f"shard {index} lost its worker {attempts[index]} times; last: {type(e).__name__}"
                        ) from None
                    print(
                        f"[distill] ray: worker of shard {index} died ({type(e).__name__}); retrying",
                        file=sys.stderr,
                        flush=True,
                    )
                    queue.append(index)
        finally:
            for worker in idle + [w for w, _ in inflight.values()]:
                ray.kill(worker)
        return True


class ShardWorker:
    """A Ray actor: loads the stage once and keeps its engine across the shards it is given (the engine
    goes when the executor kills the actor at the end)."""

    def __init__(self, stage_dir: str) -> None:
        from pipeline import store

        self.store, progress = store.open_stage(Path(stage_dir))
        self.num_shards = progress["num_shards"]
        self.stage = self.store.load_stage()
        self.rows = self.store.load_input()

    def run(self, index: int) -> int:
        if not self.store.shard_done(index):
            self.store.run_shard(self.stage, self.rows, self.num_shards, index)
        return index


# --------------------------------------------------------------------------- Slurm (submitit)


class SlurmExecutor:
    name = "slurm"

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config

    def run(self, st, num_shards: int, todo: list[int]) -> bool:
        try:
            import submitit
        except ImportError:
            raise UserError(
                "--executor slurm needs submitit; run scripts/setup.sh (it pins submitit)"
            ) from None
        cfg = self.config
        stage = st.load_stage()
        gpus = cfg.gpus_per_task if cfg.gpus_per_task is not None else getattr(stage, "gpus", 0)
        folder = st.shards_dir / "slurm" / "%j"
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=cfg.cluster)
        except RuntimeError as e:  # no sbatch on this machine
            raise UserError(f"--executor slurm: {e}; run on a Slurm login node") from None
        params: dict = {
            "timeout_min": cfg.time_min,
            "cpus_per_task": max(1, int(cfg.cpus_per_worker)),
            "slurm_array_parallelism": cfg.array_parallelism,
            "name": f"distill-{st.stage}",
        }
        if gpus:
            params["gpus_per_node"] = gpus
        if cfg.mem_gb:
            params["mem_gb"] = cfg.mem_gb
        if cfg.partition:
            params["slurm_partition"] = cfg.partition
        if cfg.account:
            params["slurm_account"] = cfg.account
        executor.update_parameters(**params)
        # Every task may finish the stage: the last one to find all shards done joins them, once (a lock).
        jobs = executor.map_array(
            run_one_shard, [str(st.out_dir)] * len(todo), todo, [not cfg.wait] * len(todo)
        )
        job_id = jobs[0].job_id.split("_")[0] if jobs else "?"
        if not cfg.wait:
            print(
                f"submitted {len(jobs)} array tasks as job {job_id}; when they are done, "
                f"`distill merge {st.out_dir}` (the last task also merges by itself)",
                flush=True,
            )
            return False
        print(f"[distill] slurm: job {job_id}, {len(jobs)} array tasks; waiting", file=sys.stderr, flush=True)
        failed = []
        for index, job in zip(todo, jobs, strict=True):
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - report every failed task, then stop
                failed.append(f"shard {index}: {str(e).strip().splitlines()[-1][:200]}")
        if failed:
            raise RuntimeError(f"slurm job {job_id}: " + "; ".join(failed))
        return True
