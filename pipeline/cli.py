"""`distill`: argument parsing only. Every command calls a function of the package.

    distill run scripts/recipes/quickstart.yaml         # all stages of a recipe, resumable
    distill status runs/quickstart --json               # one JSON object per stage
    distill prompts --task arithmetic --n 200 --output out/00-prompts
    distill generate --input out/00-prompts --output out/01-generate --n 4 --temperature 0.8
    distill merge out/01-generate                       # join shards that ran separately
    distill generate ... --executor ray                 # shards on a Ray cluster (or: slurm)
    distill retry out/01-generate                       # redo rows that failed for a transient reason
    distill train sft scripts/configs/sft.yaml          # LoRA training from a TRL config
    distill eval smollm2-135m-instruct --task arithmetic --split test

Exit codes: 0 success; 2 bad input or config (one line that names the fix); 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.cli_flags import add_executor_flags, executor_from_args
from pipeline.cli_stages import make_stage_command
from pipeline.errors import RetryPending, UserError
from pipeline.prune import METHODS as PRUNE_METHODS
from pipeline.train.config import MODES as TRAIN_MODES

STAGES = ("prompts", "rephrase", "generate", "verify", "mine", "regenerate", "self-distill", "export")


# --------------------------------------------------------------------------- commands


def cmd_run(args) -> int:
    from pipeline.runner import load_recipe, run_recipe

    executor = executor_from_args(args, load_recipe(args.recipe).executor)
    result = run_recipe(args.recipe, run_dir=args.run_dir, overwrite=args.overwrite, executor=executor)
    print(f"run:    {result['run_dir']}\ncard:   {result['card']}\nreport: {result['report']}")
    return 0


def cmd_status(args) -> int:
    from pipeline.runner import status

    rows = status(args.run_dir)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            extra = f"{row['rows_out']} rows" if row["status"] == "complete" else ""
            if row["status"] == "partial":
                extra = f"{row['shards_done']}/{row['shards']} shards"
            print(f"{row['name']:<14} {row['status']:<9} {extra}")
    return 0


def cmd_merge(args) -> int:
    from pipeline.runner import merge

    manifest = merge(args.stage_dir, keep_failed=args.keep_failed)
    print(f"{args.stage_dir}: {manifest['rows_out']} rows, {manifest['shards']} shards merged")
    return 0


def cmd_retry(args) -> int:
    from pipeline.runner import retry

    manifest = retry(args.stage_dir, executor=executor_from_args(args))
    if manifest is None:
        print(f"{args.stage_dir}: submitted; `distill merge {args.stage_dir}` when the jobs are done")
        return 0
    print(f"{args.stage_dir}: complete, {manifest['rows_out']} rows")
    return 0


def cmd_loop(args) -> int:
    from pipeline.loop import run_loop
    from pipeline.runner import load_recipe

    names = ("iterations", "max_steps", "validation_n", "patience", "mine_n", "epochs", "method", "generator")
    overrides = {k: getattr(args, k) for k in (*names, "teacher_budget_tokens", "train_config")}
    summary = run_loop(
        args.recipe,
        run_dir=args.run_dir,
        overrides={k: v for k, v in overrides.items() if v is not None},
        executor=executor_from_args(args, load_recipe(args.recipe).executor),
    )
    for m in summary["history"]:
        print(
            f"iteration {m['iteration']}: validation accuracy {m['val_accuracy']:.1%} on {m['train_rows']} train rows"
        )
    best = summary["best"]
    print(f"best: iteration {best['iteration']} ({best['val_accuracy']:.1%}), adapter {best['adapter']}")
    print(f"generation tokens {summary['generation_tokens']}, wall {summary['wall_s']:.0f} s")
    return 0


def cmd_prune(args) -> int:
    from pipeline.prune import prune

    info = prune(args.model, args.layers, args.output, start=args.start, by=args.by)
    print(json.dumps({"output": str(args.output), **info}))
    return 0


def cmd_card(args) -> int:
    from pipeline.cards import write_card

    print(write_card(args.run_dir, repo_id=args.repo_id, license=args.license, language=args.language))
    return 0


def cmd_publish(args) -> int:
    from pipeline.publish import publish

    folder = publish(
        args.run_dir,
        args.repo_id,
        private=args.private,
        dry_run=args.dry_run,
        include_rejected=args.include_rejected,
        license=args.license,
        language=args.language,
    )
    print(folder if args.dry_run else f"uploaded {folder} to datasets/{args.repo_id}")
    return 0


def cmd_report(args) -> int:
    from pipeline.report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_train(args) -> int:
    from pipeline.train import run_training

    overrides = {}
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    manifest = run_training(args.mode, args.config, overrides)
    print(json.dumps({k: manifest.get(k) for k in ("output_dir", "final_loss", "tokens_per_s", "wall_s")}))
    return 0


def cmd_eval(args) -> int:
    from pipeline.evaluate import evaluate

    model = args.model
    if args.recipe:
        from pipeline.runner import load_recipe
        from pipeline.student import student_model

        if model:
            raise UserError("eval: give a model spec or --recipe, not both")
        model = student_model(load_recipe(args.recipe), args.run_dir)
    if not model:
        raise UserError("eval: name the model to evaluate (e.g. smollm2-135m-instruct) or pass --recipe")
    result = evaluate(
        model,
        adapter=args.adapter,
        task=args.task,
        split=args.split,
        n=args.samples,
        engine=args.engine,
        limit=args.limit,
        seed=args.seed,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        temperature=args.temperature,
        phrasing=args.phrasing,
        system_template=args.system_template,
        shots_template=args.shots_template,
        difficulty={
            k: v for k in ("ops", "digits", "operators", "mul_digits") if (v := getattr(args, k)) is not None
        },
    )
    shown = result if args.json else {k: v for k, v in result.items() if k != "rows"}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(shown))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. When ``command`` names a stage, only that stage's module is imported for its
    flags: importing all seven costs a one-stage command about a second of start-up."""
    parser = argparse.ArgumentParser(
        prog="distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run every stage of a recipe (resumable)")
    p.add_argument("recipe", help="recipe YAML, e.g. scripts/recipes/quickstart.yaml")
    p.add_argument("--run-dir", help="output folder (default: runs/<recipe run name>)")
    p.add_argument("--overwrite", action="store_true", help="replace stages whose settings changed")
    add_executor_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="show each stage of a run: complete, partial or missing")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="one JSON object per stage")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("merge", help="join the shards of a stage that ran as separate --shard-index jobs")
    p.add_argument("stage_dir")
    p.add_argument(
        "--keep-failed",
        action="store_true",
        help="finish even though some rows failed for a transient reason (they go to rejected/)",
    )
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser(
        "retry", help="redo what an unfinished stage owes: shards not run, rows that failed transiently"
    )
    p.add_argument("stage_dir")
    add_executor_flags(p)
    p.set_defaults(func=cmd_retry)

    for stage in STAGES:
        if command in STAGES and stage != command:
            sub.add_parser(stage)  # a name only: this process runs another stage
        else:
            make_stage_command(sub, stage)

    p = sub.add_parser(
        "loop", help="performance-guided loop: train, evaluate, mine failures, regenerate, repeat"
    )
    p.add_argument("recipe", help="recipe YAML with a `student:` and optionally a `loop:` section")
    p.add_argument("--run-dir", help="output folder (default: runs/<recipe run name>)")
    p.add_argument("--iterations", type=int, help="most rounds")
    p.add_argument("--max-steps", type=int, help="training steps per round")
    p.add_argument("--validation-n", type=int, help="validation prompts")
    p.add_argument("--patience", type=int, help="rounds without improvement before stopping")
    p.add_argument("--mine-n", type=int, help="training-split prompts the student is mined on")
    p.add_argument("--epochs", type=float, help="epochs per round over all data so far")
    p.add_argument(
        "--method", choices=["targeted", "task", "random", "teacher", "rephrase"], help="regeneration method"
    )
    p.add_argument("--generator", choices=["teacher", "best"], help="who answers the new prompts")
    p.add_argument("--teacher-budget-tokens", type=int, help="stop once generation used this many tokens")
    p.add_argument(
        "--train-config",
        help="TRL SFT config of each round (default: scripts/configs/sft.yaml, a LoRA adapter; "
        "scripts/configs/sft_full.yaml trains every weight)",
    )
    add_executor_flags(p)
    p.set_defaults(func=cmd_loop)

    p = sub.add_parser("train", help="train a LoRA student with TRL from a config YAML")
    p.add_argument("mode", choices=list(TRAIN_MODES))
    p.add_argument("config", help="TRL config YAML (scripts/configs/*.yaml)")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prune", help="drop the decoder layers that matter least -> a smaller student")
    p.add_argument("model", help="model spec")
    p.add_argument("--layers", type=int, required=True, help="how many consecutive layers to drop")
    p.add_argument("--start", type=int, help="first layer to drop (default: the block chosen --by)")
    p.add_argument(
        "--by",
        choices=PRUNE_METHODS,
        default="kl",
        help="kl: the block whose removal changes the model's greedy answers to calibration prompts least "
        "(default); angular: least angular distance of the hidden states across the block (no generation)",
    )
    p.add_argument("--output", type=Path, required=True, help="folder for the pruned model")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("card", help="write the Hugging Face dataset card of a run from its manifests")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--repo-id", help="ORG/NAME the card will live at (used in the card's usage example)")
    p.add_argument("--license", help="dataset license id (default: derived from the teacher and source)")
    p.add_argument("--language", nargs="+", default=["en"], help="language codes")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser(
        "publish", help="upload a run's exports (Parquet, one config each) with the card to the Hub"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--repo-id", required=True, help="dataset repo ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="only write the folder that would be uploaded")
    p.add_argument("--include-rejected", action="store_true", help="also publish rejected rows with reasons")
    p.add_argument("--license", help="dataset license id")
    p.add_argument("--language", nargs="+", default=["en"], help="language codes")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("report", help="write runs/<run>/report.html: plots of every stage")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="accuracy of a model (plus an optional LoRA adapter) on a task split")
    p.add_argument(
        "model", nargs="?", help="model spec: embedded name, local folder (a fully trained student), hub id"
    )
    p.add_argument(
        "--recipe", help="evaluate this recipe's student (its pruned copy when prune_layers is set)"
    )
    p.add_argument("--run-dir", help="with --recipe: the run folder (default: runs/<recipe run name>)")
    p.add_argument("--adapter", help="LoRA adapter folder")
    p.add_argument(
        "--task",
        default="arithmetic",
        help="built-in task: arithmetic, humaneval or capitals (default arithmetic)",
    )
    p.add_argument("--split", default="test", help="train, validation or test (default test)")
    p.add_argument(
        "--limit", type=int, default=100, help="number of problems (arithmetic held-out splits: per family)"
    )
    p.add_argument(
        "--phrasing",
        choices=["train", "heldout", "wide"],
        help="arithmetic: one wording family (default on validation/test: both held-out families, heldout and wide)",
    )
    p.add_argument("--ops", type=int, help="arithmetic: operations per problem (default 1)")
    p.add_argument("--digits", type=int, help="arithmetic: digits per operand (default 1)")
    p.add_argument("--operators", help="arithmetic: operators to draw from, a subset of '+-*'")
    p.add_argument(
        "--mul-digits", type=int, help="arithmetic: digits of a factor after '*' (default: --digits)"
    )
    p.add_argument("--system-template", help="system prompt under prompts/ before each question (a teacher)")
    p.add_argument(
        "--shots-template",
        help="few-shot turns under prompts/ before each question, as the generate stage sends",
    )
    p.add_argument("--samples", type=int, default=1, help="samples per problem (pass@k when > 1)")
    p.add_argument("--engine", default="hf", choices=["vllm", "hf"], help="default hf")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--max-tokens", type=int, default=128, help="most new tokens per answer (default 128)")
    p.add_argument(
        "--temperature", type=float, help="sampling temperature (default: greedy for 1 sample, else 0.7)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="hf engine: prompts per batch")
    p.add_argument("--json", action="store_true", help="include per-row results")
    p.add_argument("--output", help="also write the result, with per-row results, to this JSON file")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RetryPending as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
