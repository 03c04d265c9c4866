"""Does performance-guided distillation (PGKD) beat single-pass distillation at the same teacher budget?

    .venv/bin/python scripts/exp_pgkd.py --setting hard                 # 3 seeds: loop, single-pass, random
    .venv/bin/python scripts/exp_pgkd.py --setting hard --seeds 0 --ablations  # + one row per lever switched off
    .venv/bin/python scripts/exp_pgkd.py --setting quickstart --base-run runs/quickstart  # reuse its base data
    .venv/bin/python scripts/exp_pgkd.py --quick                        # a few minutes: tiny sizes, the plumbing

The teacher is Qwen2.5-Coder-0.5B-Instruct, the student SmolLM2-135M-Instruct, and every arm's recipe is
`scripts/recipes/<setting>.yaml` with the seed, the base prompt count and the loop options replaced:
`quickstart` (one operation, single digits, the teacher's rewrites; the teacher answers once per question with
worked examples) or `hard` (two operations, two-digit operands, word problems; 4 answers per question).

Arms, per seed:
- `loop`: `distill loop` with the recipe's loop settings (targeted regeneration, adaptive effort, the best
  student as generator once it beats the teacher on validation, warm start with replay, hard negatives).
- `single-pass`: the recipe's plain stages on as many training prompts as the loop's generation tokens buy
  (the loop's tokens / the base run's tokens per prompt), trained for the same epochs. Only the prompts
  beyond the base run's are generated (the prompt draw is prefix-stable and sampling is seeded per prompt).
- `loop round 0`: the loop's first student, plain SFT on the base data: single-pass at the base budget.
- `random`: the loop with `method: random` (as many new problems, unrelated to the failures): the control
  arm that separates "targeted" from "more data".
The random control and the ablation loops reuse the seed's round 0 (the same computation; the levers act from
round 1 on). Each student is scored greedily on the test split (the two held-out wording families), as is the
teacher prompted the way it wrote the data. The script prints test accuracy as mean ± sd over seeds, paired
per-problem comparisons, generation tokens, wall time and the loop's per-step seconds, and writes
<out>/seed-<s>.json. Every arm is a run folder, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

import yaml
from experiments import QWEN, REPO, SMOL, distill, mean_sd, paired, score, table

from pipeline.loop import ROUND_STEPS, trained
from pipeline.loop_config import LoopConfig

SETTINGS = ("quickstart", "hard")
DIFFICULTY = ("ops", "digits", "operators", "mul_digits")  # source keys `distill eval` takes as flags


def recipe_of(setting: str, n: int, seed: int, loop: dict, run: str = "x") -> dict:
    """`scripts/recipes/<setting>.yaml` with `n` base prompts, the seed (prompt draw and sampling) and the
    loop options `loop` over the recipe's own."""
    recipe = yaml.safe_load((REPO / "scripts" / "recipes" / f"{setting}.yaml").read_text())
    recipe["run"] = run
    recipe["source"].update(n=n, seed=seed)
    for entry in recipe["stages"]:
        for name, config in entry.items():
            if name in ("generate", "rephrase") and config is not None:
                config["seed"] = seed
    recipe["loop"] = {**(recipe.get("loop") or {}), **loop}
    return recipe


def stage(recipe: dict, name: str) -> dict:
    return next((e[name] or {}) for e in recipe["stages"] if name in e)


def eval_flags(recipe: dict) -> tuple[str, ...]:
    """`distill eval` flags for the recipe's arithmetic difficulty (the harder setting's ops, digits...)."""
    flags = []
    for key in DIFFICULTY:
        if key in recipe["source"]:
            flags += [f"--{key.replace('_', '-')}", str(recipe["source"][key])]
    return tuple(flags)


def answer_tokens(recipe: dict) -> int:
    """The answer budget of test scoring: the loop's, else the generate stage's (what training answers were
    cut at, and what the loop validates with)."""
    return recipe["loop"].get("max_tokens") or stage(recipe, "generate")["max_tokens"]


