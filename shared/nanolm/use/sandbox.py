"""The Python tool's sandbox: core's process runner plus four more fences, each detected, applied and reported.

A model that may call a Python tool writes code we have never read. core.process.run_python already runs code in
a separate process with limits (layer "rlimits" below); that stops accidents, not an attacker: the code could
still read our files, open sockets, signal our process or start a program that outlives the run. The sandbox
adds, through run_python's two hooks (it starts no process of its own):

    rlimits    core's runner: a fresh process, wall-clock timeout with group kill, CPU, memory (address space),
               file size and open-file limits, a scrubbed environment, a temporary working folder
    userns     a new user namespace, as an ordinary user: what lets the next layers be made without privilege
    netns      a new network namespace: no network at all, not even the host's loopback
    landlock   read only Python and the system libraries, write only the working folder; no TCP, no signals out
    seccomp    a filter on system calls: no fork, exec, sockets, tracing, mounts, signals to other processes

What stops what, with the full sandbox (tests/test_sandbox.py checks each, and that it gets through without):

    fork bomb, a process that outlives the run   seccomp: fork/clone fail with EPERM
    read /etc/passwd or the repository          landlock: EACCES ("Permission denied")
    write outside the working folder            landlock: EACCES
    connect to a server on 127.0.0.1            seccomp: socket() fails with EPERM; without it Landlock (EACCES on
                                                connect), without both the network namespace ("Network is
                                                unreachable")
    signal our process                          seccomp: EPERM; without it Landlock's signal scope (EPERM). Not the
                                                user namespace: the same user outside may still signal
    huge memory, endless loop, 1000 open files  rlimits: MemoryError, the wall-clock timeout, EMFILE

Where each goes: the namespaces and Landlock in pre_exec (in the bootstrap, before it exec()s the interpreter,
so they hold from the program's first instruction); seccomp in pre_main (in the final interpreter: it denies
exec, so it must come after the last one). Their code is in namespaces.py, landlock.py and seccomp.py, plain
standard-library modules whose source is sent to the child: the child cannot import nanolm (it may not read it).

Detection runs those same modules once in a throwaway child (a layer counts as present only if it really
applied there) and is cached. `run` refuses, with SandboxUnavailable, when a layer in `require` is missing.
The default requires all five: a sandbox that quietly drops a fence is worse than none, since you trust it. On
a machine without them (macOS, Windows, an old or locked-down kernel) say what you accept, knowingly:
run(code, require=("rlimits",)) runs with what there is, and result.layers says what that was.
If a layer fails while being applied (after detection said yes), the run stops before the code runs: fail closed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core.process import RunResult, run_python
from . import landlock, namespaces, seccomp

LAYERS = {
    "rlimits": "separate process; time, CPU, memory, file-size and open-file limits; clean env; temp folder",
    "userns": "new user namespace, as an ordinary user (what makes the next layers possible)",
    "netns": "new network namespace: no interface up, no network",
    "landlock": "reads only Python and system libraries, writes only its folder; no TCP, no signals out",
    "seccomp": "system-call filter: no fork/exec/socket/ptrace/mount, no signals to other processes",
}
REQUIRED = tuple(LAYERS)  # the default: every layer, or refuse
SYSTEM_READ = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/localtime"]
DEVICES = ["/dev/null", "/dev/zero", "/dev/urandom"]  # read and write, like any Unix program expects
SETUP_FAILED = 125  # the child's exit status when a layer could not be applied (as `env` does for "could not run")
_MARK = "nanolm-sandbox:"  # starts the child's line saying which layer failed
MAX_TOOL_CHARS = 500  # what python_tool hands back to the model, at most


class SandboxUnavailable(RuntimeError):
    """A layer the caller requires is missing on this machine (or failed to apply); `layer` names it."""

    def __init__(self, layer: str, why: str):
        self.layer, self.why = layer, why
        rest = tuple(name for name in REQUIRED if name != layer)
        super().__init__(f"sandbox layer {layer!r} is missing: {why}. Run on Linux x86_64 with unprivileged user "
                         f"namespaces, Landlock and seccomp, or accept weaker fences knowingly: "
                         f"require={rest!r} (result.layers says what was applied)")


@dataclass(frozen=True)
class Layer:
    """One layer on this machine: present or not, and a note (what it does, or why it is missing)."""

    name: str
    present: bool
    note: str


@dataclass(frozen=True)
class SandboxResult(RunResult):
    """core's RunResult plus the layers that were applied to this run."""

    layers: tuple[str, ...] = ()


