"""Does spelling the teacher's arithmetic out digit by digit teach the student more? Same rows, two formats.

    .venv/bin/python scripts/exp_place_value.py --setting hard --prompts 480 --seeds 0 1 2

The recipe `scripts/recipes/<setting>.yaml` runs its dataset stages once on the first --prompts prompts of
seed 0's draw (its verify stage checks the teacher's working: `math: {check_steps: true}`). The verified rows
are then exported twice: as the teacher wrote them (`plain`) and with `export: {place_value: true}`
(`place-value`: every right two-term equation written as place-value steps, 44 + 86 = 44 + 80 + 6 = 124 + 6 =
130). Both arms train on the same rows, prompts and teacher tokens (`scripts/configs/sft.yaml`, the recipe's
epochs, --lr) with each training seed, and are scored greedily on the test split (the held-out wording
families). The table gives each arm's mean ± sd over seeds, its failures that write a wrong equation, and the
per-problem comparison pooled over seeds (exact McNemar). Every step is a folder under --out, so a stopped run
resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from exp_pgkd import SETTINGS, evaluate, recipe_of, write_recipe
from experiments import REPO, distill, paired, table, train

from pipeline.verifiers.equations import wrong_equation

ARMS = {"plain": (), "place-value": ("--place-value",)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--setting", choices=SETTINGS, default="hard", help="the recipe: scripts/recipes/<setting>.yaml"
    )
    ap.add_argument("--prompts", type=int, default=480, help="training prompts (seed 0's draw)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--lr", type=float, default=4e-4, help="the student's learning rate")
    ap.add_argument("--test-n", type=int, default=100, help="test problems per held-out wording family")
    ap.add_argument("--out", type=Path, help="default: runs/exp_place_value/<setting>-<prompts>")
    args = ap.parse_args()
    if args.prompts < 1:
        ap.error("--prompts: at least 1")
    out = args.out or REPO / "runs" / "exp_place_value" / f"{args.setting}-{args.prompts}"
    recipe = recipe_of(args.setting, args.prompts, 0, {}, run="run")
    recipe["stages"] = [e for e in recipe["stages"] if "export" not in e]  # the arms export, each its way
    run = out / "run"
    distill("run", str(write_recipe(out, recipe)), "--run-dir", str(run))
    verified = next(run.glob("[0-9][0-9]-verify"))
    for arm, flags in ARMS.items():
        if not (out / f"export-{arm}" / "manifest.json").exists():
            distill("export", "--input", str(verified), "--output", str(out / f"export-{arm}"), "--formats", "sft",
                    *flags)  # fmt: skip
    epochs = recipe["loop"].get("epochs", 2.0)
    tests: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            folder = out / f"{arm}-s{seed}"
            train("sft", "sft", folder, dataset=str(out / f"export-{arm}"), learning_rate=args.lr,
                  num_train_epochs=epochs, seed=seed)  # fmt: skip
            evaluate(recipe, folder / "train" / "adapter", folder / "test.json", args.test_n)
            tests[arm].append(json.loads((folder / "test.json").read_text()))
    export = json.loads((out / "export-place-value" / "manifest.json").read_text())
    print(f"\n{args.setting}, {args.prompts} prompts (seed 0's draw): {export['rows_out']} verified rows, "
          f"{export['place_value_rows']} of them changed by place_value; seeds {args.seeds}, lr {args.lr:g}")  # fmt: skip
    body = []
    for arm, runs in tests.items():
        scores = [100 * t["pass@1"] for t in runs]
        failed = [r for t in runs for r in t["rows"] if not r["passed"]]
        slips = sum(bool(wrong_equation(r["completion"])) for r in failed)
        spread = f" ± {statistics.stdev(scores):.1f}" if len(scores) > 1 else ""
        body.append([arm, " / ".join(f"{s:.1f}" for s in scores), f"{statistics.mean(scores):.1f}{spread}",
                     " / ".join(f"{100 * t['by_phrasing']['heldout']['pass@1']:.0f}-{100 * t['by_phrasing']['wide']['pass@1']:.0f}"
                                for t in runs),
                     f"{slips} of {len(failed)}"])  # fmt: skip
    print(table(["arm", "test % per seed", "mean ± sd", "heldout-wide per seed", "failures with a wrong step"],
                body))  # fmt: skip
    won, lost, p = paired(tests["place-value"], tests["plain"])
    gaps = [
        100 * (a["pass@1"] - b["pass@1"]) for a, b in zip(tests["place-value"], tests["plain"], strict=True)
    ]
    spread = f" ± {statistics.stdev(gaps):.1f}" if len(gaps) > 1 else ""
    print(f"\nplace-value - plain: {statistics.mean(gaps):+.1f}{spread} points; pooled over seeds {won} won / "
          f"{lost} lost, exact McNemar p {'< 0.001' if p < 0.001 else f'= {p:.3f}'}")  # fmt: skip


if __name__ == "__main__":
    main()
