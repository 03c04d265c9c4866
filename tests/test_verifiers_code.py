"""Code verifier on HumanEval: the 164 canonical solutions pass, broken ones fail; completion formats.

.venv/bin/pytest tests/test_verifiers_code.py -q     # about 40 s on 2 cores; needs root (skips otherwise)
"""

from __future__ import annotations

import json
import os

import pytest

from pipeline.verifiers import build_verifier
from pipeline.verifiers.code import assemble_solution, build_program, code_candidates, humaneval_rows

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the code sandbox needs root")


@pytest.fixture(scope="module")
def rows():
    return humaneval_rows()


@pytest.fixture(scope="module")
def verifier():
    return build_verifier("code", timeout_s=10.0)


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
    assert bad[2].reason.startswith("exited_early")
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
    (solution, tests), problem = build_program(row)
    assert problem is None
    assert solution == "def f(x):\n    return x\n"
    assert tests.endswith("check(f)\n")
    assert assemble_solution("no code at all here", "", None)[0] is None
    assert code_candidates("```python\nx = 1\n```\ntext\n```python\ny = 2\n```")[:2] == ["x = 1\n", "y = 2\n"]


def test_solution_cannot_rewrite_its_tests_and_demo_code_does_not_run(verifier):
    rewrite = "import os\nos.remove('tests.py')\nopen('tests.py', 'w').write('pass')\ndef add(a, b):\n    return 0\n"
    demo = "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    add(input(), 1)\n"
    tests = {"test": "assert add(2, 3) == 5"}
    hacked, with_demo = verifier.check(
        [{"completion": rewrite, "meta": tests}, {"completion": demo, "meta": tests}]
    )
    assert hacked.passed is False and hacked.reason.startswith("tests_failed")
    assert with_demo.passed is True, with_demo
