"""The `generate` stage: every teacher answers every prompt `n` times.

Input: a prompts dataset (``id``, ``task``, ``messages`` or ``prompt``, ``reference``, ``meta``).
Output rows (DESIGN.md "generations"): the prompt columns plus ``sample_index``, ``completion``,
``finish_reason``, ``prompt_tokens``, ``completion_tokens``, ``teacher``, ``seed``, ``system`` (the system
prompt the teacher saw) and, with ``logprobs: k``, ``topk_ids`` / ``topk_logprobs`` per completion token
(for logit distillation). A prompt that cannot be served (too long for the context, rejected by the
server, ...) goes to ``rejected/`` with its ``reject_reason`` and the engine's message in ``error``.

    distill generate --input runs/demo/00-prompts --output runs/demo/01-generate --n 4 --temperature 0.8

The teacher's system prompt comes from ``prompts/system/<task>.jinja`` (``default.jinja`` when the task has
none); a system message already in the row wins. Each prompt's sampling seed is derived from the stage
seed and the row id, so a row's completions do not depend on sharding, batching or resume. ``seed: null``
(``--no-seed``) sends no seed at all, for servers that refuse or mishandle them; the ``seed`` column is then
null and the manifest says ``seeded: false``: a rerun gives other completions.

The progress bar (pipeline/progress.py) counts samples and completion tokens as the engine makes them, with
tokens/s and an ETA from the token rate.

Several teachers: the work is cut teacher-major (all shards of teacher 1, then of teacher 2, ...), so only
one engine is loaded at a time, and each shard is a unit of resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import store, templates
from pipeline.engines import load_teacher, teacher_identity
from pipeline.errors import UserError
from pipeline.progress import TokenProgress
from pipeline.recipe import ModelConfig, RunContext
from pipeline.rows import MESSAGES, PROMPT_SCHEMA, messages_of
from pipeline.stages import Stage, input_ref

STAGE = "generate"
VERSION = "1"  # bump when the code changes what this stage writes

SHOTS = "__shots__"  # the few-shot turns travel with the system prompts (one dict an executor ships)
PROMPT_COLUMNS = ["id", "task", "messages", "prompt", "reference", "meta"]
GEN_FIELDS = [
    ("sample_index", pa.int32()),
    ("completion", pa.string()),
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("teacher", pa.string()),
    ("seed", pa.int64()),
    ("system", pa.string()),
]
TOPK_FIELDS = [
    ("topk_ids", pa.list_(pa.list_(pa.int32()))),
    ("topk_logprobs", pa.list_(pa.list_(pa.float32()))),
    # sha256 of the teacher's vocabulary (models.tokenizer_fingerprint): the top-k ids mean nothing in
    # another tokenizer, so training checks it against the student's before mixing the two.
    ("topk_tokenizer", pa.string()),
]


@dataclass
class Config:
    n: int = field(default=4, metadata={"help": "samples per prompt and teacher"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (0 = greedy)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass"})
    max_tokens: int = field(default=256, metadata={"help": "most new tokens per completion"})
    stop: list[str] | None = field(default=None, metadata={"help": "strings that end a completion"})
    seed: int | None = field(
        default=0,
        metadata={
            "help": "sampling seed; each prompt's seed is derived from it and the row id "
            "(null, or --no-seed: send none; completions are then not reproducible)"
        },
    )
    logprobs: int = field(
        default=0,
        metadata={"help": "store the top-k logprobs of every completion token (0-20; for logit KD)"},
    )
    system_template: str | None = field(
        default=None,
        metadata={
            "help": "system prompt template under prompts/ for every task (default: system/<task>.jinja)"
        },
    )
    shots_template: str | None = field(
        default=None,
        metadata={
            "help": "few-shot turns under prompts/ ('### user' / '### assistant' blocks) shown to the teacher "
            "before every prompt, e.g. shots/arithmetic_worked.jinja; never exported"
        },
    )
    shard_size: int = field(default=256, metadata={"help": "prompts per shard (the unit of resume)"})

    def validate(self, path: str) -> None:
        if self.n < 1:
            raise UserError(f"{path}.n must be at least 1")
        if self.temperature < 0:
            raise UserError(f"{path}.temperature must be >= 0 (0 means greedy)")
        if not 0 < self.top_p <= 1:
            raise UserError(f"{path}.top_p must be in (0, 1]")
        if self.max_tokens < 1:
            raise UserError(f"{path}.max_tokens must be at least 1")
        if not 0 <= self.logprobs <= 20:
            raise UserError(f"{path}.logprobs must be between 0 and 20 (top-k logprobs per token)")
        if self.shard_size < 1:
            raise UserError(f"{path}.shard_size must be at least 1")


def prompt_seed(seed: int, row_id: str) -> int:
    """The sampling seed of one prompt: stable across shards, batches, resumes and teachers."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{row_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def system_template_name(config: Config, task: str | None) -> str:
    if config.system_template:
        return config.system_template
    name = f"system/{task}.jinja"
    return name if task and templates.exists(name) else "system/default.jinja"