def readable() -> list[str]:
    """What the child may read and execute: this Python (its venv and its base install) and the system libraries."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    if any(Path(root).resolve() == Path("/") for root in roots):  # a rule on / would allow reading everything
        raise RuntimeError("this Python is installed at /; the sandbox cannot tell it from the rest of the disk")
    return sorted(roots) + SYSTEM_READ


def _load(modules: tuple) -> list[str]:
    """Source lines that make each module (a stdlib-only file of this package) from its text, inside the child."""
    lines = ["import json, os, sys, types"]
    for module in modules:
        name = module.__name__.rsplit(".", 1)[1]
        source = Path(module.__file__).read_text(encoding="utf-8")
        lines += [f"{name} = types.ModuleType({name!r})",
                  f"exec(compile({source!r}, {name + '.py'!r}, 'exec'), {name}.__dict__)"]
    return lines


def _child_source(steps: list[tuple[str, str]], modules: tuple) -> str:
    """Python source for the child: load `modules`, then run each (layer, statement) step in order.

    A step that raises ends the process with SETUP_FAILED and a line naming its layer: no code runs unfenced."""
    lines = _load(modules) + ["layer = None", "try:"]
    for layer, statement in steps:
        lines += [f"    layer = {layer!r}", f"    {statement}"]
    lines += ["except Exception as e:",
              f"    sys.stderr.write(f'{_MARK} {{layer}}: {{type(e).__name__}}: {{e}}\\n')",
              "    sys.stderr.flush()",
              f"    os._exit({SETUP_FAILED})"]
    return "\n".join(lines) + "\n"


def _pre_exec(apply: tuple[str, ...]) -> str:
    """The bootstrap's part: namespaces, then Landlock (its rules are paths, so before anything moves)."""
    steps = []
    if "userns" in apply:
        steps.append(("userns", "namespaces.enter_user()"))
    if "netns" in apply:
        steps.append(("netns", "namespaces.enter_network()"))
    if "landlock" in apply:
        steps.append(("landlock", f"landlock.restrict({readable()!r}, [os.getcwd()] + {DEVICES!r})"))
    return _child_source(steps, (namespaces, landlock)) if steps else ""


def _pre_main(apply: tuple[str, ...]) -> str:
    """The final interpreter's part: the seccomp filter, for this very process."""
    return _child_source([("seccomp", "seccomp.install(os.getpid())")], (seccomp,)) if "seccomp" in apply else ""


# The throwaway child of detection: apply each layer for real, note what happened, print it, exit before main.py.
_PROBE_STEPS = [
    ("rlimits", "import resource\n"
                "if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:\n"
                "    raise OSError('RLIMIT_AS could not be set')"),
    ("userns", "namespaces.enter_user()"),
    ("netns", "namespaces.enter_network()"),
    ("landlock", "landlock.restrict(READABLE, [os.getcwd()] + DEVICES)"),
    ("seccomp", "seccomp.install(os.getpid())"),
]


def _probe_source() -> str:
    """Source that tries every layer in turn (netns only after userns worked) and prints a JSON verdict."""
    lines = _load((namespaces, landlock, seccomp))
    lines += [f"READABLE, DEVICES = {readable()!r}, {DEVICES!r}", "found = {}"]
    for layer, statement in _PROBE_STEPS:
        lines += ["try:"]
        if layer == "netns":
            lines += ["    if found['userns'] is not None:", "        raise OSError('needs a user namespace first')"]
        lines += ["    " + line for line in statement.splitlines()]
        lines += [f"    found[{layer!r}] = None",
                  "except Exception as e:",
                  f"    found[{layer!r}] = f'{{type(e).__name__}}: {{e}}'"]
    lines += ["note = ', '.join(landlock.fences(landlock.abi())) if found['landlock'] is None else ''",
              "print(json.dumps({'found': found, 'landlock': note}), flush=True)", "os._exit(0)"]
    return "\n".join(lines) + "\n"


@functools.cache
def _detect() -> dict[str, Layer]:
    """Which layers this machine has, found by applying them in a throwaway child (once per process)."""
    if sys.platform != "linux":
        why = f"Linux only, this is {sys.platform}"
        return {name: Layer(name, name == "rlimits", LAYERS[name] if name == "rlimits" else why) for name in LAYERS}
    r = run_python("", timeout_s=10, pre_exec=_probe_source())
    try:
        verdict = json.loads(r.stdout)
    except ValueError:
        why = f"the detection child failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}"
        return {name: Layer(name, False, why) for name in LAYERS}
    found, fenced = verdict["found"], verdict["landlock"]
    notes = {**LAYERS, "landlock": f"{LAYERS['landlock']} (fences: {fenced})"}
    return {name: Layer(name, found[name] is None, notes[name] if found[name] is None else found[name])
            for name in LAYERS}


