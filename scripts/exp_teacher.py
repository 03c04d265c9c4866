"""Does a strong teacher's data teach a small student? The lever table and the multi-teacher table.

    .venv/bin/python scripts/exp_teacher.py                      # both tables, seed 0
    .venv/bin/python scripts/exp_teacher.py --table levers       # one table
    .venv/bin/python scripts/exp_teacher.py --out ~/exp/teacher  # keep the runs outside the work tree
    .venv/bin/python scripts/exp_teacher.py --report             # print the tables from what is finished
    .venv/bin/python scripts/exp_teacher.py --table levers --rows self-taught   # one row

The teacher is the embedded Qwen2.5-Coder-0.5B-Instruct, the student SmolLM2-135M-Instruct (LoRA SFT,
scripts/configs/sft.yaml: three epochs, batch 8). Every generation answers the same 240 training prompts
(the quickstart's source), 4 samples each, verified by the math verifier with the quickstart's dedup.

Lever table (one seed per row): raw teacher output, then each lever alone, then all of them:
- prompting: few-shot turns that show the calculation (prompts/shots/arithmetic_worked.jinja);
- diversity: temperature 1.0 and top_p 1.0 instead of 0.8 / 0.95;
- mixing: the teacher's verified answers together with the student's own verified answers;
- selection: of each prompt's verified answers, keep the one the student finds most likely;
- rephrasing (with prompting): the teacher rewrites each question twice, as a story, an instruction or in
  other words (the `rephrase` stage), and answers the rewrites too. Its control arm answers as many new
  source questions instead, so "more prompts" alone cannot explain a gain.
Multi-teacher table: each teacher alone and both under each keep rule (first, shortest,
student_likelihood), one answer per prompt, every arm cut to the same number of training rows.

Each student is scored greedily (vLLM, 96 new tokens) on 100 test problems of each held-out wording family
(`heldout` and the wider `wide`). Generations, exports, adapters and scores are folders and JSON files, so
an interrupted run resumes where it stopped; results.json holds every finished arm.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import yaml
from experiments import QWEN, REPO, SMOL, distill

WORKED = {
    "system_template": "system/arithmetic_worked.jinja",
    "shots_template": "shots/arithmetic_worked.jinja",
}
DIVERSE = {"temperature": 1.0, "top_p": 1.0}
REPHRASE = [{"rephrase": {"per_prompt": 2}}]  # two teacher-written wordings of each source question
GENERATIONS = {  # name: (teacher, generate settings on top of the quickstart's[, stages before generate, n])
    "qwen-raw": (QWEN, {}),
    "qwen-worked": (QWEN, WORKED),
    "qwen-diverse": (QWEN, DIVERSE),
    "qwen-all": (QWEN, {**WORKED, **DIVERSE}),
    "smollm2": (SMOL, {}),
    "qwen-rephrased": (QWEN, WORKED, REPHRASE),
    # the quickstart's recipe: the same rewrites, one answer per question (about the tokens of qwen-worked)
    "qwen-rephrased-n1": (QWEN, {**WORKED, "n": 1}, REPHRASE),
    # the "more data" control of the rephrase lever: as many source questions as the rephrased prompts
    "qwen-worked-more": (QWEN, WORKED, [], "rephrased"),
}
LIKELY = {"max_per_prompt": 1, "keep": "student_likelihood"}
TABLES = {
    "levers": [  # (row, generations, export options); the most telling arms first
        ("+ prompting (worked few-shot turns)", ["qwen-worked"], {}),
        ("raw teacher output", ["qwen-raw"], {}),
        ("+ diversity (temperature 1.0, top_p 1.0)", ["qwen-diverse"], {}),
        ("+ mixing (with the student's own verified answers)", ["qwen-raw", "smollm2"], {}),
        ("+ selection (the answer the student finds most likely)", ["qwen-raw"], LIKELY),
        ("+ prompting + rephrasing (2 teacher-written wordings each)", ["qwen-rephrased"], {}),
        ("+ prompting, control: as many source questions", ["qwen-worked-more"], {}),
        ("+ prompting + rephrasing, 1 answer per question (the quickstart)", ["qwen-rephrased-n1"], {}),
        ("all levers", ["qwen-all", "smollm2"], {"max_per_prompt": 2, "keep": "student_likelihood"}),
        ("self-taught (no Qwen: SmolLM2 teaches itself)", ["smollm2"], {}),
    ],
    "teachers": [  # one answer per prompt, cut to equal rows
        ("Qwen alone (worked prompt)", ["qwen-worked"], {"max_per_prompt": 1}),
        ("SmolLM2 alone", ["smollm2"], {"max_per_prompt": 1}),
        ("both, keep first", ["qwen-worked", "smollm2"], {"max_per_prompt": 1, "keep": "first"}),
        ("both, keep shortest", ["qwen-worked", "smollm2"], {"max_per_prompt": 1, "keep": "shortest"}),
        ("both, keep student_likelihood", ["qwen-worked", "smollm2"], LIKELY),
    ],
}
RECIPE = {
    "teacher": {"engine": "vllm"},
    "student": {"model": SMOL},
    "source": {"task": "arithmetic", "n": 240, "seed": 0, "split": "train"},
}
GENERATE = {"n": 4, "temperature": 0.8, "top_p": 0.95, "max_tokens": 96}
VERIFY = {"verifiers": ["math"], "dedup": {"minhash_threshold": 0.9}}
TEST_LIMIT, TEST_TOKENS = 100, 96
EPOCHS = 3  # over the SFT rows, as scripts/configs/sft.yaml (arms from the 1-epoch days keep their figure)


def generation(out: Path, name: str, seed: int) -> Path:
    """The verify folder of one generation (prompts -> generate -> verify), run once and shared by arms."""
    teacher, settings, before, n_like = (*GENERATIONS[name], [], None)[:4]
    run = out / "gen" / f"{name}-s{seed}"
    verify = run / f"{len(before) + 2:02d}-verify"
    if not (verify / "manifest.json").exists():
        source = dict(RECIPE["source"])
        if n_like:  # as many source questions as the prompts another generation answered
            like = generation(out, f"qwen-{n_like}", seed).parent / "01-rephrase" / "manifest.json"
            source["n"] = json.loads(like.read_text())["rows_out"]
        recipe = {
            "run": run.name,
            **RECIPE,
            "source": source,
            "teacher": {**RECIPE["teacher"], "model": teacher},
            "stages": [*before, {"generate": {**GENERATE, **settings, "seed": seed}}, {"verify": VERIFY}],
        }
        run.mkdir(parents=True, exist_ok=True)
        (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        distill("run", str(run / "recipe.yaml"), "--run-dir", str(run))
    return verify


def teacher_tokens(verify: Path) -> int:
    """Completion tokens the teacher wrote for a generation: its answers, and its rewrites if any."""
    return sum(
        int(json.loads((verify.parent / stage / "manifest.json").read_text())["tokens"]["completion"])
        for stage in ("01-rephrase", "01-generate", "02-generate")
        if (verify.parent / stage / "manifest.json").exists()
    )


def export_arm(folder: Path, verifies: list[Path], options: dict) -> Path:
    """Join the generations' verdicts and export SFT rows with the arm's keep rule."""
    from pipeline import store
    from pipeline.recipe import RunContext, StudentConfig
    from pipeline.stages import export

    out = folder / "export"
    if (out / "manifest.json").exists():
        return out
    joined = folder / "verdicts"
    for part in ("data", "rejected"):
        tables = [store.load_table(v / part) for v in verifies if (v / part).is_dir()]
        if tables:
            import pyarrow as pa

            store.save_table(pa.concat_tables(tables, promote_options="permissive"), joined / part)
    config = export.Config(formats=["sft"], **options)
    export.run(config, joined, out, context=RunContext(student=StudentConfig(model=SMOL)))
    return out


def cut_rows(export_dir: Path, rows: int, seed: int) -> Path:
    """The same export with exactly `rows` SFT rows (a seeded sample), for arms compared at equal rows."""
    from pipeline import store

    cut = export_dir.parent / f"export-{rows}"
    if not (cut / "data" / "sft" / "state.json").exists():
        table = store.load_table(export_dir / "data" / "sft")
        keep = sorted(random.Random(seed).sample(range(table.num_rows), rows))
        (cut / "data").mkdir(parents=True, exist_ok=True)
        store.save_table(table.take(keep), cut / "data" / "sft")
    return cut


def sft_rows(export_dir: Path) -> int:
    from pipeline import store

    return store.load_table(export_dir / "data" / "sft").num_rows


def train(folder: Path, dataset: Path, seed: int, epochs: int) -> tuple[Path, float]:
    config = yaml.safe_load((REPO / "scripts" / "configs" / "sft.yaml").read_text())
    config.update(dataset=str(dataset), output_dir=str(folder / "train"), seed=seed, num_train_epochs=epochs)
    path = folder / "sft.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    manifest = folder / "train" / "manifest.json"
    if not manifest.exists():
        distill("train", "sft", str(path))
    return folder / "train" / "adapter", float(json.loads(manifest.read_text()).get("wall_s") or 0)


def score(model: str, adapter: Path | None, out: Path) -> dict:
    """pass@1 on the test split, per held-out family, greedy."""
    if not out.exists():
        args = ["eval", model, "--task", "arithmetic", "--split", "test", "--limit", str(TEST_LIMIT)]
        args += ["--max-tokens", str(TEST_TOKENS), "--engine", "vllm", "--output", str(out)]
        distill(*(args + (["--adapter", str(adapter)] if adapter else [])))
    result = json.loads(out.read_text())
    return {f: v["pass@1"] for f, v in result["by_phrasing"].items()} | {"all": result["pass@1"]}


def arm_folder(out: Path, table: str, row: str, seed: int, epochs: int) -> Path:
    return out / table / (f"{_slug(row)}-s{seed}" + (f"-e{epochs}" if epochs != 1 else ""))


def run_table(
    out: Path, table: str, seed: int, results: dict, only: list[str] | None = None, epochs: int = EPOCHS
) -> None:
    arms = [a for a in TABLES[table] if not only or any(word in a[0] for word in only)]
    equal = None
    if table == "teachers":  # every arm's export first: they are cut to the smallest one's rows
        equal = min(
            sft_rows(
                export_arm(
                    arm_folder(out, table, r, seed, epochs), [generation(out, g, seed) for g in gens], o
                )
            )
            for r, gens, o in arms
        )
    for row, gens, options in arms:  # arm by arm: each finished arm is a row of the table
        folder = arm_folder(out, table, row, seed, epochs)
        verifies = [generation(out, g, seed) for g in gens]
        exp = export_arm(folder, verifies, options)
        dataset = cut_rows(exp, equal, seed) if equal else exp
        t0 = time.perf_counter()
        adapter, train_s = train(folder, dataset, seed, epochs)
        scores = score(SMOL, adapter, folder / "test.json")
        results.setdefault(table, {})[f"{row} | s{seed} | e{epochs}"] = {
            "row": row,
            "seed": seed,
            "epochs": epochs,
            "test": scores,
            "rows": sft_rows(dataset),
            "teacher_tokens": sum(teacher_tokens(v) for v in verifies),
            "train_s": round(train_s),
            "arm_s": round(time.perf_counter() - t0),
        }
        save(out, results)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40]


def save(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2))


def report(results: dict) -> str:
    lines = []
    for key in ("reference", *TABLES):
        if key not in results:
            continue
        lines += [
            f"\n### {key}",
            "| arm | seed | epochs | test heldout | test wide | rows | teacher tokens | train s |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in results[key].values():
            t = r["test"]
            lines.append(
                f"| {r['row']} | {r.get('seed', '')} | {r.get('epochs', 1 if 'seed' in r else '')} | {t['heldout']:.1%} | {t['wide']:.1%} | {r.get('rows', '')} "
                f"| {r.get('teacher_tokens', '')} | {r.get('train_s', '')} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", choices=[*TABLES, "all"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "exp_teacher")
    parser.add_argument("--report", action="store_true", help="print the tables from finished arms and stop")
    parser.add_argument("--rows", nargs="+", help="run only the rows whose name contains one of these words")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="SFT epochs of every arm")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if not args.report:
        for seed in args.seeds:
            for table in TABLES if args.table == "all" else [args.table]:
                run_table(args.out, table, seed, results, args.rows, args.epochs)
                reference = results.setdefault("reference", {})
                for name, model in (("student before training", SMOL), ("teacher (Qwen, greedy)", QWEN)):
                    path = args.out / f"{_slug(name)}.json"
                    reference[name] = {"row": name, "test": score(model, None, path)}
                    save(args.out, results)
    print(report(results))


if __name__ == "__main__":
    main()
