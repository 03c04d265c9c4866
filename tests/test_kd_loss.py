"""Offline top-k KD losses: zero on a match, growing with the divergence, temperature as documented."""

import math

import pytest
import torch

from pipeline.train.kd_loss import DIVERGENCES, token_divergence, topk_kd_loss

K = 5


def _teacher(seed=0, shape=(2, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, K, generator=g) * 2, dim=-1)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_zero_when_student_matches_teacher(divergence, temperature):
    teacher = _teacher()
    # Logits equal to the teacher's logprobs up to a per-token constant give the same distribution on the top-k.
    student = teacher + torch.randn(*teacher.shape[:-1], 1) * 3
    loss = token_divergence(student, teacher, divergence, temperature)
    assert torch.allclose(loss, torch.zeros_like(loss), atol=1e-5)


def _full_teacher(seed=0, shape=(1, 2), vocab=10):
    """A teacher's full log-softmax over `vocab` tokens, its top-K ids and their log-probabilities."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, vocab, generator=g) * 2
    top = torch.log_softmax(logits, dim=-1).topk(K, dim=-1)
    return logits, top.indices, top.values


def test_zero_when_student_matches_the_teacher_and_its_rest_mass():
    logits, ids, logprobs = _full_teacher()
    shifted = logits + torch.randn(1, 2, 1) * 3  # a per-token constant does not change the distribution
    assert topk_kd_loss(shifted, ids, logprobs).item() == pytest.approx(0.0, abs=1e-5)


def test_mass_moved_outside_the_teachers_topk_costs():
    # Same ratios among the top-k, but the student puts far more mass on tokens the teacher never ranked:
    # compared on the top-k alone that was free; the rest bucket makes it cost.
    logits, ids, logprobs = _full_teacher()
    leaky = logits.clone()
    outside = torch.ones_like(leaky, dtype=torch.bool).scatter(-1, ids, False)
    leaky[outside] += 6.0
    for divergence in DIVERGENCES:
        assert topk_kd_loss(leaky, ids, logprobs, divergence=divergence).item() > 0.1


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_grows_with_divergence(divergence):
    teacher = _teacher(seed=1)
    noise = torch.randn(teacher.shape, generator=torch.Generator().manual_seed(2))
    losses = [
        token_divergence(teacher + s * noise, teacher, divergence).mean().item()
        for s in (0.0, 0.5, 1.0, 2.0, 4.0)
    ]
    assert losses[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(losses, losses[1:], strict=False)), losses


def test_forward_and_reverse_kl_match_their_definitions():
    q = torch.tensor([0.7, 0.2, 0.1])
    p = torch.tensor([0.4, 0.4, 0.2])
    fwd = (q * (q / p).log()).sum().item()
    rev = (p * (p / q).log()).sum().item()
    assert token_divergence(p.log(), q.log(), "forward_kl").item() == pytest.approx(fwd, rel=1e-5)
    assert token_divergence(p.log(), q.log(), "reverse_kl").item() == pytest.approx(rev, rel=1e-5)
    assert fwd != pytest.approx(rev)


def test_jsd_endpoints_and_symmetric_middle():
    q, p = _teacher(seed=3), _teacher(seed=4)
    assert torch.allclose(token_divergence(p, q, "jsd", beta=0.0), token_divergence(p, q, "forward_kl"))
    assert torch.allclose(token_divergence(p, q, "jsd", beta=1.0), token_divergence(p, q, "reverse_kl"))
    mid = token_divergence(p, q, "jsd", beta=0.5)
    assert torch.allclose(mid, token_divergence(q, p, "jsd", beta=0.5), atol=1e-6)  # JSD(0.5) is symmetric
    assert (mid >= 0).all() and (mid <= math.log(2) + 1e-6).all()  # bounded by ln 2


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_temperature_scaling_identity(divergence):
    # Documented: loss(s, t, T) == T**2 * loss(s / T, t / T, 1).
    student, teacher = _teacher(seed=5) * 1.5, _teacher(seed=6)
    for temp in (0.5, 2.0, 4.0):
        scaled = token_divergence(student, teacher, divergence, temperature=temp)
        manual = temp**2 * token_divergence(student / temp, teacher / temp, divergence, temperature=1.0)
        assert torch.allclose(scaled, manual, atol=1e-5)


def test_higher_temperature_softens_the_divergence():
    # Before the T**2 factor, softer distributions are closer: divergence / T**2 falls as T grows.
    student, teacher = _teacher(seed=7) * 2, _teacher(seed=8) * 2
    raw = [
        token_divergence(student, teacher, "forward_kl", t).mean().item() / t**2 for t in (0.5, 1.0, 2.0, 8.0)
    ]
    assert all(a > b for a, b in zip(raw, raw[1:], strict=False)), raw


def test_mask_and_padded_topk_slots():
    teacher = _teacher(shape=(1, 3))
    ids = torch.arange(K).expand(1, 3, K)
    logits = torch.randn(1, 3, 10)
    mask = torch.tensor([[True, True, False]])
    full = topk_kd_loss(logits[:, :2], ids[:, :2], teacher[:, :2])
    assert topk_kd_loss(logits, ids, teacher, mask).item() == pytest.approx(full.item(), rel=1e-5)
    # A teacher that returned fewer than K entries: -inf slots carry no mass and produce no NaN.
    padded = teacher.clone()
    padded[..., -1] = float("-inf")
    loss = topk_kd_loss(logits, ids, padded)
    assert torch.isfinite(loss)


def test_gradient_pushes_leaked_mass_back_and_survives_empty_positions():
    logits, ids, logprobs = _full_teacher(shape=(1, 3))
    student = logits.clone()
    outside = torch.ones_like(student, dtype=torch.bool).scatter(-1, ids, False)
    student[outside] += 3.0
    student.requires_grad_(True)
    # The last position has no teacher distribution (all -inf, as the collator pads prompt positions).
    teacher = logprobs.clone()
    teacher[0, 2] = float("-inf")
    mask = torch.tensor([[True, True, False]])
    topk_kd_loss(student, ids, teacher, mask, divergence="jsd").backward()
    grad = student.grad
    assert torch.isfinite(grad).all(), "an empty position must not turn the gradient into NaN"
    assert (grad[0, :2][outside[0, :2]] > 0).all(), "descent lowers every over-weighted outside token"
    assert grad[0, 2].abs().sum() == 0, "a masked position gets no gradient"


def test_rejects_bad_settings():
    t = _teacher()
    with pytest.raises(ValueError, match="divergence"):
        token_divergence(t, t, "kl")
    with pytest.raises(ValueError, match="temperature"):
        token_divergence(t, t, "forward_kl", temperature=0)
