"""The process runner: output, exit status, and each fence (time, memory, file size, folder, environment, group)."""

import os
import signal
import time
from pathlib import Path

import pytest

from nanolm.core.process import RunResult, run_python


def _alive(pid: int) -> bool:
    """True while `pid` is a running process (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def _gone_soon(pid: int, within_s: float = 3.0) -> bool:
    """True when `pid` is gone within `within_s` (an orphan is reaped by init, which may take a moment)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_returns_stdout_and_stderr():
    r = run_python("import sys\nprint('hello', 6 * 7)\nprint('oops', file=sys.stderr)\n")
    assert isinstance(r, RunResult)
    assert (r.returncode, r.stdout, r.stderr, r.timed_out) == (0, "hello 42\n", "oops\n", False)
    assert r.ok and r.passed and 0 < r.seconds < 5


def test_nonzero_exit_and_exception():
    assert run_python("raise SystemExit(3)").returncode == 3
    r = run_python("assert 1 == 2, 'nope'")
    assert r.returncode == 1 and not r.ok and "AssertionError: nope" in r.stderr


def test_infinite_loop_times_out_and_the_process_is_gone():
    r = run_python("import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass\n", timeout_s=1)
    assert r.timed_out and not r.ok and r.returncode != 0
    assert r.seconds < 2.0
    assert not _alive(int(r.stdout.split()[0]))


def test_a_grandchild_dies_with_the_group_on_timeout():
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'])\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(1000)\n")
    r = run_python(code, timeout_s=1)
    assert r.timed_out and r.seconds < 3.0
    assert _gone_soon(int(r.stdout.split()[0]))


def test_a_background_grandchild_does_not_outlive_a_clean_exit():
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'],\n"
            "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print(p.pid)\n")
    r = run_python(code, timeout_s=5)
    assert r.ok and r.seconds < 3.0
    assert _gone_soon(int(r.stdout.split()[0]))


def test_memory_limit():
    big = run_python("x = bytearray(2 * 2**30)\nprint(len(x))", memory_mb=256)
    assert big.returncode != 0 and "MemoryError" in big.stderr
    small = run_python("x = bytearray(32 * 2**20)\nprint(len(x))", memory_mb=256)
    assert small.ok and small.stdout == f"{32 * 2**20}\n"


def test_file_size_limit():
    big = run_python("open('big.bin', 'wb').write(b'x' * (2 * 2**20))", file_mb=1)
    assert big.returncode != 0 and "File too large" in big.stderr
    small = run_python("print(open('small.bin', 'wb').write(b'x' * 1000))", file_mb=1)
    assert small.ok and small.stdout == "1000\n"


def test_writes_land_in_a_temporary_folder_that_is_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_python("import os\nopen('out.txt', 'w').write('hi')\nprint(os.getcwd())\nprint(os.listdir('.'))")
    assert r.ok, r.stderr
    folder, listing = r.stdout.splitlines()
    assert Path(folder) != tmp_path and "out.txt" in listing
    assert not Path(folder).exists()
    assert list(tmp_path.iterdir()) == [] and Path.cwd() == tmp_path


def test_the_child_sees_none_of_the_parents_environment(monkeypatch):
    monkeypatch.setenv("NANOLM_TEST_SECRET", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    r = run_python("import os, sys\nprint(sorted(os.environ))\nprint('hunter2' in repr(os.environ))\n"
                   "print('/nowhere' in sys.path, hash('nanolm'))")
    assert r.ok, r.stderr
    names, leaked, rest = r.stdout.splitlines()
    assert "NANOLM_TEST_SECRET" not in names and "PYTHONPATH" not in names and leaked == "False"
    assert "'PYTHONHASHSEED'" in names and rest.startswith("False ")
    again = run_python("print('/nowhere' in __import__('sys').path, hash('nanolm'))")
    assert again.stdout.strip() == rest  # PYTHONHASHSEED=0: the same string hash every run


def test_output_is_truncated_and_decoded_with_replacement():
    r = run_python("import sys\nprint('a' * 100000)\nsys.stdout.flush()\nsys.stdout.buffer.write(b'\\xff')", max_output=50)
    assert r.ok and r.stdout == "a" * 50
    bad = run_python("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end')")
    assert bad.stdout == "ok \ufffd\ufffd end"


def test_a_flood_of_output_does_not_block_the_child():
    r = run_python("import sys\nfor _ in range(2000):\n    sys.stdout.write('x' * 10000)\nprint('done', file=sys.stderr)",
                   max_output=100, timeout_s=10)
    assert r.ok and len(r.stdout) == 100 and r.stderr == "done\n"


@pytest.mark.parametrize("kwargs", [
    {"timeout_s": 0}, {"timeout_s": -1}, {"timeout_s": float("inf")}, {"timeout_s": float("nan")},
    {"memory_mb": 0}, {"memory_mb": 1.5}, {"file_mb": -1}, {"max_output": -1}, {"timeout_s": True},
])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        run_python("print(1)", **kwargs)


def test_code_must_be_text():
    with pytest.raises(ValueError, match="code must be a str"):
        run_python(b"print(1)")


def test_a_grandchild_that_leaves_the_group_cannot_hold_the_run_open():
    """setsid() escapes the group kill; if it keeps our pipes open we stop waiting soon and say so."""
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
            "print(p.pid, flush=True)\n")
    r = run_python(code, timeout_s=5)
    pid = int(r.stdout.split()[0])
    try:
        assert r.returncode == 0 and r.timed_out and not r.ok and r.seconds < 4.0
    finally:
        os.kill(pid, signal.SIGKILL)
