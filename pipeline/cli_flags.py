"""Command-line flags derived from the config dataclasses, so a setting has one name and one help text.

`add_config_flags` gives a parser one --flag per scalar field of a `Config` (a stage's, with the field's
help), and `flag_values` reads back the ones given, parsed like YAML scalars. `add_executor_flags` and
`executor_from_args` do the same for where shards run (`ExecutorConfig`: a recipe's `executor:`, which the
flags override). Used by pipeline/cli.py and pipeline/cli_stages.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

import yaml

from pipeline.errors import UserError


def _scalar(tp):
    """The scalar type a CLI flag can carry for a dataclass field type, or None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    if origin is list and typing.get_args(tp) and typing.get_args(tp)[0] in (str, int, float):
        return list
    if origin is typing.Literal:
        return str
    return tp if tp in (int, float, str, bool) else None


def add_config_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> list[str]:
    """One --flag per scalar field of a Config dataclass, with the field's help text."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        kind = _scalar(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if kind is None or f.name in skip or flag in parser._option_string_actions:
            continue  # nested settings go in --config; a name taken by a common flag keeps its meaning
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        if default not in (None, dataclasses.MISSING) and not isinstance(default, list):
            help_text += f" (default: {default})"
        if kind is bool:
            parser.add_argument(
                flag,
                dest=f"cfg_{f.name}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif kind is list:
            parser.add_argument(flag, dest=f"cfg_{f.name}", nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(
                flag, dest=f"cfg_{f.name}", default=None, metavar=kind.__name__.upper(), help=help_text
            )
        names.append(f.name)
    return names


def flag_values(args: argparse.Namespace, names: list[str]) -> dict:
    """Flags that were given, parsed like YAML scalars (so --temperature 0.8 is a float)."""
    out = {}
    for name in names:
        value = getattr(args, f"cfg_{name}")
        if value is None:
            continue
        if isinstance(value, list):
            out[name] = [_yaml_scalar(v) for v in value]
        elif isinstance(value, bool):
            out[name] = value
        else:
            out[name] = _yaml_scalar(value)
    return out


def _yaml_scalar(text: str):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, list)) or value is None else value


def add_executor_flags(p: argparse.ArgumentParser) -> None:
    """--executor and its options (pipeline/executors.py); they override a recipe's `executor:`."""
    from pipeline.executors import ExecutorConfig

    g = p.add_argument_group("where shards run")
    g.add_argument(
        "--executor",
        choices=["local", "ray", "slurm"],
        help="local (default: this process), ray (a Ray cluster) or slurm (an array job through submitit)",
    )
    g.add_argument("--address", dest="ex_address", help="ray: cluster address to join (default: start one)")
    g.add_argument("--workers", dest="ex_workers", type=int, help="ray: engine-holding actors")
    g.add_argument("--partition", dest="ex_partition", help="slurm: partition")
    g.add_argument("--account", dest="ex_account", help="slurm: account")
    g.add_argument("--time-min", dest="ex_time_min", type=int, help="slurm: minutes per array task")
    g.add_argument("--gpus-per-task", dest="ex_gpus_per_task", type=int, help="slurm: GPUs per array task")
    g.add_argument(
        "--no-wait",
        dest="ex_wait",
        action="store_false",
        default=None,
        help="slurm: print the job id and return; `distill merge` finishes the stage later",
    )
    g.add_argument(
        "--slurm-cluster",
        dest="ex_cluster",
        choices=["slurm", "local"],
        help="slurm: `local` runs the array with submitit's local executor (no Slurm needed)",
    )
    p.set_defaults(_executor_fields=[f.name for f in dataclasses.fields(ExecutorConfig)])


def executor_from_args(args, base=None):
    """The executor the flags ask for, on top of a recipe's `executor:` (None: local)."""
    from pipeline.config import from_dict, to_dict
    from pipeline.executors import build_executor

    settings = to_dict(base) if base is not None else {}
    if getattr(args, "executor", None):
        settings["kind"] = args.executor
    for name in getattr(args, "_executor_fields", []):
        value = getattr(args, f"ex_{name}", None)
        if value is not None:
            settings[name] = value
    if not settings or settings.get("kind", "local") == "local":
        if any(k != "kind" for k in settings) and base is None:
            flags = ", ".join("--" + k.replace("_", "-") for k in settings if k != "kind")
            raise UserError(f"{flags} need --executor ray or --executor slurm")
        return None
    from pipeline.executors import ExecutorConfig

    return build_executor(from_dict(ExecutorConfig, settings, "executor"))
