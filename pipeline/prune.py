"""Depth pruning: drop the contiguous block of decoder layers whose removal changes the model least.

Two ways to choose the block, both on calibration prompts (the recipe's source):
- ``kl`` (default): the original model answers the prompts greedily; each candidate block is dropped in turn
  and scored by the mean per-token KL(original || pruned) on those answers. It measures what pruning does to
  the outputs. On SmolLM2-135M-Instruct (2 of 30 layers) it picks layers 4-5, which keep 46% on capitals
  (original 48%), where the angular choice (layers 25-26) keeps 21%.
- ``angular``: the angular distance between the last-token hidden states entering and leaving the block
  (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"). It needs one forward pass
  per prompt, no generation.

A pruned student loses a lot at this size; healing it (`distill train sft` on the verified data, or on the
self-distilled rewrite of the `self-distill` stage) recovers much of it.

    distill prune smollm2-135m-instruct --layers 2 --output runs/pruned-28            # --by angular
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from pipeline.errors import UserError

CALIBRATION = "tasks/arithmetic_train.jinja"
METHODS = ("kl", "angular")
ANSWER_TOKENS = 64  # of each greedy calibration answer the KL is measured on


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


@contextlib.contextmanager
def without_layers(model, start: int, n: int):
    """The model with decoder layers start .. start + n - 1 left out (restored on exit)."""
    import torch

    decoder, config = model.model.layers, model.config
    saved = (config.num_hidden_layers, getattr(config, "layer_types", None))
    keep = [i for i in range(len(decoder)) if not start <= i < start + n]
    model.model.layers = torch.nn.ModuleList([decoder[i] for i in keep])
    _number_layers(model.model.layers)
    config.num_hidden_layers = len(keep)
    if saved[1]:
        config.layer_types = [saved[1][i] for i in keep]
    try:
        yield keep
    finally:
        model.model.layers = decoder
        _number_layers(decoder)
        config.num_hidden_layers, config.layer_types = saved[0], saved[1]


def _number_layers(layers) -> None:
    for index, layer in enumerate(layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = index  # the KV cache is indexed by position in the stack


def block_kl(model, tokenizer, prompts: list[str], n: int) -> list[float]:
    """Mean per-token KL(original || model without layers l .. l + n - 1), for every l, on the original's
    own greedy answers to `prompts` (ANSWER_TOKENS each, one left-padded batch)."""
    import copy

    import torch

    tok = copy.deepcopy(tokenizer)  # the caller saves its tokenizer: pad on a copy
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = [
        tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in prompts
    ]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        full = model.generate(
            **batch, max_new_tokens=ANSWER_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id
        )
    width = batch["input_ids"].shape[1]
    answer = full[:, width:]
    ended = (answer == tok.eos_token_id).long().cumsum(dim=1)
    scored = (ended == 0) | ((ended == 1) & (answer == tok.eos_token_id))  # up to the first end of text
    attention = torch.cat([batch["attention_mask"], scored.long()], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)

    def log_probs():
        with torch.no_grad():
            logits = model(
                input_ids=full, attention_mask=attention, position_ids=positions, use_cache=False
            ).logits[:, width - 1 : -1]
        return torch.log_softmax(logits.float(), dim=-1)[scored]

    reference = log_probs()
    scores = []
    for start in range(model.config.num_hidden_layers - n + 1):
        with without_layers(model, start, n):
            pruned = log_probs()
        scores.append(float((reference.exp() * (reference - pruned)).sum(dim=-1).mean()))
    return scores


def prune(
    model_spec: str,
    layers: int,
    output: str | Path,
    start: int | None = None,
    prompts: list[str] | None = None,
    by: str = "kl",
) -> dict:
    """Save a copy of the model without `layers` consecutive decoder layers; returns what was dropped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import resolve
    from pipeline.tasks import load_task

    if by not in METHODS:
        raise UserError(f"prune: --by must be one of {', '.join(METHODS)}, not '{by}'")
    resolved = resolve(model_spec)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    total = model.config.num_hidden_layers
    if not 1 <= layers < total:
        raise UserError(f"prune: --layers must be between 1 and {total - 1} for a {total}-layer model")
    scores = None
    if start is None:
        prompts = prompts or [r["prompt"] for r in load_task("arithmetic", "train", n=24)]
        score = block_kl if by == "kl" else angular_distances
        scores = score(model, tokenizer, prompts, layers)
        start = min(range(len(scores)), key=scores.__getitem__)
    if not 0 <= start <= total - layers:
        raise UserError(f"prune: --start must be between 0 and {total - layers}")
    with without_layers(model, start, layers) as keep:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"source": resolved.identity, "dropped": list(range(start, start + layers)), "layers": len(keep)}
    if scores is not None:
        info["chosen_by"] = by
        info["score"] = round(scores[start], 4)
        info["scores"] = [round(s, 4) for s in scores]
    (out / "pruning.json").write_text(json.dumps(info, indent=2))
    return info
