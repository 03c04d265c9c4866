"""Offline top-k logit distillation losses (pure torch, no trainer).

The teacher stored only its top-k log-probabilities per completion token (`topk_ids`, `topk_logprobs`, from
its full-vocabulary softmax, as vLLM and the HF engine report them). Both sides are compared on k + 1
buckets: the teacher's top-k ids, and the rest of the vocabulary as one bucket holding the remaining mass.

    q = [teacher top-k probabilities, 1 - their sum]
    p = [student full-softmax probabilities of those ids, 1 - their sum]

The rest bucket matters: compared on the top-k alone (both renormalized there), a student can move any
amount of mass to tokens the teacher never ranks without paying for it. Trained that way, a 2-layer-pruned
SmolLM2 learned to ramble and repeat (25% on capitals against 46% before training); the rest bucket makes
that mass cost what it costs the teacher.

The divergence is one of (the GKD convention, Agarwal et al. 2024, Eq. 1; MiniLLM uses reverse KL):

- ``forward_kl``: KL(q || p), mode-covering (classic Hinton KD);
- ``reverse_kl``: KL(p || q), mode-seeking (MiniLLM);
- ``jsd``: generalized Jensen-Shannon with mixture m = beta * q + (1 - beta) * p,
  JSD_beta = beta * KL(q || m) + (1 - beta) * KL(p || m); as in TRL's GKD trainer, ``beta=0`` means forward
  KL and ``beta=1`` reverse KL, and ``beta=0.5`` is the symmetric JSD (bounded by ln 2).

Temperature: T > 1 flattens both distributions, T < 1 sharpens them; it applies to the k + 1 buckets (the
teacher's full logits are not stored, so its rest bucket is tempered as one token; exact at T = 1). The
divergence is multiplied by T**2 (Hinton et al. 2015) so that gradient magnitudes stay comparable across
temperatures; hence ``token_divergence(s, t, T) == T**2 * token_divergence(s / T, t / T, 1)``.

``token_divergence`` renormalizes both inputs on their common support, so it is exactly zero when the
student's bucket logits equal the teacher's log-probabilities up to a per-token constant.
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
    teacher = topk_logprobs.float()
    pad = torch.isinf(teacher) & (teacher < 0)
    # Positions without a teacher distribution (masked out below) get a harmless one-token stand-in, so that
    # no all -inf row reaches logsumexp: its gradient would be NaN, and NaN * 0 is still NaN.
    empty = pad.all(dim=-1, keepdim=True)
    first = torch.zeros_like(pad)
    first[..., 0] = True
    pad = pad & ~(empty & first)
    teacher = teacher.masked_fill(empty & first, 0.0)
    # The student's full-vocabulary log-probabilities of the teacher's ids, without a [B, L, V] log_softmax.
    logits = student_logits.float()
    student = torch.gather(logits, -1, topk_ids.clamp_min(0).long()) - torch.logsumexp(
        logits, -1, keepdim=True
    )
    student = student.masked_fill(pad, float("-inf"))
    per_token = token_divergence(with_rest(student), with_rest(teacher), divergence, temperature, beta)
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def with_rest(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """``[..., k]`` log-probabilities of a distribution's top-k -> ``[..., k + 1]``: the last bucket is the
    log of the mass on every other token (a tiny floor when the top-k hold it all)."""
    covered = torch.logsumexp(topk_logprobs, dim=-1, keepdim=True).clamp(max=-1e-6)
    rest = torch.log(-torch.expm1(covered))  # log(1 - exp(covered)), stable near 0
    return torch.cat([topk_logprobs, rest], dim=-1)
