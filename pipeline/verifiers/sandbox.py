"""Run untrusted Python programs (model completions plus their tests) in a sandbox.

Each program runs in a fresh private directory, with:
- no network (a new, empty network namespace: even 127.0.0.1 is unreachable);
- its own PID, mount, IPC and UTS namespaces. The whole namespace dies with its init, so nothing
  the program spawned can outlive the run;
- a read-only view of the filesystem, except its private directory, which it sees as ``/tmp``
  (``/root`` and ``/home`` are replaced by empty folders, so ``~/.ssh`` and friends are not there);
- an unprivileged uid of its own (one per parallel slot, so per-uid limits and the stray-process sweep
  never touch anything else), no supplementary groups and no capabilities;
- ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_NPROC`` (1 by default: no fork, no threads), ``RLIMIT_FSIZE``,
  ``RLIMIT_NOFILE`` and no core dumps;
- a scrubbed environment (no secrets from the host);
- a wall-clock timeout that SIGKILLs the whole process group, after which any process still running
  under the slot's uid is killed too.

The namespaces are set up by this file itself, run as a tiny launcher (``python -I -S sandbox.py SPEC``)
through ``ctypes``; it needs root (or CAP_SYS_ADMIN), nothing from apt. Programs run in parallel on a
thread pool sized to the number of cores.

    python -m pipeline.verifiers.sandbox "print(sum(range(10)))"    # run one snippet, print the result
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

# Exit code and stderr marker the launcher uses when the sandbox itself could not be set up.
SANDBOX_ERROR_EXIT = 125
SANDBOX_ERROR_MARK = "distill-sandbox: "

# Sandbox uids: one per (host process, slot). Far above any real account, and unique per live process,
# so two pipelines on one machine never share a uid (and never kill each other's programs).
_UID_BASE = 1 << 30
_MAX_SLOTS = 64

# Inside the sandbox the harness reads the nonce from stdin, then closes it, runs the program, and prints
# the nonce only if the program ran to its end. This makes ``sys.exit(0)`` / ``os._exit(0)`` at the top
# of a completion a failure instead of a pass. (It guards against that reward hack, not against code that
# digs through the interpreter's frames for the nonce.) With separate tests, the solution runs first as a
# module named ``solution`` (so its own ``if __name__ == "__main__":`` demo code does not run, as in
# HumanEval's harness), then the tests run as ``__main__`` in the same namespace.
_HARNESS = """\
import os, sys
def _run():
    nonce = os.read(0, 128).decode().strip()
    os.close(0)
    os.open("/dev/null", os.O_RDONLY)
    # Read both files before running anything: the solution must not be able to rewrite its tests.
    parts = []
    for name in ("solution.py", "tests.py"):
        if os.path.exists(name):
            with open(name, encoding="utf-8") as f:
                parts.append((name, compile(f.read(), name, "exec")))
    scope = {"__name__": "solution", "__file__": "solution.py", "__builtins__": __builtins__}
    for i, (name, code) in enumerate(parts):
        if i == len(parts) - 1:
            scope["__name__"] = "__main__"
        exec(code, scope)
    sys.stdout.flush()
    os.write(1, ("\\n" + nonce + "\\n").encode())
