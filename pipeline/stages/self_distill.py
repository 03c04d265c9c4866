"""The `self-distill` stage: the original model rewrites the fine-tuning answers in its own words.

Self-data distillation (Thangarasa et al., 2024): before healing a pruned student with SFT, let the
unpruned model restate each target answer, so the healing data stays close to the model's own
distribution. Each rewrite is cleaned of chatter ("Sure! Here is ...", "I hope this helps!") and checked
by the row's own verifier: the one its task names (arithmetic: math, capitals: label, humaneval: code; user
data: the source's `verifier`), else the one that accepted it in the verify stage, else the critic (rows
without a reference, when the run has a `critic:`). A rewrite is used only when it is complete, kept the
working, and that check passes; otherwise the verified original answer stays (the paper's fallback).
`self_distill_check` records the outcome per row:

- `passed`: the rewrite is used;
- `failed` / `undecided`: the verifier rejected it / could not decide;
- `truncated`: the rewrite hit `max_tokens` (a cut-off answer teaches the student not to stop);
- `empty`: nothing was left after cleaning;
- `shortened`: the rewrite is shorter than `min_length_ratio` times the original (in characters): it dropped
  the working ("The answer is 42." for a worked solution), and a student trained on it learns to guess;
- `unchecked`: no verifier can check this row; the rewrite is used only with `keep_unchecked: true`.

A used rewrite gets its own `finish_reason` and `completion_tokens`; the teacher's `topk_ids` /
`topk_logprobs` belong to the original text, so they are cleared (a `kd` export then skips the row).

Input: verified rows (`verify` output) or any dataset with `messages`/`prompt` and `completion`. Only
answers verify passed are rewritten (a student should learn only those): a row whose `passed` is false goes
to `rejected/` as `verify_failed`, one whose `passed` is null as `verify_undecided`, each counted in the
manifest's `rejected_by_reason`.
Output: the same rows with `completion` replaced by the rewrite where it passed, plus
`original_completion`, `rewrite` (the cleaned rewrite, used or not), `self_distilled` (bool),
`self_distill_check` and `self_distill_verifier`.

    distill self-distill --input runs/demo/02-verify --output runs/demo/03-self-distill --model smollm2-135m-instruct
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import store, templates
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.stages import Stage, input_ref

STAGE = "self-distill"
# 2: task verifiers, cleaned rewrites, fresh columns; 3: shortened rewrites rejected; 4: unverified input rows
# go to rejected/ (they were dropped before sharding, so shards of 3 cover other rows), the critic's weights
# hash is in the fingerprint
VERSION = "4"
TEMPLATE = "self_distill.jinja"
ADDED = [
    ("original_completion", pa.string()),
    ("rewrite", pa.string()),
    ("self_distilled", pa.bool_()),
    ("self_distill_check", pa.string()),
    ("self_distill_verifier", pa.string()),
]
NEEDS_REFERENCE = ("math", "label")  # verifiers that compare with a reference; the others check by themselves


@dataclass
class Config:
    model: str | None = field(
        default=None, metadata={"help": "the original model (default: the run's unpruned student model)"}
    )
    engine: Literal["vllm", "hf"] = field(default="vllm", metadata={"help": "engine of the original model"})
    max_tokens: int = field(default=256, metadata={"help": "most tokens per rewrite"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy rewrites"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    verifier: str | None = field(
        default=None,
        metadata={
            "help": "verifier of every rewrite (default: the row's task's own, else the verify stage's)"
        },
    )
    verifier_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "options of the verifiers, by name, e.g. {label: {labels: [yes, no]}}"},
    )
    min_length_ratio: float = field(
        default=0.5,
        metadata={
            "help": "a rewrite shorter than this fraction of the original (characters) dropped the working: "
            "the original stays (0 = off)"
        },
    )
    keep_unchecked: bool = field(
        default=False, metadata={"help": "use rewrites that no verifier could check (marked unchecked)"}
    )
    shard_size: int = field(default=512, metadata={"help": "rows per shard (the unit of resume)"})

    def validate(self, path: str) -> None:
        if self.max_tokens < 1:
            raise UserError(f"{path}.max_tokens must be at least 1")
        if not 0 <= self.min_length_ratio <= 1:
            raise UserError(
                f"{path}.min_length_ratio must be between 0 and 1 (0 keeps rewrites of any length)"
            )


# Chatter around a rewrite, tried in order until nothing changes. Leading: courtesy words, then an
# introduction line that announces the rewrite; trailing: closing remarks.
_COURTESY = re.compile(r"^(?:sure|certainly|of course|absolutely|okay|ok|great|alright)\b[\s!.,]*", re.I)
_INTRO = re.compile(
    r"^(?:here(?:'s| is| are)|below is|this is|the following is)\b[^\n]{0,120}?"
    r"(?:rewrit|rephras|restat|reword|paraphras|revised|version|own words)[^\n]*?(?::\s*|\.\s*\n|\.?\s*$)",
    re.I,
)
_HEADING = re.compile(
    r"^[#*\s]*(?:rewritten|rephrased|restated|reworded|revised|paraphrased)\s+"
    r"(?:answer|version|response|explanation)[*\s]*:?[*\s]*",
    re.I,
)
_CLOSING = re.compile(
    r"(?:^|\n|(?<=[.!?])[ \t]+)[ \t]*(?:i hope (?:this|that|it)\b|hope (?:this|that|it) helps|let me know\b|"
    r"feel free to\b|if you have any (?:other |more |further )?questions)[^\n]*\s*$",
    re.I,
)
_QUOTES = {'"': '"', "\u201c": "\u201d", "'": "'"}


def clean_rewrite(text: str) -> str:
    """The rewrite without greetings, announcements, headings, wrapping quotes or closing remarks."""
    text = (text or "").strip()
    while True:
        before = text
        text = _COURTESY.sub("", text, count=1).strip()
        text = _INTRO.sub("", text, count=1).strip()
        text = _HEADING.sub("", text, count=1).strip()
        text = _CLOSING.sub("", text, count=1).strip()
        if len(text) > 1 and _QUOTES.get(text[0]) == text[-1] and text.count(text[0]) <= 2:
            text = text[1:-1].strip()
        if text == before:
            return text


def _user_text(row: dict) -> str:
    turns = row.get("messages") or []
    users = [t["content"] for t in turns if t["role"] == "user"]
    return users[-1] if users else row.get("prompt") or ""


def verifier_of(row: dict, config: Config, has_critic: bool) -> str | None:
    """The verifier that checks this row's rewrite, or None when nothing can (the rewrite is unchecked)."""
    from pipeline.tasks import row_verifier

    name = config.verifier or row_verifier(row) or row.get("verifier")
    if name in NEEDS_REFERENCE and row.get("reference") is None:
        name = None
    if name == "critic" and not has_critic:
        name = None
    if name is None and has_critic:
        name = "critic"
    return name


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
    critic_engine=None,
    executor=None,
) -> dict | None:
    """Run the stage. ``engine`` (the rewriter) and ``critic_engine`` may be ready engines (tests share one).
    ``executor`` (pipeline/executors.py) runs the shards elsewhere: a Ray cluster or a Slurm array."""
    from pipeline.models import resolve

    if input_dir is None:
        raise UserError("self-distill: no input; pass --input with verified rows (the verify stage's folder)")
    model = config.model or context.original_student or (context.student.model if context.student else None)
    if model is None:
        raise UserError(
            "self-distill: no model; pass --model (the original, unpruned model) or set `student:`"
        )
    rows = SelfDistillStage.read(input_dir)
    rows = rows.drop_columns([n for n, _ in ADDED if n in rows.column_names])
    has_critic = critic_engine is not None or context.critic is not None
    resolved = resolve(model)
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": {**asdict(config), "model": model},
        "templates": {TEMPLATE: templates.template_hash(TEMPLATE)},
        "inputs": [input_ref(input_dir)],
        "models": {"original": resolved.identity},
        "sampling": {"temperature": config.temperature, "max_tokens": config.max_tokens, "seed": config.seed},
    }
    if context.critic is not None:
        from pipeline.engines import model_identity

        parts["models"]["critic"] = model_identity(context.critic)
    schema = rows.schema
    for name, kind in ADDED:
        schema = schema.append(pa.field(name, kind))
    stage = SelfDistillStage(
        config, resolved, schema, context.critic, has_critic, engine=engine, critic_engine=critic_engine
    )
    n = num_shards or store.default_num_shards(rows.num_rows, config.shard_size)
    return stage.run_shards(
        rows, output_dir, parts, num_shards=n, shard_index=shard_index, overwrite=overwrite, executor=executor
    )


