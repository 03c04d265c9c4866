"""A recipe's pruned student: pruned once from the recipe's source, cached, and what every later step trains."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.runner import load_recipe, run_context
from pipeline.student import PRUNED_DIR, student_model


def _recipe(tmp_path, name: str, **student) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run": "heal",
                "teacher": {"model": "smollm2-135m-instruct", "engine": "hf"},
                "student": {"model": "smollm2-135m-instruct", **student},
                "source": {"task": "arithmetic", "n": 6, "seed": 0},
                "stages": [{"generate": {"n": 1, "max_tokens": 32}}],
            }
        )
    )
    return str(path)


def test_recipe_with_prune_layers_trains_a_student_with_fewer_layers(embedded, tmp_path):
    from datasets import Dataset
    from transformers import AutoConfig

    from pipeline.train import run_training

    run_dir = tmp_path / "run"
    recipe_path = _recipe(tmp_path, "heal", prune_layers=2)
    recipe = load_recipe(recipe_path)
    context = run_context(recipe, run_dir)
    folder = run_dir / PRUNED_DIR
    assert context.student.model == str(folder) and context.original_student == embedded.spec
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["layers"] == 28 and len(manifest["dropped"]) == 2
    assert manifest["calibration_prompts"] == 6  # drawn from the recipe's source
    assert manifest["source_model"]["sha256"] == embedded.identity["sha256"]
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert student_model(recipe, run_dir) == str(folder) and weights.stat().st_mtime_ns == stamp, "cached"

    # Other settings prune again, in the same place.
    moved = load_recipe(_recipe(tmp_path, "moved", prune_layers=2, prune_start=3))
    assert student_model(moved, run_dir) == str(folder)
    assert json.loads((folder / "manifest.json").read_text())["dropped"] == [3, 4]
    context = run_context(recipe, run_dir)  # back to the block chosen by kl
    assert json.loads((folder / "manifest.json").read_text())["dropped"] == manifest["dropped"]
    assert manifest["prune_by"] == "kl" and manifest["score"] is not None

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {a} + {b}?"},
                {"role": "assistant", "content": f"{a + b}"},
            ]
        }
        for a, b in [(1, 2), (3, 4), (2, 2), (5, 1)]
    ]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "sft"))
    config = tmp_path / "sft.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "recipe": recipe_path,
                "run_dir": str(run_dir),
                "dataset": str(tmp_path / "sft"),
                "peft": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
                "output_dir": str(tmp_path / "train"),
                "max_steps": 2,
                "per_device_train_batch_size": 2,
                "max_length": 64,
                "save_strategy": "no",
                "logging_steps": 1,
            }
        )
    )
    trained = run_training("sft", str(config))
    assert trained["model"]["sha256"] == manifest["weights_sha256"]
    adapter = json.loads((tmp_path / "train" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(folder)
    assert AutoConfig.from_pretrained(adapter["base_model_name_or_path"]).num_hidden_layers == 28

    from safetensors import safe_open

    with safe_open(str(tmp_path / "train" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        layer_ids = {int(k.split(".layers.")[1].split(".")[0]) for k in f.keys() if ".layers." in k}
    assert max(layer_ids) == 27, "the adapter has one set of weights per kept layer"

    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "model": "smollm2-135m-instruct"}))
    with pytest.raises(UserError, match="both `model` and `recipe`"):
        run_training("sft", str(both))


def test_student_settings_are_validated(tmp_path):
    with pytest.raises(UserError, match="prune_start needs prune_layers"):
        load_recipe(_recipe(tmp_path, "bad", prune_start=3))
    with pytest.raises(UserError, match="prune_by must be one of kl, angular, not 'depth'"):
        load_recipe(_recipe(tmp_path, "by", prune_layers=2, prune_by="depth"))
    with pytest.raises(UserError, match="prune_layers must be 0"):
        load_recipe(_recipe(tmp_path, "neg", prune_layers=-1))
    plain = load_recipe(_recipe(tmp_path, "plain"))
    assert student_model(plain, tmp_path / "run") == "smollm2-135m-instruct"
    assert not (tmp_path / "run" / PRUNED_DIR).exists()
