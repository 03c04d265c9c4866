"""Benchmark the verify stage's two heavy parts, each against a reference measured in the same run.

1. Code verifier: sandboxed programs/s on the 164 HumanEval canonical solutions, in parallel (one worker
   per core) and sequentially (one worker); prints the speed-up.
2. MinHash near-duplicate dedup: rows/s on 100k synthetic rows (a share of them planted near-duplicates),
   with our vectorized signatures + datasketch LSH; reference: signatures from datasketch's own
   ``MinHash.update_batch`` per row (timed on a subset, it is slower).

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
    from datasketch import MinHash

    from pipeline.stages.dedup import _TOKEN, minhash_dedup, minhash_signatures, normalize_text

    rows, sources = synthetic_rows(n)
    rates, sig_rates, keep = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        minhash_signatures(rows)
        sig_rates.append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        keep, _ = minhash_dedup(rows, threshold=threshold)
        rates.append(n / (time.perf_counter() - start))
    # Reference: datasketch's per-row MinHash (same shingles) on a subset.
    subset = rows[: min(n, 5000)]
    ref_rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for text in subset:
            tokens = _TOKEN.findall(normalize_text(text).encode())
            m = MinHash(num_perm=128)
            m.update_batch([b" ".join(tokens[i : i + 3]) for i in range(max(1, len(tokens) - 2))])
        ref_rates.append(len(subset) / (time.perf_counter() - start))
    # Recall on the planted edits whose true Jaccard reaches the threshold (shorter texts fall below it),
    # and the rows dropped that are not planted edits (false positives).
    should = [i for i, src in sources.items() if _jaccard(rows[i], rows[src]) >= threshold]
    recall = sum(not keep[i] for i in should) / max(1, len(should))
    false_drops = sum(not k for i, k in enumerate(keep) if i not in sources)
    sig = statistics.median(sig_rates)
    ref = statistics.median(ref_rates)
    return {
        "rows": n,
        "threshold": threshold,
        "dropped": n - sum(keep),
        "planted_edits": len(sources),
        "planted_at_or_above_threshold": len(should),
        "recall_on_those": round(recall, 4),
        "dropped_not_planted": false_drops,
        "dedup_rows_per_s": round(statistics.median(rates)),
        "dedup_runs": [round(r) for r in rates],
        "signature_rows_per_s": round(sig),
        "datasketch_minhash_signature_rows_per_s": round(ref),
        "signature_speedup": round(sig / ref, 2),
    }


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
            f"minhash dedup: {mh['dedup_rows_per_s']} rows/s on {mh['rows']} rows "
            f"(recall {mh['recall_on_those']:.1%} on {mh['planted_at_or_above_threshold']} planted near-duplicates, "
            f"{mh['dropped_not_planted']} other rows dropped); signatures "
            f"{mh['signature_rows_per_s']} rows/s vs datasketch MinHash {mh['datasketch_minhash_signature_rows_per_s']} "
            f"({mh['signature_speedup']}x)",
            flush=True,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
