"""Benchmark the verify stage's two heavy parts, each against a reference measured in the same run.

1. Code verifier: sandboxed programs/s on the 164 HumanEval canonical solutions, in parallel (one worker
   per core) and sequentially (one worker); prints the speed-up.
2. MinHash near-duplicate dedup: rows/s on 100k synthetic rows (a share of them planted near-duplicates),
   with ``pipeline.filters.dedup.minhash_dedup`` (rensa signatures + LSH); reference: the previous
   implementation (numpy signatures + datasketch LSH, ``pipeline.filters.minhash_reference``) on the same
   rows; prints the ratio, each one's recall, and how many rows the two keep differently.

Each figure is the median of ``--repeats`` runs. The code part needs root (the sandbox).

    .venv/bin/python scripts/bench_verify.py                 # both parts, 3 repeats, about 3 minutes on 2 cores
    .venv/bin/python scripts/bench_verify.py --part minhash --rows 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time


def bench_code(repeats: int) -> dict:
    from pipeline.verifiers.code import CodeVerifier, humaneval_rows

    rows = humaneval_rows()
    out = {"programs": len(rows), "cores": os.cpu_count()}
    for label, workers in (("parallel", os.cpu_count()), ("sequential", 1)):
        verifier = CodeVerifier(timeout_s=10.0, workers=workers)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            verdicts = verifier.check(rows)
            rates.append(len(rows) / (time.perf_counter() - start))
            passed = sum(v.passed is True for v in verdicts)
            if passed != len(rows):
                raise SystemExit(
                    f"only {passed}/{len(rows)} canonical solutions passed; the benchmark is void"
                )
        out[f"{label}_programs_per_s"] = round(statistics.median(rates), 2)
        out[f"{label}_runs"] = [round(r, 2) for r in rates]
    out["speedup"] = round(out["parallel_programs_per_s"] / out["sequential_programs_per_s"], 2)
    return out


def synthetic_rows(n: int, seed: int = 0) -> tuple[list[str], dict[int, int]]:
    """Random 20-80 word texts from a 5000-word vocabulary; every 5th row is a one-word edit of an earlier
    row. Returns the rows and {edited row: its source row}."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    rows: list[str] = []
    sources: dict[int, int] = {}
    for i in range(n):
        if i % 5 == 4:
            sources[i] = rng.randrange(len(rows))
            words = rows[sources[i]].split()
            words[rng.randrange(len(words))] = "edited"
            rows.append(" ".join(words))
        else:
            rows.append(" ".join(rng.choices(vocab, k=rng.randint(20, 80))))
    return rows, sources


def _jaccard(a: str, b: str) -> float:
    sa = {tuple(a.split()[i : i + 3]) for i in range(len(a.split()) - 2)}
    sb = {tuple(b.split()[i : i + 3]) for i in range(len(b.split()) - 2)}
    return len(sa & sb) / len(sa | sb)


def bench_minhash(n: int, repeats: int, threshold: float = 0.8) -> dict:
    from pipeline.filters.dedup import minhash_dedup
    from pipeline.filters.minhash_reference import reference_minhash_dedup

    rows, sources = synthetic_rows(n)
    # Recall on the planted edits whose true Jaccard reaches the threshold (shorter texts fall below it),
    # and the rows dropped that are not planted edits (false positives).
    should = [i for i, src in sources.items() if _jaccard(rows[i], rows[src]) >= threshold]
    out: dict = {"rows": n, "threshold": threshold, "planted_edits": len(sources)}
    out["planted_at_or_above_threshold"] = len(should)
    keeps = {}
    for label, dedup in (("rensa", minhash_dedup), ("reference", reference_minhash_dedup)):
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            keep, _ = dedup(rows, threshold=threshold)
            rates.append(n / (time.perf_counter() - start))
        keeps[label] = keep
        out[f"{label}_rows_per_s"] = round(statistics.median(rates))
        out[f"{label}_runs"] = [round(r) for r in rates]
        out[f"{label}_dropped"] = n - sum(keep)
        out[f"{label}_recall_on_planted"] = round(sum(not keep[i] for i in should) / max(1, len(should)), 4)
        out[f"{label}_dropped_not_planted"] = sum(not k for i, k in enumerate(keep) if i not in sources)
    out["kept_differently"] = sum(a != b for a, b in zip(keeps["rensa"], keeps["reference"], strict=True))
    out["speedup"] = round(out["rensa_rows_per_s"] / out["reference_rows_per_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["all", "code", "minhash"], default="all")
    parser.add_argument("--rows", type=int, default=100_000, help="rows for the MinHash benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is reported)")
    args = parser.parse_args()
    result = {}
    if args.part in ("all", "code"):
        code = result["code"] = bench_code(args.repeats)
        print(
            f"code verifier: {code['parallel_programs_per_s']} programs/s on {code['cores']} cores vs "
            f"{code['sequential_programs_per_s']} sequential ({code['speedup']}x), HumanEval canonical",
            flush=True,
        )
    if args.part in ("all", "minhash"):
        mh = result["minhash"] = bench_minhash(args.rows, args.repeats)
        print(
            f"minhash dedup: {mh['rensa_rows_per_s']} rows/s (rensa) vs {mh['reference_rows_per_s']} "
            f"(old numpy + datasketch) on {mh['rows']} rows ({mh['speedup']}x); recall "
            f"{mh['rensa_recall_on_planted']:.1%} vs {mh['reference_recall_on_planted']:.1%} on "
            f"{mh['planted_at_or_above_threshold']} planted near-duplicates, other rows dropped "
            f"{mh['rensa_dropped_not_planted']} vs {mh['reference_dropped_not_planted']}, "
            f"{mh['kept_differently']} rows kept differently",
            flush=True,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
