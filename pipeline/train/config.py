"""Training YAML -> a TRL config plus the model, the dataset and the LoRA config.

A training YAML holds the fields of the mode's TRL config class (``SFTConfig``, ``DPOConfig``,
``GKDConfig``, ``GOLDConfig`` for ``gold`` and ``uld``, or our ``KDConfig``), plus these keys of ours:

- ``model``: a model spec (see ``pipeline.models``), e.g. ``smollm2-135m-instruct`` or a local folder;
- ``recipe`` (instead of ``model``): train that recipe's student, i.e. the pruned copy when its
  ``student.prune_layers`` is set (pruned once into ``<run_dir>/student-pruned``, see ``pipeline.student``);
  ``run_dir`` names the run folder (default ``runs/<recipe run name>``);
- ``dataset``: an export stage folder (``runs/x/NN-export``), its ``data/<format>`` subfolder, or any folder
  written with ``datasets.save_to_disk``;
- ``peft``: ``peft.LoraConfig`` fields; omit it (or set it to null) for full fine-tuning;
- ``merge``: also save the adapter merged into a full model under ``<output_dir>/merged``;
- ``teacher_scoring`` (``gold`` only): ``hf`` (default, an HF forward of the teacher per batch) or ``vllm``
  (a vLLM engine scores the student's tokens: top-k prompt logprobs, ``pipeline/train/teacher_scoring.py``).

For ``gkd`` and ``gold`` the teacher is ``teacher_model_name_or_path``, given as a model spec; for ``uld`` the
teacher's tokenizer is ``teacher_tokenizer_name_or_path`` (default: the ``teacher`` of the kd/ rows).
Unknown keys and wrongly typed values are ``UserError``s that name the key. Logits over two vocabularies
are never compared id by id: ``kd`` and ``gkd`` refuse a teacher with another tokenizer and name the
cross-tokenizer mode to use instead (``uld`` offline, ``gold`` on-policy).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError

OUR_KEYS = ("model", "recipe", "run_dir", "dataset", "peft", "adapter", "merge", "teacher_scoring")
MODES = ("sft", "dpo", "gkd", "kd", "gold", "uld")
# The export subfolder each mode reads, and the columns it needs (any one of the alternatives).
EXPORT_FORMAT = {"sft": "sft", "dpo": "dpo", "gkd": "sft", "kd": "kd", "gold": "sft", "uld": "kd"}
REQUIRED_COLUMNS = {
    "sft": [("messages",), ("prompt", "completion")],
    "dpo": [("prompt", "chosen", "rejected")],
    "gkd": [("messages",)],
    "kd": [("prompt", "completion", "topk_ids", "topk_logprobs")],
    "gold": [("messages",)],
    "uld": [("prompt", "completion", "topk_ids", "topk_logprobs")],
}
# GOLDConfig fields that only mean something on-policy, with their inert values: `uld` trains on the stored
# teacher top-k, so it refuses any other value.
ON_POLICY_FIELDS = {"lmbda": 0, "use_vllm": False, "teacher_model_name_or_path": None, "seq_kd": False}
SECRET_HINTS = ("hub_token", "hf_token", "api_key", "secret", "password")


@dataclass
class TrainJob:
    """Everything one ``distill train`` run needs, validated."""

    mode: str
    args: Any  # the TRL config instance (a transformers.TrainingArguments subclass)
    model: str
    dataset_dir: Path
    peft: Any | None  # peft.LoraConfig or None (full fine-tuning)
    merge: bool
    raw: dict  # the YAML after overrides, secrets redacted: goes into the manifest
    adapter: str | None = None  # a LoRA adapter folder to keep training (instead of a new one from `peft`)
    teacher_scoring: str = "hf"  # gold: the teacher scores with an HF forward, or with vLLM (prompt logprobs)


def config_class(mode: str):
    """The TRL config class of a training mode (imported lazily: trl is heavy)."""
    if mode == "sft":
        from trl import SFTConfig

        return SFTConfig
    if mode == "dpo":
        from trl import DPOConfig

        return DPOConfig
    if mode == "gkd":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKD lives in trl.experimental; we pin trl
        from trl.experimental.gkd import GKDConfig

        return GKDConfig
    if mode == "kd":
        from pipeline.train.kd import KDConfig

        return KDConfig
    if mode in ("gold", "uld"):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GOLD lives in trl.experimental; we pin trl
        from trl.experimental.gold import GOLDConfig

        return GOLDConfig
    raise UserError(f"unknown training mode '{mode}'; use one of: {', '.join(MODES)}")


def load_job(mode: str, config_path: str | Path | None, overrides: dict | None = None) -> TrainJob:
    """Read and validate a training YAML; ``overrides`` (e.g. from the CLI) win over the file."""
    cls = config_class(mode)
    raw: dict = {}
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise UserError(
                f"training config {path} does not exist; see scripts/configs/{mode}.yaml for an example"
            )
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(
                f"training config {path} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax"
            ) from None
        if not isinstance(raw, dict):
            raise UserError(f"training config {path} must be a mapping of fields, not {type(raw).__name__}")
    raw = {**raw, **(overrides or {})}

    model = raw.pop("model", None)
    recipe = raw.pop("recipe", None)
    run_dir = raw.pop("run_dir", None)
    if recipe is not None:
        if model is not None:
            raise UserError(
                "training config has both `model` and `recipe`; keep one (`recipe` trains the recipe's student)"
            )
        from pipeline.recipe import read_recipe
        from pipeline.student import student_model

        model = student_model(read_recipe(recipe), run_dir)
    elif run_dir is not None:
        raise UserError("`run_dir` in a training config goes with `recipe`; add `recipe: <recipe.yaml>`")
    dataset = raw.pop("dataset", None)
    peft_fields = raw.pop("peft", None)
    merge = raw.pop("merge", False)
    adapter = raw.pop("adapter", None)
    teacher_scoring = raw.pop("teacher_scoring", "hf")
    if teacher_scoring not in ("hf", "vllm") or (teacher_scoring == "vllm" and mode != "gold"):
        raise UserError(
            f"`teacher_scoring: {teacher_scoring}` is not valid for {mode}; use hf or vllm, and vllm only with "
            "`distill train gold` (the on-policy mode whose teacher scores the student's tokens)"
        )
    if adapter is not None and not (Path(str(adapter)) / "adapter_config.json").is_file():
        raise UserError(
            f"`adapter: {adapter}` has no adapter_config.json; pass a LoRA adapter folder to keep training"
        )
    if not isinstance(model, str) or not model:
        raise UserError(
            "training config needs `model: <spec>` (e.g. smollm2-135m-instruct) or `recipe: <recipe.yaml>`"
        )
    if not isinstance(dataset, str) or not dataset:
        raise UserError(
            "training config needs `dataset: <export folder>`, e.g. `dataset: runs/quickstart/04-export`"
        )
    if not isinstance(merge, bool):
        raise UserError(f"`merge` must be true or false, got {merge!r}")

    args_fields = _check_fields(cls, raw, where=cls.__name__)
    args_fields = {**cpu_safe_defaults(mode), **args_fields}
    if (
        args_fields.get("packing") or args_fields.get("padding_free")
    ) and "include_num_input_tokens_seen" not in raw:
        # Flattened batches have no attention mask and no padding; "non_padding" would then drop every
        # token equal to the pad id (often the end-of-turn token), so count them all.
        args_fields["include_num_input_tokens_seen"] = "all"
    if mode in ("gkd", "gold"):
        _check_teacher(mode, args_fields, raw, model)
    dataset_dir = resolve_dataset(dataset, mode)
    if mode == "kd":
        _check_topk_vocabulary(dataset_dir, model)
    elif mode == "uld":
        _uld_fields(args_fields, raw, dataset_dir)
    try:
        args = cls(**args_fields)
    except (ValueError, TypeError) as e:
        raise UserError(f"invalid {cls.__name__} settings: {str(e).splitlines()[0]}") from None

    peft_config = None
    if peft_fields is not None:
        from peft import LoraConfig

        if not isinstance(peft_fields, dict):
            raise UserError(
                "`peft` must be a mapping of LoraConfig fields, e.g. `peft: {r: 8, target_modules: all-linear}`"
            )
        peft_fields = _check_fields(LoraConfig, peft_fields, where="peft (LoraConfig)")
        peft_fields.setdefault("task_type", "CAUSAL_LM")
        try:
            peft_config = LoraConfig(**peft_fields)
        except (ValueError, TypeError) as e:
            raise UserError(f"invalid peft settings: {str(e).splitlines()[0]}") from None

    shown = {"model": model, "dataset": dataset, "peft": peft_fields, "merge": merge, **raw}
    if adapter is not None:
        shown["adapter"] = str(adapter)
    if recipe is not None:
        shown.update(recipe=str(recipe), run_dir=run_dir)
    if teacher_scoring != "hf":
        shown["teacher_scoring"] = teacher_scoring
    return TrainJob(
        mode, args, model, dataset_dir, peft_config, merge, redact(shown), adapter, teacher_scoring
    )


def _check_teacher(mode: str, args_fields: dict, raw: dict, model: str) -> None:
    """Resolve the teacher spec to a folder; refuse to compare logits over two vocabularies id by id."""
    spec = args_fields.get("teacher_model_name_or_path")
    if not spec:
        if mode == "gold":
            raise UserError(
                "gold needs a teacher: set `teacher_model_name_or_path: <model spec>` in the config"
            )
        return
    from pipeline.models import resolve, tokenizer_fingerprint

    teacher = resolve(spec).path
    args_fields["teacher_model_name_or_path"] = teacher
    theirs, mine = tokenizer_fingerprint(teacher), tokenizer_fingerprint(resolve(model).path)
    differ = bool(theirs and mine and theirs != mine)
    if mode == "gkd" and differ:
        # TRL's GKD compares the two models' logits position by position, one vocabulary.
        raise UserError(
            f"gkd: the teacher {spec} has a different tokenizer than the student {model}; GKD needs one "
            "vocabulary: use `distill train gold` (on-policy, aligned across tokenizers), or `distill train sft` "
            "on the teacher's verified answers"
        )
    if mode == "gold":
        if "use_uld_loss" not in raw:
            args_fields["use_uld_loss"] = differ
        elif differ and not args_fields["use_uld_loss"]:
            raise UserError(
                f"gold: the teacher {spec} has a different tokenizer than the student {model}, and "
                "`use_uld_loss: false` compares their logits id by id; set `use_uld_loss: true` (or drop the key)"
            )
        if args_fields.get("use_uld_loss"):
            tok = args_fields.get("teacher_tokenizer_name_or_path")
            args_fields["teacher_tokenizer_name_or_path"] = resolve(tok).path if tok else teacher


def _topk_tokenizers(dataset_dir: Path) -> set[str]:
    """The vocabulary fingerprints the generate stage recorded for the top-k ids of a kd/ dataset."""
    if "topk_tokenizer" not in _columns(dataset_dir):
        return set()
    from datasets import load_from_disk

    return {t for t in load_from_disk(str(dataset_dir))["topk_tokenizer"] if t}


def _check_topk_vocabulary(dataset_dir: Path, model: str) -> None:
    """Same-tokenizer KD indexes the student's logits with the teacher's ids: refuse another vocabulary."""
    from pipeline.models import resolve, tokenizer_fingerprint

    theirs = _topk_tokenizers(dataset_dir)
    if not theirs:
        return
    mine = tokenizer_fingerprint(resolve(model).path)
    if mine and theirs - {mine}:
        raise UserError(
            f"kd: the teacher's top-k ids in {dataset_dir} index another vocabulary than the student {model}'s; "
            "use `distill train uld` (logit KD aligned across tokenizers), or `distill train sft`"
        )


def _uld_fields(args_fields: dict, raw: dict, dataset_dir: Path) -> None:
    """``uld`` is GOLD's ULD loss on stored top-k: no on-policy fields; the teacher tokenizer matches the rows."""
    for key, inert in ON_POLICY_FIELDS.items():
        if key in raw and raw[key] != inert:
            raise UserError(
                f"uld trains offline on the teacher's stored top-k, so `{key}` has no effect; drop it, or use "
                "`distill train gold` for on-policy distillation"
            )
    args_fields.update(use_uld_loss=True, lmbda=0.0)
    max_length = args_fields.get("max_length", 1024)
    if "max_completion_length" not in raw and max_length is not None:
        # GOLDConfig checks max_completion_length < max_length; offline it only bounds nothing, keep it valid.
        args_fields["max_completion_length"] = min(128, max(1, max_length - 1))
    from pipeline.models import resolve, tokenizer_fingerprint

    spec = args_fields.get("teacher_tokenizer_name_or_path")
    if not spec:
        from datasets import load_from_disk

        rows = load_from_disk(str(dataset_dir))
        teachers = sorted({t for t in rows["teacher"] if t}) if "teacher" in rows.column_names else []
        if len(teachers) != 1:
            raise UserError(
                "uld needs the tokenizer of the teacher that wrote the top-k: set "
                "`teacher_tokenizer_name_or_path: <model spec>` (e.g. qwen2.5-coder-0.5b-instruct)"
            )
        spec = teachers[0]
    try:
        path = resolve(spec).path
    except UserError as e:
        raise UserError(
            f"uld: cannot load the teacher tokenizer `{spec}` ({e}); set `teacher_tokenizer_name_or_path: <model spec>`"
        ) from None
    theirs, mine = _topk_tokenizers(dataset_dir), tokenizer_fingerprint(path)
    if mine and theirs and theirs != {mine}:
        raise UserError(
            f"uld: the top-k ids in {dataset_dir} come from another tokenizer than {spec}'s; set "
            "`teacher_tokenizer_name_or_path` to the teacher that generated them"
        )
    args_fields["teacher_tokenizer_name_or_path"] = path


