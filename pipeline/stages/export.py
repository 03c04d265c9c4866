"""The `export` stage: verdicts -> TRL's standard dataset formats, ready for `distill train`.

Reads a verify stage folder (``data/``: verdict rows; ``rejected/``: failing rows with ``reject_reason``)
and writes one Arrow dataset per format, each keeping ``id`` (the prompt id) and, where a row is one
sample, ``sample_index``:

    data/sft/   messages                      verified teacher answers (sequence-level KD)
    data/dpo/   prompt, chosen, rejected      chosen: a verified answer; rejected: a failing one, same prompt
    data/kd/    prompt, completion, topk_ids, topk_logprobs   verified answers with the teacher's top-k

``prompt``, ``chosen``, ``rejected`` and ``completion`` are conversational (lists of chat messages), the form
TRL's trainers take directly. Rows that are not exported are counted by reason in the manifest
(``skipped``): ``not_passed``, ``undecided``, ``special_token`` (a teacher's chat markup in the answer),
``truncated``, ``no_topk``, ``over_max_per_prompt`` (with ``keep`` deciding which answers stay).

``place_value: true`` spells out the arithmetic of the sft and dpo answers one digit at a time
(``pipeline/verifiers/equations.py``; the manifest counts the answers it changed in ``place_value_rows``);
``sign_first: true`` with it works an equation with a negative number on the sizes, then signs it.

    distill export --input runs/demo/02-verify --output runs/demo/03-export --formats sft dpo kd
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline import store
from pipeline.errors import UserError
from pipeline.rows import MESSAGES, messages_of
from pipeline.stages import Stage, input_ref
from pipeline.verifiers import equations

STAGE = "export"
VERSION = "1"
# Fields added later: left out of the fingerprint at their defaults, so old runs keep their identity.
LATER_FIELDS = {"sign_first": False}
FORMATS = ("sft", "dpo", "kd")
KEEP_RULES = ("first", "shortest", "student_likelihood")
# Chat-template markup of any common family (ChatML <|im_end|>, <|endoftext|>, Llama <|eot_id|>, </s>, ...).
SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>|</s>|<s>|\[/?INST\]")

SCHEMAS = {
    "sft": pa.schema([("id", pa.string()), ("sample_index", pa.int32()), ("messages", MESSAGES)]),
    "dpo": pa.schema(
        [("id", pa.string()), ("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES)]
    ),
    "kd": pa.schema(
        [
            ("id", pa.string()),
            ("sample_index", pa.int32()),
            ("prompt", MESSAGES),
            ("completion", MESSAGES),
            ("topk_ids", pa.list_(pa.list_(pa.int32()))),
            ("topk_logprobs", pa.list_(pa.list_(pa.float32()))),
            ("topk_tokenizer", pa.string()),
            ("teacher", pa.string()),
        ]
    ),
}
READS = ["id", "completion", "passed"]  # plus `messages` or `prompt`


@dataclass
class Config:
    formats: list[str] = field(
        default_factory=lambda: ["sft"], metadata={"help": "formats to write: any of sft, dpo, kd"}
    )
    max_per_prompt: int | None = field(
        default=None,
        metadata={"help": "sft/kd: keep at most this many verified answers per prompt (default: all)"},
    )
    max_pairs_per_prompt: int = field(
        default=1, metadata={"help": "dpo: at most this many (chosen, rejected) pairs per prompt"}
    )
    include_system: bool = field(
        default=False,
        metadata={
            "help": "prepend the teacher's system prompt (`system` column) to exported prompts; by default the "
            "student learns to answer the prompts as users will ask them"
        },
    )
    keep: str = field(
        default="first",
        metadata={
            "help": "which verified answers to keep when `max_per_prompt` caps them: first (sample order), "
            "shortest, or student_likelihood (the ones the recipe's student finds most likely: its mean "
            "log-probability per token, in its own chat template)"
        },
    )
    place_value: bool = field(
        default=False,
        metadata={
            "help": "sft and dpo: write each right two-term equation of an answer as place-value steps "
            "(44 + 86 = 44 + 80 + 6 = 124 + 6 = 130), so a small student adds one digit at a time; kd keeps "
            "the teacher's text, which its logprobs are for"
        },
    )
    sign_first: bool = field(
        default=False,
        metadata={
            "help": "with place_value: an equation with a negative number is worked on whole numbers >= 0, "
            "then signed (48 - 13 = 48 - 10 - 3 = 38 - 3 = 35, so 13 - 48 = -35), so no step crosses zero"
        },
    )
    drop_truncated: bool = field(
        default=True,
        metadata={
            "help": "skip answers cut off by max_tokens (finish_reason=length): they teach not to stop"
        },
    )

    def validate(self, path: str) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise UserError(
                f"{path}.formats must be a non-empty list of {', '.join(FORMATS)}, not {self.formats!r}"
            )
        if self.max_per_prompt is not None and self.max_per_prompt < 1:
            raise UserError(f"{path}.max_per_prompt must be >= 1 (or null for all)")
        if self.max_pairs_per_prompt < 1:
            raise UserError(f"{path}.max_pairs_per_prompt must be >= 1")
        if self.keep not in KEEP_RULES:
            raise UserError(f"{path}.keep must be one of {', '.join(KEEP_RULES)}, not {self.keep!r}")
        if self.keep != "first" and self.max_per_prompt is None:
            raise UserError(f"{path}.keep: {self.keep} chooses among answers; set max_per_prompt (e.g. 1)")
        if self.sign_first and not self.place_value:
            raise UserError(f"{path}.sign_first changes place-value steps; set place_value: true with it")


def run(
    config: Config,
    input_dir: Path,
    output_dir: Path,
    *,
    context=None,
    num_shards: int | None = None,
    shard_index: int | None = None,
    overwrite: bool = False,
    executor=None,
) -> dict | None:
    """Export one verify stage folder. Export is one cheap pass over every row (DPO pairs and
    `max_per_prompt` need all answers to a prompt together), so it is always one shard."""
    config.validate("export config")
    input_dir = Path(input_dir)
    scorer = None
    if config.keep == "student_likelihood":
        student = getattr(getattr(context, "student", None), "model", None)
        if not student:
            raise UserError(
                "export: keep: student_likelihood needs the recipe's `student:` (the model that scores answers)"
            )
        from pipeline.models import resolve

        scorer = resolve(student)
    parts = {
        "stage": STAGE,
        "version": VERSION,
        "config": {k: v for k, v in asdict(config).items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]},
        "templates": {},
        "inputs": [input_ref(input_dir)],
        "models": {"scorer": scorer.identity} if scorer else {},
    }
    st = ExportStage.open(output_dir, parts, overwrite)
    done = st.completed_manifest()
    if done is not None:
        return done

    table = ExportStage.read(input_dir)
    if "messages" not in table.column_names and "prompt" not in table.column_names:
        raise UserError(
            f"export: input {input_dir} has neither `messages` nor `prompt`; feed it verify output"
        )
    rejected_dir = input_dir / "rejected"
    failing = store.load_table(rejected_dir) if rejected_dir.is_dir() else None
    if shard_index not in (None, 0):
        raise UserError("export runs as one shard; drop --shard-index (or pass --shard-index 0)")
    stage = ExportStage(config, failing, scorer)
    return stage.run_shards(
        table, output_dir, parts, num_shards=1, shard_index=shard_index, executor=executor, store=st
    )


class ExportStage(Stage):
    """Verdict rows -> one table per TRL format (data/sft, data/dpo, data/kd)."""

    name = STAGE
    version = VERSION
    requires = tuple(READS)
    reads = requires
    writes = ("sft", "dpo", "kd")

    def __init__(self, config: Config, failing: pa.Table | None, scorer=None) -> None:
        self.config = config
        self.failing = failing  # the input's rejected/ rows: DPO's rejected answers come from there too
        self.scorer = scorer  # keep: student_likelihood -> the student's ResolvedModel

    def work(self, shard: pa.Table, index: int) -> store.ShardOutput:
        config = self.config
        rows = shard.to_pylist()
        failing = self.failing.to_pylist() if self.failing is not None else []
        skipped: Counter = Counter()
        verified = _verified(rows, config, skipped, self._rank(rows))
        answers = [_answer(r, config) for r in verified]  # as the sft and dpo formats write them
        tables = {}
        if "sft" in config.formats:
            tables["sft"] = [
                {
                    "id": r["id"],
                    "sample_index": r.get("sample_index") or 0,
                    "messages": _prompt(r, config.include_system) + answer,
                }
                for r, answer in zip(verified, answers, strict=True)
            ]
        if "kd" in config.formats:
            kd = []
            for r in verified:
                if not r.get("topk_ids") or not r.get("topk_logprobs"):
                    skipped["no_topk"] += 1
                    continue
                kd.append(
                    {
                        "id": r["id"],
                        "sample_index": r.get("sample_index") or 0,
                        "prompt": _prompt(r, config.include_system),
                        "completion": _answer(r),
                        "topk_ids": r["topk_ids"],
                        "topk_logprobs": r["topk_logprobs"],
                        "topk_tokenizer": r.get("topk_tokenizer"),
                        "teacher": r.get("teacher"),
                    }
                )
            if verified and not kd:
                raise UserError(
                    "export: kd needs the teacher's top-k logprobs, and no row has them; "
                    "generate with `logprobs: 5` (or drop kd from formats)"
                )
            tables["kd"] = kd
        if "dpo" in config.formats:
            tables["dpo"] = _pairs(verified, rows + failing, config, skipped)
        out = {fmt: pa.Table.from_pylist(records, schema=SCHEMAS[fmt]) for fmt, records in tables.items()}
        stats = {
            "rows_in": len(rows) + len(failing),
            "place_value_rows": sum(
                a[0]["content"] != r["completion"] for r, a in zip(verified, answers, strict=True)
            ),
            "rows_by_format": {fmt: len(records) for fmt, records in tables.items()},
            "skipped": dict(skipped),
            "tokens": {"prompt": 0, "completion": sum(r.get("completion_tokens") or 0 for r in verified)},
        }
        first = next(iter(out.values()))
        return store.ShardOutput(data=first.slice(0, 0), stats=stats, tables=out)

    def _rank(self, rows: list[dict]) -> dict[int, float] | None:
        """A sort key per row (by ``id(row)``; lower is kept first) for the keep rule, None for `first`."""
        if self.config.keep == "shortest":
            return {id(r): len(r["completion"] or "") for r in rows}
        if self.config.keep == "student_likelihood":
            from pipeline.engines.likelihood import answer_logprobs

            scored = [r for r in rows if r.get("passed")]
            logps = answer_logprobs(self.scorer, [(messages_of(r), r["completion"] or "") for r in scored])
            return {id(r): -lp for r, lp in zip(scored, logps, strict=True)}
        return None

    def summarize(self, shard_stats: list[dict]) -> dict:
        counts: dict = {}
        skipped: dict = {}
        for s in shard_stats:
            store.add_counts(counts, s.get("rows_by_format", {}))
            store.add_counts(skipped, s.get("skipped", {}))
        counts = {fmt: counts[fmt] for fmt in self.config.formats if fmt in counts}  # in the asked order
        return {
            "rows_in": sum(s.get("rows_in", 0) for s in shard_stats),
            "rows_out": counts.get("sft", sum(counts.values())),
            "rows_by_format": counts,
            **(
                {"place_value_rows": sum(s.get("place_value_rows", 0) for s in shard_stats)}
                if self.config.place_value
                else {}
            ),
            "formats": {fmt: f"data/{fmt}" for fmt in counts},
            "skipped": skipped,
            "tokens_per_s": 0.0,
        }


def _prompt(row: dict, include_system: bool = False) -> list[dict]:
    """The conversation before the answer (``pipeline.rows.messages_of``), with the teacher's system
    prompt first when ``include_system`` asks for it and the row has none of its own."""
    out = messages_of(row)
    if include_system and row.get("system") and (not out or out[0]["role"] != "system"):
        out.insert(0, {"role": "system", "content": row["system"]})
    return out


def _answer(row: dict, config: Config | None = None) -> list[dict]:
    """The answer as a chat message: the teacher's text, spelled out when ``config`` asks for place_value."""
    return [{"role": "assistant", "content": answer_text(row["completion"], config)}]