_run()
"""


@dataclass
class Limits:
    """Resource limits of one program."""

    wall_s: float = 10.0  # wall-clock timeout; the process group is killed after it
    cpu_s: int = 10  # RLIMIT_CPU (SIGXCPU, then SIGKILL one second later)
    memory_mb: int = 1024  # RLIMIT_AS
    max_processes: int = 1  # RLIMIT_NPROC for the program's own uid: 1 = no fork, no threads
    file_size_mb: int = 16  # RLIMIT_FSIZE: biggest file the program may write (stdout included)
    open_files: int = 64  # RLIMIT_NOFILE


@dataclass
class RunResult:
    """What happened to one program."""

    status: str  # ok | error | timeout | signal | sandbox_error
    returncode: int | None
    completed: bool  # the program ran to its end (the harness printed the nonce) and exited 0
    stdout: str
    stderr: str
    wall_s: float
    signal: str | None = None  # e.g. SIGXCPU when status == "signal"
    stray_processes: int = 0  # processes still alive under the slot's uid after the run (then killed)

    @property
    def passed(self) -> bool:
        return self.status == "ok" and self.completed


class _UidPool:
    """Hands out the sandbox uids of this process, one per running program."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free = list(range(_MAX_SLOTS))
        self._cond = threading.Condition(self._lock)

    def acquire(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return _UID_BASE + (os.getpid() % (1 << 22)) * _MAX_SLOTS + self._free.pop(0)

    def release(self, uid: int) -> None:
        with self._cond:
            self._free.append((uid - _UID_BASE) % _MAX_SLOTS)
            self._free.sort()
            self._cond.notify()


_UIDS = _UidPool()


def pids_of_uid(uid: int) -> list[int]:
    """Host pids of the processes running under ``uid``."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    pids.append(int(name))
            except OSError:
                pass  # the process ended while we looked
    return pids


def _kill_uid(uid: int, deadline_s: float = 2.0) -> int:
    """SIGKILL every process of ``uid`` until none is left; return how many were found at first."""
    first = None
    end = time.monotonic() + deadline_s
    while True:
        pids = pids_of_uid(uid)
        if first is None:
            first = len(pids)
        if not pids or time.monotonic() > end:
            return first
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _base_python() -> str:
    """The base interpreter, not the virtualenv's: programs get the standard library only. This keeps the
    venv's packages away from untrusted code, and works wherever the checkout lives (even under /tmp,
    which the sandbox replaces with the program's private directory)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _exposed_paths() -> list[str]:
    """Folders the program needs (the base interpreter and its standard library), visible in the sandbox."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    paths.add(os.path.dirname(_base_python()))
    return sorted(paths)


class Sandbox:
    """Runs Python sources in the sandbox, one at a time (``run``) or in parallel (``run_many``)."""

    def __init__(self, limits: Limits | None = None, workers: int | None = None, python: str | None = None):
        self.limits = limits or Limits()
        self.workers = max(1, min(workers or os.cpu_count() or 1, _MAX_SLOTS))
        self.python = python or _base_python()

    def run_many(self, sources: list[str], tests: list[str | None] | None = None) -> list[RunResult]:
        """Run programs in parallel, one worker per core; ``tests[i]`` (optional) runs after ``sources[i]``."""
        tests = tests if tests is not None else [None] * len(sources)
        if self.workers == 1 or len(sources) <= 1:
            return [self.run(s, t) for s, t in zip(sources, tests, strict=True)]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.run, sources, tests))

    def run(self, source: str, tests: str | None = None) -> RunResult:
        """Run ``source`` (as ``__main__``; or as module ``solution`` followed by ``tests`` as ``__main__``)."""
        uid = _UIDS.acquire()
        root = tempfile.mkdtemp(prefix="distill-sbx-")
        try:
            return self._run(source, tests, uid, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
            _UIDS.release(uid)

    def _run(self, source: str, tests: str | None, uid: int, root: str) -> RunResult:
        work = os.path.join(root, "work")
        os.mkdir(work, 0o700)
        for name, text in (("solution.py", source), ("tests.py", tests)):
            if text is not None:
                with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                    f.write(text)
        os.chown(work, uid, uid)
        nonce = secrets.token_hex(16)
        with open(os.path.join(root, "stdin"), "w") as f:
            f.write(nonce + "\n")
        spec = {
            "work": work,
            "uid": uid,
            "limits": asdict(self.limits),
            "expose": _exposed_paths(),
            "argv": [self.python, "-I", "-B", "-c", _HARNESS],
            # A scrubbed environment: nothing from the host, so no secrets. One thread per math library.
            "env": {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": "/tmp",
                "TMPDIR": "/tmp",
                "LANG": "C.UTF-8",
                "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
            },
        }
        out_path, err_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
        start = time.monotonic()
        timed_out = False
        with (
            open(os.path.join(root, "stdin"), "rb") as stdin,
            open(out_path, "wb") as stdout,
            open(err_path, "wb") as stderr,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(spec)],
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env={"PATH": "/usr/bin:/bin"},
                cwd="/",
                start_new_session=True,  # its own process group, so the timeout kills everything at once
                close_fds=True,
            )
            try:
                proc.wait(timeout=self.limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        wall = time.monotonic() - start
        stray = _kill_uid(uid)
        out = _tail(out_path)
        err = _tail(err_path)
        completed = proc.returncode == 0 and out.rstrip().endswith(nonce)
        if completed:
            out = out.rstrip()[: -len(nonce)].rstrip("\n")
        rc = proc.returncode
        if timed_out:
            status, sig = "timeout", None
        elif rc == SANDBOX_ERROR_EXIT and SANDBOX_ERROR_MARK in err:
            status, sig = "sandbox_error", None
        elif rc is not None and rc > 128 and rc - 128 < signal.NSIG:
            status, sig = "signal", signal.Signals(rc - 128).name
        elif rc == 0:
            status, sig = "ok", None
        else:
            status, sig = "error", None
        return RunResult(status, rc, completed, out, err, round(wall, 4), sig, stray)


def _tail(path: str, limit: int = 20000) -> str:
    """The last ``limit`` bytes of a file, decoded leniently (programs may print anything)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - limit))
        return f.read().decode("utf-8", "replace")


