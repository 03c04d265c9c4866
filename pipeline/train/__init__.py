"""Train the student with TRL from a YAML config: ``distill train sft|dpo|gkd|kd|gold|uld CONFIG.yaml``.

Modes (each a config/trainer pair, built in its own module):
- ``sft``: sequence-level KD, i.e. SFT on verified teacher outputs (``sft/`` export);
- ``dpo``: preference pairs, chosen = a verified answer, rejected = a failing one (``dpo/`` export);
- ``gkd``: on-policy KD with TRL's GKD trainer and a teacher model (same tokenizer as the student);
- ``kd``: offline top-k logit KD from the teacher's stored logprobs (``kd/`` export, same tokenizer);
- ``gold``: on-policy distillation with TRL's GOLD trainer, also from a teacher with another tokenizer (ULD loss);
- ``uld``: offline logit KD across tokenizers from the stored top-k, with TRL's ULD loss (``kd/`` export).

Output, under the config's ``output_dir``::

    adapter/         LoRA adapter + tokenizer (``model/`` instead for full fine-tuning)
    merged/          the adapter merged into a full model, when ``merge: true``
    manifest.json    config, model identity, dataset fingerprint, final loss, tokens/s, wall time

    distill train sft scripts/configs/sft.yaml --max-steps 10     # or: python -m pipeline.cli train ...
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from pipeline.adapters import merge_adapter
from pipeline.errors import UserError
from pipeline.train.config import MODES, TrainJob, dataset_fingerprint, load_job

__all__ = ["run_training", "train", "load_job", "load_model_and_tokenizer", "MODES"]


def load_model_and_tokenizer(spec: str, use_cpu: bool = True):
    """Load a causal LM (float32 on CPU, bf16 on a GPU) and its tokenizer, with a pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import resolve

    resolved = resolve(spec)
    dtype = torch.float32 if use_cpu or not torch.cuda.is_available() else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise UserError(
            f"model {spec} has no chat template; use an instruction-tuned model or add chat_template_path"
        )
    return resolved, model, tokenizer


def build_trainer(job: TrainJob, model, tokenizer, dataset):
    """The TRL trainer for ``job.mode``."""
    if job.mode == "sft":
        from pipeline.train.sft import build_trainer as build
    elif job.mode == "dpo":
        from pipeline.train.dpo import build_trainer as build
    elif job.mode == "gkd":
        from pipeline.train.gkd import build_trainer as build
    elif job.mode == "gold":
        from pipeline.train.gold import build_trainer as build
    elif job.mode == "uld":
        from pipeline.train.uld import build_trainer as build
    else:
        from pipeline.train.kd import build_trainer as build
    return build(job, model, tokenizer, dataset)


def run_training(mode: str, config_path: str | None, overrides: dict | None = None) -> dict:
    """Train per the YAML at ``config_path`` (``overrides`` win), save the outputs, return the manifest."""
    if mode not in MODES:
        raise UserError(f"unknown training mode '{mode}'; use one of: {', '.join(MODES)}")
    manifest, _ = train(load_job(mode, config_path, overrides))
    return manifest


def train(job: TrainJob):
    """Run one validated job; returns ``(manifest, trainer)`` (the trainer lets tests inspect the weights)."""
    mode = job.mode
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()

    from datasets import load_from_disk

    dataset = load_from_disk(str(job.dataset_dir))
    if len(dataset) == 0:
        raise UserError(f"dataset {job.dataset_dir} is empty; check the verify stage kept some rows")
    resolved, model, tokenizer = load_model_and_tokenizer(job.model, use_cpu=job.args.use_cpu)
    if job.adapter:  # keep training an adapter (e.g. the loop's best student) rather than a fresh one
        from dataclasses import replace

        from peft import PeftModel

        model = PeftModel.from_pretrained(model, job.adapter, is_trainable=True)
        job = replace(job, peft=None)
    trainer = build_trainer(job, model, tokenizer, dataset)

    t_train = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - t_train
    final_loss = _final_loss(trainer, result)
    if not math.isfinite(final_loss):
        print(f"[distill] warning: final training loss is {final_loss}", file=sys.stderr)

    out = Path(job.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trained = trainer.model
    is_peft = job.peft is not None or job.adapter is not None
    weights_dir = out / ("adapter" if is_peft else "model")
    trained.save_pretrained(weights_dir)
    tokenizer.save_pretrained(weights_dir)
    outputs = {"adapter" if is_peft else "model": str(weights_dir)}
    if job.merge and is_peft:
        outputs["merged"] = str(merge_adapter(resolved.path, weights_dir, out / "merged"))

    tokens = int(trainer.state.num_input_tokens_seen or 0)
    manifest = {
        "stage": "train",
        "mode": mode,
        "config": job.raw,
        "trl_config_class": type(job.args).__name__,
        "model": resolved.identity,
        "dataset": {
            "path": str(job.dataset_dir),
            "fingerprint": dataset_fingerprint(job.dataset_dir),
            "rows": len(dataset),
        },
        "steps": int(trainer.state.global_step),
        "final_loss": final_loss,
        "train_tokens": tokens,
        "tokens_per_s": round(tokens / train_s, 2) if train_s > 0 else None,
        "train_s": round(train_s, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "output_dir": str(out),
        "outputs": outputs,
        "host": _host(),
    }
    manifest.update(getattr(trainer, "extra_manifest", {}))
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, out / "manifest.json")
    return manifest, trainer


def _final_loss(trainer, result) -> float:
    """The last logged training loss (the mean over the run when nothing was logged per step)."""
    for entry in reversed(trainer.state.log_history):
        if "loss" in entry:
            return float(entry["loss"])
    return float(result.training_loss)


def _host() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {
        "device": "gpu" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
    }
