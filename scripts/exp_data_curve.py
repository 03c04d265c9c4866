"""How does the student's test accuracy grow with the teacher's data? A learning curve, one seed.

    .venv/bin/python scripts/exp_data_curve.py --setting hard --sizes 120 240 480 --lrs 4e-4 2e-4

The recipe `scripts/recipes/<setting>.yaml` runs its dataset stages once, on the largest size's prompts (the
seed's draw). Each size trains the student (`scripts/configs/sft.yaml`, its epochs) on the verified rows of the
first N prompts only: the task's prompt draw is prefix-stable and every prompt's sampling seed depends only on
the seed and its id, so these are the rows a run of the recipe with N prompts would verify (up to duplicates
dropped across prompts). Every size trains at the first learning rate; the other rates train at the smallest and
the largest size. Each student is scored greedily on the test split (the held-out wording families), paired per
problem with the largest size at the first rate. Every step is a folder under --out, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from itertools import pairwise
from pathlib import Path

from exp_pgkd import SETTINGS, evaluate, evaluate_teacher, recipe_of, stage, write_recipe
from experiments import REPO, distill, paired, table, train

from pipeline import store

TERM = r"-?\d+"
EXPR = rf"{TERM}(?:\s*[-+*]\s*{TERM})*"
CHAIN = re.compile(rf"{EXPR}(?:\s*=\s*{EXPR})+")  # "23 * 4 = 20 * 4 + 3 * 4 = 92": each side must agree


def wrong_step(completion: str) -> bool:
    """Whether an answer writes an equation whose sides differ (an arithmetic slip, not a misread problem)."""
    for chain in CHAIN.findall(completion):
        values = [eval(side) for side in chain.split("=")]  # digits, signs and + - * only (the regex)
        if any(a != b for a, b in pairwise(values)):
            return True
    return False


def subset(run: Path, n: int, out: Path) -> tuple[int, int]:
    """The export's SFT rows of the run's first `n` prompts (a rewrite counts for the prompt it came from),
    saved to <out>/sft; returns (rows, the teacher's completion tokens on those prompts)."""
    wanted = set(store.load_table(run / "00-prompts" / "data").column("id").to_pylist()[:n])
    gens = store.load_table(next(run.glob("[0-9][0-9]-generate")) / "data")
    source = {
        i: json.loads(m or "{}").get("rephrased_from", i)
        for i, m in zip(gens.column("id").to_pylist(), gens.column("meta").to_pylist(), strict=True)
    }
    mine = [source.get(i, i) in wanted for i in gens.column("id").to_pylist()]
    tokens = sum(t for t, ok in zip(gens.column("completion_tokens").to_pylist(), mine, strict=True) if ok)
    sft = store.load_table(next(run.glob("[0-9][0-9]-export")) / "data" / "sft")
    keep = [source.get(i, i) in wanted for i in sft.column("id").to_pylist()]
    rows = sft.filter(keep)
    if not (out / "sft").exists():
        store.save_table(rows, out / "sft")
    return rows.num_rows, tokens


def rate(text: str) -> str:
    """A learning rate as typed (it names the arm's folder); argparse turns a ValueError into a clean exit 2."""
    float(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--setting", choices=SETTINGS, default="hard", help="the recipe: scripts/recipes/<setting>.yaml"
    )
    ap.add_argument("--seed", type=int, default=0, help="the prompt draw, sampling and training seed")
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[120, 240, 480], help="training prompts per point"
    )
    ap.add_argument(
        "--lrs", type=rate, nargs="+", default=["4e-4"], help="learning rates; the first trains every size"
    )
    ap.add_argument(
        "--shots-template",
        help="the generate stage's few-shot template instead of the recipe's (e.g. shots/arithmetic_digits.jinja)",
    )
    ap.add_argument(
        "--teacher", action="store_true", help="also score the teacher, prompted as it wrote the data"
    )
    ap.add_argument("--test-n", type=int, default=100, help="test problems per held-out wording family")
    ap.add_argument("--out", type=Path, help="default: runs/exp_data_curve/<setting>-s<seed>")
    args = ap.parse_args()
    if min(args.sizes) < 1:
        ap.error("--sizes: prompt counts start at 1")
    shots = Path(args.shots_template).stem if args.shots_template else None
    out = (
        args.out
        or REPO / "runs" / "exp_data_curve" / f"{args.setting}-s{args.seed}{f'-{shots}' if shots else ''}"
    )
    sizes = sorted(set(args.sizes))
    recipe = recipe_of(args.setting, sizes[-1], args.seed, {}, run="run")
    if args.shots_template:
        if not (REPO / "prompts" / args.shots_template).is_file():
            ap.error(f"--shots-template: no prompts/{args.shots_template}; name a file under prompts/")
        stage(recipe, "generate")["shots_template"] = args.shots_template
    run = out / "run"
    distill("run", str(write_recipe(out, recipe)), "--run-dir", str(run))
    epochs = recipe["loop"].get("epochs", 2.0)
    arms = [(n, args.lrs[0]) for n in sizes]
    arms += [(n, lr) for lr in args.lrs[1:] for n in dict.fromkeys((sizes[0], sizes[-1]))]
    results = {}
    for n, lr in arms:
        rows, tokens = subset(run, n, out / f"data-{n}")
        folder = out / f"{n}-lr{lr}"
        manifest = train("sft", "sft", folder, dataset=str(out / f"data-{n}" / "sft"),
                         learning_rate=float(lr), num_train_epochs=epochs, seed=args.seed)  # fmt: skip
        evaluate(recipe, folder / "train" / "adapter", folder / "test.json", args.test_n)
        results[n, lr] = (rows, tokens, manifest, json.loads((folder / "test.json").read_text()))
    top = results[sizes[-1], args.lrs[0]][3]
    body = []
    for (n, lr), (rows, tokens, manifest, test) in results.items():
        fam = test["by_phrasing"]
        won, lost, p = paired([test], [top]) if test is not top else (0, 0, 1.0)
        failed = [r for r in test["rows"] if not r["passed"]]
        slips = sum(wrong_step(r["completion"]) for r in failed)
        body.append([n, rows, f"{tokens:,}", lr, f"{manifest['wall_s']:.0f}", f"{100 * test['pass@1']:.1f}",
                     f"{100 * fam['heldout']['pass@1']:.0f} / {100 * fam['wide']['pass@1']:.0f}",
                     f"{slips} of {len(failed)}",
                     "" if test is top else f"{won} won / {lost} lost, p {'< 0.001' if p < 0.001 else f'= {p:.3f}'}"])  # fmt: skip
    print(f"\n{args.setting}, seed {args.seed}; generate stage: {json.dumps(stage(recipe, 'generate'))}")
    if args.teacher:
        teacher = evaluate_teacher(recipe, out / "teacher-test.json", args.test_n)
        print(f"the teacher, prompted as it wrote the data: {100 * teacher:.1f}% on the test")
    print(table(["prompts", "verified rows", "teacher tokens", "learning rate", "train s", "test %",
                 "heldout / wide", "failures with a wrong step", f"paired with {sizes[-1]} prompts at {args.lrs[0]}"], body))  # fmt: skip
    print()
    for lr in args.lrs if len(sizes) > 1 else ():
        lo, hi = results[sizes[0], lr][3]["pass@1"], results[sizes[-1], lr][3]["pass@1"]
        gain = 100 * (hi - lo) / math.log2(sizes[-1] / sizes[0])
        print(f"{gain:+.1f} test points per doubling of the prompts ({sizes[0]} to {sizes[-1]}, at {lr})")
    (out / "curve.json").write_text(json.dumps(
        [{"prompts": n, "learning_rate": lr, "rows": r, "tokens": t, "test": s["pass@1"]}
         for (n, lr), (r, t, _, s) in results.items()], indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
