"""The Python tool's sandbox: the escape suite (each attack fails, and we check which layer stopped it), the
controls (the same attack with the layer left out gets through: the attacks are real), detection, refusal,
and that ordinary code still works.

A layer this machine lacks skips the tests that need it, with the reason printed (pytest -ra). The attacks that
core's limits stop (memory, time, open files) need no optional layer, so the suite never skips entirely.
"""

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from nanolm.core.process import RunResult, run_python
from nanolm.use import sandbox, seccomp
from nanolm.use.sandbox import Layer, SandboxUnavailable, python_tool, run

REPO_FILE = Path(__file__).resolve().parents[1] / "pyproject.toml"
EPERM, EACCES = "[Errno 1] Operation not permitted", "[Errno 13] Permission denied"


def _needs(*names: str) -> None:
    """Skip, saying why, unless this machine has every layer in `names`."""
    found = sandbox.layers()
    missing = [f"{name}: {found[name].note}" for name in dict.fromkeys(names) if not found[name].present]
    if missing:
        pytest.skip("sandbox layer missing on this machine, " + "; ".join(missing))


def _last(r: RunResult) -> str:
    """The last non-empty line of stderr (the exception of a traceback)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in pids if pid != os.getpid()]


@pytest.fixture
def listener():
    """A TCP server on the host's loopback, in this (the parent) process; nothing accepts until we look."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _connections(server: socket.socket) -> int:
    """How many connections reached the server."""
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.fixture
def caught():
    """Signals SIGTERM and SIGUSR1 that reach this test process, caught instead of ending it."""
    got = []
    old = {sig: signal.signal(sig, lambda number, frame: got.append(number)) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield got
    for sig, handler in old.items():
        signal.signal(sig, handler)


# --- the escape suite: attack, the layers applied (None = all), the layer that stops it, what the child sees ---

FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"
ORPHAN = ("import subprocess, sys\n"
          "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)  # {marker}'], start_new_session=True)\n"
          "print('spawned')\n")
READ = "print(open({path!r}).read()[:40])"
WRITE = "open({path!r}, 'w').write('escaped')\nprint('written')"
CONNECT = "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
SIGNAL = ("import os, signal\nerrors = []\n"  # the test's pid passed in, then the parent's: both must fail
          "for pid, sig in (({pid}, signal.SIGUSR1), (os.getppid(), signal.SIGTERM)):\n"
          "    try:\n        os.kill(pid, sig)\n        print('sent', sig.name, flush=True)\n"
          "    except OSError as e:\n        errors.append(e)\n"
          "if errors:\n    raise errors[-1]\n")
MEMORY = "x = bytearray(8 * 2**30)\nprint(len(x))"
LOOP = "while True:\n    pass\n"
OPEN_FILES = "files = [open('main.py') for _ in range(1000)]\nprint(len(files))"

ESCAPES = [  # id, code, use, the layer that stops it, the end of the child's stderr
    ("fork bomb", FORK_BOMB, None, "seccomp", f"PermissionError: {EPERM}"),
    ("orphaned process", ORPHAN, None, "seccomp", f"PermissionError: {EPERM}"),
    ("read /etc/passwd", READ, None, "landlock", f"PermissionError: {EACCES}: '/etc/passwd'"),
    ("write outside", WRITE, None, "landlock", f"PermissionError: {EACCES}"),
    ("socket to loopback", CONNECT, None, "seccomp", f"PermissionError: {EPERM}"),
    ("socket, Landlock alone", CONNECT, ("landlock",), "landlock", f"PermissionError: {EACCES}"),
    ("socket, namespaces alone", CONNECT, ("userns", "netns"), "netns", "OSError: [Errno 101] Network is unreachable"),
    ("signal the parent", SIGNAL, None, "seccomp", f"PermissionError: {EPERM}"),
    ("signal, Landlock alone", SIGNAL, ("landlock",), "landlock", f"PermissionError: {EPERM}"),
    ("huge memory", MEMORY, None, "rlimits", "MemoryError"),
    ("infinite loop", LOOP, None, "rlimits", None),  # None: the wall-clock timeout ends it
    ("a thousand open files", OPEN_FILES, None, "rlimits", "OSError: [Errno 24] Too many open files: 'main.py'"),
]


@pytest.mark.parametrize(("code", "use", "layer", "expected"), [row[1:] for row in ESCAPES],
                         ids=[row[0] for row in ESCAPES])
def test_escape_fails_and_the_layer_that_stopped_it(code, use, layer, expected, tmp_path, listener, caught):
    _needs(layer, *(use or ()))
    if layer == "landlock" and code == SIGNAL and "signals" not in sandbox.layers()["landlock"].note:
        pytest.skip("this kernel's Landlock has no signal scope (ABI 6, Linux 6.12)")
    marker = f"nanolm-orphan-{os.getpid()}-{time.monotonic_ns()}"
    target = tmp_path / "escaped.txt"
    path = "/etc/passwd" if code == READ else str(target)
    program = code.format(marker=marker, path=path, port=listener.getsockname()[1], pid=os.getpid())
    r = run(program, timeout_s=1 if code == LOOP else 5, memory_mb=512, require=(layer,), use=use)

    assert layer in r.layers and not r.ok and r.stdout == ""
    if expected is None:
        assert r.timed_out and r.seconds < 3
    else:
        assert not r.timed_out and _last(r).startswith(expected), r.stderr
    # and the attack left no trace
    assert not target.exists()
    assert _connections(listener) == 0
    assert caught == []
    assert _processes_with(marker) == []


def test_the_repository_is_unreadable_too():
    _needs("landlock")
    r = run(f"print(open({str(REPO_FILE)!r}).read()[:40])", require=("landlock",))
    assert _last(r) == f"PermissionError: {EACCES}: {str(REPO_FILE)!r}"


# --- the controls: the same attacks with only core's limits get through, so each layer above did the stopping ---

def test_control_without_the_layers_the_attacks_succeed(tmp_path, listener, caught):
    target = tmp_path / "escaped.txt"
    port, pid = listener.getsockname()[1], os.getpid()
    reads = run(READ.format(path="/etc/passwd"), require=(), use=())
    assert reads.ok and reads.stdout.startswith("root:")
    writes = run(WRITE.format(path=str(target)), require=(), use=())
    assert writes.ok and target.read_text() == "escaped"
    connects = run(CONNECT.format(port=port), require=(), use=())
    assert connects.ok and _connections(listener) == 1
    signals = run(SIGNAL.format(pid=pid), require=(), use=())
    assert signals.ok and signals.stdout == "sent SIGUSR1\nsent SIGTERM\n"
    for _ in range(50):  # the handlers run at this process's next bytecode; give them a moment
        if len(caught) == 2:
            break
        time.sleep(0.01)
    assert sorted(caught) == sorted([signal.SIGUSR1, signal.SIGTERM])


def test_namespaces_alone_do_not_stop_a_signal(caught):
    """Honest accounting: a user namespace does not stop kill() to a process of the same (outside) user."""
    _needs("userns")
    r = run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGUSR1)", require=("userns",), use=("userns",))
    assert r.ok
    for _ in range(50):
        if caught:
            break
        time.sleep(0.01)
    assert caught == [signal.SIGUSR1]


