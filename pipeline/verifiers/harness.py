"""The inside of the code sandbox: a warm interpreter that judges one program after another.

This file runs only inside the sandbox (``launcher.py`` starts it as ``python -I -S -c <this source> CONFIG``),
with the standard library only. Three kinds of processes take part, all in the sandbox:

- the slot (one per worker): imports the usual modules once, then for each job forks a judge, waits for
  it, kills every other process left in the sandbox and signs the job's "done" frame with the seal it reads
  only then. It never reads a job's code. It forks the next judge right after that frame (the first with the
  slot, as the probe that job isolation works here), so the judge's fork and isolation overlap the host's
  reading of the verdict; that judge starts after the sweep, and reads its job itself.
- the judge (trusted, one per job): first, before its job is sent, moves into fresh user, IPC and mount
  namespaces with its own ``/tmp`` and ``/dev/shm`` (nothing of an earlier job is left to read: files, SysV
  or POSIX IPC, keyrings), drops every capability and sets a seccomp filter (no ptrace, ``pidfd_getfd``,
  ``process_vm_readv/writev``, keyrings, namespaces or mounts; a process that tries one is killed, which is
  the reward hack ``forbidden_syscall``). It then reads the solution, forks the solution process, and only then reads the
  tests and the job's nonce, so the solution's memory never held them. It runs the tests with ``candidate``
  as a proxy that calls into the solution process over a pipe, and writes the verdict, with the nonce, to the
  host. The judge is non-dumpable: a process of the same uid can neither read nor write its memory nor open
  its file descriptors.
- the solution process (untrusted): runs the model's code with its own rlimits, stdout/stderr going to an
  anonymous file, and then serves calls. Arguments and results cross the pipe as tagged JSON of plain data
  (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset; exact types, not
  subclasses). The judge decodes replies into fresh built-in objects, so no ``__eq__`` written by the model
  ever runs in the judge; a result that is not plain data is a reward hack (``non_plain_return``).

The tests see only what they must: the entry point (as itself and ``candidate``) and the names the prompt
defines (its helpers, run by the judge in a module of their own, so a solution that defines ``len`` or
``sum`` changes nothing for them). Without a prompt or an entry point, the names the tests read. Builtins
and dunder names never come from the solution, and ``__name__`` is set by the judge last.

The "tests ran to the end" signal is the judge's frame on a pipe the solution process does not hold, so the
solution can neither see nor forge it; exiting early (``sys.exit(0)``, ``os._exit(0)``) before the judge
is done is itself a reward hack (``exited_early``).

Frames on every pipe: a 4-byte big-endian length, then UTF-8 JSON.
"""

import builtins
import fcntl
import json
import os
import resource
import select
import signal
import struct
import sys
import time

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
MAX_DEPTH = 100
OUTPUT_TAIL = 20000
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
NO_MORE_JOBS = 4  # a judge's exit code: the host closed the jobs pipe before sending its job
# Modules HumanEval-style solutions and tests import; importing them once in the slot makes each fork cheap.
WARM_MODULES = (
    "math re collections itertools functools heapq bisect string typing fractions decimal statistics "
    "hashlib random datetime operator copy ast json cmath array enum dataclasses textwrap"
).split()


# --- frames ------------------------------------------------------------------------------------------------


