"""Heal a depth-pruned student and measure what it keeps: the paper's retention table, on the embedded model.

Self-data distillation (Thangarasa et al., 2024) on SmolLM2-135M-Instruct:

1. Teacher data: the model answers arithmetic prompts (several samples each); the math verifier keeps the
   correct answers (a recipe: generate -> verify -> export). Then the unpruned model rewrites those answers in
   its own words (`self-distill`), and the rewrites are exported too.
2. Prune 2 and 4 layers (the block whose removal changes the model's answers to the recipe's prompts least,
   `student.prune_layers` with `prune_by: kl`, cached per arm in <out>/prune-<L>/student-pruned).
3. Heal each pruned student with LoRA for the same number of steps on (a) the verified teacher data and
   (b) its self-distilled rewrite; (c) run the PGKD loop (`distill loop`) with the pruned model as student;
   (d) distill the unpruned model's top-5 logprobs on (a)'s answers (`distill train kd`).
   Train the unpruned model like (a) as the reference for the trained task.
4. Evaluate every model greedily on the arithmetic test split (trained task) and on capitals of well-known
   countries (not trained on: forgetting), and print a markdown table with accuracy, parameters, generation
   tokens/s, and two retentions: trained task vs the unpruned model trained like (a), untrained task vs the
   original model.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python scripts/exp_heal.py --quick   # the whole story, tiny
    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python scripts/exp_heal.py           # the full table (hours)
    # about an hour: the quickstart's verified data as (a), 2 layers pruned, no loop arm
    OMP_NUM_THREADS=1 .venv/bin/python scripts/exp_heal.py --medium --base-run runs/quickstart --no-loop
    # (a), (b) and the unpruned reference over three training seeds: about 35 min more per extra seed
    OMP_NUM_THREADS=1 .venv/bin/python scripts/exp_heal.py --medium --base-run runs/quickstart --no-loop --seeds 0 1 2

On a CPU shared with other jobs, OMP_NUM_THREADS=1 matters: with more torch threads than free cores,
generation measured 10x slower here (0.5 vs 4.7 tokens/s) because of threads waiting on each other.

Everything lands in runs/exp-heal[-quick|-medium]/ and resumes: finished stages, trainings (manifest.json) and
evaluations (eval/*.json) are reused on a rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml
from experiments import REPO

sys.path.insert(0, str(REPO))

# The two sizes of the experiment. Steps, prompts and evaluation sizes are the only differences.
SETTINGS = {
    "quick": {
        "prompts": 16,
        "samples": 2,
        "max_tokens": 64,
        "steps": 4,
        "batch_size": 2,
        "eval_limit": 8,
        "speed_tokens": 16,
        "speed_rounds": 1,
        "loop_iterations": 1,
        "loop_validation": 8,
        "layers": [2, 4],
    },
    # The quickstart's data and training (1 epoch: 41 steps of 8 on its 327 verified rows), the whole
    # arithmetic test split, vLLM for evaluation: one pruning depth with (a) and (b) is about an hour on one core.
    "medium": {
        "prompts": 240,
        "samples": 4,
        "max_tokens": 96,
        "steps": 41,
        "batch_size": 8,
        "eval_limit": 175,
        "speed_tokens": 64,
        "speed_rounds": 3,
        "loop_iterations": 2,
        "loop_validation": 150,
        "layers": [2],
    },
    "full": {
        "prompts": 240,
        "samples": 4,
        "max_tokens": 96,
        "steps": 200,
        "batch_size": 8,
        "eval_limit": 64,
        "speed_tokens": 64,
        "speed_rounds": 3,
        "loop_iterations": 2,
        "loop_validation": 64,
        "layers": [2, 4],
    },
}
MODEL = "smollm2-135m-instruct"
TRAIN_CONFIG = REPO / "scripts" / "configs" / "sft.yaml"
KD_CONFIG = REPO / "scripts" / "configs" / "kd.yaml"
ARITH_TOKENS, CAPITALS_TOKENS = 96, 48


def log(msg: str) -> None:
    print(f"[exp-heal] {msg}", file=sys.stderr, flush=True)


def write_recipe(path: Path, s: dict, prune_layers: int = 0) -> Path:
    student = {"model": MODEL, **({"prune_layers": prune_layers} if prune_layers else {})}
    recipe = {
        "run": path.stem,
        "teacher": {"model": MODEL, "engine": "hf", "batch_size": 32},
        "student": student,
        "source": {"task": "arithmetic", "n": s["prompts"], "seed": 0, "split": "train"},
        "stages": [
            {
                "generate": {
                    "n": s["samples"],
                    "temperature": 0.8,
                    "top_p": 0.95,
                    "max_tokens": s["max_tokens"],
                    "seed": 0,
                    "logprobs": 5,  # the unpruned model's top-5 per answer token: (d) distills them
                }
            },
            {"verify": {"verifiers": ["math"]}},
            {"export": {"formats": ["sft", "kd"]}},
        ],
        "loop": {
            "iterations": s["loop_iterations"],
            "patience": 1,
            "validation_n": s["loop_validation"],
            "max_steps": s["steps"],
            "per_prompt": 2,
            "max_tokens": ARITH_TOKENS,
            "train_config": str(TRAIN_CONFIG),
        },
    }
    from pipeline.recipe import LoopConfig

    if "mine_n" in {f.name for f in dataclasses.fields(LoopConfig)}:  # prompts the loop mines failures on
        recipe["loop"]["mine_n"] = s["loop_validation"]
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def teacher_data(out: Path, s: dict, base_run: Path | None, engine: str) -> tuple[Path, Path]:
    """(a) the verified teacher answers and (b) their self-distilled rewrite, as sft export folders.

    With `base_run` (a finished quickstart run) its verified data is (a) and only the rewrite is computed here."""
    from pipeline.runner import load_recipe, run_context, run_recipe
    from pipeline.stages import export, self_distill

    data_dir = out / "data"
    if base_run is None:
        recipe_path = write_recipe(out / "data.yaml", s)
        run_recipe(recipe_path, run_dir=data_dir, log=log)
        verified, plain = data_dir / "02-verify", data_dir / "03-export"
    else:
        recipe_path = REPO / "scripts" / "recipes" / "quickstart.yaml"
        # by stage name: the quickstart recipe may put stages (rephrase) before generate
        verified, plain = (
            next(iter(sorted(base_run.glob(f"*-{name}"))), base_run / f"??-{name}")
            for name in ("verify", "export")
        )
        for stage in (verified, plain):
            if not (stage / "manifest.json").exists():
                print(
                    f"exp_heal: {stage} is not finished; run bash scripts/quickstart.sh first",
                    file=sys.stderr,
                )
                raise SystemExit(2)
    context = run_context(load_recipe(recipe_path), data_dir)
    manifest = self_distill.run(
        self_distill.Config(engine=engine, max_tokens=s["max_tokens"] + 32),
        verified,
        data_dir / "04-self-distill",
        context=context,
    )
    log(f"self-distill: {self_distill.summary(manifest)}")
    export.run(export.Config(formats=["sft"]), data_dir / "04-self-distill", data_dir / "05-export")
    return plain, data_dir / "05-export"


def train(model: str, dataset: Path, output: Path, s: dict, mode: str = "sft", seed: int = 0) -> Path:
    """A LoRA adapter trained for the size's steps: `sft` on the answers, or `kd` on the teacher's top-k.
    `seed` sets the LoRA initialisation and the data order."""
    from pipeline.train import run_training

    if not (output / "manifest.json").exists():
        steps = s["steps"]
        log(f"training {output.name}: {steps} {mode} steps on {dataset.name} (seed {seed})")
        run_training(
            mode,
            str(TRAIN_CONFIG if mode == "sft" else KD_CONFIG),
            {
                "model": model,
                "dataset": str(dataset),
                "output_dir": str(output),
                "max_steps": steps,
                "per_device_train_batch_size": s["batch_size"],
                "logging_steps": max(1, steps // 10),
                "seed": seed,
            },
        )
    return output / "adapter"


def _same_training(folder: Path, s: dict) -> bool:
    """Did the training in `folder` take the steps and batch size of `s` (then it is reused, not redone)?"""
    done = json.loads((folder / "manifest.json").read_text())
    return (
        done.get("steps") == s["steps"]
        and done["config"].get("per_device_train_batch_size") == s["batch_size"]
    )


def _tag(seed: int) -> str:
    """The suffix of a training seed's folders and evaluations: none for seed 0, the one every arm has."""
    return f"-s{seed}" if seed else ""


