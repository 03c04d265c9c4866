"""Verifiers: ``check(rows) -> list[Verdict]``, one verdict per generation row.

A verifier never crashes a run on bad model output: it returns ``passed=None`` with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Verdict:
    passed: bool | None  # None: the verifier could not decide (e.g. unparseable)
    score: float | None
    reason: str