def read_exact(fd, n):
    """Exactly ``n`` bytes from ``fd`` (raw reads: nothing beyond the frame is buffered in this process)."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd):
    (size,) = _HEADER.unpack(read_exact(fd, 4))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    return json.loads(read_exact(fd, size))


def write_frame(fd, obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


# --- plain data --------------------------------------------------------------------------------------------


class NotPlain(Exception):
    """A value that is not plain data; the message names its type."""


def encode(x, depth=0):
    """Tagged JSON of plain data: JSON's own types stay as they are, the others become one-key objects."""
    t = type(x)  # exact types: a subclass of int or list may carry its own __eq__
    if x is None or t is bool or t is int or t is str or t is float:
        return x
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deep")
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is tuple:
        return {"t": [encode(v, depth + 1) for v in x]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    if t is set:
        return {"s": [encode(v, depth + 1) for v in x]}
    if t is frozenset:
        return {"f": [encode(v, depth + 1) for v in x]}
    if t is bytes:
        return {"b": x.hex()}
    if t is complex:
        return {"c": [x.real, x.imag]}
    raise NotPlain(f"{t.__module__}.{t.__qualname__}")


def decode(v, depth=0):
    """The inverse of ``encode``, strict: anything else raises ValueError (or TypeError for bad keys)."""
    t = type(v)
    if v is None or t is bool or t is int or t is str or t is float:
        return v
    if depth > MAX_DEPTH + 1:
        raise ValueError("nested too deep")
    if t is list:
        return [decode(i, depth + 1) for i in v]
    if t is dict and len(v) == 1:
        ((tag, body),) = v.items()
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if type(body) is list:
            if tag == "t":
                return tuple(decode(i, depth + 1) for i in body)
            if tag == "d":
                return {decode(k, depth + 1): decode(val, depth + 1) for k, val in body}
            if tag == "s":
                return {decode(i, depth + 1) for i in body}
            if tag == "f":
                return frozenset(decode(i, depth + 1) for i in body)
            if tag == "c" and len(body) == 2 and all(type(p) in (int, float) for p in body):
                return complex(*body)
    raise ValueError("malformed plain data")


# --- the slot ----------------------------------------------------------------------------------------------


def slot_main(config):
    fds = config["fds"]
    # Everything a judge needs is made here, once: the libc handle and the compiled seccomp filter, and the
    # modules it uses. Each fork then inherits them, and a job pays only for its own syscalls.
    isolation = JobIsolation()
    # Non-dumpable: the solution (same uid) cannot open our fds or memory via /proc. Subreaper: orphans
    # of a job come back to us, so nothing is re-parented out of reach.
    isolation.libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    isolation.libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for name in WARM_MODULES:
        try:
            __import__(name)
        except ImportError:
            pass
    import gc

    gc.collect()
    gc.freeze()  # keep the warm heap shared with the forks instead of touched by their collections
    # The first judge is also the probe: it says whether a job's namespaces and filter can be set up here.
    isolated_r, isolated_w = os.pipe()
    judge = _fork_judge(config, isolation, isolated_w)
    os.close(isolated_w)
    isolated = os.read(isolated_r, 1) == b"1"
    os.close(isolated_r)
    if not isolated:
        os.waitpid(judge, 0)
        os._exit(125)  # the judge said why on stderr
    write_frame(fds["frames"], {"ready": os.getpid()})
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):  # from now on no host file is held here (the host reads stderr only at start)
        os.dup2(null, fd)
    os.close(null)
    while True:
        # The judge was forked and isolated before its job came: that work overlaps the host's reading of
        # the previous verdict. It reads the job itself; the slot never reads a job's code.
        _, status = os.waitpid(judge, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == NO_MORE_JOBS:
            os._exit(0)
        clean = _kill_others()
        try:
            seal = read_frame(fds["seals"]).get("seal")
        except (EOFError, ValueError, AttributeError):
            os._exit(3)
        write_frame(fds["frames"], {"done": _describe(status), "clean": clean, "seal": seal})
        del seal
        if not clean:
            os._exit(3)  # the host starts a fresh slot
        judge = _fork_judge(config, isolation)  # after the sweep: nothing of the last job is left to see it


def _fork_judge(config, isolation, isolated_fd=None):
    """Fork the next job's judge. It isolates itself at once, then waits for its job; with ``isolated_fd``
    (the first judge only) it writes b"1" there once isolated, else why not on stderr, and exits."""
    judge = os.fork()
    if judge == 0:
        try:
            os.close(config["fds"]["seals"])
            judge_main(config, isolation, isolated_fd)
        finally:
            os._exit(0)
    return judge


def _kill_others(deadline_s=2.0):
    """SIGKILL every process of the sandbox but its init (pid 1) and us; True once none is left."""
    me = os.getpid()
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        while True:  # reap the zombies that came back to us
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)
    return False


def _describe(status):
    if os.WIFSIGNALED(status):
        return {"signal": signal.Signals(os.WTERMSIG(status)).name}
    return {"exit": os.WEXITSTATUS(status)}


