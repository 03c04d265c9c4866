"""Hostile completions fed to the code verifier: each must fail with its reason, and the host stays unharmed.

.venv/bin/pytest tests/test_sandbox.py -q     # about 15 s on 2 cores; needs root (skips otherwise)
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from pipeline.verifiers.code import CodeVerifier
from pipeline.verifiers.sandbox import _UID_BASE, Limits, Sandbox, check_available

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the code sandbox needs root")

SECRET = "s3cr3t-value-that-must-not-leak"


def _row(code: str, test: str = "print('tests ran')") -> dict:
    return {"id": "x", "completion": code, "meta": json.dumps({"test": test})}


def _sandbox_processes() -> list[int]:
    """Host processes running under any sandbox uid."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid >= _UID_BASE:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


@pytest.fixture
def sentinels(tmp_path):
    """Files the hostile programs try to change: one in a private folder, one world-writable in /var/tmp."""
    paths = [tmp_path / "sentinel.txt"]
    shared = "/var/tmp" if os.access("/var/tmp", os.W_OK) else str(tmp_path)
    paths.append(Path(shared) / f"distill-sentinel-{os.getpid()}.txt")
    for p in paths:
        p.write_text("untouched")
        os.chmod(p, 0o666)  # even a world-writable file must stay untouched
    stamps = [(p, p.stat().st_mtime_ns) for p in paths]
    yield paths
    for p, mtime in stamps:
        assert p.exists(), f"{p} was deleted"
        assert p.read_text() == "untouched", f"{p} was modified"
        assert p.stat().st_mtime_ns == mtime
    paths[1].unlink()


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_sandbox_is_available():
    assert check_available() is None


def test_hostile_completions_fail_and_host_is_unharmed(sentinels, listener, monkeypatch):
    monkeypatch.setenv("DISTILL_TEST_SECRET", SECRET)
    port, accepted = listener
    private, shared = sentinels
    hostile = {
        "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
        "fork_bomb_shell": "import os\nassert os.system(':(){ :|:& };:') == 0\n",
        "endless_loop": "while True:\n    pass\n",
        "sleep_forever": "import time\ntime.sleep(3600)\n",
        "allocate_8gb": "x = bytearray(8 * 1024**3)\nx[-1] = 1\n",
        "write_outside": f"open({str(private)!r}, 'w').write('pwned')\n",
        "write_world_writable": f"open({str(shared)!r}, 'a').write('pwned')\n",
        "delete_outside": f"import os\nos.remove({str(shared)!r})\n",
        "write_repo": "open('/work/pwned.txt', 'w').write('pwned')\n",
        "read_env_secret": "import os\nprint(os.environ['DISTILL_TEST_SECRET'])\n",
        "read_proc_environ": (
            "import os\nfound = []\nfor p in os.listdir('/proc'):\n    try:\n"
            "        found.append(open(f'/proc/{p}/environ', 'rb').read())\n    except OSError:\n        pass\n"
            f"assert any(b'{SECRET}' in e for e in found), f'no secret in {{len(found)}} environments'\n"
        ),
        "read_ssh": "import os\nprint(os.listdir(os.path.expanduser('~root/.ssh')))\n",
        "socket_localhost": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
        "socket_internet": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n",
        "spawn_subprocess": "import subprocess\nsubprocess.run(['true'], check=True)\n",
        "spawn_thread": "import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()\n",
        "signal_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "signal_host": f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)\n",
        "signal_everyone": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        "exit_early": "import sys\nsys.exit(0)\n",
        "os_exit_early": "import os\nos._exit(0)\n",
        "huge_output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    }
    expected = {
        "fork_bomb": "exception: BlockingIOError",
        "fork_bomb_shell": "tests_failed",
        "endless_loop": ("cpu_time_limit", "timeout"),  # which comes first depends on the machine's load
        "sleep_forever": "timeout",
        "allocate_8gb": "memory_limit",
        "write_outside": "exception: FileNotFoundError",  # the host's /tmp is not there at all
        "write_world_writable": "exception: OSError: [Errno 30] Read-only file system",
        "delete_outside": "exception: OSError: [Errno 30] Read-only file system",
        "write_repo": "exception: OSError: [Errno 30] Read-only file system",
        "read_env_secret": "exception: KeyError",
        "read_proc_environ": "tests_failed",
        "read_ssh": "exception: FileNotFoundError",
        "socket_localhost": "exception: OSError: [Errno 101] Network is unreachable",
        "socket_internet": "exception: OSError: [Errno 101] Network is unreachable",
        "spawn_subprocess": "exception: BlockingIOError",
        "spawn_thread": "exception: RuntimeError: can't start new thread",
        "signal_parent": "exception: PermissionError",
        "signal_host": "exception: ProcessLookupError",
        "signal_everyone": "exception: ProcessLookupError",  # nobody else is visible
        "exit_early": "exited_early",
        "os_exit_early": "exited_early",
        "huge_output": "file_size_limit",
    }
    verifier = CodeVerifier(timeout_s=3.0, memory_mb=512)
    verifier.sandbox.limits.cpu_s = 2
    names = list(hostile)
    rows = [_row(hostile[n]) for n in names] + [_row("x = 1", "assert x == 1")]  # the run goes on
    start = time.monotonic()
    verdicts = verifier.check(rows)
    assert time.monotonic() - start < 60
    for name, verdict in zip(names, verdicts, strict=False):
        assert verdict.passed is False, (name, verdict)
        assert verdict.score == 0.0
        assert verdict.reason.startswith(expected[name]), (name, verdict.reason)
        assert SECRET not in verdict.reason
    assert verdicts[-1].passed is True, verdicts[-1]
    assert not accepted, "a sandboxed program reached a socket on 127.0.0.1"
    assert not os.path.exists("/work/pwned.txt")
    assert _sandbox_processes() == [], "a sandboxed process survived its run"


def test_escaped_children_are_killed():
    """A child that leaves the process group and the session still dies with the run."""
    sandbox = Sandbox(Limits(wall_s=2, cpu_s=2, max_processes=8))
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n"
    result = sandbox.run(code)
    assert result.status == "timeout"
    assert _sandbox_processes() == []


def test_private_directory_is_writable_and_fresh():
    sandbox = Sandbox(Limits(wall_s=10))
    code = "import os, tempfile\nassert os.listdir('.') == ['solution.py'], os.listdir('.')\n"
    code += (
        "open('out.txt', 'w').write('ok')\ntempfile.NamedTemporaryFile().write(b'ok')\nprint(os.getcwd())\n"
    )
    first, second = sandbox.run_many([code, code])
    assert first.passed and second.passed, (first, second)
    assert first.stdout == "/tmp"


def test_parallel_runs_use_the_cores():
    """Two sleeping programs in parallel take about as long as one."""
    sandbox = Sandbox(Limits(wall_s=10), workers=2)
    start = time.monotonic()
    results = sandbox.run_many(["import time\ntime.sleep(1)"] * 2)
    assert all(r.passed for r in results)
    assert time.monotonic() - start < 1.9