def answer_text(text: str, config: Config | None = None) -> str:
    """An answer's text as exported: the teacher's, spelled out when ``config`` asks for place_value (the
    loop writes its DPO pairs' chosen answers with this too)."""
    if config is not None and config.place_value:
        return equations.place_value(text, sign_first=config.sign_first)
    return text


def _verified(
    rows: list[dict], config: Config, skipped: Counter, rank: dict[int, float] | None = None
) -> list[dict]:
    """Passing, complete answers, at most `max_per_prompt` per prompt: within a prompt the keep rule's
    ``rank`` (lower first) decides which, then sample order (teachers in recipe order)."""
    kept, per_prompt = [], Counter()

    def key(r: dict) -> tuple:
        return (str(r["id"]), rank.get(id(r), float("inf")) if rank else 0, r.get("sample_index") or 0)

    for r in sorted(rows, key=key):
        if r.get("passed") is None:
            skipped["undecided"] += 1
        elif not r["passed"]:
            skipped["not_passed"] += 1
        elif SPECIAL_TOKEN.search(r["completion"] or ""):
            skipped["special_token"] += 1  # a teacher's chat markup would teach the student another template
        elif config.drop_truncated and r.get("finish_reason") == "length":
            skipped["truncated"] += 1
        elif config.max_per_prompt is not None and per_prompt[r["id"]] >= config.max_per_prompt:
            skipped["over_max_per_prompt"] += 1
        else:
            per_prompt[r["id"]] += 1
            kept.append(r)
    return kept


