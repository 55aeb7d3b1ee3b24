"""Linux namespaces for the sandbox: a new user namespace, then a new network namespace inside it.

A namespace gives a process its own copy of one kind of global thing. Two are enough for the Python tool:

    user      its own table of user ids. Creating one needs no privilege, and inside it the process may create
              the other kinds. We map our real user to user 1000 inside (not to root): when the process then
              exec()s the program, a non-root user keeps no capability, so the namespace hands out no power.
    network   its own network stack: no interface but a loopback that is down. No packet can leave or even reach
              127.0.0.1 of the host; connect() fails with "Network is unreachable".

`unshare(flags)` moves the calling process into new namespaces; Python 3.11 has no os.unshare (3.12 does), so we
call libc's through ctypes. It must happen while the process has one thread: the bootstrap of core's runner.

This file runs inside the sandboxed child (nanolm.use.sandbox sends its source there), so it imports only the
standard library and does nothing on import.
"""

import ctypes
import os

CLONE_NEWUSER = 0x10000000  # from <linux/sched.h>
CLONE_NEWNET = 0x40000000
INSIDE_ID = 1000  # who we are inside the user namespace: an ordinary user, never root


def _unshare(flags: int) -> None:
    """Call libc's unshare(flags); raise OSError with the kernel's reason when it refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    """Write one of the /proc/self/* files that set up the user namespace."""
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def enter_user() -> None:
    """Enter a new user namespace where our user and group appear as INSIDE_ID.

    "deny" to setgroups first: the kernel requires it before an unprivileged process may write gid_map (else it
    could drop a group that a file's permissions deny it by)."""
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWUSER)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{INSIDE_ID} {uid} 1")
    _write("/proc/self/gid_map", f"{INSIDE_ID} {gid} 1")


def enter_network() -> None:
    """Enter a new network namespace (call enter_user first: that is what lets an ordinary user do it)."""
    _unshare(CLONE_NEWNET)
