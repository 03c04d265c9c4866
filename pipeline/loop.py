"""The performance-guided loop (PGKD): train -> evaluate -> mine -> regenerate -> generate -> verify -> export.

    distill loop scripts/recipes/pgkd.yaml

It first runs the recipe's stages (the base dataset), then iterates. Iteration k trains a fresh LoRA student
on all the verified data so far, scores it on the validation split (`mine`), and, unless validation stopped
improving (`patience`) or the teacher budget is spent, asks for new prompts shaped like the failures
(`regenerate`), has the teacher answer them and keeps the verified answers. Iteration 0 is plain SFT on
the base data, so the history shows what the targeted data added.

Everything lives under `runs/<run>/loop/` (`validation/`, `iter_<k>/{train-data,train,mine,regenerate,
generate,verify,export}/`, `iter_<k>/metrics.json`, `summary.json`); every step is a stage folder or a
training manifest, so a killed loop resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from pipeline import store
from pipeline.config import from_dict
from pipeline.errors import UserError
from pipeline.recipe import LoopConfig, Recipe, load_recipe


def _stage_config(recipe: Recipe, name: str):
    from pipeline.recipe import stage_module

    for entry in recipe.stages:
        if entry.name == name:
            return entry.config
    return stage_module(name).Config()


def run_loop(
    recipe_path: str | Path, run_dir: str | Path | None = None, overrides: dict | None = None, log=None
) -> dict:
    """Run the recipe, then the loop with the recipe's `loop:` settings (`overrides` win)."""
    from pipeline.runner import run_recipe, stage_dirs
    from pipeline.stages import export, generate, mine, prompts, regenerate, verify
    from pipeline.train import run_training

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    recipe = load_recipe(recipe_path)
    loop = recipe.loop or LoopConfig()
    if overrides:
        loop = from_dict(LoopConfig, {**dataclasses.asdict(loop), **overrides}, "loop")
    if recipe.student is None:
        raise UserError("loop: the recipe needs `student:` (the model the loop trains)")
    if recipe.source.task is None or recipe.source.path:
        raise UserError("loop: the recipe's source must be a built-in task with a validation split")
    run_dir = Path(run_dir) if run_dir else Path("runs") / recipe.run
    run_recipe(recipe_path, run_dir=run_dir, log=log)
    export_dirs = [d for name, d, _ in stage_dirs(recipe, run_dir) if name == "export"]
    if not export_dirs:
        raise UserError("loop: the recipe needs an export stage (its sft/ data is what round 0 trains on)")
    context = recipe.context(run_dir)
    loop_dir = run_dir / "loop"
    val_source = dataclasses.replace(recipe.source, split="validation", n=loop.validation_n)
    val_dir = loop_dir / "validation"
    prompts.run(prompts.Config(), None, val_dir, context=dataclasses.replace(context, source=val_source))

    sft_folders = [export_dirs[-1] / "data" / "sft"]
    history, best, bad, tokens_used = [], None, 0, 0
    for k in range(loop.iterations):
        it = loop_dir / f"iter_{k}"
        train_data = it / "train-data"
        if not (train_data / "data" / "sft").exists():
            table = store.concat([store.load_table(f) for f in sft_folders])
            (train_data / "data").mkdir(parents=True, exist_ok=True)
            store.save_table(table, train_data / "data" / "sft")
        train_rows = store.load_table(train_data / "data" / "sft").num_rows
        if not (it / "train" / "manifest.json").exists():
            overrides = {
                "dataset": str(train_data),
                "output_dir": str(it / "train"),
                "model": recipe.student.model,
            }
            if loop.max_steps is not None:
                overrides["max_steps"] = loop.max_steps
            log(f"[distill] loop {k}: training on {train_rows} rows")
            run_training("sft", loop.train_config, overrides)
        mined = mine.run(
            mine.Config(
                adapter=str(it / "train" / "adapter"), student_engine=loop.engine, max_tokens=loop.max_tokens
            ),
            val_dir,
            it / "mine",
            context=context,
        )
        acc = mined["student_accuracy"]
        improved = best is None or acc > best["val_accuracy"] + loop.min_delta
        metrics = {
            "iteration": k,
            "val_accuracy": acc,
            "train_rows": train_rows,
            "hard_prompts": mined["rows_out"],
            "teacher_tokens": tokens_used,
            "adapter": str(it / "train" / "adapter"),
        }
        store.write_json_atomic(it / "metrics.json", metrics)
        history.append(metrics)
        log(f"[distill] loop {k}: validation accuracy {acc:.1%} ({mined['rows_out']} hard prompts)")
        if improved:
            best, bad = metrics, 0
        else:
            bad += 1
        if bad >= loop.patience:
            log(f"[distill] loop: no improvement for {bad} round(s); stopping")
            break
        if k == loop.iterations - 1 or mined["rows_out"] == 0:
            break
        if loop.teacher_budget_tokens is not None and tokens_used >= loop.teacher_budget_tokens:
            log("[distill] loop: teacher budget spent; stopping")
            break
        regenerate.run(
            regenerate.Config(per_prompt=loop.per_prompt, seed=k),
            it / "mine",
            it / "regenerate",
            context=context,
        )
        gen = generate.run(
            _stage_config(recipe, "generate"), it / "regenerate", it / "generate", context=context
        )
        tokens_used += gen["tokens"]["completion"]
        verify.run(_stage_config(recipe, "verify"), it / "generate", it / "verify", context=context)
        export.run(export.Config(formats=["sft"]), it / "verify", it / "export", context=context)
        sft_folders.append(it / "export" / "data" / "sft")
    summary = {"best": best, "history": history, "stopped_after": len(history)}
    store.write_json_atomic(loop_dir / "summary.json", summary)
    return summary
