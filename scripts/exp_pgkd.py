"""Does performance-guided distillation (PGKD) beat single-pass distillation at the same teacher budget?

    .venv/bin/python scripts/exp_pgkd.py                        # 3 seeds: loop, single-pass, random control
    .venv/bin/python scripts/exp_pgkd.py --seeds 0 --ablations  # one seed, plus one row per lever switched off
    .venv/bin/python scripts/exp_pgkd.py --quick                # a few minutes: tiny sizes, proves the plumbing

Arms, per seed (the embedded SmolLM2-135M-Instruct is teacher and student, as in the quickstart):
- `loop`: `distill loop` with the recipe's loop settings (targeted regeneration, adaptive effort, the best
  student as generator once it beats the teacher, warm start with replay, mining apart from validation).
- `single-pass`: the quickstart's plain recipe on as many training prompts as the loop's generation tokens
  buy (the loop's tokens / the base run's tokens per prompt), trained for the same epochs. Only the prompts
  beyond the base run's are generated (the prompt draw is prefix-stable and sampling is seeded per prompt).
- `loop round 0`: the loop's first student, plain SFT on the base data: single-pass at the base budget.
- `random`: the loop with `method: random` (as many new problems, unrelated to the failures): the control
  arm that separates "targeted" from "more data".
The random control and the ablation loops reuse the seed's round 0 (the same computation; the levers act from
round 1 on). Each arm's final student is scored greedily on the test split (held-out wording). The script prints test
accuracy as mean ± sd over seeds, generation tokens and wall time, and writes runs/exp_pgkd/results.json.
Every arm is a run folder, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import yaml
from experiments import REPO, distill, mean_sd, paired

OUT = REPO / "runs" / "exp_pgkd"

RECIPE = """run: {run}
teacher: {{model: smollm2-135m-instruct, engine: vllm}}
student: {{model: smollm2-135m-instruct}}
source: {{task: arithmetic, n: {n}, seed: {seed}, split: train}}
stages:
  - generate: {{n: 4, temperature: 0.8, top_p: 0.95, max_tokens: 96, seed: {seed}, logprobs: 5}}
  - verify: {{verifiers: [math], dedup: {{minhash_threshold: 0.9}}}}
  - export: {{formats: [sft]}}