def cpu_safe_defaults(mode: str) -> dict:
    """Defaults that differ from TRL's: float32 on CPU (no native bf16 here), bf16 on a GPU; no trackers."""
    import torch

    cuda = torch.cuda.is_available()
    defaults = {
        "report_to": [],
        "dataloader_num_workers": 0,
        "output_dir": f"runs/train-{mode}",
        "include_num_input_tokens_seen": "non_padding",
    }
    if not cuda:
        defaults.update(use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False)
    else:
        defaults.update(bf16=True)
    return defaults


def _check_fields(cls, values: dict, where: str) -> dict:
    """Reject unknown keys (suggesting the closest) and plainly wrong scalar types."""
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - forward refs we cannot resolve: skip type checks
        hints = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known) + list(OUR_KEYS), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; see the fields of {where}"
            raise UserError(f"unknown key `{key}` in {where}{hint}")
        allowed = _scalar_types(hints.get(key))
        if allowed and value is not None and not _matches(value, allowed):
            names = "/".join(t.__name__ for t in allowed)
            raise UserError(f"`{key}` in {where} must be {names}, got {value!r}")
    return dict(values)


def _scalar_types(hint) -> tuple[type, ...]:
    """The scalar types a field accepts, or () when the hint is not a plain scalar (then we do not check)."""
    if hint is None:
        return ()
    args = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    args = tuple(a for a in args if a is not type(None))
    if all(a in (bool, int, float, str) for a in args):
        return args
    return ()


