"""The library's one process runner with limits: run a piece of Python in a separate, fenced-in process.

Code written by a model (a HumanEval completion, a tool call) must never run inside our own process: it
could loop forever, eat all memory, fill the disk or read our secrets. `run_python(code)` runs it in a
fresh interpreter and fences that interpreter in with what the operating system offers:

    where         a fresh temporary folder as its working directory (and HOME, TMPDIR), deleted afterwards
    environment   a minimal one we write ourselves: no PYTHONPATH, no tokens or keys of the parent;
                  PYTHONHASHSEED=0 (same set order every run), one thread for OpenMP/MKL/OpenBLAS
    limits        RLIMIT_AS (address space, i.e. memory), RLIMIT_CPU (CPU seconds, a little over the
                  timeout), RLIMIT_FSIZE (largest file it may write), RLIMIT_CORE 0 (no core dumps),
                  RLIMIT_NOFILE (open files)
    time          a wall-clock timeout; then the whole process group is killed, grandchildren included
    output        stdout and stderr each cut at `max_output` characters, decoded with errors="replace"

How the limits get into the child: a tiny bootstrap interpreter (`python -I -S -c _BOOT`) sets them on
itself and then exec()s the real program, so the limits hold from its first instruction and cannot be
raised again (soft = hard, and an unprivileged process cannot raise a hard limit). We do not use
Popen's preexec_fn, which is unsafe when the parent has threads (HumanEval checks run from a thread pool).

The program itself runs as `python -s -P main.py` rather than `python -I`: -I is -E -s -P, and -E would
also ignore PYTHONHASHSEED. Since the child's environment is the one we wrote, -E has nothing to protect.

Two hooks let a stronger fence build on this runner instead of starting processes of its own (nanolm.use.sandbox
does: namespaces, Landlock, seccomp). Both are Python source, empty by default:
    pre_exec   run by the bootstrap after the limits, before it exec()s the program: for what must hold from the
               program's first instruction and survives exec (entering namespaces, a Landlock domain)
    pre_main   run by the final interpreter just before main.py: for what exec would undo or what forbids exec
               itself (a seccomp filter that denies execve must come after the last exec)
An exception in either stops the run before main.py (a traceback on stderr, exit status 1): fail closed.
Output a hook prints in the bootstrap is lost at exec unless flushed.

Where a limit cannot be set it is skipped silently: macOS refuses RLIMIT_AS, and no limit is raised
above a hard limit the parent already has. The timeout and the group kill always hold.

This is a fence against accidents, not a security sandbox (nanolm.use.sandbox adds those fences): the child
can still read files the user can read and open network connections, and a grandchild that calls setsid()
leaves our process group and survives (if it holds our output pipes we stop reading _DRAIN_S after the kill
and report timed_out).
RLIMIT_NPROC is not set: it counts every process of the user, not of this run.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

SCRIPT = "main.py"  # the name the code gets inside the run's folder (tracebacks show it)
MAX_OPEN_FILES = 64
CPU_GRACE_S = 1  # RLIMIT_CPU = ceil(timeout) + this, so the wall-clock timeout normally fires first
_DRAIN_S = 2.0  # after the kill, how long we wait for the output pipes to close
_POLL_S = 0.05  # how often the reading loop looks at the clock and the child

# Runs in the child: cap each limit (soft = hard, never above an existing hard limit), run the caller's
# `pre_exec` source, then exec the program with the interpreter arguments the parent chose.
_BOOT = """\
import json, os, resource, sys
for name, value in json.loads(sys.argv[1]).items():
    kind = getattr(resource, name, None)
    if kind is None:
        continue
    hard = resource.getrlimit(kind)[1]
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
if sys.argv[2]:
    exec(compile(sys.argv[2], "<pre_exec>", "exec"), {"__name__": "__pre_exec__"})
os.execv(sys.executable, [sys.executable, *json.loads(sys.argv[3])])
"""

# With a `pre_main`, the program runs as `python -s -P -c _STAGE2 <pre_main> main.py`: this runs pre_main in the
# final interpreter (after the last exec), then main.py as __main__, with sys.argv == ["main.py"] as usual.
_STAGE2 = """\
import runpy, sys
pre_main = sys.argv[1]
del sys.argv[:2]
exec(compile(pre_main, "<pre_main>", "exec"), {"__name__": "__pre_main__"})
del pre_main
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class RunResult:
    """What a run did: exit status (negative = killed by that signal), output, whether it timed out, time."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 within its time."""
        return self.returncode == 0 and not self.timed_out

    @property
    def passed(self) -> bool:
        """The same as `ok`, in the words of a test (HumanEval: all assertions held)."""
        return self.ok


