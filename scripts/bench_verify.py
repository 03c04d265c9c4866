"""Benchmark the verify stage's two heavy parts, each against a reference measured in the same run.

1. Code verifier: sandboxed programs/s on the 164 HumanEval canonical solutions, with the sandbox's default
   number of slots (one per core; ``--workers`` to choose), on each sandbox backend that works
   here (warm pre-forked slots, started inside each timed run); reference:
   a plain, unsandboxed fresh interpreter per program (``python -I``, solution then tests, as the previous
   verifier ran them minus its launcher and namespaces, so the ratio understates the gain); prints the ratio.
   Beside each backend's rate: its CPU milliseconds per program (the slots' processes and ours, start-up
   included), which, unlike a rate, holds when other work shares the cores; and its idle fraction,
   1 - (rate / the rate the cores would allow at that CPU cost), the share of core time the run left unused
   (waits at hand-overs, start-up, the last straggler; on a busy machine, also the cores other work took).
   The load average before the runs is printed too.
2. MinHash near-duplicate dedup: rows/s on 100k synthetic rows (a share of them planted near-duplicates),
   with ``pipeline.filters.dedup.minhash_dedup`` (rensa signatures + LSH); reference: the previous
   implementation (numpy signatures + datasketch LSH, ``pipeline.filters.minhash_reference``) on the same
   rows; prints the ratio, each one's recall, and how many rows the two keep differently.

Each figure is the median of ``--repeats`` runs. The code part runs as any user (bwrap without root).

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

_REFERENCE_HARNESS = """
import sys
scope = {"__name__": "solution"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), scope)
scope["__name__"] = "__main__"
exec(compile(open("tests.py").read(), "tests.py", "exec"), scope)
"""


def _reference_check(programs: list, workers: int) -> list[bool]:
    """The reference: one fresh interpreter per program, no sandbox, ``workers`` at a time."""
    import subprocess
    import sys
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    def run(program) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in (("solution.py", program.solution), ("tests.py", program.tests)):
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _REFERENCE_HARNESS], cwd=tmp, capture_output=True, timeout=60
            )
            return proc.returncode == 0

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, programs))


def bench_code(repeats: int, workers: int | None = None) -> dict:
    from pipeline.verifiers.code import CodeVerifier, build_program, humaneval_rows
    from pipeline.verifiers.sandbox import BACKENDS, backend_problem, default_backend, default_workers

    rows = humaneval_rows()
    cores = os.cpu_count() or 1
    out: dict = {"programs": len(rows), "cores": cores, "default_backend": default_backend()}
    out["slots"] = workers or default_workers()
    out["load_before"] = round(os.getloadavg()[0], 2)
    for backend in [b for b in BACKENDS if backend_problem(b) is None]:
        rates, cpu_ms, idle = [], [], []
        for _ in range(repeats):
            verifier = CodeVerifier(timeout_s=10.0, workers=out["slots"], backend=backend)
            start, host_cpu = time.perf_counter(), time.process_time()
            verdicts = verifier.check(rows)  # slot start-up counts: a fresh verifier each run
            rates.append(len(rows) / (time.perf_counter() - start))
            used = verifier.sandbox.cpu_s() + time.process_time() - host_cpu
            cpu_ms.append(1000 * used / len(rows))
            idle.append(1 - rates[-1] * cpu_ms[-1] / 1000 / cores)
            verifier.close()
            passed = sum(v.passed is True for v in verdicts)
            if passed != len(rows):
                raise SystemExit(
                    f"only {passed}/{len(rows)} canonical solutions passed; the benchmark is void"
                )
        out[f"{backend}_programs_per_s"] = round(statistics.median(rates), 2)
        out[f"{backend}_runs"] = [round(r, 2) for r in rates]
        out[f"{backend}_cpu_ms_per_program"] = round(statistics.median(cpu_ms), 2)
        out[f"{backend}_idle_fraction"] = round(statistics.median(idle), 3)
    programs = [build_program(row)[0] for row in rows]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        ok = _reference_check(programs, cores)
        rates.append(len(rows) / (time.perf_counter() - start))
        if not all(ok):
            raise SystemExit(f"the reference passed only {sum(ok)}/{len(rows)}; the benchmark is void")
    out["reference_programs_per_s"] = round(statistics.median(rates), 2)
    out["reference_runs"] = [round(r, 2) for r in rates]
    out["programs_per_s"] = out[f"{out['default_backend']}_programs_per_s"]
    out["ratio"] = round(out["programs_per_s"] / out["reference_programs_per_s"], 2)
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
    parser.add_argument("--workers", type=int, help="sandbox slots (default: the sandbox's, one per core)")
    args = parser.parse_args()
    result = {}
    if args.part in ("all", "code"):
        code = result["code"] = bench_code(args.repeats, args.workers)
        others = ", ".join(
            f"{b} {code[f'{b}_programs_per_s']} ({code[f'{b}_cpu_ms_per_program']} CPU ms each, "
            f"idle {code[f'{b}_idle_fraction']:.0%})"
            for b in ("namespaces", "bwrap")
            if f"{b}_programs_per_s" in code
        )
        print(
            f"code verifier: {code['programs_per_s']} programs/s sandboxed ({code['default_backend']}; {others}) "
            f"on {code['cores']} cores ({code['slots']} slots, load {code['load_before']}) "
            f"vs {code['reference_programs_per_s']} for a plain interpreter per program "
            f"({code['ratio']}x), HumanEval canonical, median of {args.repeats}",
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