def chat_messages(row: dict, system: str, shots: list[dict] | None = None) -> list[dict]:
    """The conversation sent to the teacher: the row's turns, with our system prompt unless it has one,
    and the few-shot turns (if any) between the system prompt and the row's own turns."""
    turns = messages_of(row)
    head = [turns.pop(0)] if turns and turns[0]["role"] == "system" else []
    if not head and system and turns:
        head = [{"role": "system", "content": system}]
    return head + list(shots or []) + turns


def run(
    config: Config,
    input_dir: Path | None,
    output_dir: Path,
    *,
    context: RunContext,
    num_shards: int | None = None,
    shard_index: int | None = None,
    overwrite: bool = False,
    engines: dict | None = None,
    progress: bool = True,
    executor=None,
) -> dict | None:
    """Run the stage. ``engines`` maps teacher labels to ready engines (tests and benchmarks share one);
    teachers without one are loaded on first use and closed at the end. ``executor`` (see
    pipeline/executors.py) runs the shards elsewhere: a Ray cluster or a Slurm array."""
    if input_dir is None:
        raise UserError("generate: no input; pass --input with a prompts folder, JSONL or Parquet file")
    teachers = list(context.teachers)
    if not teachers:
        raise UserError("generate: no teacher; set `teacher:` in the recipe or pass --teacher MODEL")
    rows = GenerateStage.read(input_dir)
    if "messages" not in rows.column_names and "prompt" not in rows.column_names:
        raise UserError(f"generate: input {input_dir} needs a `messages` or `prompt` column")
    rows = _prompt_columns(rows)

    tasks = sorted({t or "custom" for t in rows.column("task").to_pylist()})
    system_names = {task: system_template_name(config, task) for task in tasks}
    system_texts = {task: templates.render(name) for task, name in system_names.items()}
    used = set(system_names.values())
    if config.shots_template:
        system_texts[SHOTS] = templates.render_turns(config.shots_template)
        used.add(config.shots_template)
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": asdict(config),
        "templates": {name: templates.template_hash(name) for name in sorted(used)},
        "inputs": [input_ref(input_dir)],
        "models": {tc.label: teacher_identity(tc) for tc in teachers},
        "sampling": {
            k: getattr(config, k)
            for k in ("n", "temperature", "top_p", "max_tokens", "stop", "seed", "logprobs")
        },
    }
    st = GenerateStage.open(output_dir, parts, overwrite)

    # Teacher-major work list: shard i belongs to one teacher when num_shards is a multiple of the teachers.
    labels = [tc.label for tc in teachers]
    work_rows = pa.concat_tables(
        [rows.append_column("teacher", pa.array([label] * rows.num_rows, pa.string())) for label in labels]
    )
    per_teacher = store.default_num_shards(rows.num_rows, config.shard_size)
    n_shards = num_shards or per_teacher * len(teachers)

    stage = GenerateStage(config, teachers, system_texts, engines=engines, progress=progress)
    if st.completed_manifest() is None and (executor is None or executor.name == "local"):
        todo = [shard_index] if shard_index is not None else range(n_shards)
        rows_todo = sum(
            store.shard_bounds(work_rows.num_rows, n_shards, i)[1]
            - store.shard_bounds(work_rows.num_rows, n_shards, i)[0]
            for i in todo
            if 0 <= i < n_shards and not st.shard_done(i)
        )
        stage._bar.start(rows_todo * config.n, config.max_tokens)
    return stage.run_shards(
        work_rows,
        output_dir,
        parts,
        num_shards=n_shards,
        shard_index=shard_index,
        executor=executor,
        store=st,
    )