def limits(timeout_s: float, memory_mb: int, file_mb: int) -> dict[str, int]:
    """The resource limits for one run, by their names in the `resource` module."""
    return {
        "RLIMIT_AS": memory_mb * 2**20,
        "RLIMIT_CPU": math.ceil(timeout_s) + CPU_GRACE_S,
        "RLIMIT_FSIZE": file_mb * 2**20,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": MAX_OPEN_FILES,
    }


def environment(folder: str) -> dict[str, str]:
    """The child's whole environment: nothing from the parent but a plain PATH."""
    return {
        "PATH": os.defpath,
        "HOME": folder,
        "TMPDIR": folder,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",  # do not write .pyc files into the library's environment
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _check_args(code: str, timeout_s: float, memory_mb: int, file_mb: int, max_output: int) -> None:
    """Raise ValueError for an argument run_python cannot honour."""
    if not isinstance(code, str):
        raise ValueError(f"code must be a str, not {type(code).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise ValueError(f"timeout_s must be a positive, finite number of seconds, not {timeout_s!r}")
    for name, value, least in (("memory_mb", memory_mb, 1), ("file_mb", file_mb, 0), ("max_output", max_output, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, not {value!r}")


def _kill_group(pgid: int) -> None:
    """SIGKILL every process in the group (a no-op when none is left)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(proc: subprocess.Popen, keep: int, timeout_s: float) -> tuple[bytes, bytes, bool]:
    """Read both pipes until they close, keeping `keep` bytes of each; kill the group on timeout.

    One thread and select(): the pipes are drained as the child writes (so it never blocks on a full
    pipe), and when the child has exited or the time is up, its group is killed and the pipes get
    _DRAIN_S more; a grandchild that left the group and still holds them is then simply abandoned.
    Returns (stdout, stderr, timed_out).
    """
    deadline = time.monotonic() + timeout_s
    kept, timed_out, killed_at = [bytearray(), bytearray()], False, None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, 0)
        sel.register(proc.stderr, selectors.EVENT_READ, 1)
        while sel.get_map():
            now = time.monotonic()
            if killed_at is None and (now >= deadline or proc.poll() is not None):
                timed_out = now >= deadline
                _kill_group(proc.pid)  # also after a clean exit: no background grandchild outlives the run
                killed_at = now
            if killed_at is not None and now >= killed_at + _DRAIN_S:
                timed_out = True  # someone outside the group still holds the pipes
                break
            for key, _ in sel.select(timeout=_POLL_S):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                buf = kept[key.data]
                buf += chunk[: max(keep - len(buf), 0)]
    try:  # both pipes closed: the child may still run (it can close them); it has what is left of its time
        proc.wait(timeout=max(deadline - time.monotonic(), 0.0) if killed_at is None else None)
    except subprocess.TimeoutExpired:
        timed_out = True
    _kill_group(proc.pid)
    proc.wait()
    return bytes(kept[0]), bytes(kept[1]), timed_out


def _text(raw: bytes, max_chars: int) -> str:
    """Output bytes decoded as UTF-8 (errors replaced) and cut at max_chars characters."""
    return raw.decode("utf-8", errors="replace")[:max_chars]


def _program_args(pre_main: str) -> list[str]:
    """The final interpreter's arguments: main.py directly, or through _STAGE2 when there is a pre_main."""
    if not pre_main:
        return ["-s", "-P", SCRIPT]
    return ["-s", "-P", "-c", _STAGE2, pre_main, SCRIPT]


def run_python(code: str, *, timeout_s: float = 10, memory_mb: int = 512, file_mb: int = 1,
               max_output: int = 20_000, pre_exec: str = "", pre_main: str = "") -> RunResult:
    """Run `code` as a Python program in a fresh process with the limits above; never raises for what it does.

    `pre_exec` and `pre_main` (Python source, empty by default) are the extension point for stronger fences
    (see the module docstring); HumanEval passes neither.
    """
    _check_args(code, timeout_s, memory_mb, file_mb, max_output)
    if not isinstance(pre_exec, str) or not isinstance(pre_main, str):
        raise ValueError("pre_exec and pre_main must be Python source (str)")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nanolm-run-", ignore_cleanup_errors=True) as folder:
        with open(os.path.join(folder, SCRIPT), "w", encoding="utf-8") as f:
            f.write(code)
        argv = [sys.executable, "-I", "-S", "-c", _BOOT, json.dumps(limits(timeout_s, memory_mb, file_mb)),
                pre_exec, json.dumps(_program_args(pre_main))]
        proc = subprocess.Popen(argv, cwd=folder, env=environment(folder), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err, timed_out = _collect(proc, 4 * max_output, timeout_s)  # UTF-8: at most 4 bytes a character
        finally:
            if proc.returncode is None:  # interrupted (e.g. Ctrl-C) before _collect reaped it
                _kill_group(proc.pid)
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    return RunResult(returncode=proc.returncode, stdout=_text(out, max_output), stderr=_text(err, max_output),
                     timed_out=timed_out, seconds=time.monotonic() - start)
