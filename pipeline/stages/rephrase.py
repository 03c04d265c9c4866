"""The `rephrase` stage: the teacher writes new wordings of the source questions (prompt diversity).

A small student learns the wordings it is trained on. Three story templates teach it little about the
stories it meets later, so this stage has the teacher rewrite each source question `per_prompt` times, each
time in one of `styles` (a short story, an instruction, other words), shown a few worked rewrites first
(prompts/shots/rephrase.jinja). Input and output are prompts datasets; the sources stay in (`keep_source`),
and `generate -> verify` follow as for any prompts.

A rewrite inherits its source's reference: it is only a claim that the question is unchanged. It is checked
twice. Here, by rule: it must hold the same numbers as the source (as a multiset), differ from it, and for
arithmetic fall in the train split (`pipeline/tasks/arithmetic.py`: a question's split is a hash of its text,
so no rewrite is ever a validation or test question). Then by the teacher itself: `verify` keeps a
rewrite's answers only where they match the inherited reference, so a rewrite that changed the question
("7 + 5" told as "7 ducks, 5 fly away") yields no training data.
A reply that yields no rewrite goes to `rejected/` with its text in `reply` and a reason: `no_rewrite`,
`numbers_changed`, `copies_source`, `eval_split`, `duplicate_prompt` or `teacher_error`. New rows carry
`meta.rephrased_from` (the source id) and `meta.style`; the manifest counts the teacher's tokens, `stats.teacher_replies` and `stats.rewrites`.

    distill rephrase --input runs/demo/00-prompts --output runs/demo/00-rephrase --per-prompt 2
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline import store, templates
from pipeline.engines import model_identity
from pipeline.errors import UserError
from pipeline.progress import TokenProgress
from pipeline.recipe import RunContext
from pipeline.rows import PROMPT_SCHEMA as SCHEMA
from pipeline.rows import meta_of, prompt_of
from pipeline.stages import Stage, input_ref
from pipeline.tasks.ids import prompt_id

STAGE = "rephrase"
VERSION = "1"
TEMPLATE = "rephrase.jinja"
REASONS = (
    "no_rewrite",
    "numbers_changed",
    "copies_source",
    "eval_split",
    "duplicate_prompt",
    "teacher_error",
)
REJECTED_SCHEMA = SCHEMA.append(pa.field("reject_reason", pa.string())).append(pa.field("reply", pa.string()))


@dataclass
class Config:
    per_prompt: int = field(default=2, metadata={"help": "rewrites asked per source question"})
    styles: list[str] = field(
        default_factory=lambda: [
            "Rewrite as a short story",
            "Rewrite as an instruction",
            "Rewrite with other words",
        ],
        metadata={"help": "instructions the rewrites cycle through, one per rewrite"},
    )
    keep_source: bool = field(default=True, metadata={"help": "keep the source questions in the output"})
    system_template: str = field(
        default="system/rephrase.jinja", metadata={"help": "system prompt template under prompts/"}
    )
    shots_template: str | None = field(
        default="shots/rephrase.jinja",
        metadata={"help": "few-shot turns under prompts/ shown before each request (none: null)"},
    )
    temperature: float = field(default=0.8, metadata={"help": "teacher sampling temperature"})
    top_p: float = field(default=0.95, metadata={"help": "teacher nucleus sampling"})
    max_tokens: int = field(default=96, metadata={"help": "most tokens per rewrite"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    shard_size: int = field(
        default=2000, metadata={"help": "source questions per shard (the unit of resume)"}
    )

    def validate(self, path: str) -> None:
        if self.per_prompt < 1:
            raise UserError(f"{path}.per_prompt must be at least 1")
        if not self.styles:
            raise UserError(f"{path}.styles must name at least one style, e.g. 'Rewrite as a short story'")
        for name in (TEMPLATE, self.system_template, self.shots_template):
            if name and not templates.exists(name):
                raise UserError(f"{path}: no prompt template prompts/{name}; fix the name or add the file")


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
    progress: bool = True,
) -> dict | None:
    """Run the stage. ``engine`` may be a ready teacher engine (tests share one). ``executor``
    (pipeline/executors.py) runs the shards elsewhere: a Ray cluster or a Slurm array."""
    if input_dir is None:
        raise UserError("rephrase: no input; pass --input with a prompts dataset (the output of `prompts`)")
    if not context.teachers:
        raise UserError("rephrase: the teacher writes the rewrites; set `teacher:` or pass --teacher")
    rows = RephraseStage.read(input_dir)
    config.validate("rephrase")
    names = [n for n in (TEMPLATE, config.system_template, config.shots_template) if n]
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": {k: v for k, v in asdict(config).items() if k != "shard_size"},
        "templates": {n: templates.template_hash(n) for n in names},
        "inputs": [input_ref(input_dir)],
        "models": {"teacher": model_identity(context.teachers[0])},
    }
    stage = RephraseStage(config, context.teachers[0], engine=engine, progress=progress)
    shards = num_shards or max(1, -(-rows.num_rows // config.shard_size))
    return stage.run_shards(
        rows,
        output_dir,
        parts,
        num_shards=shards,
        shard_index=shard_index,
        overwrite=overwrite,
        executor=executor,
    )


class RephraseStage(Stage):
    """Rewrites of one shard of source questions; what an executor ships. The teacher is loaded on first use
    and closed by ``close``, unless a ready ``engine`` was given."""

    name = STAGE
    version = VERSION
    requires = ("id", "task", "prompt", "reference", "meta")
    reads = ("id", "task", "prompt", "messages", "reference", "meta")
    writes = tuple(SCHEMA.names)

    def __init__(self, config: Config, teacher, engine=None, progress: bool = False) -> None:
        self.config = config
        self.teacher = teacher
        self.gpus = teacher.gpus
        self.progress = progress
        self._engines = {"teacher": engine}

    def _get_engine(self):
        from pipeline.engines import load_teacher

        return self.engine("teacher", lambda: load_teacher(self.teacher))

    def work(self, shard: pa.Table, index: int) -> store.ShardOutput:
        from pipeline.engines import GenRequest

        cfg = self.config
        sources = shard.to_pylist()
        head = [{"role": "system", "content": templates.render(cfg.system_template)}]
        head += templates.render_turns(cfg.shots_template) if cfg.shots_template else []
        requests = [
            GenRequest(
                id=f"{row['id']}:{k}",
                messages=head
                + [
                    {
                        "role": "user",
                        "content": templates.render(TEMPLATE, style=_style(cfg, k), problem=prompt_of(row)),
                    }
                ],
                n=1,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_tokens,
                seed=cfg.seed + k,
            )
            for row in sources
            for k in range(cfg.per_prompt)
        ]
        engine = self._get_engine()
        bar = TokenProgress(enabled=self.progress, desc="rephrase")
        bar.start(len(requests), cfg.max_tokens)
        try:
            results = engine.generate(requests, progress=bar.update)
        finally:
            bar.close()
        seen = {prompt_id(r["task"], prompt_of(r)) for r in sources}
        kept = [_source_row(r) for r in sources] if cfg.keep_source else []
        rejected: list[dict] = []
        tokens = {"prompt": 0, "completion": 0}
        for i, res in enumerate(results):
            row, k = sources[i // cfg.per_prompt], i % cfg.per_prompt
            tokens["prompt"] += res.prompt_tokens
            text = res.samples[0].text if res.samples else None
            tokens["completion"] += sum(s.completion_tokens for s in res.samples)
            rewrite = parse_rewrite(text)
            reason = "teacher_error" if res.error or not res.samples else check(row, rewrite, seen)
            item = _rewrite_row(row, rewrite, _style(cfg, k))
            if reason is None:
                seen.add(item["id"])
                kept.append(item)
            else:
                rejected.append({**item, "reject_reason": reason, "reply": res.error or text})
        return store.ShardOutput(
            data=pa.Table.from_pylist(kept, schema=SCHEMA),
            rejected=pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA),
            stats={
                "tokens": tokens,
                "teacher_replies": len(results),
                "rewrites": len(kept) - len(sources) * cfg.keep_source,
            },
        )


def _style(config: Config, k: int) -> str:
    return config.styles[k % len(config.styles)]


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_LABEL = re.compile(r"^\s*(?:rewritten question|rewrite|question)\s*:\s*", re.IGNORECASE)


def parse_rewrite(text: str | None) -> str | None:
    """The rewritten question in a reply: its first paragraph, without a 'Rewrite:' label or quotes."""
    paragraphs = [p for p in re.split(r"\n\s*\n", (text or "").strip()) if p.strip()]
    if not paragraphs:
        return None
    rewrite = _LABEL.sub("", paragraphs[0]).strip().strip("*").strip()
    if len(rewrite) >= 2 and rewrite[0] in "\"'“" and rewrite[-1] in "\"'”":
        rewrite = rewrite[1:-1].strip()
    return " ".join(rewrite.split()) or None


def numbers(text: str) -> list[str]:
    """The numbers in a text, sorted (a multiset)."""
    return sorted(_NUMBER.findall(text))


def check(source: dict, rewrite: str | None, seen: set[str]) -> str | None:
    """Why a rewrite of `source` is refused, or None when it is kept."""
    if rewrite is None or len(rewrite) < 8:
        return "no_rewrite"
    if numbers(rewrite) != numbers(prompt_of(source)):
        return "numbers_changed"  # also catches a rewrite that gives the answer away
    new_id = prompt_id(source["task"], rewrite)
    if new_id == prompt_id(source["task"], prompt_of(source)):
        return "copies_source"
    if source["task"] == "arithmetic":
        from pipeline.tasks.arithmetic import split_of

        if split_of(rewrite) != meta_of(source).get("split", "train"):
            return "eval_split"
    if new_id in seen:
        return "duplicate_prompt"
    return None


def _source_row(row: dict) -> dict:
    return {name: row.get(name) for name in SCHEMA.names}


def _rewrite_row(source: dict, rewrite: str | None, style: str) -> dict:
    meta = {**meta_of(source), "rephrased_from": source["id"], "style": style}
    if "phrasing" in meta:
        meta["phrasing"] = "rephrased"
    return {
        "id": prompt_id(source["task"], rewrite) if rewrite else None,
        "task": source["task"],
        "messages": [{"role": "user", "content": rewrite}] if rewrite else None,
        "prompt": rewrite,
        "reference": source.get("reference"),
        "meta": json.dumps(meta),
    }


def summary(manifest: dict) -> str:
    rewrites = manifest.get("stats", {}).get("rewrites", 0)
    return f"{rewrites} rewrites of {manifest['rows_in']} questions kept; {manifest['rows_out']} prompts"