def _set_limits(limits, nproc):
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# --- one job's isolation ------------------------------------------------------------------------------

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEW_ANY = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
MS_NOSUID, MS_NODEV = 2, 4
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_CAP_AMBIENT = 38, 22, 24, 47
SHM_MB = 1
EPERM, ENOSYS = 1, 38
# Per architecture: (AUDIT_ARCH, syscalls that kill the process, syscalls that fail with EPERM, clone, clone3).
# Killed: reading or steering another process (ptrace, pidfd_getfd, process_vm_readv/writev, kcmp) and the
# kernel keyrings (add_key, request_key, keyctl); an honest solution never calls them. Refused: namespaces,
# mounts, perf, bpf, userfaultfd and io_uring.
SECCOMP = {
    "x86_64": (
        0xC000003E,
        (101, 438, 310, 311, 312, 248, 249, 250),
        (272, 308, 165, 166, 155, 428, 429, 430, 431, 432, 442, 298, 321, 323, 425, 426, 427),
        56,
        435,
    ),
    "aarch64": (
        0xC00000B7,
        (117, 438, 270, 271, 272, 217, 218, 219),
        (97, 268, 40, 39, 41, 428, 429, 430, 431, 432, 442, 241, 280, 282, 425, 426, 427),
        220,
        435,
    ),
}


class JobIsolation:
    """Fresh user, IPC and mount namespaces with an empty /tmp and /dev/shm, no capabilities, and the
    seccomp filter: everything a job may touch is its own, and gone when its last process ends.

    Made once per slot (libc through ctypes, the filter compiled to BPF); ``apply`` runs in each judge."""

    def __init__(self):
        import ctypes

        self.libc = ctypes.CDLL(None, use_errno=True)
        for name in ("unshare", "mount", "prctl", "capset"):
            getattr(self.libc, name)  # looked up here, once, rather than in every judge
        program = seccomp_program()
        self._filter = ctypes.create_string_buffer(program, len(program))
        fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(self._filter))
        self._fprog = ctypes.create_string_buffer(fprog, len(fprog))
        self._capset = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()  # _V3, this process
        self._mount_flags = ctypes.c_ulong(MS_NOSUID | MS_NODEV)
        self._get_errno = ctypes.get_errno

    def check(self, ret, what):
        if ret != 0:
            err = self._get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def apply(self, limits):
        libc, check = self.libc, self.check
        uid, gid = os.getuid(), os.getgid()
        check(libc.unshare(CLONE_NEWUSER | CLONE_NEWIPC | CLONE_NEWNS), "unshare")
        # /proc/self of a non-dumpable process is root's: dumpable for the time of these writes. Nothing but
        # the slot and us runs in the sandbox now (the slot swept the previous job's processes).
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        maps = {"setgroups": "deny", "uid_map": f"{uid} {uid} 1", "gid_map": f"{gid} {gid} 1"}
        for name, text in maps.items():
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        for path, mb in ((b"/tmp", limits["tmp_mb"]), (b"/dev/shm", SHM_MB)):
            opts = f"size={mb}m,mode=700,uid={uid},gid={gid}".encode()
            check(libc.mount(b"tmpfs", path, b"tmpfs", self._mount_flags, opts), path.decode())
        os.chdir("/tmp")
        # The new user namespace gave us every capability in it: drop them all, for good.
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break
        libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
        check(libc.capset(*self._capset), "capset")
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        check(libc.prctl(PR_SET_SECCOMP, 2, self._fprog, 0, 0), "seccomp")  # SECCOMP_MODE_FILTER


def seccomp_program():
    """The classic BPF filter of ``SECCOMP`` for this machine's architecture."""
    machine = os.uname().machine
    if machine not in SECCOMP:
        raise OSError(f"no seccomp filter for {machine}")
    arch, kill, refuse, clone, clone3 = SECCOMP[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill_process, errno = 0x7FFF0000, 0x80000000, 0x00050000
    code = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill_process), (ld, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI's numbers would bypass every rule below
        code += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill_process)]
    for nr in kill:
        code += [(jeq, 0, 1, nr), (ret, 0, 0, kill_process)]
    for nr in refuse:
        code += [(jeq, 0, 1, nr), (ret, 0, 0, errno | EPERM)]
    code += [(jeq, 0, 1, clone3), (ret, 0, 0, errno | ENOSYS)]  # its flags cannot be read; libc falls back
    code += [(jeq, 0, 3, clone), (ld, 0, 0, 16), (jset, 0, 1, CLONE_NEW_ANY), (ret, 0, 0, errno | EPERM)]
    code += [(ret, 0, 0, allow)]
    return b"".join(struct.pack("HBBI", *insn) for insn in code)