class SelfDistillStage(Stage):
    """Rewrites of one shard of answers by the original model, each checked by its verifier; what an
    executor ships. The rewriter (and the critic, when a row needs it) load on first use and are closed by
    ``close``, unless ready engines were given."""

    name = STAGE
    version = VERSION
    requires = ("id", "completion")
    reads = ("id", "messages", "prompt", "completion", "reference", "task", "verifier", "passed")
    writes = tuple(name for name, _ in ADDED)

    def __init__(
        self,
        config: Config,
        resolved,
        schema: pa.Schema,
        critic=None,
        has_critic=False,
        engine=None,
        critic_engine=None,
    ) -> None:
        self.config = config
        self.resolved = resolved  # the original model (a ResolvedModel)
        self.schema = schema  # the output rows' schema
        self.critic = critic  # the run's critic (a ModelConfig), or None
        self.has_critic = has_critic
        self._engines = {"rewriter": engine, "critic": critic_engine}

    def _get(self, which: str):
        from pipeline.engines import load_engine, load_teacher

        if which == "rewriter":
            return self.engine(which, lambda: load_engine(self.config.engine, self.resolved))
        return self.engine(which, lambda: load_teacher(self.critic))

    def _count_tokens(self, text: str) -> int:
        if "_tokenizer" not in self.__dict__:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.resolved.path)
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def work(self, shard: pa.Table, index: int) -> store.ShardOutput:
        from pipeline.engines import GenRequest

        config, schema = self.config, self.schema
        shard, rejected = _verified(shard)
        items = shard.to_pylist()
        requests = [
            GenRequest(
                id=f"{r['id']}:{i}",
                messages=[
                    {
                        "role": "user",
                        "content": templates.render(TEMPLATE, question=_user_text(r), answer=r["completion"]),
                    }
                ],
                max_tokens=config.max_tokens,
                temperature=config.temperature,
                seed=config.seed,
            )
            for i, r in enumerate(items)
        ]
        results = self._get("rewriter").generate(requests)
        samples = [res.samples[0] if res.samples else None for res in results]
        texts = [clean_rewrite(s.text) if s else "" for s in samples]
        outcome, names = _check(items, samples, texts, config, self.has_critic, self._get)
        out = []
        for r, s, text, check, name in zip(items, samples, texts, outcome, names, strict=True):
            use = check == "passed" or (check == "unchecked" and config.keep_unchecked)
            row = {
                **r,
                "original_completion": r["completion"],
                "rewrite": text,
                "self_distilled": use,
                "self_distill_check": check,
                "self_distill_verifier": name,
            }
            if use:  # every column that described the original text now describes the rewrite
                row["completion"] = text
                row.update(
                    {
                        k: v
                        for k, v in _fresh_columns(s, text, self._count_tokens).items()
                        if k in schema.names
                    }
                )
            out.append(row)
        tokens = sum(s.completion_tokens for s in samples if s)
        counts = Counter(outcome)
        stats = {
            "self_distilled": sum(r["self_distilled"] for r in out),
            "kept_original": sum(not r["self_distilled"] for r in out),
            "checks": dict(counts),
            "tokens": {"prompt": sum(res.prompt_tokens for res in results), "completion": tokens},
        }
        return store.ShardOutput(
            data=pa.Table.from_pylist(out, schema=schema), rejected=rejected, stats=stats
        )


