"""The row helpers on a table of messy rows: one precedence for a row's prompt, messages and meta.

.venv/bin/pytest tests/test_rows.py -q     # under a second
"""

from __future__ import annotations

import json

import pytest

from pipeline.rows import messages_of, meta_of, prompt_of

SYS = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2 + 2?"}

# (row, messages_of(row), prompt_of(row))
ROWS = [
    ({"prompt": "What is 2 + 2?"}, [USER], "What is 2 + 2?"),
    ({"messages": [SYS, USER]}, [SYS, USER], "What is 2 + 2?"),
    # Both columns (HumanEval: the bare problem + the rendered instruction): the conversation is the
    # messages, the prompt text is the prompt column.
    ({"messages": [USER], "prompt": "def f(x):"}, [USER], "def f(x):"),
    # Empty or null messages fall back to the prompt column.
    ({"messages": [], "prompt": "Q?"}, [{"role": "user", "content": "Q?"}], "Q?"),
    ({"messages": None, "prompt": "Q?"}, [{"role": "user", "content": "Q?"}], "Q?"),
    # Several user turns: the prompt is the last one.
    (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, USER]},
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, USER],
        "What is 2 + 2?",
    ),
    # A chat list as JSON text (a JSONL input); a broken one reads as absent.
    ({"messages": json.dumps([USER])}, [USER], "What is 2 + 2?"),
    ({"messages": "[{not json", "prompt": "Q?"}, [{"role": "user", "content": "Q?"}], "Q?"),
    # TRL's conversational exports keep the chat list in `prompt`.
    ({"prompt": [SYS, USER]}, [SYS, USER], "What is 2 + 2?"),
    # No user turn, a null content, a turn that is not a mapping, extra keys.
    ({"messages": [SYS]}, [SYS], ""),
    ({"messages": [{"role": "user", "content": None}]}, [{"role": "user", "content": ""}], ""),
    ({"messages": ["oops", USER]}, [USER], "What is 2 + 2?"),
    ({"messages": [dict(USER, name="x")]}, [USER], "What is 2 + 2?"),
    # Nothing usable.
    ({}, [], ""),
    ({"prompt": None, "messages": None}, [], ""),
    ({"prompt": "   "}, [], ""),
    ({"prompt": 42}, [], ""),
]


@pytest.mark.parametrize(("row", "messages", "prompt"), ROWS)
def test_messages_and_prompt(row, messages, prompt):
    assert messages_of(row) == messages
    assert prompt_of(row) == prompt


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ('{"labels": ["yes", "no"]}', {"labels": ["yes", "no"]}),
        ({"pattern": "^a$"}, {"pattern": "^a$"}),
        (None, {}),
        ("", {}),
        ("   ", {}),
        ("{bad json", {}),
        ("[1, 2]", {}),  # valid JSON, not an object
        ('"text"', {}),
        (7, {}),
    ],
)
def test_meta_of(meta, expected):
    assert meta_of({"meta": meta}) == expected


def test_meta_of_missing_column():
    assert meta_of({"id": "x"}) == {}


def test_messages_of_copies():
    """Callers may edit the returned turns (export inserts a system turn) without touching the row."""
    row = {"messages": [USER]}
    messages_of(row)[0]["content"] = "changed"
    assert row["messages"][0]["content"] == "What is 2 + 2?"