def loop_is_wired() -> bool:
    """Does `distill loop` train the recipe's pruned student? It does when pipeline/loop.py trains the model
    of `run_context(recipe, run_dir)` (or calls `pipeline.student.student_model`), not `recipe.student.model`."""
    import inspect

    import pipeline.loop

    source = inspect.getsource(pipeline.loop)
    return "context.student.model" in source or "student_model(" in source


def loop_summary(out: Path, layers: int) -> Path:
    """Where (c)'s finished loop at this depth leaves its summary."""
    return out / f"loop-{layers}" / "loop" / "summary.json"


def pgkd(out: Path, s: dict, layers: int, pruned: str, base_run: Path | None) -> tuple[Path | None, str]:
    """(c): the PGKD loop with the pruned student; returns its best adapter, or None and why not.

    With `base_run` the loop is the quickstart recipe (its vLLM teacher and loop defaults) with the pruned
    student, started from the base run's finished stages (the fingerprints match, so they are not redone);
    without, it is this experiment's own recipe on its own data run."""
    from pipeline.loop import run_loop
    from pipeline.models import resolve

    run_dir = out / f"loop-{layers}"
    done = loop_summary(out, layers)
    if not done.exists():
        if not loop_is_wired():
            return None, "loop.py does not train the pruned student yet (call pipeline.student.student_model)"
        recipe_path = out / f"loop-{layers}.yaml"
        if base_run is not None:
            recipe = yaml.safe_load((REPO / "scripts" / "recipes" / "quickstart.yaml").read_text())
            recipe["run"] = f"loop-{layers}"
            recipe["student"]["prune_layers"] = layers
            recipe["loop"].update(iterations=s["loop_iterations"], max_tokens=ARITH_TOKENS)
            recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            finished = base_run.glob("0[0-2]-*")  # prompts, generate, verify
        else:
            write_recipe(recipe_path, s, prune_layers=layers)
            finished = (out / "data").glob("0[0-3]-*")  # this experiment's own data stages
        for stage in sorted(finished):
            if not (run_dir / stage.name).exists():
                shutil.copytree(stage, run_dir / stage.name)
        run_loop(recipe_path, run_dir=run_dir, log=log)
    summary = json.loads(done.read_text())
    best = summary["best"]["iteration"]
    trained = json.loads((run_dir / "loop" / f"iter_{best}" / "train" / "manifest.json").read_text())
    if trained["model"].get("sha256") != resolve(pruned).identity["sha256"]:
        return None, "the loop trained another model than the pruned student"
    return Path(summary["best"]["adapter"]), ""