# --- the judge ---------------------------------------------------------------------------------------------


class RewardHack(BaseException):
    """Raised in the judge when the solution tried a reward hack (BaseException: tests cannot swallow it)."""


class SolutionDied(BaseException):
    """The solution process ended while the judge still needed it."""


class Unsupported(BaseException):
    """The tests passed the solution something that cannot cross the pipe (e.g. a function)."""


class SolutionError(Exception):
    """An exception raised in the solution process whose type is not a built-in one."""


def judge_main(config, isolation, isolated_fd=None):
    limits, jobs, result_fd = config["limits"], config["fds"]["jobs"], config["fds"]["frames"]
    try:
        isolation.apply(limits)
    except Exception as e:  # noqa: BLE001 - whatever stops the isolation stops the job
        if isolated_fd is not None:  # the slot's probe: say why, and the slot does not start
            os.write(2, f"distill-sandbox: cannot isolate a job ({e})\n".encode())
            os._exit(1)
        # Fail within the job the host sends next (its frames then stay unread: the host retires the slot).
        _wait_for_job(jobs)
        raise
    out = os.open("/tmp", os.O_TMPFILE | os.O_RDWR, 0o600)  # the program's stdout+stderr, in no folder
    os.dup2(out, 1)
    os.dup2(out, 2)  # from here on no host file is held (the first judge was started with the slot's stderr)
    if isolated_fd is not None:
        os.write(isolated_fd, b"1")
        os.close(isolated_fd)
    _wait_for_job(jobs)
    job = read_frame(jobs)
    call_r, call_w = os.pipe()
    reply_r, reply_w = os.pipe()
    solution = os.fork()
    if solution == 0:
        try:
            solution_main(job, limits, out, call_r, reply_w)
        except SystemExit as e:  # leave as Python would, with the code the program chose
            code = e.code
            if not (code is None or type(code) is int):
                print(code, file=sys.stderr)
                code = 1
            _flush()
            os._exit(code or 0)
        finally:
            _flush()
            os._exit(1)
    os.close(call_r)
    os.close(reply_w)
    # Only now read the tests and the nonce: the solution process was forked before they were in our memory.
    tests = read_frame(jobs)
    _set_limits(limits, nproc=1)
    judge = Judge(solution, call_w, reply_r)
    result = judge.run(tests)
    os.close(call_w)
    result["solution"] = judge.reap()
    if result["solution"] and result["completed"] is False and not result.get("hack"):
        exit_code = result["solution"].get("exit")
        if exit_code == 0 and judge.died:  # it left with "success" before the judge was done
            result["hack"] = "exited_early"
        elif result["solution"].get("signal") == "SIGSYS":  # killed by the seccomp filter
            result["hack"] = "forbidden_syscall"
    result["nonce"] = tests.get("nonce")
    size = os.lseek(out, 0, os.SEEK_END)
    result["output"] = os.pread(out, OUTPUT_TAIL, max(0, size - OUTPUT_TAIL)).decode("utf-8", "replace")
    write_frame(result_fd, result)


def _wait_for_job(jobs):
    """Read the job's first frame ({"job": n}); when the host closed the pipe, the slot is done."""
    try:
        read_frame(jobs)
    except EOFError:
        os._exit(NO_MORE_JOBS)