def _matches(value, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    return isinstance(value, allowed)


def resolve_dataset(dataset: str, mode: str) -> Path:
    """Find the Arrow dataset for ``mode`` under an export folder, and check its columns."""
    fmt = EXPORT_FORMAT[mode]
    root = Path(dataset)
    if not root.exists():
        raise UserError(
            f"dataset folder {root} does not exist; run the export stage first (distill export ...)"
        )
    for candidate in (root / "data" / fmt, root / fmt, root):
        if (candidate / "dataset_info.json").is_file() or (candidate / "state.json").is_file():
            break
    else:
        raise UserError(
            f"no `{fmt}` dataset under {root}; point `dataset` at an export stage folder with data/{fmt}/ "
            f"(export with formats: [{fmt}])"
        )
    columns = _columns(candidate)
    if not any(all(c in columns for c in alt) for alt in REQUIRED_COLUMNS[mode]):
        want = " or ".join("+".join(alt) for alt in REQUIRED_COLUMNS[mode])
        raise UserError(
            f"dataset {candidate} has columns {sorted(columns)} but `{mode}` needs {want}; "
            f"use the export stage's {fmt}/ folder"
        )
    return candidate


def _columns(folder: Path) -> set[str]:
    info = folder / "dataset_info.json"
    try:
        return set(json.loads(info.read_text()).get("features", {}))
    except (OSError, ValueError):
        from datasets import load_from_disk

        return set(load_from_disk(str(folder)).column_names)


def dataset_fingerprint(folder: Path) -> str:
    """The export stage's manifest fingerprint when there is one, else a sha256 of the Arrow files."""
    for parent in (folder, *list(folder.parents)[:3]):
        manifest = parent / "manifest.json"
        if manifest.is_file():
            try:
                fp = json.loads(manifest.read_text()).get("fingerprint")
            except ValueError:
                fp = None
            if fp:
                return f"{fp}:{folder.relative_to(parent)}" if folder != parent else fp
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.arrow")):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def redact(value):
    """Replace values of secret-looking keys (hub tokens, API keys) with '***'."""
    if isinstance(value, dict):
        return {
            k: "***"
            if any(s in str(k).lower() for s in SECRET_HINTS) and isinstance(v, str) and v
            else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
