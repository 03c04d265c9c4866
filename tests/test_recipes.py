"""Every recipe under scripts/recipes/ is one a user can run: it parses (known keys, right types, each stage's
settings checked against that stage's `Config`, as `distill run` checks them before any work), the templates
it names exist, and its header gives the command that runs it. Not a run: the real ones take minutes to hours.
"""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.runner import load_recipe
from tests.conftest import REPO, run_cli

RECIPES = sorted((REPO / "scripts" / "recipes").glob("*.yaml"))
# The workflows the README documents, each with its recipe.
DOCUMENTED = {
    "quickstart": "the quickstart (distill run, then distill loop)",
    "self_taught": "the self-taught baseline",
    "pgkd": "performance-guided distillation",
    "heal_pruned": "healing a pruned student with self-distilled data",
    "rephrase": "the rephrasing lever",
    "code": "code with the sandboxed code verifier",
    "openai_teacher": "a teacher behind an OpenAI-compatible server",
    "slurm": "shards on an executor (executor:)",
}


def test_every_documented_workflow_has_a_recipe():
    assert sorted(set(DOCUMENTED) - {p.stem for p in RECIPES}) == []


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_names_what_exists(path):
    recipe = load_recipe(path)
    assert recipe.teachers and recipe.stages and recipe.source is not None
    for entry in recipe.stages:
        for f in dataclasses.fields(entry.config):
            value = getattr(entry.config, f.name)
            if f.name.endswith("_template") and value:
                assert (REPO / "prompts" / value).is_file(), f"{path.name}: {entry.name}.{f.name}: {value}"
    text = path.read_text()
    assert any(f"distill {cmd} scripts/recipes/{path.name}" in text for cmd in ("run", "loop")), (
        f"{path.name}: its header should give the command that runs it"
    )


def test_the_heal_recipe_prunes_the_student_and_self_distills():
    recipe = load_recipe(REPO / "scripts" / "recipes" / "heal_pruned.yaml")
    assert recipe.student.prune_layers > 0
    names = [s.name for s in recipe.stages]
    assert names.index("verify") < names.index("self-distill") < names.index("export")


def test_a_recipe_with_a_typo_is_refused_before_any_work(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (REPO / "scripts" / "recipes" / "heal_pruned.yaml").read_text().replace("prune_by", "prune_bye")
    )
    r = run_cli("run", str(broken), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "prune_bye" in r.stderr and not (tmp_path / "run").exists()
