"""The `regenerate` stage: new training prompts aimed at the student's failures (PGKD).

Input: the hard prompts from `mine`. Output: a prompts dataset of new prompts modelled on them, ready for
`generate -> verify -> export`. Methods:

- `targeted` (arithmetic; the default there): aim at the failure itself. The same operands in every training
  wording first (and in swapped order for + and *), then neighbouring problems with one operand off by one.
- `task` (arithmetic): new problems with the same structure as each hard one (same operators, same number
  of operations and digits), new numbers.
- `random` (arithmetic): the control arm. The same number of random training problems, unrelated to the
  failures, so an experiment can tell "targeted" from "more data".
  For all three the answers are exact, and the new questions fall in the train split, so validation and test
  prompts never leak into training.
- `teacher` (any task): the teacher is shown each hard prompt, its reference and the student's wrong answer
  (`student_completion`, from `mine`), and writes a new problem plus its answer (prompts/regenerate.jinja:
  `Problem: ...` / `Answer: ...`), one per sample. The written answer becomes the new row's `reference`.
  It is only a claim: the `generate -> verify` that follows keeps a row's answers only where a fresh,
  independent sample agrees with that reference (the second sample must agree), so a wrong teacher answer
  yields no training data. With a label set (`labels`, else the hard row's `meta.labels`) the answer must
  be one of the labels (case and punctuation normalized) and is stored in the set's spelling. A reply that
  yields no row goes to `rejected/` with its raw text in `reply` and a reason: `no_problem`, `no_answer`,
  `unknown_label`, `copies_hard_prompt` (a hard prompt again), `duplicate_prompt` or `teacher_error`.
  New rows keep the task and carry `meta.modelled_on` (the hard prompt's id), `meta.method` and the hard
  row's `verifier` and `labels`; the manifest counts the teacher's tokens and `stats.teacher_replies`.

    distill regenerate --input runs/demo/loop/iter_0/mine --output runs/demo/loop/iter_0/regenerate --per-prompt 4
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa

from pipeline import store, templates
from pipeline.engines import model_identity
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.rows import PROMPT_SCHEMA as SCHEMA
from pipeline.rows import meta_of, prompt_of
from pipeline.stages import Stage, input_ref, input_table, require_columns
from pipeline.tasks.ids import prompt_id

STAGE = "regenerate"
VERSION = "2"
TEMPLATE = "regenerate.jinja"
ARITHMETIC_METHODS = ("targeted", "task", "random")


@dataclass
class Config:
    per_prompt: int = field(default=4, metadata={"help": "new prompts per hard prompt"})
    method: Literal["auto", "targeted", "task", "random", "teacher"] = field(
        default="auto",
        metadata={
            "help": "targeted: same operands in new wordings + neighbours; task: same structure, new numbers; "
            "random: unrelated training problems (control arm); teacher: the teacher writes them; "
            "auto: targeted for arithmetic, else teacher"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for new problems / teacher sampling"})
    temperature: float = field(default=1.0, metadata={"help": "teacher method: sampling temperature"})
    max_tokens: int = field(default=128, metadata={"help": "teacher method: most tokens per new problem"})
    labels: list[str] | None = field(
        default=None,
        metadata={
            "help": "teacher method: the allowed answers of a label task (default: hard rows' meta.labels)"
        },
    )

    def validate(self, path: str) -> None:
        if self.per_prompt < 1:
            raise UserError(f"{path}.per_prompt must be at least 1")


def _fingerprint_config(config: Config, method: str) -> dict:
    """The config in the fingerprint: `labels` only when set, so runs from before it existed still resume."""
    out = {**asdict(config), "method": method}
    if out["labels"] is None:
        del out["labels"]
    return out


def run(
    config: Config,
    input_dir: Path | None,
    output_dir: Path,
    *,
    context: RunContext,
    num_shards: int | None = None,
    shard_index: int | None = None,
    overwrite: bool = False,
    engine=None,
    executor=None,
) -> dict | None:
    """Run the stage. ``engine`` may be a ready teacher engine (tests and the loop share one). ``executor``
    (pipeline/executors.py) runs the shards elsewhere: a Ray cluster or a Slurm array."""
    if input_dir is None:
        raise UserError("regenerate: no input; pass --input with the output of `mine`")
    rows = input_table(input_dir)
    if rows.num_rows == 0:
        raise UserError(f"regenerate: {input_dir} has no hard prompts; the student solves them all")
    require_columns(rows, list(RegenerateStage.requires), STAGE, input_dir)
    tasks = set(rows.column("task").to_pylist())
    method = config.method
    if method == "auto":
        method = "targeted" if tasks == {"arithmetic"} else "teacher"
    if method in ARITHMETIC_METHODS and tasks != {"arithmetic"}:
        raise UserError(
            f"regenerate: method '{method}' only knows arithmetic, not {sorted(tasks)}; use method: teacher"
        )
    if method == "teacher" and not context.teachers:
        raise UserError("regenerate: method 'teacher' needs a teacher; set `teacher:` or pass --teacher")
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": _fingerprint_config(config, method),
        "templates": {TEMPLATE: templates.template_hash(TEMPLATE)} if method == "teacher" else {},
        "inputs": [input_ref(input_dir)],
        # the teacher's identity (weights hash, engine options), not only its name: new weights under the
        # same name write new prompts
        "models": {} if method in ARITHMETIC_METHODS else {"teacher": model_identity(context.teachers[0])},
    }
    teacher = context.teachers[0] if method == "teacher" else None
    stage = RegenerateStage(config, method, teacher, engine=engine)
    return stage.run_shards(
        rows,
        output_dir,
        parts,
        num_shards=num_shards or 1,
        shard_index=shard_index,
        overwrite=overwrite,
        executor=executor,
    )


class RegenerateStage(Stage):
    """New prompts for one shard of hard prompts; what an executor ships. The teacher (method `teacher`)
    is loaded on first use and closed by ``close``, unless a ready ``engine`` was given."""

    name = STAGE
    version = VERSION
    requires = ("id", "task", "prompt", "meta")
    reads = ("id", "task", "prompt", "messages", "reference", "meta", "student_completion")
    writes = tuple(SCHEMA.names)

    def __init__(self, config: Config, method: str, teacher=None, engine=None) -> None:
        self.config = config
        self.method = method
        self.teacher = teacher  # a ModelConfig (method teacher), else None
        self.gpus = teacher.gpus if teacher is not None else 0
        self._engines = {"teacher": engine}

    def _get_engine(self):
        from pipeline.engines import load_teacher

        return self.engine("teacher", lambda: load_teacher(self.teacher))

    def work(self, shard: pa.Table, index: int) -> store.ShardOutput:
        hard = shard.to_pylist()
        failed: list[dict] = []
        stats: dict = {}
        if self.method in ARITHMETIC_METHODS:
            new = _from_task(hard, self.config, self.method)
        else:
            new, failed, stats = _from_teacher(hard, self.config, self._get_engine())
        seen, unique, dups = set(), [], []
        for row in new:
            (dups if row["id"] in seen else unique).append(row)
            seen.add(row["id"])
        rejected = [{**r, "reject_reason": "duplicate_prompt"} for r in dups] + failed
        schema = (
            REJECTED_SCHEMA
            if self.method == "teacher"
            else SCHEMA.append(pa.field("reject_reason", pa.string()))
        )
        return store.ShardOutput(
            data=pa.Table.from_pylist(unique, schema=SCHEMA),  # a teacher row's `reply` stays out
            rejected=pa.Table.from_pylist(rejected, schema=schema),
            stats=stats,
        )


def _from_task(hard: list[dict], config: Config, method: str) -> list[dict]:
    from pipeline.tasks import arithmetic

    out = []
    for row in hard:
        rng = random.Random(f"{config.seed}:{row['id']}")
        meta = json.loads(row["meta"])
        if method == "targeted":
            out += arithmetic.variants(meta, config.per_prompt, rng)
        elif method == "task":
            out += arithmetic.similar(meta, config.per_prompt, rng)
        else:  # random: as many training problems of the same difficulty, whatever the failure was
            out += arithmetic.generate(
                config.per_prompt, "train", seed=rng.randrange(2**31), ops=meta["ops"], digits=meta["digits"]
            )
    return out


REJECTED_SCHEMA = SCHEMA.append(pa.field("reject_reason", pa.string())).append(pa.field("reply", pa.string()))
TEACHER_REASONS = ("no_problem", "no_answer", "unknown_label", "copies_hard_prompt", "teacher_error")

# Field names as small models write them: "Problem:", "New problem:", "**Problem 1:**", "The answer is:".
_PROBLEM = re.compile(r"\bproblem\b[*_ \t]*(?:\d+[*_ \t]*)?:", re.IGNORECASE)
_ANSWER_NAME = r"(?:final\s+|correct\s+)?answer\b(?:\s+is)?[*_ \t]*:"
_ANSWER = re.compile(r"\b" + _ANSWER_NAME, re.IGNORECASE)  # inline: "Problem: 2 + 3? Answer: 5"
_ANSWER_LINE = re.compile(r"^[*_#> \t]*" + _ANSWER_NAME, re.IGNORECASE | re.MULTILINE)
_END_OF_PROBLEM = re.compile(r"^\W*(?:solution|explanation|reasoning)\b", re.IGNORECASE | re.MULTILINE)
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def _clean(text: str) -> str:
    """Strip whitespace, markdown emphasis and a pair of quotes around the whole text."""
    text = text.strip().strip("*").strip()
    if len(text) >= 2 and text[0] in "\"'“`" and text[-1] in "\"'”`":
        text = text[1:-1].strip()
    return text


def parse_reply(text: str | None) -> tuple[str | None, str | None]:
    """The (problem, answer) in a teacher's reply; None for a part that is not there.

    The problem is the text after 'Problem:' (without that marker: the reply, minus preamble paragraphs
    ending in ':'), up to 'Answer:' (only at a line start when there is no marker), a blank line or a
    'Solution:' line, and at least 8 characters. The answer is the first non-empty line after that
    'Answer:'."""
    text = (text or "").replace("\r\n", "\n")
    marker = _PROBLEM.search(text)
    rest = text[marker.end() :] if marker else text
    # Without a 'Problem:' marker only an 'Answer:' line counts: "The right answer is: x" is no problem.
    answer_at = (_ANSWER if marker else _ANSWER_LINE).search(rest)
    paragraphs = [p for p in _PARAGRAPH.split(rest[: answer_at.start()] if answer_at else rest) if p.strip()]
    while not marker and paragraphs and paragraphs[0].rstrip().endswith(":"):
        paragraphs.pop(0)  # "Sure! Here is a new problem:"
    body = paragraphs[0] if paragraphs else ""
    end = _END_OF_PROBLEM.search(body)
    problem = _clean(body[: end.start()] if end else body)
    answer = None
    if answer_at:
        lines = [line for line in rest[answer_at.end() :].split("\n") if _clean(line)]
        answer = _clean(lines[0]) if lines else None
    return (problem if len(problem) >= 8 else None), answer


def parse_problem(text: str | None) -> str | None:
    """The new problem in a teacher's reply (see `parse_reply`)."""
    return parse_reply(text)[0]


