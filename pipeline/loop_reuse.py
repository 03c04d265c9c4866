"""Round 0 of `distill loop` reuses a training the run already has (`distill train sft` on its export).

Round 0 is plain SFT on the recipe's exported data, which is what the quickstart trains right before
`distill loop`: the same rows and the same settings. Training is the largest part of a round on a CPU (330 of
442 s in the quickstart's round 0), so the loop copies that adapter instead of training it again. A training
counts only when its manifest says it trained `sft` on exactly the export's data (the export's fingerprint)
with the loop's settings (the training config with the loop's overrides, output folders aside).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from pipeline import store

IGNORED = ("dataset", "output_dir")  # where the data and adapter live: not a setting of the training


def _covers(found, wanted) -> bool:
    """`found` (a manifest's config value) has every setting of `wanted`; dicts may hold more keys (peft's
    task_type is filled in when training starts)."""
    if isinstance(wanted, dict):
        return isinstance(found, dict) and all(_covers(found.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, (int, float)) and isinstance(found, (int, float)) and not isinstance(found, bool):
        return float(found) == float(wanted)
    return found == wanted


def finished_training(run_dir: Path, export_dir: Path, train_config: str, overrides: dict) -> Path | None:
    """A finished `sft` training folder directly under `run_dir` (e.g. runs/quickstart/train-sft) made from
    the export in `export_dir` with `train_config` plus `overrides`; None when there is none."""
    export = store.read_manifest(export_dir)
    if export is None:
        return None
    wanted = (yaml.safe_load(Path(train_config).read_text()) or {}) | overrides
    wanted = {k: v for k, v in wanted.items() if k not in IGNORED}
    for manifest_path in sorted(run_dir.glob("*/manifest.json")):
        found = store.read_manifest(manifest_path.parent) or {}
        if (
            found.get("mode") == "sft"
            and (found.get("dataset") or {}).get("fingerprint") == f"{export['fingerprint']}:data/sft"
            and _covers(found.get("config"), wanted)
            and saved_weights(manifest_path.parent) is not None
        ):
            return manifest_path.parent
    return None


def round0_training(
    base_sft: list[Path], train_rows: int, run_dir: Path, loop, overrides: dict
) -> Path | None:
    """Round 0's training if the run already has it: round 0 trains on the base export alone (`base_sft`,
    its data/sft folder) with no row dropped as a repeat, and `run_dir` holds an sft training of that
    export with the loop's `train_config` and `overrides`."""
    if len(base_sft) != 1 or store.load_table(base_sft[0]).num_rows != train_rows:
        return None
    settings = {key: value for key, value in overrides.items() if key not in IGNORED}
    return finished_training(run_dir, base_sft[0].parent.parent, loop.train_config, settings)


def saved_weights(training: Path) -> str | None:
    """What a training folder saved: "adapter" (LoRA), "model" (every weight), or None (neither)."""
    return next((name for name in ("adapter", "model") if (training / name).is_dir()), None)


def copy_training(source: Path, dest: Path) -> None:
    """The adapter (or full model) of `source` as the training in `dest`; the manifest comes last (it marks
    the step done), so a kill mid-copy copies again on resume."""
    weights = saved_weights(source)
    shutil.copytree(source / weights, dest / weights, dirs_exist_ok=True)
    manifest = store.read_manifest(source)
    manifest.update(reused_from=str(source), output_dir=str(dest), outputs={weights: str(dest / weights)})
    store.write_json_atomic(dest / store.MANIFEST, manifest)