def write_recipe(folder: Path, recipe: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def evaluate(
    recipe: dict,
    adapter: str | Path | None,
    out: Path,
    test_n: int,
    tokens: int | None = None,
    model: str = SMOL,
) -> float:
    """The student's greedy test accuracy (`test_n` problems per held-out wording family); ``model``: a
    fully fine-tuned student's folder instead of the base student (with or without an adapter)."""
    result = score(
        model, adapter, out, limit=test_n, tokens=tokens or answer_tokens(recipe), flags=eval_flags(recipe)
    )
    return result["pass@1"]


def evaluate_teacher(recipe: dict, out: Path, test_n: int) -> float:
    """The teacher's greedy test accuracy, prompted as it wrote the data (the generate stage's templates)."""
    gen = stage(recipe, "generate")
    flags = list(eval_flags(recipe))
    for key in ("system_template", "shots_template"):
        if gen.get(key):
            flags += [f"--{key.replace('_', '-')}", gen[key]]
    return score(QWEN, None, out, limit=test_n, tokens=answer_tokens(recipe), flags=tuple(flags))["pass@1"]


def run_loop_arm(
    folder: Path, recipe: dict, test_n: int, base_run: Path | None = None, share_round0: bool = False
) -> dict:
    recipe_path = write_recipe(folder, {**recipe, "run": folder.name})
    if base_run is not None and not (folder / "run").exists():
        # The same recipe stages as `base_run`: share its base dataset instead of generating it again (the
        # stage fingerprints match, so the loop sees finished stages). Export is the arm's own.
        for stage_dir in sorted(base_run.glob("[0-9][0-9]-*")):
            if not stage_dir.name.endswith("-export"):
                shutil.copytree(stage_dir, folder / "run" / stage_dir.name)
        if share_round0:
            # Round 0 (plain SFT on the base data, same seed) is the same computation in every arm of a seed;
            # the levers act from round 1 on. Reuse its training and the validation prompts.
            for part in ("validation", "teacher-validation.json", "iter_0/train-data", "iter_0/train"):
                src, dst = base_run / "loop" / part, folder / "run" / "loop" / part
                if src.is_dir():
                    shutil.copytree(src, dst)
                elif src.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
    if not (folder / "run" / "loop" / "summary.json").exists():
        distill("loop", str(recipe_path), "--run-dir", str(folder / "run"))
    summary = json.loads((folder / "run" / "loop" / "summary.json").read_text())
    best = summary["best"]
    round0 = trained(folder / "run" / "loop" / "iter_0" / "train", SMOL)
    generate_dir = next((folder / "run").glob("[0-9][0-9]-generate"))
    round0_out = round0_file(folder)
    shared = round0_file(base_run.parent) if share_round0 and base_run is not None else None
    if shared is not None and shared.exists() and not round0_out.exists():
        shutil.copy2(shared, round0_out)  # the same adapter bytes, scored greedily: the same figures
    return {
        "test": evaluate(
            recipe, best["adapter"], folder / "test.json", test_n, model=best.get("model") or SMOL
        ),
        # Round 0 is plain SFT on the base data: single-pass distillation at the base budget.
        "test_round0": evaluate(recipe, round0.adapter, round0_out, test_n, model=round0.model),
        "val": best["val_accuracy"],
        "teacher_val": summary.get("teacher_validation_accuracy"),
        "tokens": summary["generation_tokens"],
        "base_tokens": json.loads((generate_dir / "manifest.json").read_text())["tokens"]["completion"],
        "wall_s": summary["wall_s"],
        "rounds": summary["stopped_after"],
        "best_round": best["iteration"],
        "history": [
            {
                k: h.get(k)
                for k in ("iteration", "val_accuracy", "round_s", "step_s", "engine_start_s", "generator")
            }
            for h in summary["history"]
        ],
    }


def round0_file(folder: Path) -> Path | None:
    """Where loop arm `folder` keeps its round-0 adapter's test score: `test.json` when the loop never beat
    round 0 (the best adapter is round 0's), else `test-round0.json`. None before the loop has finished.
    The arms that share round 0 copy this file instead of scoring the same adapter again."""
    summary = folder / "run" / "loop" / "summary.json"
    if not summary.exists():
        return None
    best = json.loads(summary.read_text())["best"]
    weights = Path(best["adapter"] or best["model"])  # a full-weight student has no adapter
    same = weights.parts[-4:-1] == ("loop", "iter_0", "train")  # also where the loop was archived
    return folder / ("test.json" if same else "test-round0.json")


def generate_pool(folder: Path, recipe: dict, n0: int, n: int) -> Path:
    """Teacher samples for the training prompts n0..n of the seed's draw (the single-pass arm's extra prompts),
    in <folder>/extra-pool: the recipe's stages before verify (rephrase, if any, then generate), each with
    the recipe's settings. A larger pool serves any smaller arm: its first prompts are that arm's prompts."""
    from pipeline.tasks import load_task

    pool = folder / "extra-pool"
    steps = [
        (name, cfg or {})
        for e in recipe["stages"]
        for name, cfg in e.items()
        if name in ("rephrase", "generate")
    ]
    last = pool / f"{len(steps):02d}-{steps[-1][0]}"
    if not (last / "manifest.json").exists():
        pool.mkdir(parents=True, exist_ok=True)
        source = {k: v for k, v in recipe["source"].items() if k != "task"}
        source.update(n=n, split="train")
        rows = load_task(recipe["source"]["task"], **source)[n0:]
        (pool / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        previous = pool / "prompts.jsonl"
        for i, (name, cfg) in enumerate(steps, start=1):
            out = pool / f"{i:02d}-{name}"
            (pool / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
            teacher = recipe["teacher"]
            distill(
                name, "--input", str(previous), "--output", str(out), "--config", str(pool / f"{name}.yaml"),
                "--teacher", teacher["model"], "--engine", teacher.get("engine", "vllm"),
            )  # fmt: skip
            previous = out
    return last


def run_single_pass(folder: Path, recipe: dict, tokens: int, base_run: Path, n0: int, test_n: int) -> dict:
    """Plain distillation with as many prompts as `tokens` buys, trained for the loop's epochs.

    The training prompts of `n` are the base run's `n0` plus the next `n - n0` of the same draw (the task's
    prompts are a prefix-stable sequence, and every prompt's sampling seed depends only on the seed and its
    id), so only the extra prompts are generated and verified here: the same data as one run of the recipe
    with `n` prompts, without generating the base run's again.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import store

    base = json.loads((next(base_run.glob("[0-9][0-9]-generate")) / "manifest.json").read_text())
    per_prompt = base["tokens"]["completion"] / n0
    n = max(n0, round(tokens / per_prompt))
    extra, loop = folder / "extra", recipe["loop"]
    t0 = time.perf_counter()
    if not (folder / "train" / "manifest.json").exists():
        extra.mkdir(parents=True, exist_ok=True)
        sft = [next(base_run.glob("[0-9][0-9]-export")) / "data" / "sft"]
        if n > n0:
            pool = folder / "extra-pool"
            if (
                not (pool / "prompts.jsonl").exists()
                or len((pool / "prompts.jsonl").read_text().splitlines()) < n - n0
            ):
                shutil.rmtree(pool, ignore_errors=True)
            generated = generate_pool(folder, recipe, n0, n)
            ids = [json.loads(line)["id"] for line in (pool / "prompts.jsonl").read_text().splitlines()][
                : n - n0
            ]
            gens = store.load_table(generated / "data")
            wanted = set(ids)  # a rewrite belongs to the prompt it was rephrased from
            sources = [json.loads(m or "{}").get("rephrased_from", i) for i, m in zip(
                gens.column("id").to_pylist(), gens.column("meta").to_pylist(), strict=True
            )]  # fmt: skip
            keep = pa.array([source in wanted for source in sources])
            partial = extra / "generations.parquet.partial"  # a kill mid-write must not leave a torn file
            pq.write_table(gens.filter(keep), partial)
            partial.replace(extra / "generations.parquet")
            (extra / "verify.yaml").write_text(yaml.safe_dump(stage(recipe, "verify")))
            distill(
                "verify", "--input", str(extra / "generations.parquet"), "--output", str(extra / "02-verify"),
                "--config", str(extra / "verify.yaml"),
            )  # fmt: skip
            # the recipe's export settings (e.g. place-value steps), as the base rows were written
            (extra / "export.yaml").write_text(
                yaml.safe_dump({**stage(recipe, "export"), "formats": ["sft"]})
            )
            distill(
                "export", "--input", str(extra / "02-verify"), "--output", str(extra / "03-export"),
                "--config", str(extra / "export.yaml"),
            )  # fmt: skip
            sft.append(extra / "03-export" / "data" / "sft")
        data = folder / "train-data" / "sft"
        store.save_table(store.concat([store.load_table(p) for p in sft]), data)
        config = yaml.safe_load((REPO / loop.get("train_config", "scripts/configs/sft.yaml")).read_text())
        config.update(dataset=str(data), output_dir=str(folder / "train"))
        config["num_train_epochs"] = loop.get("epochs", 2.0)
        if "max_steps" in loop:
            config["max_steps"] = loop["max_steps"]
        (folder / "sft.yaml").write_text(yaml.safe_dump(config))
        distill("train", "sft", str(folder / "sft.yaml"))
        (folder / "wall_s").write_text(str(round(time.perf_counter() - t0, 1)))
    extra_rows = extra / "generations.parquet"
    tokens_used = base["tokens"]["completion"]
    if extra_rows.exists():
        tokens_used += sum(pq.read_table(extra_rows, columns=["completion_tokens"]).column(0).to_pylist())
    return {
        "test": evaluate(
            recipe,
            **dataclasses.asdict(trained(folder / "train", SMOL)),
            out=folder / "test.json",
            test_n=test_n,
        ),
        "tokens": tokens_used,
        "wall_s": float((folder / "wall_s").read_text()),  # without the base run's generation (shared)
        "prompts": n,
    }


def ablations(recipe: dict) -> dict[str, dict | None]:
    """One lever switched off per row; the levers the recipe has off (weighting; adaptive effort in the
    quickstart, the warm start in the harder setting) are switched on. A row runs in
    ablation-<its index here>-s<seed>, so rows are only appended; a row the recipe makes moot is None (not
    run; a row that ran before the recipe changed is still reported)."""
    n = stage(recipe, "generate").get("n", 4)
    default, loop = LoopConfig(), recipe.get("loop") or {}
    most = default.hard_samples
    adaptive = loop.get("hard_samples", most) > n
    warm = loop.get("warm_start", default.warm_start)
    return {
        "loop (all levers)": {},
        "- targeted regeneration (same structure, new numbers)": {"method": "task"},
        f"- adaptive effort (the generate stage's {n} sample(s) only)": {"hard_samples": n}
        if adaptive
        else None,
        "- student as generator (teacher only)": {"generator": "teacher"},
        "- hard negatives (no DPO on the student's failing answers)": {"hard_negatives": False},
        "- warm start with replay (fresh adapter on all data each round)": {"warm_start": False}
        if warm
        else None,
        "+ weighting of new rows (each repeated twice)": {"new_weight": 2},
        "+ teacher rewrites (mined on rewritten prompts; failures rewritten, not varied)": {
            "method": "rephrase",
            "mine_rephrased": True,
        },
        f"+ adaptive effort (up to {most} samples per new prompt, until 2 verify)": None
        if adaptive
        else {"hard_samples": most},
        "+ warm start with replay (keep training the best student on the new rows)": None
        if warm
        else {"warm_start": True},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--setting", choices=SETTINGS, default="hard", help="the recipe: scripts/recipes/<setting>.yaml"
    )
    ap.add_argument("--out", type=Path, help="experiment folder (default: runs/exp_pgkd/<setting>)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, help="base training prompts (default: the recipe's)")
    ap.add_argument(
        "--test-n", type=int, default=100, help="test problems per held-out wording family (2 families)"
    )
    ap.add_argument("--iterations", type=int, help="loop rounds, round 0 = plain SFT (default: the recipe's)")
    ap.add_argument(
        "--mine-n", type=int, help="training prompts the student is mined on (default: the recipe's)"
    )
    ap.add_argument("--per-prompt", type=int, help="new prompts per mined failure (default: the recipe's)")
    ap.add_argument(
        "--train-config",
        help="TRL SFT config of every student, the loop's rounds and the single-pass arm alike (default: "
        "the recipe's loop.train_config; scripts/configs/sft_full.yaml trains every weight)",
    )
    ap.add_argument(
        "--ablations",
        nargs="*",
        metavar="WORD",
        help="also one loop per lever switched off, on the first of --seeds (rows in ablations.json for seed "
        "0, ablations-s<seed>.json otherwise); with words, only the levers whose name contains one of them "
        "(e.g. --ablations negatives generator)",
    )
    ap.add_argument("--no-control", action="store_true", help="skip the random-regeneration control arm")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the plumbing")
    ap.add_argument(
        "--base-run",
        type=Path,
        help="a finished run of the setting's recipe at seed 0 (e.g. runs/quickstart): seed 0's arms reuse "
        "its generated and verified base data (same stages, so the fingerprints match)",
    )
    ap.add_argument("--report", action="store_true", help="only print the tables of what has finished")
    ap.add_argument(
        "--archive",
        type=Path,
        metavar="DIR",
        help="copy what --report reads (scores, seed files, each loop's summary; a few hundred KB per seed) "
        "to DIR, e.g. scripts/results/pgkd-quickstart: copied back into --out on another machine, "
        "`--seeds 1 2` adds seeds to it and --report prints all of them",
    )
    ap.add_argument(
        "--pregenerate",
        type=int,
        metavar="N",
        help="only generate the single-pass arm's extra prompts up to N for each seed",
    )
    args = ap.parse_args()
    sizes = (
        ("iterations", args.iterations),
        ("mine_n", args.mine_n),
        ("per_prompt", args.per_prompt),
        ("train_config", args.train_config),
    )
    loop = {k: v for k, v in sizes if v is not None}
    if args.quick:
        args.n, args.test_n = 16, 8
        loop = {"iterations": 2, "validation_n": 16, "mine_n": 16, "max_steps": 2, "per_prompt": 2, **loop}
    n = (
        args.n
        or yaml.safe_load((REPO / "scripts" / "recipes" / f"{args.setting}.yaml").read_text())["source"]["n"]
    )
    names = ablations(recipe_of(args.setting, n, 0, loop))
    unknown = [w for w in args.ablations or [] if not any(w in name for name in names)]
    if unknown:
        ap.error(f"--ablations {' '.join(unknown)} names no lever; use words from: {', '.join(names)}")
    out = args.out or REPO / "runs" / "exp_pgkd" / (f"{args.setting}-quick" if args.quick else args.setting)
    if args.pregenerate:
        for seed in args.seeds:
            generate_pool(
                out / f"single-s{seed}", recipe_of(args.setting, n, seed, loop), n, args.pregenerate
            )
        return
    if args.archive:
        if not any(out.glob("seed-*.json")):
            ap.error(
                f"--out {out} holds no finished seed (no seed-<s>.json); point --out at an experiment folder"
            )
        print(f"copied {archive(out, args.archive)} files to {args.archive}")
        return
    if not args.report:
        run_arms(args, n, loop, out)
    report(out, args.test_n, names)


def run_arms(args: argparse.Namespace, n: int, loop: dict, out: Path) -> None:
    """Every finished arm is saved in <out>/seed-<s>.json (re-read first), so the experiment resumes."""
    recipe0 = recipe_of(args.setting, n, args.seeds[0], loop)
    evaluate(recipe0, None, out / "base-test.json", args.test_n)
    evaluate_teacher(recipe0, out / "teacher-test.json", args.test_n)
    for seed in args.seeds:
        recipe = recipe_of(args.setting, n, seed, loop)
        path = out / f"seed-{seed}.json"
        arms = json.loads(path.read_text()) if path.exists() else {}
        reuse = args.base_run if seed == 0 else None
        arms["loop"] = run_loop_arm(out / f"loop-s{seed}", recipe, args.test_n, reuse)
        path.write_text(json.dumps(arms, indent=2))
        base_run = out / f"loop-s{seed}" / "run"
        arms["single-pass"] = run_single_pass(
            out / f"single-s{seed}", recipe, arms["loop"]["tokens"], base_run, n, args.test_n
        )
        path.write_text(json.dumps(arms, indent=2))
        if not args.no_control:
            control = recipe_of(args.setting, n, seed, {**loop, "method": "random"})
            arms["random"] = run_loop_arm(out / f"random-s{seed}", control, args.test_n, base_run, True)
            path.write_text(json.dumps(arms, indent=2))
    if args.ablations is not None:
        seed = args.seeds[0]
        names = ablations(recipe0)
        # all levers on: the seed's loop arm itself
        loop_arm = json.loads((out / f"seed-{seed}.json").read_text())["loop"]
        save_ablation(out, seed, next(iter(names)), loop_arm)
        for i, (name, change) in enumerate(names.items()):
            if change and (not args.ablations or any(word in name for word in args.ablations)):
                folder, base_run = out / f"ablation-{i}-s{seed}", out / f"loop-s{seed}" / "run"
                settings = recipe_of(args.setting, n, seed, {**loop, **change})
                result = run_loop_arm(folder, settings, args.test_n, base_run, share_round0=True)
                save_ablation(out, seed, name, result)


def archive(out: Path, dest: Path) -> int:
    """Copies the files `report` reads from experiment folder `out` to `dest`: the JSON files at the top
    (base and teacher scores, seed-<s>.json, ablations[-s<seed>].json), each arm's test scores and each loop's
    summary. Not the run folders (data, adapters): an archived arm is reported, not resumed."""
    wanted = [*out.glob("*.json"), *out.glob("*/test*.json"), *out.glob("*/run/loop/summary.json")]
    for path in wanted:
        target = dest / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return len(wanted)


def ablations_file(out: Path, seed: int) -> Path:
    """Where a seed's ablation rows are kept: ablations.json for seed 0, ablations-s<seed>.json otherwise."""
    return out / ("ablations.json" if seed == 0 else f"ablations-s{seed}.json")


def save_ablation(out: Path, seed: int, name: str, result: dict) -> None:
    """Adds one row to the seed's ablations file, re-read first: other processes may add other levers to it."""
    saved = ablations_file(out, seed)
    done = json.loads(saved.read_text()) if saved.exists() else {}
    done[name] = result
    saved.write_text(json.dumps(done, indent=2))


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def report(out: Path, test_n: int, names: dict) -> None:
    base, teacher = load(out / "base-test.json"), load(out / "teacher-test.json")
    if base is None:
        print(f"nothing finished in {out}")
        return
    seeds = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in sorted(out.glob("seed-*.json"))}
    problems = len(base["rows"])
    print(f"\nTest accuracy on {problems} held-out-wording problems (greedy), seeds {sorted(seeds)}")
    print(f"student before training: {100 * base['pass@1']:.1f}%")
    if teacher:
        print(f"teacher, prompted as it wrote the data: {100 * teacher['pass@1']:.1f}%")
    files = {  # arm -> seed -> its test JSON
        "loop round 0": {s: round0_file(out / f"loop-s{s}") or out / "missing" for s in seeds},
        "single-pass": {s: out / f"single-s{s}" / "test.json" for s in seeds},
        "loop": {s: out / f"loop-s{s}" / "test.json" for s in seeds},
        "random": {s: out / f"random-s{s}" / "test.json" for s in seeds},
    }
    rows = []
    for arm in files:
        key = "loop" if arm == "loop round 0" else arm
        done = {s: a[key] for s, a in sorted(seeds.items()) if key in a}
        if not done:
            continue
        tests = [a["test_round0"] if arm == "loop round 0" else a["test"] for a in done.values()]
        tokens = [a["base_tokens"] if arm == "loop round 0" else a["tokens"] for a in done.values()]
        wall = (
            "-"
            if arm == "loop round 0"
            else f"{statistics.mean(a['wall_s'] for a in done.values()) / 60:.1f}"
        )
        ratio = f"{100 * statistics.mean(tests) / teacher['pass@1']:.0f}%" if teacher else "-"
        per_seed = ", ".join(f"s{s}: {100 * t:.1f}" for s, t in zip(done, tests, strict=True))
        versus = ""
        if arm != "loop":
            pairs = [
                (files["loop"][s], files[arm][s])
                for s in done
                if files["loop"][s].exists() and files[arm][s].exists()
            ]
            if pairs:
                wins, losses, p = paired([load(a) for a, _ in pairs], [load(b) for _, b in pairs])
                versus = f"loop {wins} won / {losses} lost, p = {p:.3f}"
        rows.append(
            [arm, len(done), mean_sd(tests), per_seed, ratio, f"{statistics.mean(tokens):,.0f}", wall, versus]
        )
    header = [
        "arm",
        "seeds",
        "test % (mean ± sd)",
        "per seed",
        "of teacher",
        "gen. tokens (mean)",
        "wall min",
        "paired, pooled over seeds",
    ]
    print(table(header, rows))
    diffs = [a["loop"]["test"] - a["single-pass"]["test"] for a in seeds.values() if "single-pass" in a]
    if diffs:
        print(f"\nloop - single-pass, paired by seed: {mean_sd(diffs)} points over {len(diffs)} seed(s)")
    level = statistics.mean(a["loop"]["test"] for a in seeds.values() if "loop" in a) if seeds else 0.5
    se = 100 * (level * (1 - level) / problems) ** 0.5
    print(
        f"one score's standard error on {problems} problems at the loop's {100 * level:.0f}%: {se:.1f} points"
    )
    by_family(files, base, teacher)
    step_table(seeds)
    ablated = {s: rows for s in seeds if (rows := load(ablations_file(out, s)))}
    # the first seed's table lists every lever; later seeds', the ones they ran
    for seed, done in ablated.items():
        ablation_table(out, names, seed, done, show_missing=seed == next(iter(ablated)))
    if len(ablated) > 1:
        lever_over_seeds(names, ablated)


def by_family(files: dict, base: dict, teacher: dict | None) -> None:
    """Test accuracy per held-out wording family (heldout, wide), mean over seeds."""
    cols = {"before": [base], **({"teacher": [teacher]} if teacher else {})}
    for arm, per_seed in files.items():
        cols[arm] = [r for p in per_seed.values() if (r := load(p))]
    families = sorted({f for r in cols["before"] for f in r.get("by_phrasing", {})})
    if not families:
        return
    rows = []
    for f in families:
        cells = [
            f"{100 * statistics.mean(r['by_phrasing'][f]['pass@1'] for r in rs):.1f}" if rs else "-"
            for rs in cols.values()
        ]
        rows.append([f, *cells])
    print("\nTest % by held-out wording family (mean over seeds)")
    print(table(["family", *cols], rows))


def step_table(seeds: dict) -> None:
    """Seconds per loop step, per round (seed order, loop arm): where the loop's time goes."""
    rows = []
    for s, arms in sorted(seeds.items()):
        for h in arms.get("loop", {}).get("history", []):
            steps = h.get("step_s") or {}
            order = [step for step in ROUND_STEPS if steps.get(step, 0) >= 0.5]  # the steps that took time
            cells = ", ".join(f"{step} {steps[step]:.0f}" for step in order)
            rows.append(
                [
                    s,
                    h["iteration"],
                    h.get("round_s"),
                    h.get("engine_start_s"),
                    h.get("generator") or "-",
                    cells,
                ]
            )
    if rows:
        print("\nThe loop's rounds: seconds per step (engine starts count in the step that needed them)")
        print(table(["seed", "round", "round s", "engine starts s", "generator", "step s"], rows))


def ablation_table(out: Path, names: dict, seed: int, done: dict, show_missing: bool = True) -> None:
    """One seed's ablation rows (`done`: lever name -> result), each paired with that seed's full loop."""
    print(f"\nAblations, seed {seed}: one lever switched off per row (one the recipe has off, switched on)")
    rows = []
    for i, name in enumerate(names):
        if name not in done:  # a row that ran is shown even if the recipe has since made it moot
            if show_missing and names[name] is not None:
                rows.append([name, "not run", "", "", "", ""])
            continue
        r, test = done[name], out / f"ablation-{i}-s{seed}" / "test.json"
        versus = ""
        if test.exists() and (out / f"loop-s{seed}" / "test.json").exists():
            wins, losses, p = paired([load(out / f"loop-s{seed}" / "test.json")], [load(test)])
            versus = f"loop {wins} won / {losses} lost, p = {p:.3f}"
        rows.append(
            [name, f"{100 * r['test']:.1f}", f"{100 * r['val']:.1f}", f"{r['tokens']:,}", r["rounds"], versus]
        )
    print(
        table(["loop", "test %", "validation %", "gen. tokens", "rounds", "paired with the full loop"], rows)
    )


def lever_over_seeds(names: dict, done: dict) -> None:
    """Each lever run on more than one seed (`done`: seed -> its ablation rows): the row's test score minus
    that seed's full loop, per seed."""
    full = next(iter(names))
    rows = []
    for name in list(names)[1:]:
        diffs = {s: d[name]["test"] - d[full]["test"] for s, d in done.items() if name in d and full in d}
        if len(diffs) > 1:
            per_seed = ", ".join(f"s{s}: {100 * v:+.1f}" for s, v in diffs.items())
            rows.append([name, len(diffs), mean_sd(list(diffs.values())), per_seed])
    if rows:
        print("\nLevers run on several seeds: the row's test % minus the full loop's, same seed")
        print(table(["loop", "seeds", "difference, points (mean ± sd)", "per seed"], rows))


if __name__ == "__main__":
    main()
