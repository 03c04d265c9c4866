"""LoRA adapter helpers shared by the engines, evaluation and training: the rank vLLM must reserve for an
adapter, and merging an adapter into a full copy of its base model.

They sit next to pipeline/models.py, below engines/ and train/, so an engine that serves an adapter (vLLM on
a CPU serves a merged copy) never imports training code.
"""

from __future__ import annotations

import json
from pathlib import Path


def vllm_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds a LoRA of this rank."""
    return next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank), rank)


def adapter_rank(adapter: str) -> int:
    """The max_lora_rank a vLLM engine needs for an adapter folder."""
    return vllm_lora_rank(int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r") or 8))


def merge_adapter(base: str, adapter_dir: Path, merged_dir: Path) -> Path:
    """Merge a saved adapter into a fresh copy of the base model (a trained model in memory is untouched)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().save_pretrained(merged_dir)
    tok_src = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(merged_dir)
    return merged_dir
