"""Evaluate a model (plus an optional LoRA adapter) on a task split with the task's verifiers.

Generation is batched through an engine: ``hf`` (transformers ``generate``; a LoRA adapter is applied with
PEFT) or ``vllm`` (on a CPU an adapter is first merged into a full model in a temporary folder, which vLLM
then loads; on a GPU vLLM applies it per request with its LoRA kernels). Accuracy is pass@1 (the mean
fraction of correct samples per problem) and, when ``n > 1``, the unbiased pass@k estimate of Chen et al.
(2021) for k = n. This module sits one floor below the stages: the mine stage, the loop and ``distill eval``
use it without importing training code.

    distill eval smollm2-135m-instruct --task arithmetic --split test --limit 64
    distill eval smollm2-135m-instruct --adapter runs/quickstart/train-sft/adapter --task arithmetic
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from pipeline import templates
from pipeline.adapters import adapter_rank
from pipeline.engines import GenRequest
from pipeline.errors import UserError

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n - c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def last_number_check(rows: list[dict]) -> list[bool | None]:
    """The last number in the completion equals the reference (None: no number). A quick look, not a
    verifier: evaluation uses the task's own verifier through ``check``."""
    out = []
    for r in rows:
        numbers = _NUMBER.findall(r["completion"] or "")
        if not numbers:
            out.append(None)
            continue
        try:
            out.append(float(numbers[-1].replace(",", "")) == float(str(r["reference"]).replace(",", "")))
        except ValueError:
            out.append(None)
    return out


def check(task: str, rows: list[dict], verifier: str | None = None) -> list[bool | None]:
    """passed per row, with the verifier the task names (``verifier`` wins; for user data, each row's
    ``meta.verifier`` from the source). A task that names none is an error, never a silent guess."""
    from pipeline.tasks import row_verifier, task_verifier
    from pipeline.verifiers import build_verifier

    names = [verifier or row_verifier(r) or task_verifier(task) for r in rows]
    if None in names:
        raise UserError(
            f"task '{task}' names no verifier; set `verifier:` on the recipe's source (e.g. math, label, "
            "json_schema) or pass the verifier to check()"
        )
    out: list[bool | None] = [None] * len(rows)
    for name in dict.fromkeys(names):
        idx = [i for i, n in enumerate(names) if n == name]
        verdicts = build_verifier(name).check([rows[i] for i in idx])
        for i, v in zip(idx, verdicts, strict=True):
            out[i] = v.passed
    return out


def task_rows(
    task: str, split: str, limit: int | None, seed: int, phrasing: str | None = None, **difficulty
) -> list[dict]:
    """A built-in task's evaluation rows. Arithmetic's validation and test splits hold two held-out wording
    families (``heldout`` and the wider ``wide``); without ``phrasing`` both are drawn, ``limit`` each.
    ``difficulty``: arithmetic's ``ops``, ``digits``, ``operators``, ``mul_digits`` (pipeline/tasks)."""
    from pipeline.tasks import load_task

    if difficulty and task != "arithmetic":
        raise UserError(
            f"--{next(iter(difficulty)).replace('_', '-')} is an arithmetic setting; drop it for {task}"
        )
    if task == "arithmetic" and split != "train" and phrasing is None:
        from pipeline.tasks.arithmetic import HELDOUT_FAMILIES

        return [
            r
            for f in HELDOUT_FAMILIES
            for r in load_task(task, split=split, n=limit, seed=seed, phrasing=f, **difficulty)
        ]
    options = {"phrasing": phrasing} if phrasing else {}
    return load_task(task, split=split, n=limit, seed=seed, **options, **difficulty)


def _phrasing_of(row: dict) -> str | None:
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return None
    return meta.get("phrasing") if isinstance(meta, dict) else None


def make_engine(model: str, adapter: str | None, engine: str, batch_size: int, max_model_len: int | None):
    """The engine to generate with, and a cleanup callback. On vllm requests must carry ``adapter``: the
    engine applies it per request (LoRA in vLLM, on a GPU) or serves a merged copy (on a CPU)."""
    from pipeline.models import resolve

    resolved = resolve(model)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(
            f"adapter folder {adapter} has no adapter_config.json; pass the `adapter/` folder of a run"
        )
    if engine == "hf":
        from pipeline.engines.hf import HFEngine

        return HFEngine(
            resolved, adapter=adapter, batch_size=batch_size, max_model_len=max_model_len
        ), lambda: None
    if engine != "vllm":
        raise UserError(f"unknown engine '{engine}'; use hf or vllm")
    from pipeline.engines.vllm import VLLMEngine

    # On a CPU the engine starts on a merged copy (vLLM's LoRA kernels are slow there); on a GPU it applies
    # the adapter per request. Either way requests name the adapter.
    lora = (
        {"enable_lora": True, "max_lora_rank": adapter_rank(adapter), "adapter": adapter} if adapter else {}
    )
    eng = VLLMEngine(resolved, max_model_len=max_model_len, **lora)
    return eng, eng.close


