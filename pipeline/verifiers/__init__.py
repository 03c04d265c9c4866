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


def build_verifier(name: str, **options):
    """The verifier called ``name``, built with its options (a plain if/elif: five kinds, no registry)."""
    from pipeline.errors import UserError

    try:
        if name == "math":
            from pipeline.verifiers.math import MathVerifier

            return MathVerifier(**options)
        if name == "code":
            from pipeline.verifiers.code import CodeVerifier

            return CodeVerifier(**options)
        if name == "regex":
            from pipeline.verifiers.structured import RegexVerifier

            return RegexVerifier(**options)
        if name == "json_schema":
            from pipeline.verifiers.structured import JsonSchemaVerifier

            return JsonSchemaVerifier(**options)
        if name == "label":
            from pipeline.verifiers.label import LabelVerifier

            return LabelVerifier(**options)
        if name == "critic":
            from pipeline.verifiers.critic import CriticVerifier

            return CriticVerifier(**options)
    except TypeError as e:  # an unknown option in the recipe
        raise UserError(f"verifier '{name}': {e}; check its options in the recipe") from None
    raise UserError(f"unknown verifier '{name}'; use one of: math, code, regex, json_schema, label, critic")
