"""The stage commands: `distill STAGE --input PATH --output DIR [--config FILE] [flags]`.

Each stage's flags come from its `Config` (pipeline/cli_flags.py); `--teacher`, `--critic`, `--student` and
the engine options build the run context a recipe would give; the command runs the stage through the
runner (`run_stage`), here or where --executor says.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli_flags import add_config_flags, add_executor_flags, executor_from_args, flag_values
from pipeline.errors import UserError


def _context_from_args(args, stage: str):
    from pipeline.config import from_dict
    from pipeline.recipe import ModelConfig, RunContext, StudentConfig
    from pipeline.tasks import SourceConfig

    teachers = []
    for i, spec in enumerate(getattr(args, "teacher", None) or []):
        options = {"model": spec, "engine": args.engine}
        if args.base_url:
            options["base_url"] = args.base_url[0] if len(args.base_url) == 1 else args.base_url
        for key in ("concurrency", "max_retries", "served_model_name"):
            if getattr(args, key, None) is not None:
                options[key] = getattr(args, key)
        teachers.append(from_dict(ModelConfig, options, f"--teacher[{i}]"))
    critic_spec = getattr(args, "critic", None)
    critic = (
        from_dict(ModelConfig, {"model": critic_spec, "engine": args.engine}, "--critic")
        if critic_spec
        else None
    )
    student_spec = getattr(args, "student", None)
    student = from_dict(StudentConfig, {"model": student_spec}, "--student") if student_spec else None
    source = None
    if stage == "prompts":
        src = {"split": args.split, "seed": args.seed}
        if args.input:
            src["path"] = str(args.input)
            src["task"] = args.task
        else:
            src["task"] = args.task or "arithmetic"
        for key in ("n", "prompt_column", "reference_column", "messages_column", "id_column"):
            if getattr(args, key) is not None:
                src[key] = getattr(args, key)
        source = from_dict(SourceConfig, src, "source")
    return RunContext(
        teachers=teachers, student=student, critic=critic, source=source, run_dir=Path(args.output).parent
    )


def make_stage_command(sub, stage: str):
    from pipeline.runner import stage_module

    try:
        module = stage_module(stage)
    except UserError:
        return  # stage not in this version
    doc = (module.__doc__ or "").strip()
    p = sub.add_parser(
        stage,
        help=doc.splitlines()[0] if doc else stage,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input",
        type=Path,
        required=stage != "prompts",
        help="input: a stage folder, a datasets folder, .jsonl or .parquet"
        + (" (user data)" if stage == "prompts" else ""),
    )
    p.add_argument("--output", type=Path, required=True, help="output stage folder")
    p.add_argument("--config", type=Path, help="YAML file with this stage's settings (flags override it)")
    p.add_argument("--num-shards", type=int, help="split the work into N shards (default: by shard_size)")
    p.add_argument(
        "--shard-index", type=int, help="run only shard i (0-based); join later with `distill merge`"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing, different result in --output"
    )
    if stage == "prompts":
        p.add_argument("--task", help="built-in task (arithmetic, humaneval), or a label for --input rows")
        p.add_argument("--n", type=int, help="number of prompts")
        p.add_argument("--split", default="train", help="train, validation or test")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--prompt-column")
        p.add_argument("--reference-column")
        p.add_argument("--messages-column")
        p.add_argument("--id-column")
        names = add_config_flags(p, module.Config)
    else:
        p.add_argument("--teacher", action="append", help="teacher model spec (repeat for several teachers)")
        p.add_argument("--critic", help="critic model spec (verify)")
        p.add_argument("--student", help="student model spec (mine)")
        p.add_argument(
            "--engine", default="vllm", choices=["vllm", "openai", "hf"], help="engine for --teacher/--critic"
        )
        p.add_argument(
            "--base-url",
            nargs="+",
            help="openai engine: server URL(s), e.g. http://127.0.0.1:8000/v1; several spread the requests",
        )
        p.add_argument(
            "--concurrency",
            type=int,
            help="openai engine: pin the requests in flight per server (default: adapt to the server)",
        )
        p.add_argument(
            "--max-retries", type=int, help="openai engine: retries of a 5xx/429/timeout (default: 6)"
        )
        p.add_argument("--served-model-name", help="openai engine: the model name the server expects")
        names = add_config_flags(p, module.Config)
        if stage == "generate":
            p.add_argument(
                "--no-seed",
                action="store_true",
                help="send no sampling seed (seed: null), for servers that refuse or crash on seeds; "
                "completions are then not reproducible",
            )
    add_executor_flags(p)
    p.set_defaults(func=lambda args: cmd_stage(args, stage, module, names))


def cmd_stage(args, stage: str, module, names: list[str]) -> int:
    from pipeline.config import from_dict, load_yaml

    settings = load_yaml(args.config) if args.config else {}
    settings.update(flag_values(args, names))
    if getattr(args, "no_seed", False):
        if getattr(args, "cfg_seed", None) is not None:
            raise UserError("--seed and --no-seed contradict each other; keep one")
        settings["seed"] = None
    config = from_dict(module.Config, settings, f"{stage} config")
    context = _context_from_args(args, stage)
    input_path = None if stage == "prompts" else args.input
    executor = executor_from_args(args)
    if executor is not None and args.shard_index is not None:
        raise UserError("--shard-index runs one shard here; drop it to let --executor run the shards")
    from pipeline.runner import run_stage

    manifest = run_stage(
        stage,
        config,
        input_path,
        args.output,
        context,
        executor=executor,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        overwrite=args.overwrite,
    )
    if manifest is None and executor is not None:
        return 0  # submitted without waiting; the executor said how to finish
    if manifest is None:
        print(
            f"{args.output}: shard {args.shard_index} done; other shards remain (then `distill merge {args.output}`)"
        )
        return 0
    summary = module.summary(manifest) if hasattr(module, "summary") else f"{manifest['rows_out']} rows"
    print(f"{args.output}: {summary}")
    return 0
