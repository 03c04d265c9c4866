"""Tables on disk: stage data as `datasets` folders of Arrow files, and the plain Arrow IPC files of shards.

`save_table` writes the folder `datasets.Dataset.save_to_disk` writes (an Arrow IPC stream file,
`dataset_info.json`, `state.json`), so `datasets.load_from_disk` reads it, and `load_table` reads it back as
one Arrow table, memory-mapped. It writes that folder with pyarrow alone: importing `datasets` costs a
one-stage command most of a second. `write_ipc` / `read_ipc` are the single-file form the store keeps
shards in.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import pyarrow as pa

from pipeline.errors import UserError

DATA_FILE = "data-00000-of-00001.arrow"  # the name save_to_disk gives a one-file dataset
# Arrow types whose `datasets` feature is a plain Value with this dtype (datasets.features, _arrow_to_datasets_dtype).
VALUE_DTYPES = {
    pa.null(): "null",
    pa.bool_(): "bool",
    **{t: str(t) for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())},
    **{t: str(t) for t in (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())},
    pa.float16(): "float16",
    pa.float32(): "float32",
    pa.float64(): "float64",
    **{t: str(t) for t in (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())},
}


def save_table(table: pa.Table, folder: Path) -> None:
    """Write a table as a `datasets` folder (load_from_disk works; the .arrow file is plain Arrow IPC)."""
    tmp = folder.with_name(f".{folder.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    features = hf_features(table.schema)
    if features is None:
        _save_with_datasets(table, tmp)
    else:
        tmp.mkdir(parents=True)
        info = json.dumps({"info": {"features": features}})
        write_ipc(table.replace_schema_metadata({"huggingface": info}), tmp / DATA_FILE)
        _write_json(
            tmp / "dataset_info.json",
            {"citation": "", "description": "", "features": features, "homepage": "", "license": ""},
        )
        state = {
            "_data_files": [{"filename": DATA_FILE}],
            "_fingerprint": secrets.token_hex(8),  # what datasets gives a table built in memory: a random one
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        _write_json(tmp / "state.json", state)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def hf_features(schema: pa.Schema) -> dict | None:
    """The `datasets` features of a schema, as dataset_info.json spells them (Features.from_arrow_schema);
    None when only `datasets` can say: a type not mapped here, a non-nullable field, or features of its own
    in the schema's metadata (a ClassLabel, an Image, ...)."""
    if schema.metadata and b"huggingface" in schema.metadata:
        return None
    try:
        return {f.name: _feature(f) for f in schema}
    except _Unmapped:
        return None


class _Unmapped(Exception):
    pass


def _feature(field: pa.Field) -> dict:
    t = field.type
    if not field.nullable:  # datasets makes every field nullable, casting the data
        raise _Unmapped
    if pa.types.is_struct(t):
        return {t.field(i).name: _feature(t.field(i)) for i in range(t.num_fields)}
    if pa.types.is_fixed_size_list(t):
        return {"feature": _feature(t.value_field), "length": t.list_size, "_type": "List"}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        kind = "List" if pa.types.is_list(t) else "LargeList"
        return {"feature": _feature(t.value_field), "_type": kind}
    if t in VALUE_DTYPES:
        return {"dtype": VALUE_DTYPES[t], "_type": "Value"}
    raise _Unmapped


def _save_with_datasets(table: pa.Table, tmp: Path) -> None:
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    Dataset(table).save_to_disk(str(tmp))
    if not any(tmp.glob("data-*.arrow")):
        # `datasets` writes no data file for zero rows, and then neither it nor we can read the folder back:
        # write one and list it, so an empty stage reads back (with its schema) like any other.
        write_ipc(table, tmp / DATA_FILE)
        state = json.loads((tmp / "state.json").read_text())
        state["_data_files"] = [{"filename": DATA_FILE}]
        (tmp / "state.json").write_text(json.dumps(state, indent=2))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


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
