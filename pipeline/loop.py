"""The performance-guided loop (PGKD): train -> validate -> mine -> regenerate -> generate -> verify -> export.

    distill loop scripts/recipes/pgkd.yaml

It first runs the recipe's stages (the base dataset), then iterates. Round k trains a fresh LoRA student on
all the verified data so far (a constant number of epochs; rows of later rounds repeated `new_weight`
times) and scores it on the validation split, which only decides stopping (`patience`). The student is
mined on a separate pool of training-split prompts (`mine_n`), so the stopping signal is not fitted.
Unless validation stopped improving or the budget is spent, `regenerate` writes new problems aimed at the
failures (`method: targeted`: the failed fact in new wordings and its neighbours; `random` is the control
arm), the generator answers them with adaptive effort (the generate stage's `n` first, then up to
`hard_samples` for prompts with fewer than `stop_at` verified answers), and the verified answers join the
data. The generator is the teacher until the best student beats it on validation (`generator: best`), as in
self-imitation rounds; every generated token counts against `teacher_budget_tokens`.

Any task works with `method: teacher`: the teacher writes each new problem with its answer (the reference a
fresh sample must then agree with in verify; label answers must be in verify's `label.labels`). User data
(`source: {path: ...}`) has no built-in splits: `loop.validation_path` names the validation file, and the
student is mined on the source rows themselves.

Everything lives under `runs/<run>/loop/`: `validation/`, `mine-pool/`, `teacher-validation.json`,
`iter_<k>/{train-data,train,validate,mine,regenerate,generate,verify,generate-more,verify-more,export}/`,
`iter_<k>/metrics.json` and `summary.json`. Every step is a stage folder or a training manifest, so a killed
loop resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import pyarrow as pa

from pipeline import store
from pipeline.config import from_dict
from pipeline.errors import UserError
from pipeline.recipe import LoopConfig, ModelConfig, Recipe
from pipeline.runner import load_recipe, run_context, run_recipe, stage_dirs, stage_module


def _stage_config(recipe: Recipe, name: str):
    for entry in recipe.stages:
        if entry.name == name:
            return entry.config
    return stage_module(name).Config()


def _training_table(base: list[Path], new: list[Path], weight: int) -> pa.Table:
    """All verified rows so far: duplicates across rounds dropped (same prompt, same answer), and each row
    of a later round repeated `weight` times."""
    seen: set[tuple[str, str]] = set()
    parts = []
    for folders, times in ((base, 1), (new, weight)):
        for folder in folders:
            table = store.load_table(folder)
            keep = []
            for i, (rid, messages) in enumerate(
                zip(table.column("id").to_pylist(), table.column("messages").to_pylist(), strict=True)
            ):
                key = (rid, messages[-1]["content"].strip())
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
            parts += [table.take(pa.array(keep, pa.int64()))] * times
    return store.concat(parts)


def _warm_table(old: list[Path], new: list[Path], weight: int, replay: float, seed: int) -> pa.Table:
    """A warm-started round's data: the new verified rows (not seen in `old`) repeated `weight` times, plus
    a replay sample of `replay` old rows per new row, so the student keeps what it learned before."""
    everything = _training_table(old, new, 1)
    n_old = _training_table(old, [], 1).num_rows
    fresh = everything.slice(n_old)
    if fresh.num_rows == 0:
        return fresh
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(n_old), min(n_old, round(replay * fresh.num_rows))))
    return store.concat([fresh] * weight + [everything.take(pa.array(picked, pa.int64()))])


def _answer_set(hard_dir: Path, regen_dir: Path) -> pa.Table:
    """The prompts the generator answers: the mined hard prompts themselves (their verified answers are the
    `chosen` side of the hard negatives), then the regenerated ones, each id once."""
    from pipeline.stages.prompts import SCHEMA

    seen: set[str] = set()
    rows = []
    for folder in (hard_dir, regen_dir):
        for row in store.load_table(folder / "data").select(SCHEMA.names).to_pylist():
            if row["id"] not in seen:
                seen.add(row["id"])
                rows.append(row)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _hard_negative_pairs(hard_dir: Path, verified: list[Path]) -> pa.Table:
    """DPO pairs for the mined prompts: chosen = the shortest verified answer to the prompt, rejected = the
    student's own failing answer (from `mine`)."""
    answers: dict[str, list[str]] = {}
    for folder in verified:
        table = store.load_table(folder / "data")
        for rid, text in zip(
            table.column("id").to_pylist(), table.column("completion").to_pylist(), strict=True
        ):
            answers.setdefault(rid, []).append(text.strip())
    pairs = []
    for row in store.load_table(hard_dir / "data").to_pylist():
        wrong = (row.get("student_completion") or "").strip()
        right = sorted((a for a in answers.get(row["id"], []) if a and a != wrong), key=len)
        if wrong and right:
            pairs.append(
                {
                    "id": row["id"],
                    "prompt": row["messages"],
                    "chosen": [{"role": "assistant", "content": right[0]}],
                    "rejected": [{"role": "assistant", "content": wrong}],
                }
            )
    return pa.Table.from_pylist(pairs)


