"""Where a loop round's prompts come from: its mining pool, and the teacher's rewrites of prompts.

Each round mines the student on a fresh draw of the training split (`mine-pool`, `mine-pool-<k>`; user
data: its own rows), so later rounds find failures on facts the earlier pools did not hold. With
`mine_rephrased`, the teacher first rewrites the pool (`mine-pool[-k]-rephrased`), so the student is mined
on wordings it was not trained on; the loop keeps the rewrites the teacher itself then solves
(`Loop.teacher_checked`). `method: rephrase` rewrites the failed prompts the same way. A rewrite goes through
the rephrase stage and its checks: same numbers, the source's reference, never an evaluation split
(pipeline/stages/rephrase.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.errors import UserError
from pipeline.recipe import Recipe, RunContext, SourceConfig
from pipeline.runner import stage_module


def recipe_stage_config(recipe: Recipe, name: str):
    """The recipe's settings for stage `name`, or the stage's defaults when the recipe has no such stage."""
    for entry in recipe.stages:
        if entry.name == name:
            return entry.config
    return stage_module(name).Config()


def finished(manifest: dict | None, folder: Path) -> dict:
    """A stage's manifest, or a UserError when its shards were submitted without waiting."""
    if manifest is None:  # an executor that submits without waiting (slurm, wait: false)
        raise UserError(
            f"loop: shards remain unfinished in {folder}; `distill merge {folder}` once the jobs are done, "
            "then rerun the loop"
        )
    return manifest


def draw_pool(loop_dir: Path, k: int, source: SourceConfig, user_data: bool, context: RunContext) -> Path:
    """Round k's mining prompts, as a prompts folder: a new seed of the training split each round (user
    data: the same rows)."""
    from pipeline.stages import prompts

    folder = loop_dir / ("mine-pool" if k == 0 else f"mine-pool-{k}")
    if not user_data and k > 0:
        source = dataclasses.replace(source, seed=source.seed + 1000 * k)
    prompts.run(prompts.Config(), None, folder, context=dataclasses.replace(context, source=source))
    return folder


def teacher_rephrase(
    recipe: Recipe, context: RunContext, engine, source: Path, out: Path, per_prompt: int, seed: int
) -> dict:
    """The teacher's rewrites of the prompts in `source` into `out`, with the recipe's rephrase settings
    (sources left out); returns the rephrase manifest, whose tokens count against the loop's budget."""
    from pipeline.stages import rephrase

    config = recipe_stage_config(recipe, "rephrase")
    config = dataclasses.replace(config, per_prompt=per_prompt, keep_source=False, seed=seed)
    context = dataclasses.replace(context, teachers=[recipe.teachers[0]])
    return finished(rephrase.run(config, source, out, context=context, engine=engine), out)
