"""Code verifier on HumanEval: the 164 canonical solutions pass, broken ones fail; completion formats.

Runs on each sandbox backend that works here (``namespaces`` as root, ``bwrap`` for anyone).

.venv/bin/pytest tests/test_verifiers_code.py -q     # about 30 s on 2 cores
"""

from __future__ import annotations

import json

import pytest

from pipeline.verifiers import build_verifier
from pipeline.verifiers.code import Program, assemble_solution, build_program, code_candidates, humaneval_rows
from pipeline.verifiers.sandbox import BACKENDS, backend_problem


@pytest.fixture(scope="module")
def rows():
    return humaneval_rows()


@pytest.fixture(scope="module", params=[b for b in BACKENDS if backend_problem(b) is None])
def verifier(request):
    verifier = build_verifier("code", timeout_s=10.0, backend=request.param)
    yield verifier
    verifier.close()


def test_all_canonical_solutions_pass(rows, verifier):
    verdicts = verifier.check(rows)
    failed = [(r["id"], v.reason) for r, v in zip(rows, verdicts, strict=True) if v.passed is not True]
    assert len(rows) == 164
    assert failed == []
    assert all(v.score == 1.0 and v.reason == "passed" for v in verdicts)


def test_broken_solutions_fail(rows, verifier):
    broken = []
    for row in rows:
        broken.append({**row, "completion": "    return None\n"})
    # An off-by-one edit of real solutions, on a few problems where it is certainly wrong.
    for row in rows[:20]:
        wrong = row["reference"].replace("return ", "return 1 + ", 1) if "return " in row["reference"] else ""
        broken.append({**row, "completion": wrong or "    pass\n"})
    verdicts = verifier.check(broken)
    passed = [b["id"] for b, v in zip(broken, verdicts, strict=True) if v.passed is not False]
    assert passed == []
    assert all(v.score == 0.0 for v in verdicts)


def test_completion_formats(rows, verifier):
    row = next(r for r in rows if r["id"] == "HumanEval/0")
    meta = json.loads(row["meta"])
    full = meta["prompt"] + row["reference"]
    body_unindented = "\n".join(line[4:] for line in row["reference"].splitlines())
    forms = {
        "body": row["reference"],
        "full_fenced_with_chatter": f"Sure! Here is the function:\n\n```python\n{full}```\n\nIt loops over pairs.",
        "full_plain_with_chatter": f"Here is my answer.\n\n{full}\nThis checks every pair.",
        "full_no_fence_language": f"```\n{full}```",
        "unterminated_fence": f"```python\n{full}",
        "body_dedented": body_unindented,
    }
    verdicts = verifier.check([{**row, "completion": c} for c in forms.values()])
    for name, v in zip(forms, verdicts, strict=True):
        assert v.passed is True, (name, v)
    bad = verifier.check(
        [
            {**row, "completion": "I cannot solve this."},
            {
                **row,
                "completion": "```python\ndef has_close_elements(numbers, threshold):\n    return (\n```",
            },
            {**row, "completion": "import sys\nsys.exit(0)\n"},
            {**row, "completion": ""},
            {**row, "meta": "{}"},
        ]
    )
    assert [v.passed for v in bad] == [False, False, False, False, None]
    assert bad[1].reason.startswith("syntax_error")
    assert bad[2].reason == "reward_hack: exited_early"
    assert bad[4].reason.startswith("no_tests")


def test_user_code_task_without_entry_point(verifier):
    rows = [
        {
            "completion": "```python\ndef add(a, b):\n    return a + b\n```",
            "meta": json.dumps({"test": "assert add(2, 3) == 5"}),
        },
        {"completion": "def add(a, b):\n    return a - b\n", "meta": {"test": "assert add(2, 3) == 5"}},
    ]
    good, bad = verifier.check(rows)
    assert good.passed is True
    assert bad.passed is False and bad.reason.startswith("tests_failed")