# --- the two hooks of core's runner that the sandbox stands on ---

def test_core_hooks_run_in_order_before_main():
    r = run_python("import sys\nprint(sys.argv, __name__)", pre_exec="print('pre_exec', flush=True)",
                   pre_main="print('pre_main')")
    assert r.ok and r.stdout == "pre_exec\npre_main\n['main.py'] __main__\n"


@pytest.mark.parametrize("hook", ["pre_exec", "pre_main"])
def test_a_failing_hook_stops_the_run_before_main(hook):
    r = run_python("print('main ran')", **{hook: "raise OSError('no fence')"})
    assert r.returncode == 1 and r.stdout == "" and _last(r) == "OSError: no fence"


# --- detection, reporting, refusal ---

def test_layers_are_detected_and_reported():
    found = sandbox.layers()
    assert list(found) == list(sandbox.LAYERS) and all(isinstance(layer, Layer) for layer in found.values())
    assert found["rlimits"].present
    table = sandbox.report()
    for name, layer in found.items():
        assert name in table and layer.note in table
    print("\n" + table)


def _pretend(monkeypatch, missing: str) -> None:
    """Make detection say that only rlimits is here and that `missing` is absent, with a reason."""
    fake = {name: Layer(name, name == "rlimits", "pretend missing" if name == missing else "absent")
            for name in sandbox.LAYERS}
    monkeypatch.setattr(sandbox, "_detect", lambda: fake)