def _verified(shard: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """The rows verify passed (the ones to rewrite), and the others with their `reject_reason`."""
    if "passed" not in shard.column_names:
        return shard, None
    passed = pc.fill_null(shard.column("passed"), False)
    others = shard.filter(pc.invert(passed))
    reasons = [
        "verify_undecided" if p is None else "verify_failed" for p in others.column("passed").to_pylist()
    ]
    return shard.filter(passed), others.append_column("reject_reason", pa.array(reasons, pa.string()))


def _fresh_columns(sample, text: str, count_tokens) -> dict:
    return {
        "finish_reason": sample.finish_reason,
        "completion_tokens": count_tokens(text),
        "topk_ids": None,
        "topk_logprobs": None,
    }


def _check(
    items, samples, texts, config: Config, has_critic: bool, get
) -> tuple[list[str], list[str | None]]:
    """Per row: the outcome (see the module docstring) and the verifier that decided it."""
    from pipeline.verifiers import build_verifier

    outcome: list[str] = [""] * len(items)
    names: list[str | None] = [None] * len(items)
    todo: dict[str, list[int]] = {}
    for i, (r, s, text) in enumerate(zip(items, samples, texts, strict=True)):
        if not text:
            outcome[i] = "empty"
        elif s.finish_reason == "length":
            outcome[i] = "truncated"
        elif len(text) < config.min_length_ratio * len(r["completion"] or ""):
            outcome[i] = "shortened"
        else:
            names[i] = verifier_of(r, config, has_critic)
            if names[i] is None:
                outcome[i] = "unchecked"
            else:
                todo.setdefault(names[i], []).append(i)
    for name, idx in todo.items():
        options = dict(config.verifier_options.get(name) or {})
        if name == "critic":
            options["engine"] = get("critic")
        verifier = build_verifier(name, **options)
        candidates = [
            {**items[i], "completion": texts[i], "finish_reason": samples[i].finish_reason} for i in idx
        ]
        for i, v in zip(idx, verifier.check(candidates), strict=True):
            outcome[i] = "passed" if v.passed is True else "failed" if v.passed is False else "undecided"
    return outcome, names


def summary(manifest: dict) -> str:
    stats = manifest.get("stats", {})
    checks = ", ".join(f"{k} {v}" for k, v in sorted(stats.get("checks", {}).items()))
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(manifest.get("rejected_by_reason", {}).items()))
    return (
        f"{stats.get('self_distilled', 0)} answers rewritten, {stats.get('kept_original', 0)} kept as they were"
        + (f" (rewrite checks: {checks})" if checks else "")
        + (f"; not verified, rejected: {rejected}" if rejected else "")
    )