def evaluate(
    model: str,
    adapter: str | None = None,
    task: str = "arithmetic",
    split: str = "test",
    n: int = 1,
    engine: str = "hf",
    limit: int | None = 100,
    seed: int = 0,
    *,
    temperature: float | None = None,
    max_tokens: int = 256,
    batch_size: int = 16,
    max_model_len: int | None = None,
    rows: list[dict] | None = None,
    engine_obj=None,
    phrasing: str | None = None,
    system_template: str | None = None,
    shots_template: str | None = None,
    difficulty: dict | None = None,
) -> dict:
    """Generate ``n`` answers per problem, verify them, and report pass@1 (and pass@n when n > 1).

    ``rows`` replaces the task's split (prompt rows with ``id``, ``messages``, ``reference``); ``engine_obj``
    reuses an already-built engine (then ``model``/``adapter``/``engine`` are only recorded).
    Greedy when n == 1, else sampled at ``temperature`` (default 0.7). Arithmetic's held-out splits are
    scored on both held-out wording families (``limit`` problems each) unless ``phrasing`` names one; the
    result then gives ``by_phrasing`` beside the overall ``pass@1``. ``difficulty`` sets arithmetic's
    ``ops``/``digits``/``operators``/``mul_digits`` (the harder setting: ops 2, digits 2, mul_digits 1).
    """
    if n < 1:
        raise UserError(f"--samples must be >= 1, got {n}")
    if rows is None:
        rows = task_rows(task, split, limit, seed, phrasing, **(difficulty or {}))
    elif limit is not None:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"no {task} problems in split '{split}'; check --task, --split and --limit")
    temp = temperature if temperature is not None else (0.0 if n == 1 else 0.7)
    if n > 1 and temp == 0:
        raise UserError("pass@k with --samples > 1 needs sampling; set a temperature > 0")

    # A teacher is scored the way a recipe prompts it: its system prompt and few-shot turns before each question.
    head = [{"role": "system", "content": templates.render(system_template)}] if system_template else []
    head += templates.render_turns(shots_template) if shots_template else []
    cleanup = lambda: None  # noqa: E731
    if engine_obj is None:
        engine_obj, cleanup = make_engine(model, adapter, engine, batch_size, max_model_len)
    t0 = time.perf_counter()
    try:
        requests = [
            GenRequest(
                id=r["id"],
                messages=head + r["messages"],
                n=n,
                temperature=temp,
                max_tokens=max_tokens,
                seed=seed,
                # vllm applies the adapter per request; hf was built with it
                adapter=adapter if hasattr(engine_obj, "lora_request") else None,
            )
            for r in rows
        ]
        results = engine_obj.generate(requests)
    finally:
        cleanup()
    gen_s = time.perf_counter() - t0

    samples = []  # one verifier row per sample
    for row, res in zip(rows, results, strict=True):
        for j, s in enumerate(res.samples):
            samples.append({**row, "sample_index": j, "completion": s.text, "finish_reason": s.finish_reason})
    passed = check(task, samples) if samples else []
    per_problem: dict[str, list[bool | None]] = {r["id"]: [] for r in rows}
    for s, p in zip(samples, passed, strict=True):
        per_problem[s["id"]].append(p)

    correct = [sum(1 for p in per_problem[r["id"]] if p) for r in rows]
    result = {
        "model": model,
        "adapter": adapter,
        "task": task,
        "split": split,
        "engine": getattr(engine_obj, "name", engine),
        "problems": len(rows),
        "samples_per_problem": n,
        "temperature": temp,
        "prompted_with": [t for t in (system_template, shots_template) if t],
        **({"difficulty": difficulty} if difficulty else {}),
        "pass@1": round(sum(c / n for c in correct) / len(rows), 4),
        "undecided": sum(1 for p in passed if p is None),
        "errors": sum(1 for res in results if res.error),
        "completion_tokens": sum(s.completion_tokens for res in results for s in res.samples),
        "gen_s": round(gen_s, 3),
    }
    if n > 1:
        result[f"pass@{n}"] = round(sum(pass_at_k(n, c, n) for c in correct) / len(rows), 4)
    families: dict[str, list[float]] = {}
    for r, c in zip(rows, correct, strict=True):
        family = _phrasing_of(r)
        if family:
            families.setdefault(family, []).append(c / n)
    if families:
        result["by_phrasing"] = {
            f: {"problems": len(v), "pass@1": round(sum(v) / len(v), 4)} for f, v in families.items()
        }
    result["rows"] = [
        {
            "id": s["id"],
            "sample_index": s["sample_index"],
            "reference": s.get("reference"),
            "completion": s["completion"],
            "finish_reason": s["finish_reason"],
            "passed": p,
        }
        for s, p in zip(samples, passed, strict=True)
    ]
    return result