def test_a_missing_required_layer_refuses_to_run(monkeypatch):
    _pretend(monkeypatch, "landlock")
    with pytest.raises(SandboxUnavailable, match="'landlock' is missing: pretend missing.*require=") as info:
        run("print(1)", require=("rlimits", "landlock"))
    assert info.value.layer == "landlock"
    with pytest.raises(SandboxUnavailable):
        run("print(1)")  # the default requires every layer
    assert python_tool("print(1)").startswith("error: sandbox unavailable: layer 'userns' is missing")
    relaxed = run("print(1)", require=("rlimits",))  # knowingly weaker: runs, and says with what
    assert relaxed.ok and relaxed.layers == ("rlimits",)


def test_a_layer_that_fails_to_apply_fails_closed(monkeypatch, tmp_path):
    _pretend(monkeypatch, "none")
    broken = sandbox._child_source([("landlock", "raise OSError('simulated failure')")], ())
    monkeypatch.setattr(sandbox, "_pre_exec", lambda apply: broken)
    with pytest.raises(SandboxUnavailable, match="'landlock' is missing: it failed to apply: OSError: simulated"):
        run(f"open({str(tmp_path / 'ran')!r}, 'w')", require=("rlimits",))
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("kwargs", [{"require": ("nope",)}, {"use": ("netns",)},
                                    {"require": ("seccomp",), "use": ("landlock",)}])
def test_bad_layer_choices_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        run("print(1)", **kwargs)


def test_the_seccomp_program_jumps_stay_inside_it():
    prog = seccomp.program(12345)
    assert len(prog) < 256 and prog[-1] == (seccomp.RET_K, 0, 0, seccomp.RET_ALLOW)
    for i, (code, jt, jf, _) in enumerate(prog):
        assert i + 1 + max(jt, jf) < len(prog) or code == seccomp.RET_K


# --- what must still work ---

def test_ordinary_code_works_inside():
    _needs("landlock", "seccomp")
    code = ("import math, json, re, collections, itertools, fractions, statistics, datetime, threading\n"
            "print(math.comb(10, 3), json.dumps({'a': 1}), statistics.mean([1, 2, 3]), fractions.Fraction(1, 3))\n"
            "open('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read())\n"
            "t = threading.Thread(target=print, args=('a thread',))\nt.start()\nt.join()\n")
    r = run(code, require=("landlock", "seccomp"))
    assert r.ok, r.stderr
    assert r.stdout == '120 {"a": 1} 2 1/3\nkept\na thread\n'


def test_inside_the_user_namespace_we_are_no_one_special():
    _needs("userns")
    r = run("import os\nprint(os.getuid(), os.getgid())", require=("userns",))
    assert r.ok and r.stdout == "1000 1000\n"


def test_the_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("NANOLM_TEST_SECRET", "hunter2")
    r = run("import os\nprint('NANOLM_TEST_SECRET' in os.environ, 'hunter2' in repr(os.environ))", require=())
    assert r.ok and r.stdout == "False False\n"


# --- the tool's answer, as the model reads it ---

def test_python_tool_answers():
    _needs(*sandbox.REQUIRED)
    assert python_tool("print(6 * 7)") == "42\n"
    assert python_tool("pass") == "(no output)"
    assert python_tool("print('so far')\n1 / 0") == "so far\nerror: ZeroDivisionError: division by zero"
    assert python_tool("import os\nos.fork()") == f"error: PermissionError: {EPERM}"
    assert python_tool("while True:\n    pass", timeout_s=1) == "error: timed out after 1 s"
    assert python_tool("def f():\n    return f()\nf()") == "error: RecursionError: maximum recursion depth exceeded"
    long = python_tool("print('x' * 5000)\nraise ValueError('late')")
    assert len(long) <= sandbox.MAX_TOOL_CHARS and long.endswith("(cut)\nerror: ValueError: late")


def test_tool_text_reports_a_killing_signal():
    r = RunResult(returncode=-9, stdout="", stderr="", timed_out=False, seconds=0.1)
    assert sandbox.tool_text(r, 5) == "error: killed by SIGKILL"