class GenerateStage(Stage):
    """Teacher answers for one shard of (prompt, teacher) rows; what an executor ships.

    ``engines`` maps teacher labels to ready engines (tests and benchmarks share one); teachers without
    one are loaded on first use, one at a time, and closed by ``close``.
    """

    name = STAGE
    version = VERSION
    requires = ("id",)  # and `messages` or `prompt`
    reads = ("id", "task", "messages", "prompt", "reference", "meta", "teacher")
    writes = tuple(name for name, _ in GEN_FIELDS + TOPK_FIELDS)

    def __init__(
        self,
        config: Config,
        teachers: list[ModelConfig],
        system_texts: dict[str, str],
        engines: dict | None = None,
        progress: bool = False,
    ) -> None:
        self.config = config
        self.teachers = {tc.label: tc for tc in teachers}
        self.gpus = max(tc.gpus for tc in teachers) if teachers else 0
        self.system_texts = system_texts
        self.progress = progress
        self._ready = dict(engines or {})
        self._owned: dict = {}

    @property
    def _bar(self) -> TokenProgress:
        if "_bar_obj" not in self.__dict__:
            self._bar_obj = TokenProgress(enabled=self.progress, desc="generate")
        return self._bar_obj

    def _engine_for(self, label: str):
        ready = self.__dict__.setdefault("_ready", {})
        owned = self.__dict__.setdefault("_owned", {})
        if label in ready:
            return ready[label]
        for other in list(owned):  # one teacher in memory at a time
            owned.pop(other).close()
            ready.pop(other)
        t0 = time.perf_counter()
        ready[label] = owned[label] = load_teacher(self.teachers[label])
        self._load_s = self.__dict__.get("_load_s", 0.0) + time.perf_counter() - t0
        self._bar.write(f"[distill] generate: loaded teacher {label} in {time.perf_counter() - t0:.1f}s")
        self._bar.restart_clock()  # tokens/s of generation, not of model start-up
        return ready[label]

    def work(self, shard: pa.Table, index: int) -> store.ShardOutput:
        datas, rejects, stats = [], [], {"tokens": {"prompt": 0, "completion": 0}, "teachers": {}}
        retry_rows, retry = [], []
        labels = shard.column("teacher").to_pylist()
        for label in dict.fromkeys(labels):
            positions = [i for i, t in enumerate(labels) if t == label]
            part = shard.filter(pc.equal(shard.column("teacher"), label))
            engine = self._engine_for(label)
            t0 = time.perf_counter()
            adapter = self.teachers[label].adapter if hasattr(engine, "lora_request") else None
            data, rejected, teacher_stats, failed = _generate(
                engine, part.to_pylist(), self.config, self.system_texts, self._bar, adapter
            )
            if self.config.logprobs:
                fingerprint = _tokenizer_of(self.teachers[label])
                data = data.set_column(
                    data.schema.get_field_index("topk_tokenizer"),
                    "topk_tokenizer",
                    pa.array([fingerprint] * data.num_rows, pa.string()),
                )
            teacher_stats["generate_s"] = time.perf_counter() - t0
            if getattr(engine, "last_stats", None):  # openai: requests in flight, as they adapted
                stats.setdefault("concurrency", {})[label] = dict(engine.last_stats)
            datas.append(data)
            rejects.append(rejected)
            retry_rows += [positions[j] for j, _ in failed]
            retry += [row for _, row in failed]
            store.add_counts(stats["teachers"].setdefault(label, {}), teacher_stats)
            stats["tokens"]["prompt"] += teacher_stats["prompt_tokens"]
            stats["tokens"]["completion"] += teacher_stats["completion_tokens"]
            store.add_counts(stats.setdefault("rejected_by_reason", {}), teacher_stats["rejected_by_reason"])
        stats["engine_load_s"], self._load_s = self.__dict__.get("_load_s", 0.0), 0.0
        return store.ShardOutput(
            data=store.concat(datas),
            rejected=store.concat(rejects),
            stats=stats,
            retry_rows=retry_rows,
            retry=pa.Table.from_pylist(retry, schema=rejects[0].schema) if retry else None,
        )

    def summarize(self, shard_stats: list[dict]) -> dict:
        teachers_total: dict = {}
        load = 0.0
        for saved in shard_stats:
            store.add_counts(teachers_total, json.loads(json.dumps(saved.get("teachers", {}))))
            load += saved.get("engine_load_s", 0.0)
        for t in teachers_total.values():
            t.pop("rejected_by_reason", None)
            gen_s = t.get("generate_s", 0)
            t["tokens_per_s"] = round(t.get("completion_tokens", 0) / gen_s, 2) if gen_s else 0.0
        # wall_s stays the honest total; tokens_per_s is the generation throughput, model start-up excluded
        # (engine_load_s says how much of wall_s that was).
        completion = sum(t.get("completion_tokens", 0) for t in teachers_total.values())
        busy = sum(t.get("generate_s", 0) for t in teachers_total.values())
        fields = {
            "tokens_by_teacher": teachers_total,
            "engine_load_s": round(load, 3),
            "tokens_per_s": round(completion / busy, 2) if busy else 0.0,
            # No seed sent: the completions cannot be reproduced, and the manifest does not claim they can.
            "seeded": self.config.seed is not None,
        }
        concurrency = _merge_concurrency(saved.get("concurrency", {}) for saved in shard_stats)
        if concurrency:
            fields["concurrency"] = concurrency
        return fields

    def close(self) -> None:
        self._bar.close()
        for engine in self.__dict__.get("_owned", {}).values():
            engine.close()
        self.__dict__.get("_owned", {}).clear()