def check_available() -> str | None:
    """None when the sandbox works on this machine, else a one-line reason naming the fix."""
    if not sys.platform.startswith("linux"):
        return "the code sandbox needs Linux namespaces; run the code verifier on Linux"
    if os.geteuid() != 0:
        return "the code sandbox needs root (it creates namespaces and drops to a private uid); run as root"
    result = Sandbox(Limits(wall_s=20)).run("print('ok')")
    if result.status == "sandbox_error" or not result.passed:
        lines = result.stderr.strip().splitlines() or [result.status]
        return f"the code sandbox does not work here ({lines[-1]}); run as root on Linux >= 5.12"
    return None


# ---------------------------------------------------------------------------------------------------
# The launcher. It runs as root in a fresh interpreter (-I -S: stdlib only, nothing from the host env),
# creates the namespaces and mounts, then starts the program under the slot's uid.

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_MOUNT_SETATTR = 442  # same number on x86_64 and aarch64
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
HIDDEN = ("/root", "/home")


def _launch(spec: dict) -> None:
    import ctypes
    import resource

    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret: int, what: str) -> None:
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = lambda s: s.encode() if s is not None else None  # noqa: E731
        check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")

    def mount_setattr(path: str, flags: int, attr_set: int, attr_clr: int) -> None:
        attr = (ctypes.c_uint64 * 4)(attr_set, attr_clr, 0, 0)
        ret = libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, attr, ctypes.sizeof(attr))
        check(ret, f"mount_setattr {path}")

    try:
        check(
            libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET), "unshare"
        )
    except OSError as e:
        _die(f"cannot create namespaces ({e}); the code sandbox needs root on Linux")
    init = os.fork()  # the first child of a new PID namespace is its init
    if init:
        _exit_like(os.waitpid(init, 0)[1])

    # --- init (pid 1 of the sandbox), still root inside the new namespaces.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # if the launcher is killed, the namespace goes too
    os.umask(0o022)
    uid, work, limits = spec["uid"], spec["work"], spec["limits"]
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
        # Hide home folders, then put back the interpreter's folders that lived under them.
        keep = [p for p in spec["expose"] if p.startswith(tuple(h + "/" for h in HIDDEN))]
        fds = {p: os.open(p, os.O_PATH) for p in keep}
        for hidden in HIDDEN:
            if os.path.isdir(hidden):
                mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        for path, fd in fds.items():
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            os.close(fd)
        mount(work, "/tmp", None, MS_BIND)  # the private directory, seen as /tmp
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # shows only this namespace
        mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)  # keep /dev/null usable
        mount_setattr("/tmp", 0, 0, MOUNT_ATTR_RDONLY)
    except OSError as e:
        _die(f"cannot set up the sandbox filesystem ({e})")

    child = os.fork()
    if child == 0:
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            os.chdir("/tmp")
            mb = 1024 * 1024
            resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
            resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2)
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_processes"],) * 2)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_mb"] * mb,) * 2)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)  # from root to a plain uid: all capabilities are dropped
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        except BaseException as e:  # noqa: BLE001 - report anything that stops the exec
            _die(f"cannot start the program ({e})")
    # Reap everything (orphans are re-parented to us) until the program itself ends; our exit then
    # makes the kernel kill whatever else is left in the namespace.
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            _exit_like(status)


def _exit_like(status: int) -> None:
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _die(message: str) -> None:
    os.write(2, (SANDBOX_ERROR_MARK + message + "\n").encode())
    os._exit(SANDBOX_ERROR_EXIT)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        _launch(json.loads(sys.argv[1]))
    else:
        res = Sandbox().run(" ".join(sys.argv[1:]) or "print('hello from the sandbox')")
        print(json.dumps(asdict(res), indent=2))