def _labels(row: dict, config: Config) -> list[str] | None:
    labels = config.labels or meta_of(row).get("labels")
    return [str(label) for label in labels] if isinstance(labels, list) and labels else None


def _as_label(answer: str, labels: list[str]) -> str | None:
    """The label the answer is, in the label set's spelling (case and punctuation do not matter)."""
    from pipeline.verifiers.label import normalize_label

    return {normalize_label(label): label for label in labels}.get(normalize_label(answer))


def _from_teacher(hard: list[dict], config: Config, engine) -> tuple[list[dict], list[dict], dict]:
    """New rows from the teacher's replies, the replies that gave none (with a reason), and token stats."""
    from pipeline.engines import GenRequest

    requests = [
        GenRequest(
            id=row["id"],
            messages=[
                {
                    "role": "user",
                    "content": templates.render(
                        TEMPLATE,
                        problem=prompt_of(row),
                        reference=row.get("reference") or "",
                        wrong_answer=(row.get("student_completion") or "").strip()[:1000],
                        labels=_labels(row, config) or [],
                    ),
                }
            ],
            n=config.per_prompt,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            seed=config.seed,
        )
        for row in hard
    ]
    results = engine.generate(requests)
    new, failed = [], []
    tokens = {"prompt": 0, "completion": 0}
    hard_ids = {prompt_id(row["task"], prompt_of(row)) for row in hard}
    for row, res in zip(hard, results, strict=True):
        hard_meta = meta_of(row)
        meta = {"modelled_on": row["id"], "method": "teacher"}
        meta.update({k: hard_meta[k] for k in ("verifier", "labels") if k in hard_meta})
        labels = _labels(row, config)
        tokens["prompt"] += res.prompt_tokens
        if res.error or not res.samples:
            failed.append(
                {
                    "task": row["task"],
                    "meta": json.dumps(meta),
                    "reject_reason": "teacher_error",
                    "reply": res.error or "the engine returned no samples",
                }
            )
        for sample in res.samples:
            tokens["completion"] += sample.completion_tokens
            problem, answer = parse_reply(sample.text)
            reason = None
            if problem is None:
                reason = "no_problem"
            elif answer is None:
                reason = "no_answer"
            elif labels and _as_label(answer, labels) is None:
                reason = "unknown_label"
            elif prompt_id(row["task"], problem) in hard_ids:
                reason = "copies_hard_prompt"
            item = {
                "id": prompt_id(row["task"], problem) if problem else None,
                "task": row["task"],
                "messages": [{"role": "user", "content": problem}] if problem else None,
                "prompt": problem,
                "reference": (_as_label(answer, labels) if labels and reason is None else answer),
                "meta": json.dumps(meta),
                "reply": sample.text,
            }
            if reason is None:
                new.append(item)
            else:
                failed.append({**item, "reject_reason": reason})
    return new, failed, {"tokens": tokens, "teacher_replies": sum(len(r.samples) for r in results)}


def summary(manifest: dict) -> str:
    return f"{manifest['rows_out']} new prompts from {manifest['rows_in']} hard ones"