class Judge:
    def __init__(self, pid, call_w, reply_r):
        self.pid, self.call_w, self.reply_r = pid, call_w, reply_r
        self.hack = None
        self.died = False
        self.unsupported = None
        self.status = None

    def run(self, tests):
        """Wait for the solution to load, then run the tests; returns the result frame (without output)."""
        try:
            loaded = self._reply()
        except SolutionDied:
            return {"completed": False, "error": None, "where": "solution"}
        if "raise" in loaded:
            return {"completed": False, "error": _line(*loaded["raise"]), "where": "solution"}
        if tests.get("tests") is None:
            return {"completed": True, "error": None}
        callables, values = loaded.get("callables", []), loaded.get("values", {})
        if (
            type(callables) is not list
            or type(values) is not dict
            or not all(type(n) is str for n in callables)
        ):
            return {"completed": False, "error": None, "hack": "malformed_reply"}
        try:
            scope = self.tests_scope(tests, set(callables), values)
        except (ValueError, TypeError, RecursionError):
            return {"completed": False, "error": None, "hack": "malformed_reply"}
        try:
            exec(compile(tests["tests"], "tests.py", "exec", dont_inherit=True), scope)
            error = None
        except (RewardHack, SolutionDied, Unsupported):
            error = None
        except BaseException as e:  # noqa: BLE001 - whatever stopped the tests is the verdict
            error = _line(type(e).__name__, _safe_str(e))
        if self.hack:
            return {"completed": False, "error": None, "hack": self.hack}
        if self.unsupported:
            return {"completed": False, "error": None, "unsupported": self.unsupported}
        if self.died:
            return {"completed": False, "error": None, "where": "solution"}
        return {"completed": error is None, "error": error, "where": "tests"}

    def tests_scope(self, tests, callables, values):
        """The tests' globals: builtins, the prompt's names and the entry point; ``__name__`` last.

        The prompt (HumanEval's) is trusted code and runs in a module of its own, so its helpers (``poly``,
        ``encode_cyclic``) resolve ``sum`` or ``len`` there, never in the solution. Its stubs (a docstring
        only) and the entry point are the solution's, as proxies. Without a prompt and an entry point, the
        names the tests read come from the solution. Builtins and dunder names never do."""
        entry = tests.get("entry_point")
        context = tests.get("context") or ""
        module = {"__name__": "prompt", "__builtins__": builtins}
        if context:
            try:
                exec(compile(context, "prompt.py", "exec", dont_inherit=True), module)
            except Exception:  # noqa: BLE001 - a prompt that is not runnable on its own adds what it defined
                pass
        stubs = _stubs(context)
        if context or entry:
            wanted = set(module) | {entry}
        else:
            wanted = _free_names(tests["tests"])
        scope = {"__builtins__": builtins}
        for name in sorted(n for n in wanted if n and not n.startswith("__") and not hasattr(builtins, n)):
            if name in module and name not in stubs and name != entry:
                scope[name] = module[name]
            elif name in callables:
                scope[name] = module[name] = self.proxy(name)  # prompt helpers that call it reach it too
            elif name in values:
                scope[name] = decode(values[name])
            elif name in module:
                scope[name] = module[name]
        if entry:
            scope[entry] = scope["candidate"] = module[entry] = self.proxy(entry)
        scope["__name__"] = "__main__"  # guarded tests run
        return scope

    def proxy(self, name):
        def call(*args, **kwargs):
            return self.call(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def call(self, name, args, kwargs):
        if self.died:
            raise SolutionDied
        try:
            request = {"call": name, "args": encode(list(args)), "kwargs": encode(kwargs)}
        except NotPlain as e:
            self.unsupported = f"an argument of {name}() is not plain data ({e})"
            raise Unsupported from None
        try:
            write_frame(self.call_w, request)
        except OSError:
            self.died = True
            raise SolutionDied from None
        reply = self._reply()
        try:
            if "ok" in reply:
                return decode(reply["ok"])
        except (ValueError, TypeError, RecursionError):
            self.hack = "malformed_reply"
            raise RewardHack from None
        if "raise" in reply:
            kind, message = reply["raise"]
            raise _rebuild(str(kind), str(message))
        self.hack = str(reply.get("hack") or "malformed_reply")[:100]
        raise RewardHack

    def _reply(self):
        try:
            reply = read_frame(self.reply_r)
        except (EOFError, OSError):
            self.died = True
            raise SolutionDied from None
        except (ValueError, RecursionError):
            self.hack = "malformed_reply"
            raise RewardHack from None
        if type(reply) is not dict:
            self.hack = "malformed_reply"
            raise RewardHack
        return reply

    def reap(self):
        """How the solution process ended (None if it was still serving), after which it is gone."""
        _wait_for_exit(self.pid, 1.0 if self.died else 0.2)
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            return _describe(status)
        os.kill(self.pid, signal.SIGKILL)
        status = os.waitpid(self.pid, 0)[1]
        return None if not self.died else _describe(status)


def _wait_for_exit(pid, timeout):
    """Until our child ``pid`` has ended (it is left to reap) or ``timeout`` passed."""
    try:
        pidfd = os.pidfd_open(pid)  # readable once the process has ended: no polling
    except OSError:  # Linux before 5.3
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
            time.sleep(0.002)
        return
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


def _stubs(source):
    """Top-level functions of ``source`` with no body: only a docstring, ``pass`` or ``...``."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()

    def empty(n):
        return isinstance(n, ast.Pass) or (
            isinstance(n, ast.Expr)
            and isinstance(n.value, ast.Constant)
            and type(n.value.value) in (str, type(...))
        )

    return {
        n.name
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and all(empty(b) for b in n.body)
    }


def _free_names(source):
    """Names ``source`` reads (a superset of what it needs from outside: the judge skips the rest)."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _rebuild(kind, message):
    """The exception the solution raised, as a built-in exception of the same type when there is one."""
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError wants five arguments
            pass
    return SolutionError(f"{kind}: {message}")


def _safe_str(e):
    try:
        return str(e)
    except Exception:  # noqa: BLE001
        return "<unprintable>"


def _line(kind, message):
    message = " ".join(str(message).split())
    return f"{kind}: {message}"[:1000] if message else str(kind)


# --- the solution process ----------------------------------------------------------------------------------


def solution_main(job, limits, out, call_r, reply_w):
    # fds 0-4: /dev/null, the output file twice, the call pipe, the reply pipe. Nothing else stays open:
    # not the host's pipes, not the judge's result fd.
    null = os.open("/dev/null", os.O_RDONLY)
    keep = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (null, out, out, call_r, reply_w)]
    for target, fd in enumerate(keep):
        os.dup2(fd, target)
    os.closerange(5, 1 << 16)
    call_r, reply_w = 3, 4
    os.chdir("/tmp")
    nproc = 1
    if limits["max_processes"] > 1:  # RLIMIT_NPROC counts every process of the uid: the judge and slot too
        own = sum(1 for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == os.getuid())
        nproc = own + limits["max_processes"] - 1
    _set_limits(limits, nproc=nproc)
    scope = {"__name__": "__main__" if job.get("as_main") else "solution", "__builtins__": builtins}
    source = job["solution"]
    del job
    try:
        exec(compile(source, "solution.py", "exec", dont_inherit=True), scope)
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception as e:  # noqa: BLE001 - SystemExit is not caught: leaving is an answer of its own
        _reply(reply_w, {"raise": [type(e).__name__, _safe_str(e)[:2000]]})
        os._exit(1)
    callables, values = [], {}
    for name, value in list(scope.items()):
        if name.startswith("__"):
            continue
        if callable(value) and not isinstance(value, type(sys)):
            callables.append(name)
        else:
            try:
                values[name] = encode(value)
            except (NotPlain, RecursionError):
                pass  # modules, objects: not shared with the tests
    _reply(reply_w, {"callables": callables, "values": values})
    while True:
        try:
            request = read_frame(call_r)
        except (EOFError, OSError):
            os._exit(0)
        try:
            function = scope[request["call"]]
            value = function(*decode(request["args"]), **decode(request["kwargs"]))
        except Exception as e:  # noqa: BLE001 - the test decides what an exception means
            _reply(reply_w, {"raise": [type(e).__name__, _safe_str(e)[:2000]]})
            continue
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            _reply(reply_w, {"ok": encode(value)})
        except (NotPlain, RecursionError) as e:
            _reply(reply_w, {"hack": "non_plain_return", "type": _safe_str(e)[:200]})
        except Exception as e:  # noqa: BLE001 - e.g. OSError from a full output file
            _reply(reply_w, {"raise": [type(e).__name__, _safe_str(e)[:2000]]})


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - e.g. a full output file
            pass


def _reply(fd, obj):
    try:
        write_frame(fd, obj)
    except OSError:
        os._exit(1)


def _uid_of(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


if __name__ == "__main__":
    slot_main(json.loads(sys.argv[1]))
