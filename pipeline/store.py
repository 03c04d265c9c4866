"""Stage directories: shards with .done markers, manifests written last, resume.

One job per module: this one owns a stage's folder (`StageStore`: shards, markers, progress record,
manifest); what a fingerprint covers is pipeline/fingerprint.py, reading and writing Arrow tables is
pipeline/tables.py, choosing which shards run where is pipeline/sharding.py (`run_sharded`), and the
manifest's `host` is pipeline/environment.py. The names stages have always called (`store.load_table`,
`store.run_sharded`, `store.sha256_text`, ...) stay here too. Only this module reads a stage's private files under `shards/`; others ask it (`open_stage`, `in_flight`,
`stage_status`).

Layout of one stage (see DESIGN.md):

    runs/<run>/<NN>-<stage>/
      data/           accepted rows (the folder datasets.save_to_disk writes; datasets.load_from_disk reads it)
      rejected/       filters only: rejected rows with a `reject_reason` column
      shards/         work in progress: <i>/ folders, each with .done when finished; removed at the end
      manifest.json   written last, atomically

A stage's `run()` ends with `stage.run_shards(rows, output, parts)` (pipeline/stages/__init__.py), which opens
the folder here and calls `run_sharded` (pipeline/sharding.py): the rows are cut into contiguous shards, `stage.work` runs
on each shard that has no `.done` (in this process, or on a Ray cluster or Slurm array: see
pipeline/executors.py), and once every shard is done the shards are joined into `data/` + `rejected/` and
the manifest is written: the common fields here, the stage's own from `stage.summarize(shard stats)`. The
same join runs in `distill merge`, so a stage whose shards ran anywhere gets the manifest a one-process run
writes. A SIGKILL loses at most the shards in flight.

While shards are in flight, `shards/` also holds `progress.json` (identity, shard count), `input.arrow` (the
rows being sharded) and `stage.pkl` (the stage object, without its loaded models): everything a worker on
another machine, `distill merge` or `distill retry` needs. Rows that failed for a reason that may go away
(a server error, a timeout) are not rejected: their shard gets a `.retry` marker instead of `.done`, and the
next run of the stage (or `distill retry`) redoes only those rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from pipeline.environment import host_info
from pipeline.errors import UserError
from pipeline.fingerprint import (  # noqa: F401 - canonical_json, sha256_text, redact: callers use store.*
    EXECUTION_KEYS,
    SECRET_KEY,
    canonical_json,
    differing_fields,
    fingerprint_of,
    identity_of,
    redact,
    same_identity,
    sha256_text,
)
from pipeline.sharding import run_sharded  # noqa: F401 - the name stages call: store.run_sharded
from pipeline.tables import concat, load_table, read_ipc, save_table, write_ipc  # noqa: F401 - store.load_table

MANIFEST = "manifest.json"
RUN_ID = f"{os.uname().nodename}-{os.getpid()}-{int(time.time())}"


# --------------------------------------------------------------------------- small helpers


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_counts(total: dict, more: dict) -> dict:
    """Sum nested dicts of numbers (shard stats -> stage stats)."""
    for k, v in more.items():
        if isinstance(v, dict):
            add_counts(total.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            total[k] = total.get(k, 0) + v
        else:
            total.setdefault(k, v)
    return total


# --------------------------------------------------------------------------- the stage store


@dataclass
class ShardOutput:
    """What a stage's work function returns for one shard."""

    data: pa.Table
    rejected: pa.Table | None = None  # must carry a `reject_reason` column
    stats: dict = field(default_factory=dict)  # summed over shards: tokens, per-teacher counts, ...
    # Named outputs written as data/<name>/ instead of one data/ table (export: sft/, dpo/, kd/).
    tables: dict[str, pa.Table] | None = None
    # Rows that failed for a transient reason: their positions in the shard's input, and the rows as they
    # would be rejected (with `reject_reason`), kept aside until a retry answers them.
    retry_rows: list[int] = field(default_factory=list)
    retry: pa.Table | None = None


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on `path` (flock): array tasks that finish together join the shards once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class StageStore:
    """One stage's output folder and identity.

    `parts` are the fingerprint's ingredients: config, templates, inputs, models, code version. Keeping them
    (not just the hash) lets a mismatch name the field that changed.
    """

    out_dir: Path
    stage: str
    version: str
    parts: dict
    overwrite: bool = False

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        # How the work is cut into shards does not change the result, so it is not part of the identity.
        config = {k: v for k, v in self.parts.get("config", {}).items() if k not in EXECUTION_KEYS}
        self.parts = {**self.parts, "config": config}
        self.fingerprint = fingerprint_of(self.parts)

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST

    @property
    def shards_dir(self) -> Path:
        return self.out_dir / "shards"

    def completed_manifest(self) -> dict | None:
        """The manifest if this exact stage already ran to completion; raise if a different one did."""
        on_disk = read_manifest(self.out_dir)
        if on_disk is None:
            progress = self._read_progress()
            if progress is not None and not self._matches(progress):
                self._refuse_or_clear(progress.get("fingerprint_parts", {}))
            return None
        if self._matches(on_disk):
            return on_disk
        self._refuse_or_clear(on_disk.get("fingerprint_parts", {}))
        return None

    def _matches(self, record: dict) -> bool:
        return record.get("fingerprint") == self.fingerprint or same_identity(
            record.get("fingerprint_parts") or {}, self.parts
        )

    def _refuse_or_clear(self, old_parts: dict) -> None:
        if self.overwrite:
            shutil.rmtree(self.out_dir)
            return
        what = ", ".join(differing_fields(old_parts, self.parts)) or "fingerprint"
        raise UserError(
            f"{self.out_dir} holds a different '{self.stage}' run (changed: {what}); "
            "pass --overwrite to replace it, or choose another output folder"
        )

    def _progress_path(self) -> Path:
        return self.shards_dir / "progress.json"

    def _read_progress(self) -> dict | None:
        try:
            return json.loads(self._progress_path().read_text())
        except (OSError, ValueError):
            return None

    def begin(self, num_shards: int, rows_in: int, stage=None, rows: pa.Table | None = None) -> dict:
        """Record the stage's identity and shard count (once); with a stage object, also its input rows and
        the stage itself, so a worker elsewhere, `distill merge` and `distill retry` can pick them up."""
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        if stage is not None:
            # Rewritten on every run: transport settings (a server's URL, concurrency) are not part of the
            # fingerprint and may have changed since the last try; workers and `distill retry` use these.
            import cloudpickle

            tmp = self.shards_dir / f".stage.pkl.tmp.{os.getpid()}"
            tmp.write_bytes(cloudpickle.dumps(stage))
            os.replace(tmp, self.shards_dir / "stage.pkl")
        if rows is not None and not (self.shards_dir / "input.arrow").exists():
            tmp = self.shards_dir / f".input.arrow.tmp.{os.getpid()}"
            write_ipc(rows, tmp)
            os.replace(tmp, self.shards_dir / "input.arrow")
        progress = self._read_progress()
        if progress is not None:
            if progress["num_shards"] != num_shards:
                raise UserError(
                    f"{self.out_dir} was started with --num-shards {progress['num_shards']}, not {num_shards}; "
                    "rerun with the same --num-shards, or pass --overwrite"
                )
            return progress
        progress = {
            "stage": self.stage,
            "fingerprint": self.fingerprint,
            "fingerprint_parts": self.parts,
            "num_shards": num_shards,
            "rows_in": rows_in,
            "started_at": now_iso(),
        }
        write_json_atomic(self._progress_path(), progress)
        return progress

    def shard_dir(self, index: int) -> Path:
        return self.shards_dir / f"{index:05d}"

    def shard_done(self, index: int) -> bool:
        return (self.shard_dir(index) / ".done").exists()

    def shard_retry(self, index: int) -> list[int] | None:
        """Positions (in the shard's input) of rows owed a retry, or None when the shard has none."""
        marker = self.shard_dir(index) / ".retry"
        if not marker.exists():
            return None
        return json.loads(marker.read_text())

    def pending(self, num_shards: int) -> list[int]:
        return [i for i in range(num_shards) if not self.shard_done(i)]

    def run_shard(self, work, rows: pa.Table, num_shards: int, index: int) -> ShardOutput:
        """Run one shard (or, after a transient failure, only its rows owed a retry) and write it."""
        lo, hi = shard_bounds(rows.num_rows, num_shards, index)
        shard = rows.slice(lo, hi - lo)
        retry = self.shard_retry(index)
        fn = work.work if hasattr(work, "work") else work
        t0 = time.perf_counter()
        if retry is None:
            out = fn(shard, index)
            self.write_shard(index, out, time.perf_counter() - t0)
            return out
        out = fn(shard.take(pa.array(retry, pa.int64())), index)
        # Join with what the earlier attempt answered; positions stay relative to the whole shard.
        d = self.shard_dir(index)
        old = json.loads((d / "stats.json").read_text())
        named = {}
        for f in sorted(d.glob("table-*.arrow")):
            name = f.name[len("table-") : -len(".arrow")]
            named[name] = concat([read_ipc(f), (out.tables or {}).get(name)])
        old_rejected = read_ipc(d / "rejected.arrow") if (d / "rejected.arrow").exists() else None
        joined = ShardOutput(
            data=concat([read_ipc(d / "data.arrow"), out.data]),
            rejected=concat([old_rejected, out.rejected]),
            stats=add_counts(old["stats"], out.stats),
            tables=named or out.tables,
            retry_rows=[retry[j] for j in out.retry_rows],
            retry=out.retry,
        )
        self.write_shard(index, joined, old["wall_s"] + time.perf_counter() - t0)
        return out

    def write_shard(self, index: int, out: ShardOutput, wall_s: float) -> None:
        """Write one shard into a temp folder, then rename it into place and mark it done (or owed a
        retry, when some of its rows failed for a transient reason)."""
        final = self.shard_dir(index)
        tmp = self.shards_dir / f".{index:05d}.tmp.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_ipc(out.data, tmp / "data.arrow")
        if out.rejected is not None:
            write_ipc(out.rejected, tmp / "rejected.arrow")
        for name, table in (out.tables or {}).items():
            write_ipc(table, tmp / f"table-{name}.arrow")
        if out.retry_rows:
            if out.retry is not None:
                write_ipc(out.retry, tmp / "retry.arrow")
            (tmp / ".retry").write_text(json.dumps(out.retry_rows))
        write_json_atomic(tmp / "stats.json", {"stats": out.stats, "wall_s": wall_s, "run_id": RUN_ID})
        # Another worker may have finished the same shard (a retried Ray task whose first try was only
        # slow): the first complete copy wins, so a shard is never written twice.
        if self.shard_done(index):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if not out.retry_rows:
            (final / ".done").touch()

    def load_stage(self):
        """The stage object saved by `begin` (None for stages run as plain functions)."""
        path = self.shards_dir / "stage.pkl"
        if not path.exists():
            return None
        import cloudpickle

        return cloudpickle.loads(path.read_bytes())

    def has_input(self) -> bool:
        """Whether `begin` saved the input rows (a stage object's run; workers and `distill retry` read them)."""
        return (self.shards_dir / "input.arrow").exists()

    def load_input(self) -> pa.Table:
        return read_ipc(self.shards_dir / "input.arrow")

    def finalize(self, stage=None, keep_failed: bool = False) -> dict:
        """Join all shards into data/ and rejected/, then write the manifest (last, atomically).

        Runs under a lock and at most once: tasks of an array that finish together all call it. The
        manifest's stage-specific fields come from `stage.summarize(per-shard stats)` (a stage object; a
        plain work function adds none). `keep_failed` finishes a
        stage whose rows still owe a retry, rejecting them with their transient reason.
        """
        with file_lock(self.out_dir / ".lock"):
            done = read_manifest(self.out_dir)
            if done is not None and self._matches(done):
                return done
            return self._finalize(stage, keep_failed)

    def _finalize(self, stage, keep_failed: bool) -> dict:
        progress = self._read_progress()
        n = progress["num_shards"]
        datas, rejects, stats, wall, runs, per_shard = [], [], {}, 0.0, {}, []
        named: dict[str, list] = {}
        for i in range(n):
            d = self.shard_dir(i)
            datas.append(read_ipc(d / "data.arrow"))
            if (d / "rejected.arrow").exists():
                rejects.append(read_ipc(d / "rejected.arrow"))
            if keep_failed and (d / "retry.arrow").exists():
                rejects.append(read_ipc(d / "retry.arrow"))
            for f in sorted(d.glob("table-*.arrow")):
                named.setdefault(f.name[len("table-") : -len(".arrow")], []).append(read_ipc(f))
            s = json.loads((d / "stats.json").read_text())
            per_shard.append(s["stats"])
            add_counts(stats, json.loads(json.dumps(s["stats"])))
            wall += s["wall_s"]
            runs.setdefault(s.get("run_id", "?"), []).append(i)
        data = concat(datas)
        rejected = concat(rejects)
        if named:
            (self.out_dir / "data").mkdir(parents=True, exist_ok=True)
            for name, tables in named.items():
                save_table(concat(tables), self.out_dir / "data" / name)
        else:
            save_table(data, self.out_dir / "data")
        rejected_by_reason: dict[str, int] = dict(stats.pop("rejected_by_reason", {}))
        if keep_failed:
            for i in range(n):
                f = self.shard_dir(i) / "retry.arrow"
                if f.exists():
                    for reason in read_ipc(f).column("reject_reason").to_pylist():
                        rejected_by_reason[reason] = rejected_by_reason.get(reason, 0) + 1
        if rejected is not None:
            save_table(rejected, self.out_dir / "rejected")
            if not rejected_by_reason and "reject_reason" in rejected.column_names:
                for reason in rejected.column("reject_reason").to_pylist():
                    rejected_by_reason[reason] = rejected_by_reason.get(reason, 0) + 1
        tokens = stats.pop("tokens", {"prompt": 0, "completion": 0})
        started = progress["started_at"]
        manifest = {
            "stage": self.stage,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "fingerprint_parts": self.parts,
            "inputs": self.parts.get("inputs", []),
            "config": redact(self.parts.get("config", {})),
            "models": self.parts.get("models", {}),
            "sampling": self.parts.get("sampling", {}),
            "rows_in": progress["rows_in"],
            "rows_out": data.num_rows,
            "rejected_by_reason": rejected_by_reason,
            "tokens": {"prompt": tokens.get("prompt", 0), "completion": tokens.get("completion", 0)},
            "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens.get("completion", 0) / wall, 2) if wall > 0 else 0.0,
            "started_at": started,
            "finished_at": now_iso(),
            "shards": n,
            "shard_runs": runs,  # which invocation wrote which shard: shows what a resume redid
            "host": host_info(),
            "stats": stats,
        }
        if stage is not None and hasattr(stage, "summarize"):
            manifest.update(stage.summarize(per_shard))
        write_json_atomic(self.manifest_path, manifest)
        shutil.rmtree(self.shards_dir, ignore_errors=True)
        return manifest


