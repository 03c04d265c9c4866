"""Data cards from run manifests (publishing them with the data is pipeline/publish.py).

    distill card runs/quickstart                                   # -> runs/quickstart/card/README.md

The card is a Hugging Face dataset card: YAML metadata that ``huggingface_hub.DatasetCard`` accepts (license,
language, task_categories, size_categories, tags, and one ``configs`` entry per export pointing at its Parquet
files), then a body rendered from ``data_cards/dataset_card.md.jinja``. Everything in it comes from the
stages' manifests (and, for pass rates per task, the verify stage's rows): teacher and critic identities,
sampling, prompt templates with their hashes, counts per stage and reason, dedup and decontamination,
tokens, lineage, and the limitations that follow from how the run was made.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa

from pipeline import store, templates
from pipeline.errors import UserError
from pipeline.licenses import LICENSES, infer_license
from pipeline.report import last_stage, pass_counts, stage_manifests

CARD_DIR = "card"
TEMPLATE = "dataset_card.md.jinja"
EXPORT_FORMATS = ("sft", "dpo", "kd")
FORMAT_HELP = {
    "sft": "verified teacher answers as chat `messages` (TRL SFTTrainer, conversational)",
    "dpo": "`prompt`, `chosen` (a verified answer), `rejected` (a failing answer to the same prompt) (TRL DPOTrainer)",
    "kd": "`prompt`, `completion` and the teacher's top-k token logprobs per completion token (logit distillation)",
}
# --------------------------------------------------------------------------- what the run holds


def data_cards_dir() -> Path:
    return Path(
        os.environ.get("DISTILL_DATA_CARDS_DIR") or Path(__file__).resolve().parent.parent / "data_cards"
    )


def export_configs(
    run_dir: Path, stages: list[tuple[Path, dict]], include_rejected: bool = False
) -> list[dict]:
    """One entry per dataset config: name, source folder, rows, columns, and its path pattern in the repo."""
    configs = []
    export = last_stage(stages, "export")
    if export is not None:
        folder, manifest = export
        formats = manifest.get("formats") or {f: f"data/{f}" for f in EXPORT_FORMATS}
        # Manifests sort their keys; keep the TRL order, so sft (the default config) comes first.
        order = {f: i for i, f in enumerate(EXPORT_FORMATS)}
        for fmt, rel in sorted(formats.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
            source = folder / rel
            if not source.is_dir():
                raise UserError(f"{source} is missing; rerun `distill export` for {run_dir} (--overwrite)")
            configs.append(_config(fmt, source, FORMAT_HELP.get(fmt, fmt)))
    if include_rejected:
        for folder, manifest in stages:
            if (folder / "rejected").is_dir() and manifest.get("rejected_by_reason"):
                name = f"rejected_{manifest['stage'].replace('-', '_')}"
                configs.append(
                    _config(
                        name,
                        folder / "rejected",
                        f"rows the {manifest['stage']} stage rejected, with `reject_reason`",
                    )
                )
    return configs


def _config(name: str, source: Path, description: str) -> dict:
    schema = _schema(source)
    columns = [
        f.name for f in schema if not store.SECRET_KEY.search(f.name)
    ]  # an `api_key` column stays home
    return {
        "name": name,
        "source": source,
        "rows": _num_rows(source),
        "columns": columns,
        "pattern": f"{name}/train-*.parquet",
        "description": description,
    }


def _schema(folder: Path) -> pa.Schema:
    first = sorted(folder.glob("data-*.arrow"))
    if not first:
        raise UserError(f"{folder} holds no Arrow data; rerun the stage that writes it")
    with pa.memory_map(str(first[0])) as source:
        return pa.ipc.open_stream(source).schema


def _num_rows(folder: Path) -> int:
    return store.load_table(folder).num_rows  # memory-mapped: counting does not read the rows


def size_category(n: int) -> str:
    """The Hub's size category of a row count: n<1K, 1K<n<10K, ..., n>1T."""
    names = ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B"]
    names += ["1B<n<10B", "10B<n<100B", "100B<n<1T"]
    for power, name in enumerate(names, start=3):
        if n < 10**power:
            return name
    return "n>1T"


# --------------------------------------------------------------------------- the card