def _verified_counts(verify_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rid in store.load_table(verify_dir / "data").column("id").to_pylist():
        counts[rid] = counts.get(rid, 0) + 1
    return counts


class _Engines:
    """The loop's engines, each started once and kept across rounds (a vLLM start costs ~30 s on a CPU).

    On vllm the student engine serves every student adapter (per request with vLLM's LoRA, or as a merged
    copy on a CPU: `lora_mode`), and, when the teacher is the student's own base model on vllm, the teacher
    too."""

    def __init__(self, recipe: Recipe, student_model: str, loop: LoopConfig, lora_rank: int):
        self.recipe, self.student_model, self.loop, self.lora_rank = recipe, student_model, loop, lora_rank
        self._student = self._teacher = None

    def student(self, adapter: str | None = None):
        """The engine for the student's evaluation and mining (None: each stage loads its own hf model).
        `adapter`: the one it will serve first (a merge-mode engine then starts on that merged copy)."""
        if self.loop.engine != "vllm":
            return None
        if self._student is None:
            from pipeline.engines.vllm import VLLMEngine
            from pipeline.models import resolve

            mode = None if self.loop.lora_mode == "auto" else self.loop.lora_mode
            self._student = VLLMEngine(
                resolve(self.student_model),
                enable_lora=True,
                max_lora_rank=self.lora_rank,
                lora_mode=mode,
                adapter=adapter,
            )
        return self._student

    def before_training(self) -> None:
        """Free the memory training needs. A merge-mode engine restarts for the next adapter anyway, so it
        is stopped now (here a kept engine plus training needed ~9 GB, and two loops side by side ran out of
        memory); a per-request LoRA engine is kept (no restart) and holds its memory."""
        if self._student is not None and self._student.lora_mode == "merge":
            self._student.close()
            self._student = None  # (a teacher that shares it is the same engine: stopped too)

    def shares_teacher(self) -> bool:
        tc = self.recipe.teachers[0]
        return (
            self.loop.engine == "vllm"
            and tc.engine == "vllm"
            and not tc.adapter
            and tc.model == self.student_model
            and not tc.engine_options()
        )

    def teacher(self):
        if self.shares_teacher():
            return self.student()
        if self._teacher is None:
            from pipeline.engines import load_teacher

            self._teacher = load_teacher(self.recipe.teachers[0])
        return self._teacher

    def close(self) -> None:
        for engine in (self._student, self._teacher):
            if engine is not None:
                engine.close()
        self._student = self._teacher = None


def _lora_rank(train_config: str) -> int:
    """The LoRA rank the loop's training config asks for (vLLM's max_lora_rank must hold it)."""
    import yaml

    from pipeline.adapters import vllm_lora_rank

    rank = int(((yaml.safe_load(Path(train_config).read_text()) or {}).get("peft") or {}).get("r") or 16)
    return vllm_lora_rank(rank)


def _answer_tokens(recipe: Recipe, loop: LoopConfig) -> int:
    """The answer budget the loop scores students at: its own, else the generate stage's."""
    return loop.max_tokens or _stage_config(recipe, "generate").max_tokens


def _evaluate_teacher(recipe: Recipe, val_dir: Path, out: Path, loop: LoopConfig, engines: _Engines) -> float:
    """The teacher's greedy validation accuracy, measured once: the bar the student must clear to generate."""
    if out.exists():
        return json.loads(out.read_text())["pass@1"]
    from pipeline.evaluate import evaluate
    from pipeline.stages import input_table

    rows = input_table(val_dir).to_pylist()
    result = evaluate(
        recipe.teachers[0].model,
        task=rows[0]["task"],
        engine=loop.engine,
        limit=None,
        max_tokens=_answer_tokens(recipe, loop),
        rows=rows,
        engine_obj=engines.teacher() if engines.shares_teacher() else None,
    )
    result.pop("rows")
    store.write_json_atomic(out, result)
    return result["pass@1"]


def run_loop(
    recipe_path: str | Path, run_dir: str | Path | None = None, overrides: dict | None = None, log=None
) -> dict:
    """Run the recipe, then the loop with the recipe's `loop:` settings (`overrides` win)."""
    from pipeline.stages import export, generate, mine, prompts, regenerate, verify
    from pipeline.train import run_training

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    recipe = load_recipe(recipe_path)
    loop = recipe.loop or LoopConfig()
    if overrides:
        loop = from_dict(LoopConfig, {**dataclasses.asdict(loop), **overrides}, "loop")
    if recipe.student is None:
        raise UserError("loop: the recipe needs `student:` (the model the loop trains)")
    user_data = recipe.source.path is not None or recipe.source.dataset is not None
    if user_data and not loop.validation_path:
        raise UserError(
            "loop: user data has no validation split; set loop.validation_path to a file of validation "
            "prompts with the source's columns"
        )
    if not user_data and loop.validation_path:
        raise UserError(
            f"loop.validation_path is for user data; the built-in task '{recipe.source.task}' has its own "
            "validation split, remove validation_path"
        )
    run_dir = Path(run_dir) if run_dir else Path("runs") / recipe.run
    t_start = time.perf_counter()
    run_recipe(recipe_path, run_dir=run_dir, log=log)
    dirs = {name: d for name, d, _ in stage_dirs(recipe, run_dir)}
    if "export" not in dirs:
        raise UserError("loop: the recipe needs an export stage (its sft/ data is what round 0 trains on)")
    context = run_context(recipe, run_dir)
    student_model = context.student.model  # the pruned copy when the recipe prunes the student
    loop_dir = run_dir / "loop"
    val_dir = loop_dir / "validation"
    if user_data:  # validation from its own file; mining on the training rows themselves
        val_source = dataclasses.replace(
            recipe.source, path=loop.validation_path, dataset=None, n=loop.validation_n
        )
        pool_source = dataclasses.replace(recipe.source, n=min(recipe.source.n or loop.mine_n, loop.mine_n))
    else:
        val_source = dataclasses.replace(recipe.source, split="validation", n=loop.validation_n)
        pool_source = dataclasses.replace(
            recipe.source, split="train", n=loop.mine_n, seed=recipe.source.seed + 1
        )
    prompts.run(prompts.Config(), None, val_dir, context=dataclasses.replace(context, source=val_source))

    def mine_pool(k: int) -> Path:
        """Round k's mining prompts: a fresh draw of the training split each round (user data: its rows),
        so later rounds find failures on facts the earlier pools did not contain."""
        folder = loop_dir / ("mine-pool" if k == 0 else f"mine-pool-{k}")
        source = pool_source
        if not user_data and k > 0:
            source = dataclasses.replace(pool_source, seed=pool_source.seed + 1000 * k)
        prompts.run(prompts.Config(), None, folder, context=dataclasses.replace(context, source=source))
        return folder

    engines = _Engines(recipe, student_model, loop, _lora_rank(loop.train_config))
    try:
        teacher_acc = None
        if loop.generator == "best":
            teacher_acc = _evaluate_teacher(
                recipe, val_dir, loop_dir / "teacher-validation.json", loop, engines
            )
            log(f"[distill] loop: teacher validation accuracy {teacher_acc:.1%}")

        gen_config = _stage_config(recipe, "generate")
        # The sft exports of each round's new data, the recipe's base data first.
        rounds_sft: list[list[Path]] = [[dirs["export"] / "data" / "sft"]]
        tokens_used = (
            store.read_manifest(dirs["generate"])["tokens"]["completion"] if "generate" in dirs else 0
        )
        history, best, bad = [], None, 0
        for k in range(loop.iterations):
            t_round = time.perf_counter()
            it = loop_dir / f"iter_{k}"
            train_data = it / "train-data" / "data" / "sft"
            # Warm start: keep training the best student on the new rows plus a replay sample; otherwise
            # a fresh adapter on everything so far.
            warm = loop.warm_start and best is not None
            if not train_data.exists():
                if warm:
                    older = [f for folders in rounds_sft[:-1] for f in folders]
                    table = _warm_table(older, rounds_sft[-1], loop.new_weight, loop.replay, seed=k)
                else:
                    later = [f for folders in rounds_sft[1:] for f in folders]
                    table = _training_table(rounds_sft[0], later, loop.new_weight)
                store.save_table(table, train_data)
            train_rows = store.load_table(train_data).num_rows
            if train_rows == 0:
                log("[distill] loop: stopping (the last round added no new verified rows)")
                break
            adapter = it / "train" / "adapter"
            if not (it / "train" / "manifest.json").exists():
                train_overrides = {"dataset": str(it / "train-data"), "output_dir": str(it / "train")}
                train_overrides["model"] = student_model
                if warm:
                    train_overrides["adapter"] = best["adapter"]
                if loop.max_steps is not None:
                    train_overrides["max_steps"] = loop.max_steps
                elif warm:
                    train_overrides["num_train_epochs"] = loop.warm_epochs
                elif loop.epochs is not None:
                    train_overrides["num_train_epochs"] = loop.epochs
                log(f"[distill] loop {k}: training on {train_rows} rows")
                engines.before_training()
                run_training("sft", loop.train_config, train_overrides)
            negatives = loop_dir / f"iter_{k - 1}" / "hard-negatives"
            if k > 0 and loop.hard_negatives and (negatives / "data" / "dpo").exists():
                # Hard negatives: prefer the verified answer over the student's own failing one.
                if not (it / "train-dpo" / "manifest.json").exists():
                    log(f"[distill] loop {k}: DPO on the hard negatives of round {k - 1}")
                    engines.before_training()
                    run_training(
                        "dpo",
                        loop.dpo_config,
                        {
                            "model": student_model,
                            "adapter": str(adapter),
                            "dataset": str(negatives),
                            "output_dir": str(it / "train-dpo"),
                        },
                    )
                adapter = it / "train-dpo" / "adapter"
            mine_config = mine.Config(
                adapter=str(adapter), student_engine=loop.engine, max_tokens=_answer_tokens(recipe, loop)
            )
            validated = mine.run(
                mine_config, val_dir, it / "validate", context=context, engine=engines.student(str(adapter))
            )
            acc = validated["student_accuracy"]
            improved = best is None or acc > best["val_accuracy"] + loop.min_delta
            metrics = {
                "iteration": k,
                "val_accuracy": acc,
                "train_rows": train_rows,
                "teacher_tokens": tokens_used,
                "adapter": str(adapter),
            }
            log(f"[distill] loop {k}: validation accuracy {acc:.1%} on {validated['rows_in']} prompts")
            if improved:
                best, bad = metrics, 0
            else:
                bad += 1
            stop = None
            if bad >= loop.patience:
                stop = f"no improvement for {bad} round(s)"
            elif k == loop.iterations - 1:
                stop = "last iteration"
            elif loop.teacher_budget_tokens is not None and tokens_used >= loop.teacher_budget_tokens:
                stop = "teacher budget spent"
            if stop is None:
                mined = mine.run(
                    mine_config, mine_pool(k), it / "mine", context=context, engine=engines.student()
                )
                metrics["hard_prompts"] = mined["rows_out"]
                metrics["mine_accuracy"] = mined["student_accuracy"]
                if mined["rows_out"] == 0:
                    stop = "the student solves every mined prompt"
            if stop is not None:
                metrics["round_s"] = round(time.perf_counter() - t_round, 1)
                store.write_json_atomic(it / "metrics.json", metrics)
                history.append(metrics)
                log(f"[distill] loop: stopping ({stop})")
                break

            regen_config = regenerate.Config(per_prompt=loop.per_prompt, seed=k, method=loop.method)
            if (
                loop.method == "teacher"
            ):  # the teacher writes problems and answers; label answers must be labels
                labels = _stage_config(recipe, "verify").label.get("labels")
                regen_config = dataclasses.replace(
                    regen_config, temperature=loop.regenerate_temperature, labels=labels
                )
            regen = regenerate.run(
                regen_config,
                it / "mine",
                it / "regenerate",
                context=context,
                engine=engines.teacher() if loop.method == "teacher" else None,
            )
            tokens_used += regen["tokens"]["completion"]
            metrics["new_prompts"] = regen["rows_out"]
            answer_dir = it / "regenerate"
            if loop.hard_negatives:
                answer_dir = it / "to-answer"
                if not (answer_dir / "data").exists():
                    store.save_table(_answer_set(it / "mine", it / "regenerate"), answer_dir / "data")
            elif regen["rows_out"] == 0:  # every reply went to regenerate/rejected: nothing to answer
                log(f"[distill] loop {k}: regenerate wrote no new prompts ({regen['rejected_by_reason']})")
                metrics["teacher_tokens"] = tokens_used
                metrics["round_s"] = round(time.perf_counter() - t_round, 1)
                store.write_json_atomic(it / "metrics.json", metrics)
                history.append(metrics)
                rounds_sft.append([])
                continue
            if teacher_acc is not None and best["val_accuracy"] > teacher_acc:
                # The best student so far answers (self-imitation), its adapter applied per request.
                generator = ModelConfig(
                    model=student_model, engine=loop.engine, name=f"student-{k}", adapter=best["adapter"]
                )
                generator_engine = engines.student()
                metrics["generator"] = f"student of round {best['iteration']}"
            else:
                generator, generator_engine = recipe.teachers[0], engines.teacher()
                metrics["generator"] = "teacher"
            generator_context = dataclasses.replace(context, teachers=[generator])
            ready = {generator.label: generator_engine} if generator_engine is not None else None
            log(f"[distill] loop {k}: {metrics['generator']} answers the new prompts")
            gen_cfg = dataclasses.replace(gen_config, seed=_shift(gen_config.seed, 1000 * (k + 1)))
            gen = generate.run(gen_cfg, answer_dir, it / "generate", context=generator_context, engines=ready)
            tokens_used += gen["tokens"]["completion"]
            verify.run(_stage_config(recipe, "verify"), it / "generate", it / "verify", context=context)
            verified = [it / "verify"]
            more = loop.hard_samples - gen_cfg.n
            counts = _verified_counts(it / "verify")
            regenerated = store.load_table(answer_dir / "data")
            short = [
                i
                for i, rid in enumerate(regenerated.column("id").to_pylist())
                if counts.get(rid, 0) < loop.stop_at
            ]
            if more > 0 and short:
                store.save_table(regenerated.take(pa.array(short, pa.int64())), it / "hard-prompts" / "data")
                more_cfg = dataclasses.replace(gen_cfg, n=more, seed=_shift(gen_cfg.seed, 1))
                gen = generate.run(
                    more_cfg,
                    it / "hard-prompts",
                    it / "generate-more",
                    context=generator_context,
                    engines=ready,
                )
                tokens_used += gen["tokens"]["completion"]
                verify.run(
                    _stage_config(recipe, "verify"), it / "generate-more", it / "verify-more", context=context
                )
                verified.append(it / "verify-more")
            pairs = _hard_negative_pairs(it / "mine", verified) if loop.hard_negatives else None
            if pairs is not None and pairs.num_rows:
                store.save_table(pairs, it / "hard-negatives" / "data" / "dpo")
                metrics["hard_negative_pairs"] = pairs.num_rows
            rounds_sft.append([])
            for j, folder in enumerate(verified):
                if store.read_manifest(folder)["rows_out"] == 0:
                    continue
                out = it / ("export" if j == 0 else "export-more")
                export.run(
                    export.Config(formats=["sft"], max_per_prompt=loop.max_per_prompt),
                    folder,
                    out,
                    context=context,
                )
                rounds_sft[-1].append(out / "data" / "sft")
            metrics["teacher_tokens"] = tokens_used
            metrics["round_s"] = round(time.perf_counter() - t_round, 1)
            store.write_json_atomic(it / "metrics.json", metrics)
            history.append(metrics)
    finally:
        engines.close()
    summary = {
        "best": best,
        "history": history,
        "stopped_after": len(history),
        "teacher_validation_accuracy": teacher_acc,
        "generation_tokens": tokens_used,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    store.write_json_atomic(loop_dir / "summary.json", summary)
    return summary


def _shift(seed: int | None, by: int) -> int | None:
    """A new round's sampling seed; an unseeded generate stage (`seed: null`) stays unseeded."""
    return None if seed is None else seed + by
