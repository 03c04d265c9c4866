"""Critic verifier: an LLM judge, through any engine, scores each completion from 1 to 10.

It renders ``prompts/critic.jinja`` (the rubric) with the question, the answer and the reference (if any),
asks the engine for a greedy judgement, parses a 1-10 score and a rationale, and passes the row when the
score reaches ``threshold``. ``score`` is the judge's 1-10 score. A judgement that cannot be parsed gives
``passed=None`` with the reason ``unparseable_judgement: <raw text>``; an engine error gives
``critic_error: ...``. Neither stops the run.

    from pipeline.verifiers.critic import parse_judgement
    parse_judgement("Rationale: correct.\nScore: 8/10")      # (8.0, "correct.")
"""

from __future__ import annotations

import json
import re

from pipeline import templates
from pipeline.rows import prompt_of
from pipeline.verifiers import Verdict

TEMPLATE = "critic.jinja"
_NUMBER = r"(\d+(?:\.\d+)?)"
# Most explicit first: "Score: 7/10", "**Rating**: 7", "score of 7 out of 10", then a bare "7/10".
_SCORE_PATTERNS = [
    re.compile(
        rf"(?:score|rating|grade)\W{{0,6}}(?:is\W{{0,3}}|of\W{{0,3}})?{_NUMBER}\s*(?:/\s*10|out\s+of\s+10)?",
        re.I,
    ),
    re.compile(rf"{_NUMBER}\s*(?:/\s*10|out\s+of\s+10)\b", re.I),
]
_RATIONALE = re.compile(
    r"(?:rationale|reasoning|explanation|justification)\W{0,6}(.+?)(?:\n\s*\n|\n\W*(?:score|rating)\b|\Z)",
    re.I | re.S,
)
_JSON_OBJECT = re.compile(r"\{.*?\}", re.S)


def parse_judgement(text: str) -> tuple[float | None, str]:
    """(score in 1..10 or None, rationale) from a judge's reply. Never raises."""
    if not text or not text.strip():
        return None, ""
    for blob in _JSON_OBJECT.findall(text):  # {"score": 8, "rationale": "..."}
        try:
            obj = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(obj, dict)
            and isinstance(obj.get("score"), int | float)
            and not isinstance(obj.get("score"), bool)
        ):
            score = float(obj["score"])
            why = str(obj.get("rationale") or obj.get("reason") or obj.get("explanation") or "")
            return (score, why.strip()) if 1 <= score <= 10 else (None, why.strip())
    score = None
    for pattern in _SCORE_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            score = float(matches[-1])  # the verdict comes last; earlier numbers may quote the rubric
            break
    if score is None or not 1 <= score <= 10:
        return None, ""
    found = _RATIONALE.search(text)
    rationale = found.group(1) if found else _SCORE_PATTERNS[0].sub("", text)
    return score, " ".join(rationale.replace("*", "").split())


class CriticVerifier:
    """LLM-as-judge: ``engine.generate`` on the rendered rubric; pass when score >= ``threshold``."""

    name = "critic"

    def __init__(
        self,
        engine=None,
        threshold: float = 7.0,
        max_tokens: int = 256,
        use_reference: bool = True,
        template: str = TEMPLATE,
        seed: int = 0,
    ):
        self.engine = engine
        self.threshold = threshold
        self.max_tokens = max_tokens
        self.use_reference = use_reference
        self.template = template
        self.seed = seed

    def render(self, row: dict) -> str:
        reference = row.get("reference") if self.use_reference else None
        return templates.render(
            self.template, question=prompt_of(row), answer=row.get("completion") or "", reference=reference
        )

    def check(self, rows: list[dict]) -> list[Verdict]:
        from pipeline.engines import GenRequest

        if self.engine is None:
            raise RuntimeError("the critic verifier needs an engine; pass engine=... (the verify stage does)")
        requests = [
            GenRequest(
                id=str(i),
                messages=[{"role": "user", "content": self.render(row)}],
                n=1,
                temperature=0.0,
                max_tokens=self.max_tokens,
                seed=self.seed,
            )
            for i, row in enumerate(rows)
        ]
        results = {r.id: r for r in self.engine.generate(requests)} if requests else {}
        verdicts = []
        for i in range(len(rows)):
            result = results.get(str(i))
            if result is None or result.error or not result.samples:
                error = (result.error if result else None) or "the engine returned no judgement"
                verdicts.append(Verdict(None, None, f"critic_error: {error}"[:500]))
                continue
            verdicts.append(self.verdict(result.samples[0].text))
        return verdicts

    def verdict(self, raw: str) -> Verdict:
        score, rationale = parse_judgement(raw)
        if score is None:
            # Keep the raw judgement so it can be read later; cut it so one row cannot bloat the dataset.
            return Verdict(None, None, "unparseable_judgement: " + (raw or "").strip()[:1000])
        passed = score >= self.threshold
        return Verdict(passed, score, f"{score:g}/10 (threshold {self.threshold:g}): {rationale}"[:1000])
