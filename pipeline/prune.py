"""Depth pruning: drop the contiguous block of decoder layers that changes the hidden state least.

The block is chosen by angular distance between the last-token hidden states entering and leaving it,
averaged over a few prompts (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper Layers").
A pruned student loses a lot at this size; healing it with self-distilled data (`self-distill` stage, then
`distill train sft`) recovers much of it.

    distill prune smollm2-135m-instruct --layers 2 --output runs/pruned-28
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError

CALIBRATION = "tasks/arithmetic_train.jinja"


def angular_distances(model, tokenizer, prompts: list[str], n: int) -> list[float]:
    """Mean angular distance (in units of pi) between hidden states at layer l and l + n, for every l."""
    import torch

    dists = None
    for text in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            hidden = model(**ids, output_hidden_states=True).hidden_states  # layers + 1 tensors
        last = [h[0, -1] for h in hidden]
        row = []
        for start in range(len(last) - n):
            cos = torch.nn.functional.cosine_similarity(last[start], last[start + n], dim=0).clamp(-1, 1)
            row.append(float(torch.arccos(cos) / torch.pi))
        dists = row if dists is None else [a + b for a, b in zip(dists, row, strict=True)]
    return [d / len(prompts) for d in dists]


def prune(
    model_spec: str,
    layers: int,
    output: str | Path,
    start: int | None = None,
    prompts: list[str] | None = None,
) -> dict:
    """Save a copy of the model without `layers` consecutive decoder layers; returns what was dropped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import resolve
    from pipeline.tasks import load_task

    resolved = resolve(model_spec)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    total = model.config.num_hidden_layers
    if not 1 <= layers < total:
        raise UserError(f"prune: --layers must be between 1 and {total - 1} for a {total}-layer model")
    scores = None
    if start is None:
        prompts = prompts or [r["prompt"] for r in load_task("arithmetic", "train", n=24)]
        scores = angular_distances(model, tokenizer, prompts, layers)
        start = min(range(len(scores)), key=scores.__getitem__)
    if not 0 <= start <= total - layers:
        raise UserError(f"prune: --start must be between 0 and {total - layers}")
    keep = [i for i in range(total) if not start <= i < start + layers]
    decoder = model.model.layers
    model.model.layers = torch.nn.ModuleList([decoder[i] for i in keep])
    for new_index, layer in enumerate(model.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_index  # the KV cache is indexed by position in the stack
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"source": resolved.identity, "dropped": list(range(start, start + layers)), "layers": len(keep)}
    if scores is not None:
        info["angular_distance"] = round(scores[start], 4)
    (out / "pruning.json").write_text(json.dumps(info, indent=2))
    return info
