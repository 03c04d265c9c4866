"""The verify stage's filter steps: small objects run in order over a batch of generation rows.

Each step looks at the rows still alive and returns ``(keep, reason)`` for each; ``apply`` records the
reason of every row a step drops (``reject_reason``), so no row leaves silently and the counters per reason
come out of the batch. The verify stage's order:

    Decontaminate -> PromptDedup      (over the whole dataset, before sharding)
    Verify(v) for each verifier -> CompletionExactDedup -> CompletionNearDedup -> Select   (per shard)

``Verify`` also fills the batch's verdicts (a later verifier only sees the rows the earlier ones passed, so
a row's verdict is that of the last verifier that ran on it).

    batch = Batch(rows)
    apply([Verify(build_verifier("math")), CompletionExactDedup(), Select("best_of_n")], batch)
    batch.reject   # None = accepted, else the reason
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.filters.decontaminate import NgramIndex, decontaminate
from pipeline.filters.dedup import exact_dedup, minhash_dedup
from pipeline.rows import prompt_of
from pipeline.verifiers import Verdict
from pipeline.verifiers.equations import WRONG_STEP

Result = tuple[bool, str | None]  # (keep, reason); the reason is None when kept
REWARD_HACK = "reward_hack: "


@dataclass
class Batch:
    """Rows (dicts with at least ``id``, the prompt columns and ``completion``) and what the steps decided."""

    rows: list[dict]
    reject: list[str | None] = field(default_factory=list)  # None: still alive
    verdicts: list[Verdict] = field(default_factory=list)
    decided_by: list[str | None] = field(default_factory=list)  # the verifier behind each verdict

    def __post_init__(self):
        n = len(self.rows)
        self.reject = self.reject or [None] * n
        self.verdicts = self.verdicts or [Verdict(None, None, "") for _ in range(n)]
        self.decided_by = self.decided_by or [None] * n

    def alive(self) -> list[int]:
        return [i for i, r in enumerate(self.reject) if r is None]

    def counts(self) -> dict[str, int]:
        """Rejected rows per reason."""
        out: dict[str, int] = {}
        for r in self.reject:
            if r is not None:
                out[r] = out.get(r, 0) + 1
        return out


def apply(steps: Sequence, batch: Batch) -> Batch:
    """Run the steps in order; each sees only the rows the earlier ones kept."""
    for step in steps:
        alive = batch.alive()
        if not alive:
            break
        results = step.filter(batch, alive)
        if len(results) != len(alive):
            raise RuntimeError(
                f"filter step {step.name} returned {len(results)} results for {len(alive)} rows"
            )
        for i, (keep, reason) in zip(alive, results, strict=True):
            if not keep:
                batch.reject[i] = reason or step.name  # a step that gives no reason is named instead
    return batch


def _first_of_each_prompt(rows: list[dict]) -> dict[str, int]:
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row["id"], i)
    return first


class Decontaminate:
    """``contaminated``: the prompt (each prompt once) or the completion shares an n-gram with an eval set."""

    name = "decontaminate"

    def __init__(self, index: NgramIndex, over: str = "both"):
        self.index, self.over = index, over

    def filter(self, batch: Batch, alive: list[int]) -> list[Result]:
        rows = batch.rows
        keep = [True] * len(alive)
        if self.over in ("prompt", "both"):  # the samples of a prompt share its verdict
            first = _first_of_each_prompt([rows[i] for i in alive])
            ids = list(first)
            found = decontaminate([prompt_of(rows[alive[first[p]]]) for p in ids], self.index)[0]
            clean = dict(zip(ids, found, strict=True))
            keep = [k and clean[rows[i]["id"]] for k, i in zip(keep, alive, strict=True)]
        if self.over in ("completion", "both"):
            found = decontaminate([rows[i].get("completion") for i in alive], self.index)[0]
            keep = [a and b for a, b in zip(keep, found, strict=True)]
        return [(k, None if k else "contaminated") for k in keep]


class PromptDedup:
    """``near_duplicate_prompt``: the prompt repeats an earlier prompt of the dataset; all its samples go.

    Every prompt of the batch counts as an earlier prompt, a contaminated one too (its copies are still
    copies), so the result does not depend on which step ran first."""

    name = "prompt_dedup"

    def __init__(self, threshold: float | None, num_perm: int = 128, shingle: int = 3, exact: bool = True):
        self.threshold, self.num_perm, self.shingle, self.exact = threshold, num_perm, shingle, exact

    def filter(self, batch: Batch, alive: list[int]) -> list[Result]:
        first = _first_of_each_prompt(batch.rows)
        ids = list(first)
        texts = [prompt_of(batch.rows[first[p]]) for p in ids]
        if self.threshold is not None:
            keep, _ = minhash_dedup(texts, self.threshold, self.num_perm, self.shingle)
        elif self.exact:
            keep, _ = exact_dedup(texts)
        else:
            keep = [True] * len(ids)
        dropped = {p for p, k in zip(ids, keep, strict=True) if not k}
        return [
            (False, "near_duplicate_prompt") if batch.rows[i]["id"] in dropped else (True, None)
            for i in alive
        ]


class Verify:
    """One verifier over the alive rows: kept when it passes, else the reason its verdict gives.

    ``failed`` (passed is False), ``wrong_step`` (a right answer whose working has a wrong equation),
    ``unparseable`` / ``unparseable_judgement`` (nothing to read),
    ``reward_hack: <kind>`` (the answer games the checker, e.g. ``reward_hack: non_plain_return``; counted
    apart from plain failures), and ``unverified`` for any other undecided verdict."""

    def __init__(self, verifier):
        self.verifier = verifier
        self.name = f"verify:{verifier.name}"

    def filter(self, batch: Batch, alive: list[int]) -> list[Result]:
        verdicts = self.verifier.check([batch.rows[i] for i in alive])
        out = []
        for i, v in zip(alive, verdicts, strict=True):
            batch.verdicts[i] = v
            batch.decided_by[i] = self.verifier.name
            out.append((True, None) if v.passed is True else (False, reject_reason(v)))
        return out


def reject_reason(v: Verdict) -> str:
    """The reject reason of a verdict that did not pass."""
    reason = v.reason or ""
    if reason.startswith(REWARD_HACK):
        kind = reason[len(REWARD_HACK) :].split(":", 1)[0].strip()
        return REWARD_HACK + (kind or "unknown")
    if v.passed is False:
        return "wrong_step" if reason.startswith(WRONG_STEP) else "failed"
    kind = reason.split(":", 1)[0]
    return kind if kind in ("unparseable", "unparseable_judgement") else "unverified"


class CompletionExactDedup:
    """``exact_duplicate``: the completion repeats (normalized) an earlier accepted one of the same prompt."""

    name = "exact_dedup"

    def filter(self, batch: Batch, alive: list[int]) -> list[Result]:
        keep, reasons = exact_dedup(
            [batch.rows[i]["completion"] for i in alive], [batch.rows[i]["id"] for i in alive]
        )
        return list(zip(keep, reasons, strict=True))


class CompletionNearDedup:
    """``near_duplicate``: MinHash near-duplicate of an earlier accepted completion of the same prompt."""

    name = "near_dedup"

    def __init__(self, threshold: float, num_perm: int = 128, shingle: int = 3):
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle

    def filter(self, batch: Batch, alive: list[int]) -> list[Result]:
        keep, reasons = minhash_dedup(
            [batch.rows[i]["completion"] for i in alive],
            self.threshold,
            self.num_perm,
            self.shingle,
            groups=[batch.rows[i]["id"] for i in alive],
        )
        return list(zip(keep, reasons, strict=True))


class Select:
    """``not_selected``: keep one sample per prompt, the best-scored (``best_of_n``, first on ties) or the
    lowest ``sample_index`` (``first_pass``)."""

    name = "select"

    def __init__(self, mode: str):
        if mode not in ("best_of_n", "first_pass"):
            raise ValueError(f"select must be best_of_n or first_pass, not {mode!r}")
        self.mode = mode

    def filter(self, batch: Batch, alive: list[int]) -> list[Result]:
        rows, verdicts = batch.rows, batch.verdicts
        best: dict[str, int] = {}
        for i in alive:
            rid = rows[i]["id"]
            if rid not in best:
                best[rid] = i
            elif self.mode == "best_of_n" and (verdicts[i].score or 0.0) > (verdicts[best[rid]].score or 0.0):
                best[rid] = i
            elif self.mode == "first_pass" and (rows[i].get("sample_index") or 0) < (
                rows[best[rid]].get("sample_index") or 0
            ):
                best[rid] = i
        chosen = set(best.values())
        return [(True, None) if i in chosen else (False, "not_selected") for i in alive]