def layers() -> dict[str, Layer]:
    """Every layer by name, with whether this machine has it and a one-line note (why, when it is missing)."""
    return dict(_detect())


def report() -> str:
    """A table of the layers for a notebook: name, here or missing, and the note."""
    rows = [f"{'layer':<9} {'here':<7} note"]
    rows += [f"{layer.name:<9} {'yes' if layer.present else 'MISSING':<7} {layer.note}" for layer in layers().values()]
    return "\n".join(rows)


def _choose(require: tuple[str, ...], use: tuple[str, ...] | None) -> tuple[str, ...]:
    """The layers to apply: those in `use` (default all) that this machine has; refuse if a required one is missing."""
    use = tuple(LAYERS) if use is None else ("rlimits", *use)  # rlimits are core's: always on
    unknown = [name for name in (*require, *use) if name not in LAYERS]
    if unknown:
        raise ValueError(f"unknown sandbox layers {unknown}; the layers are {list(LAYERS)}")
    if "netns" in use and "userns" not in use:
        raise ValueError("netns needs userns: an ordinary user may only make a network namespace inside its own")
    if not set(require) <= set(use):
        raise ValueError(f"require={require} names a layer left out of use={use}")
    found = layers()
    for name in require:
        if not found[name].present:
            raise SandboxUnavailable(name, found[name].note)
    return tuple(name for name in LAYERS if name in use and found[name].present)


def run(code: str, *, timeout_s: float = 5, memory_mb: int = 512, file_mb: int = 1, max_output: int = 20_000,
        require: tuple[str, ...] = REQUIRED, use: tuple[str, ...] | None = None) -> SandboxResult:
    """Run `code` in the sandbox; the result is core's RunResult plus `.layers`, the layers applied.

    `use` picks layers (default: every one this machine has; rlimits always), to see what each layer stops alone.
    Raises SandboxUnavailable when a layer in `require` is missing, or could not be applied to this run."""
    apply = _choose(tuple(require), None if use is None else tuple(use))
    r = run_python(code, timeout_s=timeout_s, memory_mb=memory_mb, file_mb=file_mb, max_output=max_output,
                   pre_exec=_pre_exec(apply), pre_main=_pre_main(apply))
    if r.returncode == SETUP_FAILED and r.stderr.startswith(_MARK):
        layer, _, why = r.stderr[len(_MARK):].strip().partition(": ")
        raise SandboxUnavailable(layer, f"it failed to apply: {why}")
    return SandboxResult(**dataclasses.asdict(r), layers=apply)


def _error_line(r: RunResult, timeout_s: float) -> str:
    """One short line for a run that failed: the timeout, the killing signal, or the last line of the traceback."""
    if r.timed_out:
        return f"error: timed out after {timeout_s:g} s"
    if r.returncode < 0:
        return f"error: killed by {signal.Signals(-r.returncode).name}"
    last = [line for line in r.stderr.splitlines() if line.strip()]
    return f"error: {last[-1].strip() if last else f'exit status {r.returncode}'}"


def tool_text(r: RunResult, timeout_s: float, max_chars: int = MAX_TOOL_CHARS) -> str:
    """What the model reads: stdout, then the error line if the run failed, cut to max_chars (the error kept)."""
    tail = "" if r.ok else _error_line(r, timeout_s)
    out = r.stdout
    if tail and out and not out.endswith("\n"):
        out += "\n"
    if len(out) + len(tail) > max_chars:
        cut = " ... (cut)\n" if tail else " ... (cut)"
        out = out[: max(max_chars - len(tail) - len(cut), 0)] + cut
    return (out + tail)[:max_chars] or "(no output)"


def python_tool(code: str, *, timeout_s: float = 5, memory_mb: int = 512, file_mb: int = 1,
                require: tuple[str, ...] = REQUIRED) -> str:
    """The Python tool: run `code` in the sandbox (every layer by default) and return what the model should see.

    A missing layer is an answer too ("error: sandbox unavailable: ..."), so an agent loop goes on and says why."""
    try:
        r = run(code, timeout_s=timeout_s, memory_mb=memory_mb, file_mb=file_mb, require=require)
    except SandboxUnavailable as e:
        return f"error: sandbox unavailable: layer {e.layer!r} is missing ({e.why})"[:MAX_TOOL_CHARS]
    return tool_text(r, timeout_s)
