"""A row's prompt and meta, read one way everywhere: ``messages_of``, ``prompt_of``, ``meta_of``.

Rows follow DESIGN.md's schemas: a prompt is the ``messages`` column (a chat list) or the ``prompt`` column
(a string, or a chat list in TRL's conversational exports), and ``meta`` is a JSON string. A row may carry
both, and then they mean different things: HumanEval rows keep the bare problem in ``prompt`` and the
rendered instruction the teacher was sent in ``messages``. So, in every stage, verifier and trainer:

- ``messages_of`` (the conversation): ``messages`` when it is a non-empty list, else ``prompt`` (a string
  is one user turn, a list is taken as the turns), else ``[]``;
- ``prompt_of`` (the problem as text, what dedup, decontamination and the critic compare): ``prompt`` when
  it is a non-empty string, else the last user turn of ``messages_of``, else ``""``.

Nothing here raises on messy rows: a JSON string that does not parse, a turn that is not a mapping or has
no content, a ``meta`` that is not an object all read as empty.

    from pipeline.rows import meta_of, messages_of, prompt_of
    prompt_of({"messages": [{"role": "user", "content": "2+2?"}]})   # "2+2?"
"""

from __future__ import annotations

import json

import pyarrow as pa

# The prompt rows' Arrow schema (DESIGN.md "prompts"); every stage that reads or writes prompts uses it.
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
PROMPT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("messages", MESSAGES),
        ("prompt", pa.string()),
        ("reference", pa.string()),
        ("meta", pa.string()),
    ]
)


def messages_of(row: dict) -> list[dict]:
    """The row's conversation as ``[{"role", "content"}]``: ``messages``, else ``prompt`` as a user turn."""
    turns = _turns(row.get("messages"))
    if turns:
        return turns
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}] if prompt.strip() else []
    return _turns(prompt)


def prompt_of(row: dict) -> str:
    """The prompt as text: the ``prompt`` string, else the last user turn of ``messages_of(row)``."""
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    users = [t["content"] for t in messages_of(row) if t["role"] == "user"]
    return users[-1] if users else ""


def meta_of(row: dict) -> dict:
    """The row's ``meta`` as a dict: parses a JSON string; a dict passes; anything else is ``{}``."""
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except ValueError:
            return {}
    return meta if isinstance(meta, dict) else {}


def _turns(value) -> list[dict]:
    if isinstance(value, str):  # a chat list written as JSON text (JSONL inputs)
        try:
            value = json.loads(value)
        except ValueError:
            return []
    if not isinstance(value, (list, tuple)):
        return []
    return [
        {
            "role": str(t.get("role") or "user"),
            "content": "" if t.get("content") is None else str(t["content"]),
        }
        for t in value
        if isinstance(t, dict)
    ]