def open_stage(stage_dir: Path) -> tuple[StageStore, dict]:
    """The store of a stage whose shards are in flight, and its progress record (shard count, identity):
    what a worker elsewhere, `distill merge` and `distill retry` pick a stage up from."""
    progress_path = Path(stage_dir) / "shards" / "progress.json"
    if not progress_path.exists():
        raise UserError(f"{stage_dir} has no shards to merge; run the stage first")
    progress = json.loads(progress_path.read_text())
    st = StageStore(
        stage_dir,
        progress["stage"],
        progress["fingerprint_parts"].get("version", "?"),
        progress["fingerprint_parts"],
    )
    return st, progress


def read_manifest(stage_dir: Path) -> dict | None:
    try:
        return json.loads((Path(stage_dir) / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # a torn manifest cannot exist (atomic rename), but a hand-edited one can


def shard_bounds(num_rows: int, num_shards: int, index: int) -> tuple[int, int]:
    return index * num_rows // num_shards, (index + 1) * num_rows // num_shards


def default_num_shards(num_rows: int, shard_size: int) -> int:
    return max(1, -(-num_rows // max(1, shard_size)))


def in_flight(stage_dir: Path) -> bool:
    """Whether a stage has started (its shards are in flight) and has no manifest yet."""
    return (Path(stage_dir) / "shards" / "progress.json").exists() and read_manifest(stage_dir) is None


def stage_status(stage_dir: Path) -> dict:
    """One line of `distill status`: complete / partial / missing."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    name = stage_dir.name.split("-", 1)[-1]
    if manifest is not None:
        return {
            "name": name,
            "status": "complete",
            "rows_out": manifest["rows_out"],
            "fingerprint": manifest["fingerprint"],
        }
    progress_path = stage_dir / "shards" / "progress.json"
    if progress_path.exists():
        progress = json.loads(progress_path.read_text())
        done = sum(
            1 for i in range(progress["num_shards"]) if (stage_dir / "shards" / f"{i:05d}" / ".done").exists()
        )
        retry = sum(
            1
            for i in range(progress["num_shards"])
            if (stage_dir / "shards" / f"{i:05d}" / ".retry").exists()
        )
        out = {
            "name": name,
            "status": "partial",
            "rows_out": None,
            "fingerprint": progress["fingerprint"],
            "shards_done": done,
            "shards": progress["num_shards"],
        }
        if retry:
            out["shards_retry"] = retry  # shards whose rows failed transiently: `distill retry` redoes them
        return out
    return {"name": name, "status": "missing", "rows_out": None, "fingerprint": None}