def _tokenizer_of(teacher: ModelConfig) -> str | None:
    """The teacher's vocabulary fingerprint (None behind an OpenAI-compatible server: unknown)."""
    if teacher.engine == "openai":
        return None
    from pipeline.models import resolve, tokenizer_fingerprint

    return tokenizer_fingerprint(resolve(teacher.model, teacher.revision).path)


def _prompt_columns(rows: pa.Table) -> pa.Table:
    """The prompt columns in their schema order; optional ones absent from user data become null."""
    n = rows.num_rows
    out = {}
    for name in PROMPT_COLUMNS:
        if name in rows.column_names:
            col = rows.column(name)
            if name != "messages" and col.type != pa.string():
                # User data may carry numeric ids or references, or a meta mapping: keep them as text.
                col = pa.array(
                    [v if v is None or isinstance(v, str) else _text(v) for v in col.to_pylist()], pa.string()
                )
            out[name] = col
        else:
            out[name] = pa.nulls(n, MESSAGES if name == "messages" else pa.string())
    return pa.table(out)


def _text(value) -> str:
    return (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, (dict, list))
        else str(value)
    )


def _generate(engine, rows: list[dict], config: Config, system_texts: dict, bar, adapter=None) -> tuple:
    """Answer one teacher's rows: (accepted table, rejected table, stats, [(position, row) owed a retry]).
    ``adapter``: a LoRA folder the engine applies per request (vllm)."""
    from pipeline.engines import GenRequest

    stats = {"rows": 0, "samples": 0, "prompt_tokens": 0, "completion_tokens": 0, "rejected_by_reason": {}}
    requests, served, served_pos, rejected = [], [], [], []
    for pos, row in enumerate(rows):
        system = system_texts.get(row.get("task") or "custom", "")
        messages = chat_messages(row, system, system_texts.get(SHOTS))
        row["system"] = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        row["seed"] = None if config.seed is None else prompt_seed(config.seed, row["id"])
        if not any(m["role"] == "user" and (m["content"] or "").strip() for m in messages):
            rejected.append({**row, "reject_reason": "empty_prompt", "error": "the row has no user message"})
            continue
        requests.append(
            GenRequest(
                id=row["id"],
                messages=messages,
                n=config.n,
                temperature=config.temperature,
                top_p=config.top_p,
                max_tokens=config.max_tokens,
                stop=config.stop,
                seed=row["seed"],
                logprobs=config.logprobs,
                adapter=adapter,
            )
        )
        served.append(row)
        served_pos.append(pos)

    results = engine.generate(requests, progress=bar.update) if requests else []
    out, failed = [], []
    for pos, row, res in zip(served_pos, served, results, strict=True):
        if res.error and res.transient:
            # A server error or timeout says nothing about the prompt: the row is owed a retry.
            reason = res.error.split(":", 1)[0].strip()
            failed.append((pos, {**row, "reject_reason": reason, "error": res.error}))
            continue
        if res.error or not res.samples:
            error = res.error or "the engine returned no samples"
            rejected.append({**row, "reject_reason": error.split(":", 1)[0].strip(), "error": error})
            continue
        stats["rows"] += 1
        stats["prompt_tokens"] += res.prompt_tokens
        for k, s in enumerate(res.samples):
            stats["samples"] += 1
            stats["completion_tokens"] += s.completion_tokens
            item = {
                **row,
                "sample_index": k,
                "completion": s.text,
                "finish_reason": s.finish_reason,
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": s.completion_tokens,
            }
            if config.logprobs:
                item["topk_ids"] = s.topk_ids
                item["topk_logprobs"] = s.topk_logprobs
            out.append(item)
    for r in rejected:
        stats["rejected_by_reason"][r["reject_reason"]] = (
            stats["rejected_by_reason"].get(r["reject_reason"], 0) + 1
        )

    prompt_fields = _prompt_schema()
    schema = pa.schema(prompt_fields + GEN_FIELDS + (TOPK_FIELDS if config.logprobs else []))
    data = pa.Table.from_pylist(out, schema=schema)
    rejected_schema = pa.schema(
        prompt_fields
        + [("teacher", pa.string()), ("seed", pa.int64()), ("system", pa.string())]
        + [("reject_reason", pa.string()), ("error", pa.string())]
    )
    return data, pa.Table.from_pylist(rejected, schema=rejected_schema), stats, failed


def _merge_concurrency(per_shard) -> dict:
    """Per teacher, the in-flight figures of all shards: the highest peak, the lowest window, all backoffs."""
    out: dict = {}
    for shard in per_shard:
        for label, c in shard.items():
            if label not in out:
                out[label] = dict(c)
                continue
            seen = out[label]
            seen["peak_in_flight"] = max(seen.get("peak_in_flight", 0), c.get("peak_in_flight", 0))
            seen["lowest"] = min(seen.get("lowest", 1 << 30), c.get("lowest", 1 << 30))
            seen["end"] = c.get("end", seen.get("end"))
            seen["backoffs"] = seen.get("backoffs", 0) + c.get("backoffs", 0)
    return out


def _prompt_schema() -> list:
    return [(f.name, f.type) for f in PROMPT_SCHEMA]


def summary(manifest: dict) -> str:
    tokens = manifest["tokens"]
    rejected = sum(manifest.get("rejected_by_reason", {}).values())
    return (
        f"{manifest['rows_out']} completions, {tokens['completion']} tokens at {manifest['tokens_per_s']} tok/s"
        + (f", {rejected} prompts rejected" if rejected else "")
        + ("" if manifest.get("seeded", True) else ", unseeded (not reproducible)")
    )
