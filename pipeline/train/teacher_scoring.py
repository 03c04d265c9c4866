"""A teacher that scores the student's tokens with vLLM instead of an HF forward (``gold``, on-policy).

TRL's GOLD trainer calls its teacher like an HF model, ``teacher(input_ids=..., attention_mask=...).logits``,
once per batch. ``VLLMScoredTeacher`` answers that call from a vLLM engine: each row's tokens go in as one
prompt, vLLM returns the top-k log-probabilities at every position (prompt logprobs: one prefill, no
sampling), and the logits handed back are those top-k with the rest of the mass spread evenly over the other
ids, as the offline ``uld`` mode rebuilds its stored top-k (``pipeline.train.uld.dense_logprobs``). What TRL
lacks: GOLD scores with an HF forward of the full teacher only; on a GPU the teacher can then live in a vLLM
engine (its own memory, paged KV cache, tensor parallelism) and the trainer never holds its weights.

    teacher_scoring: vllm      # in a gold YAML (default: hf); the top-k is vLLM's max_logprobs (20)
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pipeline.train.uld import dense_logprobs


class VLLMScoredTeacher(torch.nn.Module):
    """``forward(input_ids, attention_mask)`` -> ``.logits`` ``[batch, seq, vocab]`` log-probabilities from a
    ``VLLMEngine``'s top-k prompt logprobs; position ``i`` predicts token ``i + 1`` as a causal LM's would.
    Padding (left or right) is left out of what vLLM sees; padded positions get a uniform distribution."""

    def __init__(self, engine, vocab_size: int, top_k: int | None = None, name: str = "teacher") -> None:
        super().__init__()
        self.engine = engine
        self.vocab_size = vocab_size
        self.top_k = top_k or engine.max_logprobs
        self.config = SimpleNamespace(_name_or_path=name)

    def resize_token_embeddings(self, size: int) -> None:
        """GOLD widens a same-tokenizer teacher to the student's embedding size: the dense width follows."""
        self.vocab_size = size

    @torch.no_grad()
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_
    ) -> SimpleNamespace:
        mask = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        positions = [row.nonzero().flatten().tolist() for row in mask]
        sequences = [input_ids[b, p].tolist() for b, p in enumerate(positions)]
        scored = self.engine.prompt_topk(sequences, self.top_k)
        batch, length = input_ids.shape
        topk_ids = torch.zeros((batch, length, self.top_k), dtype=torch.long)
        topk_logprobs = torch.full((batch, length, self.top_k), float("-inf"))
        for b, (where, (ids, lps)) in enumerate(zip(positions, scored, strict=True)):
            for pos, step_ids, step_lps in zip(where, ids, lps, strict=True):
                topk_ids[b, pos, : len(step_ids)] = torch.tensor(step_ids, dtype=torch.long)
                topk_logprobs[b, pos, : len(step_lps)] = torch.tensor(step_lps)
        return SimpleNamespace(
            logits=dense_logprobs(topk_ids, topk_logprobs, self.vocab_size).to(input_ids.device)
        )
