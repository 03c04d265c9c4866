"""Does spelling the teacher's arithmetic out digit by digit teach the student more? Same rows, other formats.

    .venv/bin/python scripts/exp_place_value.py --setting hard --prompts 480 --seeds 0 1 2

The recipe `scripts/recipes/<setting>.yaml` runs its dataset stages once on the first --prompts prompts of
seed 0's draw (its verify stage checks the teacher's working: `math: {check_steps: true}`). The verified rows
are then exported in each arm's format from that one verify folder:

- `plain`: as the teacher wrote them;
- `place-value`: `export: {place_value: true}`, every right two-term equation written as place-value steps
  (44 + 86 = 44 + 80 + 6 = 124 + 6 = 130);
- `sign-first`: `sign_first: true` as well, an equation with a negative number worked on the sizes, then
  signed (48 - 13 = 48 - 10 - 3 = 38 - 3 = 35, so 13 - 48 = -35), so no step crosses zero;
- `place-value-full`, `plain-full`: those rows, every weight of the student trained instead of a LoRA adapter
  (`scripts/configs/sft_full.yaml`, learning rate 1e-4; the others: `scripts/configs/sft.yaml`, LoRA, 4e-4).

The arms train on the same rows, prompts and teacher tokens (the recipe's epochs) with each training seed, and are scored greedily on the test split (the held-out wording families).
The table gives each arm's mean ± sd over seeds and its failures that write a wrong equation; each pair of
arms is compared per problem, pooled over seeds (exact McNemar). --arms picks the arms. Every step is a folder
under --out, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from exp_pgkd import SETTINGS, evaluate, recipe_of, write_recipe
from experiments import REPO, distill, paired, table, train

from pipeline.verifiers.equations import wrong_equation

EXPORTS = {
    "plain": (),
    "place-value": ("--place-value",),
    "sign-first": ("--place-value", "--sign-first"),  # no step crosses zero (48 - 13 = 35, so 13 - 48 = -35)
}
# arm -> (its export, its training config in scripts/configs/): sft trains a LoRA adapter, sft_full every
# weight of the student (the same rows, steps and seed)
ARMS = {
    "plain": ("plain", "sft"),
    "place-value": ("place-value", "sft"),
    "sign-first": ("sign-first", "sft"),
    "place-value-full": ("place-value", "sft_full"),
    "plain-full": ("plain", "sft_full"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--setting", choices=SETTINGS, default="hard", help="the recipe: scripts/recipes/<setting>.yaml"
    )
    ap.add_argument("--prompts", type=int, default=480, help="training prompts (seed 0's draw)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--lr", type=float, help="the student's learning rate (default: each arm's config's)")
    ap.add_argument("--test-n", type=int, default=100, help="test problems per held-out wording family")
    ap.add_argument(
        "--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the arms to train and compare"
    )
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
    arms = {arm: ARMS[arm] for arm in args.arms}
    for name in dict.fromkeys(export for export, _ in arms.values()):
        if not (out / f"export-{name}" / "manifest.json").exists():
            distill("export", "--input", str(verified), "--output", str(out / f"export-{name}"), "--formats", "sft",
                    *EXPORTS[name])  # fmt: skip
    epochs = recipe["loop"].get("epochs", 2.0)
    tests: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in args.seeds:
        for arm, (export, config) in arms.items():
            folder = out / f"{arm}-s{seed}"
            fields = {
                "num_train_epochs": epochs,
                "seed": seed,
                **({"learning_rate": args.lr} if args.lr else {}),
            }
            manifest = train("sft", config, folder, dataset=str(out / f"export-{export}"), **fields)
            if "model" in manifest["outputs"]:  # full fine-tuning: the trained model itself
                evaluate(recipe, None, folder / "test.json", args.test_n, model=manifest["outputs"]["model"])
            else:
                evaluate(recipe, folder / "train" / "adapter", folder / "test.json", args.test_n)
            tests[arm].append(json.loads((folder / "test.json").read_text()))
    exports = {e: json.loads((out / f"export-{e}" / "manifest.json").read_text()) for e, _ in arms.values()}
    changed = ", ".join(
        f"{m['place_value_rows']} by {arm}" for arm, m in exports.items() if "place_value_rows" in m
    )
    print(f"\n{args.setting}, {args.prompts} prompts (seed 0's draw): {next(iter(exports.values()))['rows_out']} "
          f"verified rows ({changed or 'none rewritten'}); seeds {args.seeds}")  # fmt: skip
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
    names = list(arms)
    for i, arm in enumerate(names):
        for base in names[:i]:
            won, lost, p = paired(tests[arm], tests[base])
            gaps = [100 * (a["pass@1"] - b["pass@1"]) for a, b in zip(tests[arm], tests[base], strict=True)]
            spread = f" ± {statistics.stdev(gaps):.1f}" if len(gaps) > 1 else ""
            print(f"{arm} - {base}: {statistics.mean(gaps):+.1f}{spread} points; pooled over seeds {won} won / "
                  f"{lost} lost, exact McNemar p {'< 0.001' if p < 0.001 else f'= {p:.3f}'}")  # fmt: skip


if __name__ == "__main__":
    main()
