"""Beyond sequence-level KD: does logit or on-policy distillation from the Qwen teacher beat SFT on its text?

    .venv/bin/python scripts/exp_kd.py --out ~/exp/kd                  # 3 seeds, every arm, then the table
    .venv/bin/python scripts/exp_kd.py --out ~/exp/kd --seeds 0 --arms a b
    .venv/bin/python scripts/exp_kd.py --out ~/exp/kd --report         # the table from what is finished

The student is SmolLM2-135M-Instruct (LoRA), the teacher Qwen2.5-Coder-0.5B-Instruct: two tokenizers (49,152
and 151,936 tokens). The data is the quickstart's: its 240 questions and their teacher-written rewrites (copied
from ``--base-run``), answered once by the teacher with worked examples first, verified by the math verifier.
That generation also keeps the teacher's top-20 logprobs per answer token (same vLLM pass, no second one).

Arms, at equal training compute: every arm takes S optimizer steps of 8 rows, S = 2 epochs of (a)'s rows.
- (a) sequence-level KD: SFT on the verified teacher text (scripts/configs/sft.yaml);
- (b) (a) + cross-tokenizer logit KD: the same rows and steps, loss = cross-entropy + ULD on the stored top-20,
  aligned byte by byte across the two tokenizations (scripts/configs/uld.yaml);
- (c) on-policy, started from (a): (a)'s adapter after S - M steps, then M GOLD steps in which the student
  samples answers to the same prompts and the Qwen teacher scores the student's own tokens (gold.yaml);
- (d) reference: same-tokenizer top-20 logit KD from SmolLM2-135M's own verified answers to the same
  questions (scripts/configs/kd.yaml), S steps.

Each student is scored greedily on the arithmetic test split (100 problems per held-out wording family) and on
the capitals test split, which no arm trains on (forgetting). The table gives mean ± sd over seeds, the
per-problem comparison with (a) pooled over seeds (exact McNemar), and wall times. Every step is a folder
or a JSON file, so a killed run resumes; results are read back from those files.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import yaml
from experiments import QWEN, REPO, SMOL, distill, mean_sd, paired, score, table, train

TOPK = 20  # vLLM's default max_logprobs
BATCH, EPOCHS = 8, 2  # as scripts/configs/sft.yaml
ON_POLICY_STEPS = 20  # M: (c)'s last steps, on the student's own samples
ARMS = {
    "a": "(a) sequence-level KD (SFT on teacher text)",
    "b": "(b) (a) + cross-tokenizer logit KD (ULD, top-20)",
    "c": f"(c) on-policy GOLD for the last {ON_POLICY_STEPS} steps, from (a)",
    "d": "(d) same-tokenizer logit KD from SmolLM2-135M (reference)",
    # an ablation of (b): GOLD's hybrid loss compares the tokens both vocabularies share ("7", " =", ...)
    # directly (JSD) and only the rest by sorted probabilities; plain ULD keeps no token identity at all
    "e": "(b') as (b), hybrid ULD: shared tokens compared directly",
}
WORKED = {
    "system_template": "system/arithmetic_worked.jinja",
    "shots_template": "shots/arithmetic_worked.jinja",
}
GENERATE = {
    "n": 1,
    "temperature": 0.8,
    "top_p": 0.95,
    "max_tokens": 96,
    "seed": 0,
    "logprobs": TOPK,
    **WORKED,
}


def qwen_data(out: Path, base_run: Path) -> Path:
    """The quickstart recipe with top-20 logprobs and a kd/ export; its prompts and rewrites are reused."""
    run = out / "data-qwen"
    if not (run / "04-export" / "manifest.json").exists():
        for stage in ("00-prompts", "01-rephrase"):  # fingerprints ignore paths: the copies are not redone
            if not (run / stage).exists():
                if not (base_run / stage / "manifest.json").exists():
                    print(f"note: {base_run / stage} is missing; the rewrites are made again", flush=True)
                    continue
                shutil.copytree(base_run / stage, run / stage)
        recipe = yaml.safe_load((REPO / "scripts" / "recipes" / "quickstart.yaml").read_text())
        recipe.pop("loop", None)
        recipe["run"] = "exp-kd"
        recipe["stages"] = [
            {"rephrase": {"per_prompt": 2}},
            {"generate": GENERATE},
            {"verify": {"verifiers": ["math"], "dedup": {"minhash_threshold": 0.9}}},
            {"export": {"formats": ["sft", "kd"]}},
        ]
        run.mkdir(parents=True, exist_ok=True)
        (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        distill("run", str(run / "recipe.yaml"), "--run-dir", str(run))
    return run / "04-export"


def smol_data(out: Path, qwen_export: Path) -> Path:
    """SmolLM2-135M answers the same questions and rewrites, with its top-20, for the same-tokenizer arm."""
    run, rephrased = out / "data-smollm2", qwen_export.parent / "01-rephrase"
    steps = [
        (
            "generate",
            rephrased,
            run / "02-generate",
            ["--teacher", SMOL, "--engine", "vllm"] + _flags(GENERATE),
        ),
        ("verify", run / "02-generate", run / "03-verify", ["--verifiers", "math"]),
        ("export", run / "03-verify", run / "04-export", ["--formats", "kd"]),
    ]
    for stage, source, target, flags in steps:
        if not (target / "manifest.json").exists():
            distill(stage, "--input", str(source), "--output", str(target), *flags)
    return run / "04-export"


def _flags(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def rows(export: Path, fmt: str) -> int:
    from pipeline import store

    return store.load_table(export / "data" / fmt).num_rows


def run_arm(arm: str, seed: int, out: Path, qwen: Path, smol: Path, steps: int) -> dict:
    """Train one arm for one seed (once), score it (once); return its figures."""
    folder = out / f"{arm}-s{seed}"
    common = {"seed": seed, "max_steps": steps, "per_device_train_batch_size": BATCH, "max_length": 256}
    if arm == "a":  # also keeps its adapter at S - M steps, where (c) starts
        m = train(
            "sft",
            "sft",
            folder,
            dataset=str(qwen),
            **common,
            save_strategy="steps",
            save_steps=steps - ON_POLICY_STEPS,
            save_only_model=True,
        )
    elif arm in ("b", "e"):
        hybrid = {"uld_use_hybrid_loss": True} if arm == "e" else {}
        m = train(
            "uld",
            "uld",
            folder,
            dataset=str(qwen),
            **common,
            teacher_tokenizer_name_or_path=QWEN,
            learning_rate=2.0e-4,
            uld_crossentropy_weight=1.0,
            uld_distillation_weight=1.0,
            **hybrid,
        )
    elif arm == "c":
        start = out / f"a-s{seed}" / "train" / f"checkpoint-{steps - ON_POLICY_STEPS}"
        if not (start / "adapter_config.json").exists():
            run_arm("a", seed, out, qwen, smol, steps)
        m = train(
            "gold",
            "gold",
            folder,
            dataset=str(qwen),
            adapter=str(start),
            seed=seed,
            max_steps=ON_POLICY_STEPS,
            per_device_train_batch_size=BATCH,
            learning_rate=1.0e-4,
            lr_scheduler_type="cosine",
            teacher_model_name_or_path=QWEN,
        )
    else:
        m = train("kd", "kd", folder, dataset=str(smol), **common)
    adapter = Path(m["outputs"]["adapter"])
    test = score(SMOL, adapter, folder / "test.json")
    capitals = score(SMOL, adapter, folder / "capitals.json", task="capitals", limit=None, tokens=48)
    return {
        "arm": arm,
        "seed": seed,
        "steps": m["steps"],
        "rows": m["dataset"]["rows"],
        "train_s": m["wall_s"],
        "final_loss": m["final_loss"],
        "test": test,
        "capitals": capitals,
        "extra": _extra(m),
    }


def _extra(manifest: dict) -> dict:
    keep = {k: manifest[k] for k in ("uld", "teacher_scoring", "use_uld_loss") if k in manifest}
    return keep


def references(out: Path) -> dict:
    """The student before training, and the teacher bare and as it answered the data (worked examples)."""
    worked = ("--system-template", WORKED["system_template"], "--shots-template", WORKED["shots_template"])
    models = [
        ("student before training", "before", SMOL, ()),
        ("teacher Qwen, bare question", "teacher", QWEN, ()),
        ("teacher Qwen, worked examples first (as it wrote the data)", "teacher-worked", QWEN, worked),
    ]
    return {
        name: (
            score(model, None, out / f"{key}-test.json", flags=flags),
            # capitals without arithmetic examples: the bare teacher's score serves both teacher rows
            score(
                model,
                None,
                out / f"{key.split('-')[0]}-capitals.json",
                task="capitals",
                limit=None,
                tokens=48,
            ),
        )
        for name, key, model, flags in models
    }


def report(out: Path, results: dict[str, list[dict]], refs: dict) -> str:
    lines = ["| model | test % | heldout % | wide % | capitals % |", "|---|---|---|---|---|"]
    for name, (test, capitals) in refs.items():
        fam = test.get("by_phrasing", {})
        lines.append(
            f"| {name} | {100 * test['pass@1']:.1f} | {100 * fam['heldout']['pass@1']:.1f} "
            f"| {100 * fam['wide']['pass@1']:.1f} | {100 * capitals['pass@1']:.1f} |"
        )
    body = []
    base = {r["seed"]: r for r in results.get("a", [])}
    for arm, label in ARMS.items():
        runs = sorted(results.get(arm, []), key=lambda r: r["seed"])
        if not runs:
            continue
        both = [r for r in runs if r["seed"] in base]
        vs_a = capitals_vs_a = ""
        if arm != "a" and both:
            w, lo, p = paired([r["test"] for r in both], [base[r["seed"]]["test"] for r in both])
            diff = [r["test"]["pass@1"] - base[r["seed"]]["test"]["pass@1"] for r in both]
            vs_a = f"{mean_sd(diff)} pts; {w} won, {lo} lost, p = {p:.3f}"
            dcap = [r["capitals"]["pass@1"] - base[r["seed"]]["capitals"]["pass@1"] for r in both]
            capitals_vs_a = f" ({mean_sd(dcap)} vs a)"
        train_s = [r["train_s"] for r in runs]
        steps = f"{runs[0]['steps']} x {BATCH}"
        if arm == "c" and both:  # (a)'s first S - M steps are (c)'s too: count their share of (a)'s time
            full = base[both[0]["seed"]]["steps"]
            steps = f"{full - ON_POLICY_STEPS} SFT + {runs[0]['steps']} GOLD, x {BATCH}"
            train_s = [
                r["train_s"] + base[r["seed"]]["train_s"] * (full - ON_POLICY_STEPS) / full for r in both
            ]
        body.append(
            [
                label,
                len(runs),
                mean_sd([r["test"]["pass@1"] for r in runs]),
                mean_sd([r["test"]["by_phrasing"]["heldout"]["pass@1"] for r in runs]),
                mean_sd([r["test"]["by_phrasing"]["wide"]["pass@1"] for r in runs]),
                mean_sd([r["capitals"]["pass@1"] for r in runs]) + capitals_vs_a,
                vs_a or "-",
                steps,
                runs[0]["rows"],
                f"{sum(train_s) / len(train_s):.0f}",
            ]
        )
    header = ["arm", "seeds", "test %", "heldout %", "wide %", "capitals %", "test vs (a), paired"]
    header += ["optimizer steps x batch", "data rows", "train s (mean)"]
    notes = []
    for r in results.get("c", []):
        scoring = r["extra"].get("teacher_scoring", {})
        notes.append(
            f"(c) seed {r['seed']}: teacher scored {scoring.get('tokens')} tokens at "
            f"{scoring.get('tokens_per_s')} tok/s (HF forward)"
        )
    for r in results.get("b", []):
        uld = r["extra"].get("uld", {})
        notes.append(
            f"(b) seed {r['seed']}: {uld.get('rows_used')} rows used, "
            f"{uld.get('rows_dropped_misaligned')} dropped (top-k not aligned)"
        )
    return "\n".join(lines) + "\n\n" + table(header, body) + "\n\n" + "\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "exp_kd")
    parser.add_argument(
        "--base-run",
        type=Path,
        default=REPO / "runs" / "quickstart",
        help="a quickstart run whose prompts and rewrites are reused",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--arms", nargs="+", choices=list(ARMS), default=list("abcd"), help="(e) is an ablation"
    )
    parser.add_argument("--report", action="store_true", help="print the table from finished arms and stop")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    if not args.report:
        qwen = qwen_data(args.out, args.base_run)
        smol = smol_data(args.out, qwen) if "d" in args.arms else None
        steps = math.ceil(rows(qwen, "sft") / BATCH) * EPOCHS
        refs = references(args.out)
        for seed in args.seeds:  # seed-major: each finished seed is a full row of every arm
            for arm in args.arms:
                done = [r for r in results.get(arm, []) if r["seed"] != seed]
                results[arm] = [*done, run_arm(arm, seed, args.out, qwen, smol, steps)]
                saved.write_text(json.dumps(results, indent=1))
    else:
        refs = references(args.out)
    print(report(args.out, results, refs))


if __name__ == "__main__":
    main()
