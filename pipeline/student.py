"""The student a recipe trains: its model spec, pruned once (and cached) when `student.prune_layers` is set.

    student: {model: smollm2-135m-instruct, prune_layers: 2}   # optionally prune_by: angular, prune_start: 25

The first step that needs the student drops `prune_layers` consecutive decoder layers (the block whose
removal changes the model's answers to calibration prompts from the recipe's source least, `prune_by: kl`;
or the least angular distance, `prune_by: angular`; or from `prune_start`) and
saves the result in `runs/<run>/student-pruned/`. Its `manifest.json` records the source model's identity,
the settings, the calibration prompts' hash, the layers dropped and the pruned weights' sha256. Every later
step (training, evaluation, mine, the PGKD loop) loads that folder; a rerun with the same settings reuses it,
and a rerun with different settings or a tampered folder prunes again.

    python -m pipeline.student scripts/recipes/heal.yaml [RUN_DIR]      # prune (once), print the folder
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

from pipeline import store
from pipeline.errors import UserError

PRUNED_DIR = "student-pruned"
CALIBRATION_PROMPTS = 24  # enough to rank blocks stably on this model (ENVIRONMENT.md used 36)
VERSION = "2"  # 2: the block is chosen by `prune_by` (kl by default)


def student_model(recipe, run_dir: str | Path | None = None) -> str:
    """The model spec to load for the recipe's student: the pruned folder when `prune_layers` is set
    (pruning it on first use), else `recipe.student.model`. `run_dir` defaults to runs/<run>."""
    if recipe.student is None:
        raise UserError("the recipe has no `student:`; add `student: {model: smollm2-135m-instruct}`")
    student = recipe.student
    if not student.prune_layers:
        return student.model
    run_dir = Path(run_dir) if run_dir else Path("runs") / recipe.run
    return str(ensure_pruned(student, recipe.source, run_dir / PRUNED_DIR))


def ensure_pruned(student, source, folder: Path) -> Path:
    """Prune `student.model` into `folder` unless a pruned model with the same settings is already there."""
    from pipeline.models import resolve, weights_hash
    from pipeline.prune import prune

    if student.prune_layers < 0:
        raise UserError(f"student.prune_layers must be 0 or more, not {student.prune_layers}")
    prompts = calibration_prompts(source)
    wanted = {
        "version": VERSION,
        "source_model": resolve(student.model).identity,
        "prune_layers": student.prune_layers,
        "prune_start": student.prune_start,
        "prune_by": student.prune_by,
        "calibration_sha256": store.sha256_text(json.dumps(prompts)),
    }
    manifest = store.read_manifest(folder)
    if manifest is not None and {k: manifest.get(k) for k in wanted} == wanted:
        try:
            if weights_hash(folder) == manifest["weights_sha256"]:
                return folder
        except (OSError, KeyError):
            pass
    print(
        f"[distill] pruning {student.prune_layers} layer(s) of {student.model} into {folder} (once)",
        file=sys.stderr,
        flush=True,
    )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    info = prune(
        student.model,
        student.prune_layers,
        tmp,
        start=student.prune_start,
        prompts=prompts,
        by=student.prune_by,
    )
    record = {
        **wanted,
        "calibration_prompts": len(prompts),
        "dropped": info["dropped"],
        "layers": info["layers"],
        "score": info.get("score"),  # of the dropped block (kl or angular distance); None with prune_start
        "weights_sha256": weights_hash(tmp),
    }
    store.write_json_atomic(tmp / "manifest.json", record)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def calibration_prompts(source) -> list[str]:
    """User texts of the first prompts of the recipe's source (its train split): what the student will see."""
    from pipeline.tasks import load_source

    if source is None:
        from pipeline.tasks import SourceConfig

        source = SourceConfig(task="arithmetic")
    split = source.split if (source.path or source.dataset) else "train"
    n = min(source.n or CALIBRATION_PROMPTS, CALIBRATION_PROMPTS)
    rows = load_source(dataclasses.replace(source, split=split, n=n))
    return [_user_text(r) for r in rows[:CALIBRATION_PROMPTS]]


def _user_text(row: dict) -> str:
    users = [m["content"] for m in row.get("messages") or [] if m.get("role") == "user"]
    return users[-1] if users else row.get("prompt") or ""


if __name__ == "__main__":
    from pipeline.recipe import read_recipe

    print(student_model(read_recipe(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