def _identity(entry) -> dict:
    """A model entry of a manifest -> engine, name, and what pins it (hub id@revision or weights sha256)."""
    if not isinstance(entry, dict):
        return {"engine": "", "pin": str(entry)}
    ident = entry.get("identity") or {}
    if "hub_id" in ident:
        pin = f"{ident['hub_id']}@{ident.get('revision') or 'unresolved'}"
    elif "sha256" in ident:
        pin = f"weights sha256 {ident['sha256']}"
    elif entry.get("model"):
        pin = f"served model {entry['model']} (no weights hash: behind an OpenAI-compatible server)"
    else:
        pin = "unrecorded"
    return {
        "engine": entry.get("engine", ""),
        "pin": pin,
        "options": _public_options(entry.get("options") or {}),
    }


def _public_options(options: dict) -> dict:
    # Server addresses and transport settings say where the run happened, not what the data is.
    return {k: v for k, v in store.redact(options).items() if k not in ("base_url", "api_key_env")}


def _rel(path: str, run_dir: Path) -> str:
    """Input paths as the card shows them: relative to the run, else just the file or folder name."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(run_dir.resolve()))
    except (ValueError, OSError):
        return p.name


def teacher_yield(by_stage: dict) -> list[dict]:
    """Per teacher: samples, tokens, verified rate and rows kept (generate's and verify's manifests)."""
    tokens = (by_stage.get("generate") or {}).get("tokens_by_teacher") or {}
    verified = (by_stage.get("verify") or {}).get("by_teacher") or {}
    out = []
    for name in dict.fromkeys([*tokens, *verified]):
        t, v = tokens.get(name, {}), verified.get(name, {})
        rate = v.get("verified_rate")
        out.append(
            {
                "name": name,
                "samples": t.get("samples", v.get("samples")),
                "tokens": t.get("completion_tokens"),
                "verified": f"{rate:.1%}" if rate is not None else "",
                "kept": v.get("kept"),
            }
        )
    return out


def card_context(
    run_dir: Path, stages: list[tuple[Path, dict]], configs: list[dict], repo_id: str | None
) -> dict:
    """Everything the template shows, from the manifests."""
    by_stage = {m["stage"]: m for _, m in stages}
    models = []
    for folder, m in stages:
        for label, entry in (m.get("models") or {}).items():
            role = label if label in ("critic", "scorer") else "teacher"  # scorer: export's keep rule
            models.append({"role": role, "name": label, "stage": folder.name, **_identity(entry)})
    seen_templates: dict[str, str] = {}
    for _, m in stages:
        seen_templates.update((m.get("fingerprint_parts") or {}).get("templates") or {})
    prompt_templates = []
    for name, digest in sorted(seen_templates.items()):
        current = templates.template_hash(name) if templates.exists(name) else None
        prompt_templates.append(
            {
                "name": name,
                "sha256": digest,
                "text": templates.template_text(name).strip() if current == digest else None,
            }
        )
    verify = by_stage.get("verify")
    verify_folder = last_stage(stages, "verify")
    verdicts = (verify or {}).get("stats", {}).get("verdicts", {})
    decided = verdicts.get("passed", 0) + verdicts.get("failed", 0)
    per_task = []
    if verify_folder is not None:
        for task, c in pass_counts(verify_folder[0]).items():
            c = {"passed": 0, "failed": 0, "undecided": 0, **c}
            d = c["passed"] + c["failed"]
            per_task.append({"task": task, **c, "rate": c["passed"] / d if d else None})
    vconfig = (verify or {}).get("config") or {}
    stats = (verify or {}).get("stats") or {}
    reasons = (verify or {}).get("rejected_by_reason") or {}
    prompts_m = by_stage.get("prompts") or {}
    generate = by_stage.get("generate") or {}
    export = by_stage.get("export") or {}
    tokens = {
        "generated_prompt": sum(
            (m.get("tokens") or {}).get("prompt", 0) for _, m in stages if m["stage"] == "generate"
        ),
        "generated_completion": sum(
            (m.get("tokens") or {}).get("completion", 0) for _, m in stages if m["stage"] == "generate"
        ),
        "exported_completion": (export.get("tokens") or {}).get("completion", 0),
    }
    lic, license_note = infer_license(stages)
    return {
        "run": run_dir.name,
        "repo_id": repo_id or f"<org>/{run_dir.name}",
        "configs": configs,
        "default_config": configs[0]["name"] if configs else None,
        "source": {
            k: _rel(v, run_dir) if k == "path" else v
            for k, v in ((prompts_m.get("config") or {}).get("source") or {}).items()
            if v is not None
        },
        "models": models,
        "teachers": [m for m in models if m["role"] == "teacher"],
        "teacher_yield": teacher_yield(by_stage),
        "sampling": generate.get("sampling") or {},
        "prompt_templates": prompt_templates,
        "verifiers": vconfig.get("verifiers") or [],
        "select": vconfig.get("select"),
        "verdicts": verdicts,
        "pass_rate": verdicts.get("passed", 0) / decided if decided else None,
        "prompts_with_a_pass": stats.get("prompts_with_a_pass"),
        "prompts_verified": stats.get("prompts"),
        "per_task": per_task,
        "dedup": {
            "config": vconfig.get("dedup") or {},
            "duplicate_prompt": (prompts_m.get("rejected_by_reason") or {}).get("duplicate_prompt", 0),
            "exact_duplicate": reasons.get("exact_duplicate", 0),
            "near_duplicate": reasons.get("near_duplicate", 0),
            "near_duplicate_prompt": reasons.get("near_duplicate_prompt", 0),
        },
        "decontamination": {
            "config": vconfig.get("decontaminate") or {},
            "against": [_rel(a, run_dir) for a in (vconfig.get("decontaminate") or {}).get("against") or []],
            "contaminated": reasons.get("contaminated", 0),
        },
        "stages": [
            {
                "folder": folder.name,
                "stage": m["stage"],
                "version": m.get("version"),
                "fingerprint": m.get("fingerprint"),
                "rows_in": m.get("rows_in"),
                "rows_out": m.get("rows_out"),
                "rejected": dict(sorted((m.get("rejected_by_reason") or {}).items())),
                "skipped": dict(sorted((m.get("skipped") or {}).items())),
                "tokens": m.get("tokens") or {},
                "wall_s": m.get("wall_s"),
                "inputs": [
                    {
                        "path": _rel(i.get("path", i.get("name", "")), run_dir),
                        "fingerprint": i.get("fingerprint"),
                    }
                    for i in m.get("inputs") or []
                ],
                "finished_at": m.get("finished_at"),
                "host": {k: v for k, v in (m.get("host") or {}).items() if k not in ("platform",)},
            }
            for folder, m in stages
        ],
        "tokens": tokens,
        "export": export,
        "license": lic,
        "license_note": license_note,
        "limitations": limitations(stages, lic),
    }


def limitations(stages: list[tuple[Path, dict]], lic: str) -> list[str]:
    """Known limitations that follow from how this run was made."""
    by_stage = {m["stage"]: m for _, m in stages}
    out = [
        "Synthetic data: every answer was written by the teacher model(s) above and inherits their errors, "
        "biases and style; a verifier pass is not proof of correctness."
    ]
    verify = by_stage.get("verify")
    if verify is None:
        out.append("No verify stage ran: the answers are unchecked.")
    else:
        names = (verify.get("config") or {}).get("verifiers") or []
        if "math" in names:
            out.append(
                "The math verifier compares the final number of an answer with the reference; "
                "the reasoning before it is not checked."
            )
        if "critic" in names:
            out.append(
                "The critic verifier is an LLM judge: its scores are opinions of the critic model above."
            )
        if "code" in names:
            out.append(
                "The code verifier runs the task's tests; passing tests do not prove a program correct."
            )
        against = ((verify.get("config") or {}).get("decontaminate") or {}).get("against") or []
        if not against:
            out.append("No decontamination ran: prompts or answers may overlap evaluation sets.")
        else:
            out.append(
                "Decontamination is n-gram overlap against the sets listed above only; "
                "paraphrases of evaluation items are not detected."
            )
    export = by_stage.get("export")
    if export and (export.get("config") or {}).get("drop_truncated", True):
        out.append("Answers cut off by max_tokens were dropped, so long answers are under-represented.")
    if lic == "other":
        out.append(
            "The license could not be inferred from the teachers and the source; check their terms before reuse."
        )
    out.append("Counts and figures describe this run only; see the lineage fingerprints to reproduce it.")
    return out


def card_metadata(ctx: dict, language: list[str], lic: str) -> dict:
    from huggingface_hub import DatasetCardData

    tasks = sorted(
        {t["task"] for t in ctx["per_task"]}
        | ({ctx["source"]["task"]} if ctx["source"].get("task") else set())
    )
    data = DatasetCardData(
        license=lic,
        language=language,
        task_categories=["text-generation"],
        size_categories=[size_category(max([c["rows"] for c in ctx["configs"]] + [0]))],
        tags=["synthetic", "distillation", "distill-pipeline"]
        + [re.sub(r"[^a-z0-9.]+", "-", t.lower()).strip("-") for t in tasks if t]
        + [c["name"] for c in ctx["configs"] if c["name"] in EXPORT_FORMATS],
        pretty_name=f"{ctx['run']} (distilled)",
        configs=[
            {
                "config_name": c["name"],
                "data_files": [{"split": "train", "path": c["pattern"]}],
                **({"default": True} if c["name"] == ctx["default_config"] else {}),
            }
            for c in ctx["configs"]
        ]
        or None,  # no export yet: no configs key at all
    )
    return data.to_dict()


def render_card(
    run_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    language: list[str] | None = None,
    include_rejected: bool = False,
) -> str:
    """The card's text (README.md), from the run's manifests and the template in data_cards/."""
    import jinja2
    import yaml

    run_dir = Path(run_dir)
    stages = stage_manifests(run_dir)
    configs = export_configs(run_dir, stages, include_rejected)
    ctx = card_context(run_dir, stages, configs, repo_id)
    if license is not None:
        ctx["license"], ctx["license_note"] = license, "set by the publisher"
        ctx["limitations"] = limitations(stages, license)
    metadata = card_metadata(ctx, language or ["en"], ctx["license"])
    check_metadata(metadata)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_cards_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    env.filters["yaml"] = lambda v: yaml.safe_dump(v, sort_keys=False, allow_unicode=True).strip()
    env.filters["code"] = lambda v: f"`{v}`"
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{v:.1%}"
    try:
        body = env.get_template(TEMPLATE).render(**ctx)
    except jinja2.TemplateNotFound:
        raise UserError(
            f"card template {data_cards_dir() / TEMPLATE} is missing; restore data_cards/"
        ) from None
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n{body.strip()}\n"


def check_metadata(metadata: dict, folder: Path | None = None) -> None:
    """Check card metadata the way the Hub would, offline: known values, and configs that datasets accepts.

    With `folder`, every config's data_files pattern must also match Parquet files in it.
    """
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    resources = Path(__import__("datasets").__file__).parent / "utils" / "resources"
    sizes = json.loads((resources / "size_categories.json").read_text())
    languages = json.loads((resources / "languages.json").read_text())
    lic = metadata.get("license")
    if lic not in LICENSES:
        raise UserError(
            f"card: license {lic!r} is not a Hub license id; use e.g. apache-2.0, mit, cc-by-4.0 or other"
        )
    bad = [code for code in metadata.get("language") or [] if code not in languages]
    if bad or not metadata.get("language"):
        raise UserError(f"card: language {bad or '[]'} is not an ISO 639 code; use e.g. en")
    bad = [s for s in metadata.get("size_categories") or [] if s not in sizes]
    if bad or not metadata.get("size_categories"):
        raise UserError(f"card: size_categories {bad} are not Hub size categories ({', '.join(sizes)})")
    for key in ("task_categories", "tags"):
        if not metadata.get(key) or not all(isinstance(v, str) and v for v in metadata[key]):
            raise UserError(f"card: {key} must be a non-empty list of strings")
    try:
        configs = MetadataConfigs.from_dataset_card_data(DatasetCardData(**metadata))
        configs.get_default_config_name()
    except ValueError as e:
        raise UserError(
            f"card: configs are invalid ({str(e).strip().splitlines()[0]}); fix the export layout"
        ) from None
    if folder is not None:
        for name, cfg in configs.items():
            for entry in cfg["data_files"]:
                if not list(folder.glob(entry["path"])):
                    raise UserError(
                        f"card: config {name} points at {entry['path']}, which matches no file in {folder}"
                    )


def write_card(
    run_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    language: list[str] | None = None,
) -> Path:
    """`distill card RUN_DIR`: write runs/<run>/card/README.md and return its path.

    The card describes the repo `distill publish` uploads (its configs point at `<config>/train-*.parquet`).
    """
    from huggingface_hub import DatasetCard

    run_dir = Path(run_dir)
    text = render_card(run_dir, repo_id=repo_id, license=license, language=language)
    path = run_dir / CARD_DIR / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    DatasetCard(text).save(path)
    return path
