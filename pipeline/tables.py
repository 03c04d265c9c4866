"""Tables on disk: stage data as `datasets` folders of Arrow files, and the plain Arrow IPC files of shards.

`save_table` writes a folder that `datasets.load_from_disk` reads (and `load_table` reads back as one Arrow
table, memory-mapped); `write_ipc` / `read_ipc` are the single-file form the store keeps shards in.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa

from pipeline.errors import UserError


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
        write_ipc(table, tmp / "data-00000-of-00001.arrow")
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


def write_ipc(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def read_ipc(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def concat(tables: list[pa.Table]) -> pa.Table | None:
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    non_empty = [t for t in tables if t.num_rows] or tables[:1]
    return pa.concat_tables(non_empty, promote_options="permissive")