def test_program_assembly_is_plain_python():
    row = {
        "completion": "    return x\n",
        "meta": {"test": "def check(f):\n    assert f(1) == 1", "entry_point": "f", "prompt": "def f(x):\n"},
    }
    program, problem = build_program(row)
    assert problem is None
    assert isinstance(program, Program)
    assert program.solution == "def f(x):\n    return x\n"
    assert program.tests.endswith("check(f)\n")
    assert (program.entry_point, program.context) == ("f", "def f(x):\n")
    assert assemble_solution("no code at all here", "", None)[0] is None
    assert code_candidates("```python\nx = 1\n```\ntext\n```python\ny = 2\n```")[:2] == ["x = 1\n", "y = 2\n"]


def test_solution_cannot_rewrite_its_tests_and_demo_code_does_not_run(verifier):
    rewrite = "import os\nos.remove('tests.py')\nopen('tests.py', 'w').write('pass')\ndef add(a, b):\n    return 0\n"
    demo = "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    add(input(), 1)\n"
    tests = {"test": "assert add(2, 3) == 5"}
    hacked, with_demo = verifier.check(
        [{"completion": rewrite, "meta": tests}, {"completion": demo, "meta": tests}]
    )
    # There is no tests.py to remove: the tests never touch the solution's filesystem.
    assert hacked.passed is False and hacked.reason.startswith("exception: FileNotFoundError"), hacked
    write_only = "open('tests.py', 'w').write('pass')\ndef add(a, b):\n    return 0\n"
    (overwritten,) = verifier.check([{"completion": write_only, "meta": tests}])
    assert overwritten.passed is False and overwritten.reason.startswith("tests_failed"), overwritten
    assert with_demo.passed is True, with_demo


def test_exceptions_tuples_and_floats_cross_the_pipe(verifier):
    """What tests compare must arrive as the same built-in types: tuples stay tuples, floats floats, and an
    exception raised by the solution is raised, with its type, in the tests."""
    solution = (
        "def f(kind):\n"
        "    if kind == 'raise':\n        raise ValueError('bad input')\n"
        "    return {'t': (1, 2.5, None, True), 's': {1, 2}, 'b': b'x', 'd': {(1, 2): [3]}, 'n': float('nan'),\n"
        "            'big': 10**30, 'c': 1+2j, 'fs': frozenset({3})}\n"
    )
    tests = (
        "import math\n"
        "def check(candidate):\n"
        "    r = candidate('ok')\n"
        "    assert r['t'] == (1, 2.5, None, True) and type(r['t']) is tuple\n"
        "    assert isinstance(r['t'][0], int) and not isinstance(r['t'][0], bool) and r['t'][3] is True\n"
        "    assert r['s'] == {1, 2} and r['b'] == b'x' and r['d'] == {(1, 2): [3]} and math.isnan(r['n'])\n"
        "    assert r['big'] == 10**30 and r['c'] == 1+2j and type(r['fs']) is frozenset\n"
        "    try:\n        candidate('raise')\n    except ValueError as e:\n        assert 'bad input' in str(e)\n"
        "    else:\n        raise AssertionError('no exception')\n"
    )
    tuple_as_list = "def f(kind):\n    return [1, 2]\n"
    list_tests = "def check(candidate):\n    assert candidate('x') == (1, 2)\n"
    good, bad = verifier.check(
        [
            {"completion": solution, "meta": {"test": tests, "entry_point": "f"}},
            {"completion": tuple_as_list, "meta": {"test": list_tests, "entry_point": "f"}},
        ]
    )
    assert good.passed is True, good
    assert bad.passed is False and bad.reason.startswith("tests_failed"), bad


def test_function_arguments_are_undecidable_not_failed(verifier):
    row = {
        "completion": "def apply(f, x):\n    return f(x)\n",
        "meta": {
            "test": "def check(candidate):\n    assert candidate(abs, -1) == 1\n",
            "entry_point": "apply",
        },
    }
    (verdict,) = verifier.check([row])
    assert verdict.passed is None and verdict.reason.startswith("unsupported"), verdict
