"""Run a recipe: chain stage folders `runs/<run>/<NN>-<stage>/`, skipping stages that are complete.

The runner only chains directories: each stage reads the previous stage's folder from disk, never its
in-memory state, so any stage can be rerun, resumed or run elsewhere on its own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipeline import store
from pipeline.errors import UserError
from pipeline.recipe import Recipe, RunContext, load_recipe, stage_module


def stage_dirs(recipe: Recipe, run_dir: Path) -> list[tuple[str, Path, object]]:
    """(stage name, folder, config) for the implicit prompts stage and each recipe stage, in order."""
    from pipeline.stages import prompts

    entries = [("prompts", prompts.Config())] + [(s.name, s.config) for s in recipe.stages]
    return [(name, run_dir / f"{i:02d}-{name}", cfg) for i, (name, cfg) in enumerate(entries)]


def run_recipe(
    path: str | Path, run_dir: str | Path | None = None, overwrite: bool = False, log=None
) -> dict:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    recipe = load_recipe(path)
    run_dir = Path(run_dir) if run_dir else Path("runs") / recipe.run
    run_dir.mkdir(parents=True, exist_ok=True)
    context = recipe.context(run_dir)  # prunes the student here, once, when the recipe asks for it
    if context.original_student:
        log(f"[distill] student: {context.student.model} (pruned from {context.original_student})")
    previous: Path | None = None
    manifests = {}
    for name, folder, config in stage_dirs(recipe, run_dir):
        module = stage_module(name)
        t0 = time.perf_counter()
        was_done = store.read_manifest(folder) is not None
        manifest = module.run(config, previous, folder, context=context, overwrite=overwrite)
        if manifest is None:
            raise UserError(f"{name}: shards remain unfinished in {folder}; rerun to finish them")
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


def merge(stage_dir: str | Path) -> dict:
    """Join the shards of a stage whose shards ran separately (e.g. a Slurm array) and write its manifest."""
    stage_dir = Path(stage_dir)
    manifest = store.read_manifest(stage_dir)
    if manifest is not None:
        return manifest
    progress_path = stage_dir / "shards" / "progress.json"
    if not progress_path.exists():
        raise UserError(f"{stage_dir} has no shards to merge; run the stage first")
    progress = json.loads(progress_path.read_text())
    missing = [
        i for i in range(progress["num_shards"]) if not (stage_dir / "shards" / f"{i:05d}" / ".done").exists()
    ]
    if missing:
        shown = ", ".join(map(str, missing[:10]))
        raise UserError(f"{stage_dir}: shards {shown} are not done; run them with --shard-index, then merge")
    st = store.StageStore(
        stage_dir,
        progress["stage"],
        progress["fingerprint_parts"].get("version", "?"),
        progress["fingerprint_parts"],
    )
    return st.finalize({})


def run_stage(
    name: str, config, input_path: Path | None, output: Path, context: RunContext, **kw
) -> dict | None:
    return stage_module(name).run(config, input_path, output, context=context, **kw)
