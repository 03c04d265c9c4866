"""Run a recipe: chain stage folders `runs/<run>/<NN>-<stage>/`, skipping stages that are complete.

The runner only chains directories: each stage reads the previous stage's folder from disk, never its
in-memory state, so any stage can be rerun, resumed or run elsewhere on its own. It is also the one place
that knows the stage modules: `stage_module(name)`, `load_recipe(path)` (a recipe with every stage's settings
checked against that stage's `Config`) and `run_context(recipe, run_dir)` (what stages see).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time
from pathlib import Path

from pipeline import store
from pipeline.errors import UserError
from pipeline.recipe import STAGE_MODULES, Recipe, RunContext, read_recipe


def stage_module(name: str):
    """The module of a stage named in a recipe or on the command line (pipeline/stages/<module>.py)."""
    if name not in STAGE_MODULES:
        raise UserError(f"unknown stage '{name}'; expected one of: {', '.join(STAGE_MODULES)}")
    try:
        return importlib.import_module(f"pipeline.stages.{STAGE_MODULES[name]}")
    except ModuleNotFoundError as e:
        if e.name == f"pipeline.stages.{STAGE_MODULES[name]}":
            raise UserError(
                f"stage '{name}' is not available in this version of the pipeline; remove it"
            ) from None
        raise


def stage_config(name: str) -> type:
    """A stage's `Config` dataclass: its settings in a recipe, with their help text."""
    return stage_module(name).Config


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe and check every stage's settings against that stage's `Config` (unknown keys, types)."""
    return read_recipe(path, stage_config)


def run_context(recipe: Recipe, run_dir: Path) -> RunContext:
    """What stages see. A pruned student (`prune_layers`) is pruned here, once (cached in
    <run_dir>/student-pruned), and stands in for the student model; `original_student` keeps the
    unpruned one (self-distill rewrites with it)."""
    student, original = recipe.student, None
    if student is not None and student.prune_layers:
        from pipeline.student import student_model

        original = student.model
        student = dataclasses.replace(
            student, model=student_model(recipe, run_dir), prune_layers=0, prune_start=None
        )
    return RunContext(recipe.teachers, student, recipe.critic, recipe.source, run_dir, original)


def stage_dirs(recipe: Recipe, run_dir: Path) -> list[tuple[str, Path, object]]:
    """(stage name, folder, config) for the implicit prompts stage and each recipe stage, in order."""
    from pipeline.stages import prompts

    entries = [("prompts", prompts.Config())] + [(s.name, s.config) for s in recipe.stages]
    return [(name, run_dir / f"{i:02d}-{name}", cfg) for i, (name, cfg) in enumerate(entries)]


def run_recipe(
    path: str | Path, run_dir: str | Path | None = None, overwrite: bool = False, log=None, executor=None
) -> dict:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    recipe = load_recipe(path)
    run_dir = Path(run_dir) if run_dir else Path("runs") / recipe.run
    run_dir.mkdir(parents=True, exist_ok=True)
    context = run_context(recipe, run_dir)  # prunes the student here, once, when the recipe asks for it
    if context.original_student:
        log(f"[distill] student: {context.student.model} (pruned from {context.original_student})")
    previous: Path | None = None
    manifests = {}
    for name, folder, config in stage_dirs(recipe, run_dir):
        module = stage_module(name)
        t0 = time.perf_counter()
        was_done = store.read_manifest(folder) is not None
        manifest = run_stage(name, config, previous, folder, context, overwrite=overwrite, executor=executor)
        if manifest is None:
            raise UserError(
                f"{name}: shards remain unfinished in {folder}; rerun to finish them "
                f"(or `distill merge {folder}` once submitted jobs are done)"
            )
        state = "already complete" if was_done and manifest.get("finished_at") else "done"
        summary = module.summary(manifest) if hasattr(module, "summary") else f"{manifest['rows_out']} rows"
        log(f"[distill] {folder.name}: {summary} ({state}, {time.perf_counter() - t0:.1f}s)")
        manifests[folder.name] = manifest
        previous = folder
    from pipeline.cards import write_card
    from pipeline.report import write_report

    card, report = write_card(run_dir), write_report(run_dir)
    log(f"[distill] card: {card}\n[distill] report: {report}")
    return {"run_dir": str(run_dir), "stages": list(manifests), "card": str(card), "report": str(report)}


def status(run_dir: str | Path) -> list[dict]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder; pass runs/<name>")
    folders = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name[:2].isdigit() and "-" in p.name)
    return [store.stage_status(p) for p in folders]


def merge(stage_dir: str | Path, keep_failed: bool = False) -> dict:
    """Join the shards of a stage whose shards ran separately (e.g. a Slurm array) and write its manifest:
    the same manifest a one-process run writes (the stage's own fields come from its saved `summarize`).
    ``keep_failed`` finishes a stage whose rows still owe a retry, rejecting them with their reason."""
    stage_dir = Path(stage_dir)
    manifest = store.read_manifest(stage_dir)
    if manifest is not None:
        return manifest
    try:
        st, progress = store.open_stage(stage_dir)
    except UserError:
        manifest = store.read_manifest(stage_dir)  # the last array task merged it a moment ago
        if manifest is not None:
            return manifest
        raise
    missing = [i for i in st.pending(progress["num_shards"]) if not (keep_failed and st.shard_retry(i))]
    if missing:
        shown = ", ".join(map(str, missing[:10]))
        retry = [i for i in missing if st.shard_retry(i) is not None]
        hint = (
            f"; shards {', '.join(map(str, retry[:10]))} have rows owed a retry: `distill retry {stage_dir}`, "
            "or merge with --keep-failed"
            if retry
            else ""
        )
        raise UserError(
            f"{stage_dir}: shards {shown} are not done; run them with --shard-index, then merge{hint}"
        )
    return st.finalize(st.load_stage(), keep_failed=keep_failed)


def retry(stage_dir: str | Path, executor=None) -> dict | None:
    """Redo what a stage still owes, from what it saved in shards/: shards never run, and rows that failed
    for a transient reason (server errors, timeouts). Then join the stage like a one-process run."""
    stage_dir = Path(stage_dir)
    manifest = store.read_manifest(stage_dir)
    if manifest is not None:
        return manifest
    st, progress = store.open_stage(stage_dir)
    stage = st.load_stage()
    if stage is None or not st.has_input():
        raise UserError(
            f"{stage_dir}: this stage ({progress['stage']}) saved no stage object; rerun its command instead"
        )
    try:
        return store.run_sharded(
            st, st.load_input(), stage, num_shards=progress["num_shards"], executor=executor
        )
    finally:
        stage.close()


def run_stage(
    name: str, config, input_path: Path | None, output: Path, context: RunContext, executor=None, **kw
) -> dict | None:
    """Run one stage; its shards run where `executor` says (None: here, one after another)."""
    module = stage_module(name)
    if executor is not None and executor.name != "local":
        kw["executor"] = executor
    return module.run(config, input_path, output, context=context, **kw)
