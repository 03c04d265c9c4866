"""User data as a prompt source: JSONL, Parquet, CSV, a `datasets` folder, or a hub dataset name.

Column mapping comes from the source config (`prompt_column`, `messages_column`, `reference_column`,
`id_column`). Every problem with the data is a `UserError` that names the file, the row or column, and the fix:
empty files, missing columns, non-UTF-8 bytes, invalid JSON lines, empty prompts, duplicate ids.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pipeline.errors import UserError
from pipeline.tasks.ids import prompt_id


def read_records(path: str | Path) -> list[dict]:
    """Read a data file or folder into a list of dicts, with errors that point at the bad line."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path} does not exist; check the path")
    if p.is_dir():
        return _read_dataset_dir(p)
    if p.stat().st_size == 0:
        raise UserError(f"{path} is empty; give a file with at least one row")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(p).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise UserError(f"{path} is not a readable Parquet file ({str(e)[:100]}); re-export it") from None
    text = _decode(p)
    if suffix in (".jsonl", ".json", ".ndjson"):
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                data = json.loads(text)
            except ValueError as e:
                raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix it") from None
            return [_record(r, path, i + 1) for i, r in enumerate(data)]
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(_record(json.loads(line), path, lineno))
            except ValueError:
                raise UserError(f"{path} line {lineno} is not valid JSON; fix or remove that line") from None
        if not records:
            raise UserError(f"{path} has no rows (only blank lines); give at least one JSON object per line")
        return records
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        records = list(reader)
        if not records:
            raise UserError(f"{path} has a header but no rows; add rows")
        return records
    raise UserError(
        f"{path}: unsupported file type '{suffix}'; use .jsonl, .parquet, .csv or a datasets folder"
    )


def _record(obj, path, lineno) -> dict:
    if not isinstance(obj, dict):
        raise UserError(
            f"{path} line {lineno} is a {type(obj).__name__}, not a JSON object; write one object per row"
        )
    return obj


def _decode(p: Path) -> str:
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{p} line {line} is not UTF-8 (byte 0x{raw[e.start]:02x}); re-encode the file as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {p.name}"
        ) from None


def _read_dataset_dir(p: Path) -> list[dict]:
    from pipeline.store import load_table

    folder = p / "data" if (p / "data").is_dir() else p
    return load_table(folder).to_pylist()


def _hub_records(name: str, split: str) -> list[dict]:
    try:
        from datasets import load_dataset

        return load_dataset(name, split=split).to_list()
    except Exception as e:  # noqa: BLE001 - offline, missing, gated: the fix is the same
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(
            f"cannot load hub dataset '{name}' split '{split}' ({reason}); "
            "download it and pass `path:` to a local .jsonl/.parquet file or datasets folder instead"
        ) from None


def load_user_rows(config) -> list[dict]:
    where = config.path or config.dataset
    records = read_records(config.path) if config.path else _hub_records(config.dataset, config.split)
    if not records:
        raise UserError(f"{where} has no rows; give at least one")
    columns = list(records[0].keys())
    wanted = config.messages_column or config.prompt_column
    for col, key in (
        (wanted, "messages_column" if config.messages_column else "prompt_column"),
        (config.reference_column, "reference_column"),
    ):
        if col is not None and col not in records[0]:
            raise UserError(
                f"{where} has no column '{col}' (columns: {', '.join(columns)}); set {key} in the source"
            )
    has_ids = config.id_column in records[0]
    task = config.task_name
    rows, first_row_of_id = [], {}
    used = {wanted, config.reference_column, config.id_column if has_ids else None}
    for i, r in enumerate(records):
        rownum = i + 1
        if config.messages_column:
            messages = _messages(r.get(wanted), where, rownum)
            prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        else:
            value = r.get(wanted)
            prompt = "" if value is None else str(value)
            messages = [{"role": "user", "content": prompt}]
        if not prompt.strip():
            raise UserError(
                f"{where} row {rownum} has an empty prompt in '{wanted}'; fill it or remove the row"
            )
        ref = r.get(config.reference_column) if config.reference_column else None
        if ref is not None and not isinstance(ref, str):
            ref = json.dumps(ref) if isinstance(ref, (dict, list)) else str(ref)
        if has_ids:
            rid = r.get(config.id_column)
            if rid is None or str(rid) == "":
                raise UserError(
                    f"{where} row {rownum} has no '{config.id_column}'; fill it or set id_column to a column with ids"
                )
            rid = str(rid)
            if rid in first_row_of_id:
                dups = [str(j + 1) for j, x in enumerate(records) if str(x.get(config.id_column)) == rid][:5]
                raise UserError(
                    f"{where} has duplicate id '{rid}' (rows {', '.join(dups)}); make ids unique or drop the '{config.id_column}' column"
                )
            first_row_of_id[rid] = rownum
        else:
            rid = prompt_id(task, prompt)
        extra = {k: v for k, v in r.items() if k not in used}
        rows.append(
            {
                "id": rid,
                "task": task,
                "messages": messages,
                "prompt": prompt,
                "reference": ref,
                "meta": json.dumps(extra, default=str, ensure_ascii=False),
            }
        )
    if config.n is not None:
        rows = rows[: config.n]
    return rows


def _messages(value, where, rownum) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    )
    if not ok:
        raise UserError(
            f"{where} row {rownum}: the messages column must be a list of {{role, content}} objects; fix that row"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]