def _pairs(verified: list[dict], all_rows: list[dict], config: Config, skipped: Counter) -> list[dict]:
    """chosen: a verified answer; rejected: an answer the verifier failed (passed=False), same prompt id."""
    wrong: dict[str, list[dict]] = defaultdict(list)
    seen: set[tuple] = set()
    for r in sorted(all_rows, key=lambda r: (str(r["id"]), r.get("sample_index") or 0)):
        key = (r["id"], r.get("sample_index"), r.get("teacher"), r["completion"])
        if r.get("passed") is False and key not in seen:  # dedup-rejected rows that passed are not "wrong"
            seen.add(key)
            wrong[r["id"]].append(r)
    right: dict[str, list[dict]] = defaultdict(list)
    for r in verified:
        right[r["id"]].append(r)
    pairs = []
    for pid, good in right.items():
        bad = [
            b
            for b in wrong.get(pid, [])
            if b["completion"].strip() not in {g["completion"].strip() for g in good}
        ]
        if not bad:
            skipped["dpo_no_failing_answer"] += 1
            continue
        for g, b in list(zip(good, bad, strict=False))[: config.max_pairs_per_prompt]:
            pairs.append(
                {
                    "id": pid,
                    "prompt": _prompt(g, config.include_system),
                    "chosen": _answer(g, config),
                    "rejected": _answer(b, config),
                }
            )
    return pairs


def summary(manifest: dict) -> str:
    return ", ".join(f"{n} {fmt} rows" for fmt, n in manifest["rows_by_format"].items())
