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


def test_zero_on_topk_even_when_student_differs_elsewhere():
    teacher = _teacher(shape=(1, 2))
    ids = torch.tensor([[[3, 1, 4, 0, 2], [9, 8, 7, 6, 5]]])
    logits = torch.randn(1, 2, 10) * 5
    for t in range(2):
        logits[0, t, ids[0, t]] = teacher[0, t] + 1.0
    assert topk_kd_loss(logits, ids, teacher).item() == pytest.approx(0.0, abs=1e-5)


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


def test_gradient_flows_to_student_only():
    teacher = _teacher()
    student = torch.randn(2, 3, 10, requires_grad=True)
    ids = torch.arange(K).expand(2, 3, K)
    topk_kd_loss(student, ids, teacher, divergence="jsd").backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad[..., K:].abs().sum() == 0  # ids outside the top-k get no gradient


def test_rejects_bad_settings():
    t = _teacher()
    with pytest.raises(ValueError, match="divergence"):
        token_divergence(t, t, "kl")
    with pytest.raises(ValueError, match="temperature"):
        token_divergence(t, t, "forward_kl", temperature=0)
