"""Offline top-k logit distillation losses (pure torch, no trainer).

The teacher stored only its top-k log-probabilities per completion token (`topk_ids`, `topk_logprobs`).
Both distributions are therefore compared on the teacher's top-k support, renormalized there:

    q = softmax(teacher_logprobs / T)              over the k ids
    p = softmax(student_logits[..., topk_ids] / T) over the same k ids

and the divergence is one of (the GKD convention, Agarwal et al. 2024, Eq. 1; MiniLLM uses reverse KL):

- ``forward_kl``: KL(q || p), mode-covering (classic Hinton KD);
- ``reverse_kl``: KL(p || q), mode-seeking (MiniLLM);
- ``jsd``: generalized Jensen-Shannon with mixture m = beta * q + (1 - beta) * p,
  JSD_beta = beta * KL(q || m) + (1 - beta) * KL(p || m); as in TRL's GKD trainer, ``beta=0`` means forward
  KL and ``beta=1`` reverse KL, and ``beta=0.5`` is the symmetric JSD (bounded by ln 2).

Temperature: T > 1 flattens both distributions, T < 1 sharpens them. The divergence is multiplied by T**2
(Hinton et al. 2015) so that gradient magnitudes stay comparable across temperatures; hence
``topk_kd_loss(s, t, T) == T**2 * topk_kd_loss(s / T, t / T, 1)``.

Because both sides are renormalized on the same support, the loss is exactly zero when the student's
top-k logits equal the teacher's log-probabilities up to a per-token constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per token, summed over the last dim; both inputs are log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def generalized_jsd(log_q: torch.Tensor, log_p: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * KL(q || m) + (1 - beta) * KL(p || m) with m = beta * q + (1 - beta) * p; q teacher, p student."""
    if beta <= 0.0:
        return _kl(log_q, log_p)
    if beta >= 1.0:
        return _kl(log_p, log_q)
    log_m = torch.logsumexp(torch.stack([log_q + math.log(beta), log_p + math.log1p(-beta)]), dim=0)
    return beta * _kl(log_q, log_m) + (1.0 - beta) * _kl(log_p, log_m)


def token_divergence(
    student_topk_logits: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Divergence per token, shape ``[...]`` from inputs ``[..., k]``, already multiplied by T**2.

    ``teacher_topk_logprobs`` may hold ``-inf`` for padded top-k slots; they get zero mass on both sides.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    pad = torch.isinf(teacher_topk_logprobs) & (teacher_topk_logprobs < 0)
    teacher = teacher_topk_logprobs.masked_fill(pad, 0.0).float() / temperature
    student = student_topk_logits.float() / temperature
    # A large finite negative, not -inf: keeps 0 * log 0 terms finite in the KL sums.
    teacher = teacher.masked_fill(pad, -1e4)
    student = student.masked_fill(pad, -1e4)
    log_q = F.log_softmax(teacher, dim=-1)
    log_p = F.log_softmax(student, dim=-1)
    if divergence == "forward_kl":
        div = _kl(log_q, log_p)
    elif divergence == "reverse_kl":
        div = _kl(log_p, log_q)
    else:
        div = generalized_jsd(log_q, log_p, beta)
    return div * temperature**2


def topk_kd_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Mean top-k divergence over the unmasked tokens.

    Args:
        student_logits: ``[B, L, V]`` student logits at the positions that predict each completion token.
        topk_ids: ``[B, L, k]`` teacher top-k token ids (any value where masked).
        topk_logprobs: ``[B, L, k]`` teacher log-probabilities of those ids (``-inf`` for missing slots).
        mask: ``[B, L]`` bool, True where a teacher distribution exists. None means all positions.
    """
    student_topk = torch.gather(student_logits, -1, topk_ids.clamp_min(0).long())
    per_token = token_divergence(student_topk, topk_logprobs, divergence, temperature, beta)
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)