loop: {loop}
"""

TEST_MAX_TOKENS = 96  # the quickstart's test budget, and the length the teacher's training answers are cut at
ABLATIONS = {  # one lever switched off per row (weighting is off by default, so its row switches it on)
    "loop (all levers)": {},
    "- targeted regeneration (same structure, new numbers)": {"method": "task"},
    "- adaptive effort (no extra samples for hard prompts)": {"hard_samples": 4},
    "- student as generator (teacher only)": {"generator": "teacher"},
    "- hard negatives (no DPO on the student's failing answers)": {"hard_negatives": False},
    "- warm start with replay (fresh adapter on all data each round)": {"warm_start": False},
    "+ weighting of new rows (each repeated twice)": {"new_weight": 2},
    "- honest stopping (patience 1)": {"patience": 1},
}


def write_recipe(folder: Path, run: str, n: int, seed: int, loop: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(RECIPE.format(run=run, n=n, seed=seed, loop=json.dumps(loop)))
    return path


def evaluate(adapter: str | None, out: Path, test_n: int, max_tokens: int = TEST_MAX_TOKENS) -> float:
    if not out.exists():
        args = ["eval", "smollm2-135m-instruct", "--task", "arithmetic", "--split", "test"]
        args += [
            "--limit",
            str(test_n),
            "--max-tokens",
            str(max_tokens),
            "--engine",
            "vllm",
            "--output",
            str(out),
        ]
        distill(*(args + (["--adapter", adapter] if adapter else [])))
    return json.loads(out.read_text())["pass@1"]


def run_loop_arm(
    folder: Path, seed: int, loop: dict, test_n: int, base_run: Path | None = None, share_round0: bool = False
) -> dict:
    recipe = write_recipe(folder, folder.name, loop.pop("_n"), seed, loop)
    if base_run is not None and not (folder / "run").exists():
        # The same recipe stages as `base_run`: share its base dataset instead of generating it again (the
        # stage fingerprints match, so the loop sees finished stages).
        for stage in sorted(base_run.glob("0[0-2]-*")):  # prompts, generate, verify (export is the arm's own)
            shutil.copytree(stage, folder / "run" / stage.name)
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
        distill("loop", str(recipe), "--run-dir", str(folder / "run"))
    summary = json.loads((folder / "run" / "loop" / "summary.json").read_text())
    best = summary["best"]
    round0 = folder / "run" / "loop" / "iter_0" / "train" / "adapter"
    same = Path(best["adapter"]).resolve() == round0.resolve()  # the loop never beat round 0
    return {
        "test": evaluate(best["adapter"], folder / "test.json", test_n),
        # Round 0 is plain SFT on the base data: single-pass distillation at the base budget.
        "test_round0": evaluate(str(round0), folder / ("test.json" if same else "test-round0.json"), test_n),
        "val": best["val_accuracy"],
        "tokens": summary["generation_tokens"],
        "base_tokens": json.loads((folder / "run" / "01-generate" / "manifest.json").read_text())["tokens"][
            "completion"
        ],
        "wall_s": summary["wall_s"],
        "rounds": summary["stopped_after"],
    }


def generate_pool(folder: Path, seed: int, n0: int, n: int) -> Path:
    """Teacher samples for the training prompts n0..n of the seed's draw (the single-pass arm's extra prompts),
    in <folder>/extra-pool. A larger pool serves any smaller arm: its first prompts are that arm's prompts."""
    from pipeline.tasks import load_task

    pool = folder / "extra-pool"
    if not (pool / "01-generate" / "manifest.json").exists():
        pool.mkdir(parents=True, exist_ok=True)
        rows = load_task("arithmetic", split="train", n=n, seed=seed)[n0:]
        (pool / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        g = yaml.safe_load(RECIPE.format(run="x", n=n, seed=seed, loop="{}"))["stages"][0]["generate"]
        distill(
            "generate", "--input", str(pool / "prompts.jsonl"), "--output", str(pool / "01-generate"),
            "--teacher", "smollm2-135m-instruct", "--engine", "vllm", "--n", str(g["n"]),
            "--temperature", str(g["temperature"]), "--top-p", str(g["top_p"]),
            "--max-tokens", str(g["max_tokens"]), "--seed", str(g["seed"]), "--logprobs", str(g["logprobs"]),
        )  # fmt: skip
    return pool


def run_single_pass(folder: Path, seed: int, tokens: int, base_run: Path, n0: int, loop: dict, test_n: int):
    """Plain distillation with as many prompts as `tokens` buys, trained for the loop's epochs.

    The training prompts of `n` are the base run's `n0` plus the next `n - n0` of the same draw (the task's
    prompts are a prefix-stable sequence, and every prompt's sampling seed depends only on the seed and its
    id), so only the extra prompts are generated and verified here: the same data as one run of the recipe
    with `n` prompts, without generating the base run's again.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import store

    base = json.loads((base_run / "01-generate" / "manifest.json").read_text())
    per_prompt = base["tokens"]["completion"] / n0
    n = max(n0, round(tokens / per_prompt))
    extra = folder / "extra"
    t0 = time.perf_counter()
    if not (folder / "train" / "manifest.json").exists():
        extra.mkdir(parents=True, exist_ok=True)
        sft = [base_run / "03-export" / "data" / "sft"]
        if n > n0:
            pool = folder / "extra-pool"
            if (
                not (pool / "prompts.jsonl").exists()
                or len((pool / "prompts.jsonl").read_text().splitlines()) < n - n0
            ):
                shutil.rmtree(pool, ignore_errors=True)
            pool = generate_pool(folder, seed, n0, n)
            ids = [json.loads(line)["id"] for line in (pool / "prompts.jsonl").read_text().splitlines()][
                : n - n0
            ]
            gens = store.load_table(pool / "01-generate" / "data")
            wanted = set(ids)
            keep = pa.array([rid in wanted for rid in gens.column("id").to_pylist()])
            partial = extra / "generations.parquet.partial"  # a kill mid-write must not leave a torn file
            pq.write_table(gens.filter(keep), partial)
            partial.replace(extra / "generations.parquet")
            verify = yaml.safe_load(RECIPE.format(run="x", n=n, seed=seed, loop="{}"))["stages"][1]["verify"]
            (extra / "verify.yaml").write_text(yaml.safe_dump(verify))
            distill(
                "verify", "--input", str(extra / "generations.parquet"), "--output", str(extra / "02-verify"),
                "--config", str(extra / "verify.yaml"),
            )  # fmt: skip
            distill("export", "--input", str(extra / "02-verify"), "--output", str(extra / "03-export"))
            sft.append(extra / "03-export" / "data" / "sft")
        data = folder / "train-data" / "sft"
        store.save_table(store.concat([store.load_table(p) for p in sft]), data)
        config = yaml.safe_load((REPO / "scripts" / "configs" / "sft.yaml").read_text())
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
        "test": evaluate(str(folder / "train" / "adapter"), folder / "test.json", test_n),
        "tokens": tokens_used,
        "wall_s": float((folder / "wall_s").read_text()),  # without the base run's generation (shared)
        "prompts": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=240, help="base training prompts (4 samples each)")
    ap.add_argument("--test-n", type=int, default=175, help="test problems (175: all single-digit ones)")
    ap.add_argument(
        "--ablations",
        nargs="*",
        metavar="WORD",
        help="also one loop per lever switched off (first seed); with words, only the levers whose name "
        "contains one of them (e.g. --ablations negatives generator)",
    )
    ap.add_argument("--no-control", action="store_true", help="skip the random-regeneration control arm")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the plumbing")
    ap.add_argument(
        "--base-run",
        type=Path,
        help="a finished quickstart run (runs/quickstart): the first seed's arms reuse its generated and "
        "verified base data (same recipe stages, so the fingerprints match) instead of generating it again",
    )
    ap.add_argument("--iterations", type=int, default=3, help="loop rounds (round 0 is plain SFT)")
    ap.add_argument("--report", action="store_true", help="only print the tables of what has finished")
    ap.add_argument(
        "--rescore-tokens",
        type=int,
        metavar="N",
        help=f"only score the finished arms' students again on test with N answer tokens (not "
        f"{TEST_MAX_TOKENS}; the loop validates at its max_tokens) and print both scores side by side",
    )
    ap.add_argument(
        "--pregenerate",
        type=int,
        metavar="N",
        help="only generate the single-pass arm's extra prompts up to N for each seed (while the loop runs "
        "elsewhere; the arm later uses the first ones its budget buys)",
    )
    args = ap.parse_args()
    # max_tokens: the loop scored students at 128 answer tokens before its default became the generate stage's
    # 96; pinned, so arms still to run pick their best round exactly as the arms already measured did.
    loop = {"iterations": args.iterations, "max_tokens": 128}
    if args.quick:
        args.n, args.test_n = 16, 16
        loop = {"iterations": 2, "validation_n": 16, "mine_n": 16, "max_steps": 2, "per_prompt": 2}
    unknown = [w for w in args.ablations or [] if not any(w in name for name in ABLATIONS)]
    if unknown:
        ap.error(f"--ablations {' '.join(unknown)} names no lever; use words from: {', '.join(ABLATIONS)}")
    out = OUT / ("quick" if args.quick else "full")
    if args.pregenerate:
        for seed in args.seeds:
            generate_pool(out / f"single-s{seed}", seed, args.n, args.pregenerate)
        return
    if args.rescore_tokens:
        rescore(out, args.test_n, args.rescore_tokens, args.seeds)
        return
    if not args.report:
        run_arms(args, loop, out)
    report(out, args.test_n)


def run_arms(args: argparse.Namespace, loop: dict, out: Path) -> None:
    """Every finished arm is saved in <out>/seed-<s>.json, so several processes (one per seed, each on its own
    core: VLLM_CPU_OMP_THREADS_BIND=0 or 1, OMP_NUM_THREADS=1) can share one experiment folder."""
    evaluate(None, out / "base-test.json", args.test_n)
    for seed in args.seeds:
        path = out / f"seed-{seed}.json"
        arms = json.loads(path.read_text()) if path.exists() else {}
        reuse = args.base_run if seed == args.seeds[0] else None
        arms["loop"] = run_loop_arm(out / f"loop-s{seed}", seed, {**loop, "_n": args.n}, args.test_n, reuse)
        path.write_text(json.dumps(arms, indent=2))
        base_run = out / f"loop-s{seed}" / "run"
        arms["single-pass"] = run_single_pass(
            out / f"single-s{seed}", seed, arms["loop"]["tokens"], base_run, args.n, loop, args.test_n
        )
        path.write_text(json.dumps(arms, indent=2))
        if not args.no_control:
            control = {**loop, "method": "random", "_n": args.n}
            arms["random"] = run_loop_arm(out / f"random-s{seed}", seed, control, args.test_n, base_run, True)
            path.write_text(json.dumps(arms, indent=2))
    if args.ablations is not None:
        seed = args.seeds[0]
        # all levers on: the seed's loop arm itself
        save_ablation(out, next(iter(ABLATIONS)), json.loads((out / f"seed-{seed}.json").read_text())["loop"])
        for i, (name, change) in enumerate(ABLATIONS.items()):
            if change and (not args.ablations or any(word in name for word in args.ablations)):
                folder, base_run = out / f"ablation-{i}-s{seed}", out / f"loop-s{seed}" / "run"
                settings = {**loop, **change, "_n": args.n}
                result = run_loop_arm(folder, seed, settings, args.test_n, base_run, share_round0=True)
                save_ablation(out, name, result)


def rescore(out: Path, test_n: int, max_tokens: int, seeds: list[int]) -> None:
    """Each finished arm's students scored on test with `max_tokens` answer tokens beside the standard score:
    shows how much of an arm's score is answers cut off before their final number (undecided)."""
    students = []  # (arm, seed, adapter, standard result file)
    for seed in seeds:
        for arm, folder in (("loop", f"loop-s{seed}"), ("random", f"random-s{seed}")):
            summary = out / folder / "run" / "loop" / "summary.json"
            if (out / folder / "test.json").exists() and summary.exists():
                round0 = out / folder / "run" / "loop" / "iter_0" / "train" / "adapter"
                if arm == "loop" and (out / folder / "test-round0.json").exists():
                    students.append(("loop round 0", seed, round0, out / folder / "test-round0.json"))
                best = json.loads(summary.read_text())["best"]["adapter"]
                students.append((arm, seed, Path(best), out / folder / "test.json"))
        single = out / f"single-s{seed}"
        if (single / "test.json").exists():
            students.append(("single-pass", seed, single / "train" / "adapter", single / "test.json"))
    print(
        f"\nTest accuracy at {TEST_MAX_TOKENS} and at {max_tokens} answer tokens (undecided: no final answer)"
    )
    print(f"| arm | seed | test % @{TEST_MAX_TOKENS} | undecided | test % @{max_tokens} | undecided |")
    print("|---|---|---|---|---|---|")
    scores: dict[str, list[tuple[float, float]]] = {}
    for arm, seed, adapter, standard in students:
        longer = standard.with_name(f"{standard.stem}-{max_tokens}tok.json")
        evaluate(str(adapter), longer, test_n, max_tokens)
        a, b = (json.loads(p.read_text()) for p in (standard, longer))
        scores.setdefault(arm, []).append((a["pass@1"], b["pass@1"]))
        print(
            f"| {arm} | {seed} | {100 * a['pass@1']:.1f} | {a['undecided']} | {100 * b['pass@1']:.1f} "
            f"| {b['undecided']} |",
            flush=True,
        )
    for arm, pairs in scores.items():
        short, long = ([p[i] for p in pairs] for i in (0, 1))
        print(f"{arm}: {mean_sd(short)} at {TEST_MAX_TOKENS} tokens, {mean_sd(long)} at {max_tokens}")


def wording(prompt: str, expression: str) -> str:
    """Which wording a question uses (prompts/tasks/arithmetic_{heldout,train}.jinja): its opening words, or
    `story (op)` for the one word problem each operator has."""
    for start in ("Find the value of", "Work out", "Calculate", "What is the result of", "What is"):
        if prompt.startswith(start + " "):
            return start + " ..."
    if prompt.endswith("= ?"):
        return "... = ?"
    return f"story ({expression.split()[1]})"


def by_wording(out: Path, test_n: int, seeds: list[int]) -> None:
    """Test accuracy per held-out wording, mean over seeds: where the students fail."""
    from pipeline import store
    from pipeline.tasks import load_task

    kind = {}
    for row in load_task("arithmetic", split="test", n=test_n):
        kind[row["id"]] = wording(row["prompt"], json.loads(row["meta"])["expression"])
    arms = {"base": ["base-test.json"]}
    arms["round 0"] = [f"loop-s{s}/test-round0.json" for s in seeds]
    arms["single-pass"] = [f"single-s{s}/test.json" for s in seeds]
    arms["loop"] = [f"loop-s{s}/test.json" for s in seeds]
    table: dict[str, dict[str, list[float]]] = {}
    for arm, files in arms.items():
        for f in files:
            if not (out / f).exists():
                continue
            passed: dict[str, list[bool]] = {}
            for r in json.loads((out / f).read_text())["rows"]:
                passed.setdefault(kind.get(r["id"], "other"), []).append(bool(r["passed"]))
            for k, v in passed.items():
                table.setdefault(k, {}).setdefault(arm, []).append(sum(v) / len(v))
    counts = {k: list(kind.values()).count(k) for k in table}  # "other": a test file of another --test-n
    print(f"\nTest accuracy % by held-out wording (mean over seeds {seeds})")
    print("| wording | problems | " + " | ".join(arms) + " |")
    print("|---|---|" + "---|" * len(arms))
    for k in sorted(table, key=lambda k: -counts[k]):
        cells = [f"{100 * statistics.mean(table[k][a]):.0f}" if a in table[k] else "-" for a in arms]
        print(f"| {k} | {counts[k]} | " + " | ".join(cells) + " |")
    # The loop mines on training-split prompts, in the training wording: what round 0 fails there.
    mined: dict[str, list[int]] = {}
    for seed in seeds:
        folder = out / f"loop-s{seed}" / "run" / "loop" / "iter_0" / "mine"
        for part, solved in (("data", 0), ("rejected", 1)):
            if (folder / part).exists():
                for r in store.load_table(folder / part).to_pylist():
                    k = wording(r["prompt"], json.loads(r["meta"])["expression"])
                    mined.setdefault(k, [0, 0])[0] += solved
                    mined[k][1] += 1
    if mined:
        print("\nRound 0 on the loop's mining pool (training wording), all seeds pooled:")
        print("  " + ", ".join(f"{k} {solved}/{n}" for k, (solved, n) in sorted(mined.items())))


def save_ablation(out: Path, name: str, result: dict) -> None:
    """Adds one row to <out>/ablations.json, re-read first: other processes may add other levers to it."""
    saved = out / "ablations.json"
    ablations = json.loads(saved.read_text()) if saved.exists() else {}
    ablations[name] = result
    saved.write_text(json.dumps(ablations, indent=2))


def mcnemar(a: Path, b: Path) -> str:
    """Paired by problem: problems only `a` solves, only `b` solves, and the exact two-sided McNemar p-value.
    It measures test-set noise for these two students only, not the spread over training seeds."""
    wins, losses, p = paired([json.loads(a.read_text())], [json.loads(b.read_text())])
    return f"{wins} won, {losses} lost (exact McNemar p = {p:.3f})"


def report(out: Path, test_n: int) -> None:
    base = json.loads((out / "base-test.json").read_text())["pass@1"]
    seeds = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in sorted(out.glob("seed-*.json"))}
    print(f"\nTest accuracy on {test_n} held-out-wording problems (greedy), seeds {sorted(seeds)}")
    print(f"base model: {100 * base:.1f}%\n")
    print(
        "| arm | seeds | test accuracy % (mean ± sd) | per seed | generation tokens (mean) | wall min (mean) |"
    )
    print("|---|---|---|---|---|---|")
    for arm in ("loop round 0", "single-pass", "loop", "random"):
        if arm == "loop round 0":  # plain SFT on the base data: single-pass at the base budget
            done = {
                s: {
                    **arms["loop"],
                    "test": arms["loop"]["test_round0"],
                    "tokens": arms["loop"]["base_tokens"],
                }
                for s, arms in sorted(seeds.items())
                if "test_round0" in arms.get("loop", {})
            }
        else:
            done = {s: arms[arm] for s, arms in sorted(seeds.items()) if arm in arms}
        if done:
            rows = list(done.values())
            per_seed = ", ".join(f"s{s}: {100 * r['test']:.1f}" for s, r in done.items())
            tok = statistics.mean(r["tokens"] for r in rows)
            wall = "-" if arm == "loop round 0" else f"{statistics.mean(r['wall_s'] for r in rows) / 60:.1f}"
            print(
                f"| {arm} | {len(rows)} | {mean_sd([r['test'] for r in rows])} | {per_seed} | {tok:,.0f} | {wall} |"
            )
    paired = [
        arms["loop"]["test"] - arms["single-pass"]["test"] for arms in seeds.values() if "single-pass" in arms
    ]
    if paired:
        print(f"\nloop - single-pass, paired by seed: {mean_sd(paired)} points over {len(paired)} seed(s)")
    for seed in sorted(seeds):
        for other, path in (
            ("single-pass", f"single-s{seed}/test.json"),
            ("loop round 0", f"loop-s{seed}/test-round0.json"),
            ("random control", f"random-s{seed}/test.json"),
        ):
            versus = out / path
            if (out / f"loop-s{seed}" / "test.json").exists() and versus.exists():
                print(
                    f"seed {seed}, loop vs {other} on the same problems: {mcnemar(out / f'loop-s{seed}' / 'test.json', versus)}"
                )
    # Noise of one score: the binomial standard error of an accuracy near 60% on test_n problems.
    print(
        f"one score's standard error on {test_n} problems at 60%: {100 * (0.6 * 0.4 / test_n) ** 0.5:.1f} points"
    )
    by_wording(out, test_n, sorted(seeds))
    if (out / "ablations.json").exists():
        print(
            "\nAblations (one seed): one lever switched off per row (weighting, off by default, switched on)"
        )
        print(
            "| loop | test accuracy % | validation % | generation tokens | rounds | paired with the full loop |"
        )
        print("|---|---|---|---|---|---|")
        done = json.loads((out / "ablations.json").read_text())
        seed = next(iter(seeds), 0)
        for i, name in enumerate(ABLATIONS):
            if name not in done:
                print(f"| {name} | not run | | | | |")
                continue
            r, test = done[name], out / f"ablation-{i}-s{seed}" / "test.json"
            paired = mcnemar(out / f"loop-s{seed}" / "test.json", test) if test.exists() else ""
            print(
                f"| {name} | {100 * r['test']:.1f} | {100 * r['val']:.1f} | {r['tokens']:,} | {r['rounds']} | {paired} |"
            )


if __name__ == "__main__":
    main()