def evaluate(out: Path, name: str, model: str, adapter: Path | None, task: str, s: dict, engine: str) -> dict:
    from pipeline.evaluate import evaluate as run_eval

    path = out / "eval" / f"{name}--{task}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = run_eval(
        model,
        adapter=str(adapter) if adapter else None,
        task=task,
        split="test",
        engine=engine,
        limit=s["eval_limit"],  # capitals: all 63 when larger
        max_tokens=ARITH_TOKENS if task == "arithmetic" else CAPITALS_TOKENS,
        batch_size=32,
    )
    result["tokens_per_s"] = round(result["completion_tokens"] / max(result["gen_s"], 1e-9), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    log(f"{name} on {task}: {result['pass@1']:.1%} ({result['tokens_per_s']} tok/s)")
    return result


def generation_speed(models: list[str], s: dict) -> dict[str, float]:
    """Greedy tokens/s of each architecture on the same fixed-length batch (every row generates exactly
    `speed_tokens`), rounds interleaved across models and the best round kept: on a shared CPU the noise
    then hits every model alike. A merged LoRA adapter has the base's shape, so healed models run as fast."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import resolve
    from pipeline.tasks import load_task

    prompts = [r["messages"] for r in load_task("arithmetic", "test", n=8)]
    loaded = {}
    for m in models:
        path = resolve(m).path
        tok = AutoTokenizer.from_pretrained(path, padding_side="left")
        text = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        batch = tok(text, return_tensors="pt", padding=True, add_special_tokens=False)
        loaded[m] = (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), batch, tok)
    best = dict.fromkeys(models, 0.0)
    n = s["speed_tokens"]
    for _ in range(s["speed_rounds"]):
        for m, (model, batch, tok) in loaded.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(
                    **batch,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            best[m] = max(best[m], len(prompts) * n / (time.perf_counter() - t0))
    return best


def parameters(model: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.models import resolve

    m = AutoModelForCausalLM.from_pretrained(resolve(model).path, dtype=torch.float32)
    return sum(p.numel() for p in m.parameters())


def table(rows: list[dict]) -> str:
    """Markdown: one row per arm. With several seeds a score is their mean, each seed's in brackets; the
    retentions divide the means."""
    ref_trained = next(r for r in rows if r["key"] == "unpruned-a")["arithmetic"]
    ref_untrained = next(r for r in rows if r["key"] == "original")["capitals"]
    lines = [
        "| model | params (M) | seeds | arithmetic (trained) | capitals (not trained) | gen tok/s "
        "| retention trained | retention untrained |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def score(values: list[float]) -> str:
        mean = sum(values) / len(values)
        each = " / ".join(f"{v:.1%}" for v in values)
        return f"{mean:.1%}" + (f" ({each})" if len(values) > 1 else "")

    for r in rows:
        if r.get("missing"):
            lines.append(f"| {r['label']} | - | - | - | - | - | - | - ({r['missing']}) |")
            continue
        arith, caps = (sum(r[t]) / len(r[t]) for t in ("arithmetic", "capitals"))
        refs = [sum(x) / len(x) for x in (ref_trained, ref_untrained)]
        keep_t = f"{arith / refs[0]:.0%}" if refs[0] else "n/a"
        keep_u = f"{caps / refs[1]:.0%}" if refs[1] else "n/a"
        lines.append(
            f"| {r['label']} | {r['params'] / 1e6:.1f} | {len(r['arithmetic'])} | {score(r['arithmetic'])} "
            f"| {score(r['capitals'])} | {r['tok_s']:.0f} | {keep_t} | {keep_u} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings: proves the pipeline end to end")
    parser.add_argument(
        "--medium", action="store_true", help="the quickstart's sizes, one pruning depth (about an hour)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: runs/exp-heal[-quick|-medium])")
    parser.add_argument(
        "--base-run",
        type=Path,
        help="a finished quickstart run (runs/quickstart): its verified data is (a), so no teacher generation",
    )
    parser.add_argument("--layers", type=int, nargs="+", help="pruning depths (default: the size's)")
    parser.add_argument(
        "--no-loop",
        action="store_true",
        help="run no new (c), the PGKD loop per pruned student; a finished one is still reported",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="training seeds (LoRA init, data order) of (a), (b) and the unpruned reference; the table "
        "shows their mean and each seed. (c) and (d) train with seed 0 only",
    )
    parser.add_argument(
        "--engine",
        choices=["hf", "vllm"],
        help="engine of the rewrite and the evaluations (default: the size's)",
    )
    args = parser.parse_args()
    if args.quick and args.medium:
        parser.error("--quick and --medium exclude each other; pick one size")
    mode = "quick" if args.quick else "medium" if args.medium else "full"
    s = {**SETTINGS[mode], **({"layers": args.layers} if args.layers else {})}
    engine = args.engine or ("vllm" if mode == "medium" else "hf")
    suffix = "" if mode == "full" else f"-{mode}"
    out = (args.out or REPO / "runs" / f"exp-heal{suffix}").resolve()
    base_run = args.base_run.resolve() if args.base_run else None
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()

    from pipeline.runner import load_recipe
    from pipeline.student import student_model

    sft_data, self_data = teacher_data(out, s, base_run, engine)
    # Each arm: key, label, model, and per training seed its adapter (None: untrained; a str: why it is missing).
    arms = [("original", "original", MODEL, {0: None})]
    reference = base_run / "train-sft" if base_run else None
    unpruned_a = {}
    for seed in args.seeds:
        if not seed and reference and (reference / "manifest.json").exists() and _same_training(reference, s):
            unpruned_a[seed] = reference / "adapter"  # the quickstart's student is exactly this arm
        else:
            unpruned_a[seed] = train(MODEL, sft_data, out / f"train-unpruned-a{_tag(seed)}", s, seed=seed)
    arms.append(("unpruned-a", "unpruned + SFT on teacher data (a)", MODEL, unpruned_a))
    for layers in s["layers"]:
        recipe = load_recipe(write_recipe(out / f"prune-{layers}.yaml", s, prune_layers=layers))
        pruned = student_model(recipe, out / f"prune-{layers}")
        dropped = json.loads((Path(pruned) / "manifest.json").read_text())["dropped"]
        tag = f"pruned {layers} (layers {dropped[0]}-{dropped[-1]})"
        arms.append((f"pruned-{layers}", tag, pruned, {0: None}))
        for arm, label, data in (
            ("a", "SFT on teacher data", sft_data),
            ("b", "SFT on self-distilled data", self_data),
        ):
            adapters = {
                seed: train(pruned, data, out / f"train-{layers}-{arm}{_tag(seed)}", s, seed=seed)
                for seed in args.seeds
            }
            arms.append((f"pruned-{layers}-{arm}", f"{tag} + {label} ({arm})", pruned, adapters))
        kd = train(pruned, sft_data, out / f"train-{layers}-d", s, mode="kd")  # (d) and (c): seed 0 only
        arms.append(
            (f"pruned-{layers}-d", f"{tag} + top-5 logit KD from the unpruned model (d)", pruned, {0: kd})
        )
        skip = args.no_loop and not loop_summary(out, layers).exists()
        adapter, why = (None, "not run (--no-loop)") if skip else pgkd(out, s, layers, pruned, base_run)
        arms.append(
            (f"pruned-{layers}-c", f"{tag} + PGKD loop (c)", pruned, {0: adapter if adapter else why})
        )

    rows, params = [], {}
    speed = generation_speed(list(dict.fromkeys(a[2] for a in arms)), s)
    for key, label, model, adapters in arms:
        if isinstance(adapters.get(0), str):  # an arm that could not run, and why
            rows.append({"key": key, "label": label, "missing": adapters[0]})
            continue
        row = {"key": key, "label": label, "arithmetic": [], "capitals": []}
        for seed, adapter in adapters.items():
            for task in ("arithmetic", "capitals"):
                row[task].append(
                    evaluate(out, f"{key}{_tag(seed)}", model, adapter, task, s, engine)["pass@1"]
                )
        if model not in params:
            params[model] = parameters(model)
        rows.append({**row, "params": params[model], "tok_s": speed[model]})
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    print(
        f"\n{mode} run ({s['steps']} LoRA steps per arm, {s['eval_limit']} arithmetic and all capitals test prompts, {engine}), "
        f"{(time.perf_counter() - t0) / 60:.1f} min; gen tok/s: greedy HF float32, batch of 8, fixed length, best of interleaved rounds\n"
    )
    print(text)
    return 0


if __name__ == "__main__":  # engines may spawn processes: keep the entry point guarded
    sys.exit(main())
