"""Landlock from Python with ctypes: a process fences itself in, files, TCP and signals.

Landlock (Linux 5.13 and later) lets an ordinary, unprivileged process restrict itself, in three steps:

    1. create a ruleset that names the kinds of access it wants to control (the "handled" ones)
    2. add rules: "beneath this folder (or on this file), allow these handled kinds"
    3. restrict itself: from now on, in this process and every program it exec()s, a handled access that no
       rule allows fails, with EACCES ("Permission denied") for files and TCP, EPERM for signals

No rule can ever be loosened again. Each kernel release taught Landlock new kinds; the ABI version the kernel
reports says which it knows, and we handle every kind it knows, so whatever it can fence is fenced:

    ABI 1 (5.13)  files: execute, read, write, list a folder, create and remove entries
    ABI 2 (5.19)  REFER: link or rename a file into another folder
    ABI 3 (6.2)   TRUNCATE
    ABI 4 (6.7)   TCP bind and connect (no rule allows any port: no TCP at all)
    ABI 5 (6.10)  IOCTL_DEV: ioctl on devices
    ABI 6 (6.12)  scopes: no signal to a process outside the fence, no abstract unix socket outside it

The three system calls have no wrapper in libc, so we call them by number through libc's syscall(). Their
numbers (444, 445, 446) are the same on x86_64 and aarch64: since Linux 5.1 new system calls get one number on
every architecture. The structures are the kernel's own (<linux/landlock.h>), written out with ctypes.

This file runs inside the sandboxed child (nanolm.use.sandbox sends its source there), so it imports only the
standard library and does nothing on import.
"""

import ctypes
import os
import platform

ARCHES = ("x86_64", "aarch64")
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1  # flag: do not create, return the ABI version
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

# File-system rights, bit by bit, in the kernel's order (LANDLOCK_ACCESS_FS_*).
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
FS_BITS_BY_ABI = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16}  # how many of the bits above each ABI knows (6+: as 5)
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

READ = EXECUTE | READ_FILE | READ_DIR  # Python and the system libraries: run and read, nothing else
WRITE = (READ_FILE | READ_DIR | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | MAKE_FIFO
         | MAKE_SOCK | REFER | TRUNCATE)  # the run's folder: everything but execute and making devices
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the rights a rule on a plain file may name


class RulesetAttr(ctypes.Structure):
    """struct landlock_ruleset_attr: what the ruleset handles (older kernels read only the first fields)."""

    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    """struct landlock_path_beneath_attr (packed): allow these rights beneath the file or folder open as fd."""

    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _syscall(number: int, *args) -> int:
    """libc's syscall(number, *args); raise OSError when the kernel returns an error."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def abi() -> int:
    """The Landlock ABI version of this kernel; OSError with a reason when there is none."""
    if platform.machine() not in ARCHES:
        raise OSError(f"Landlock is called here by syscall number, known for {', '.join(ARCHES)} only, "
                      f"not {platform.machine()}")
    try:
        return _syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    except OSError as e:
        why = {38: "this kernel has no Landlock (Linux 5.13+ with CONFIG_SECURITY_LANDLOCK)",
               95: "Landlock is built in but off: add landlock to the kernel's lsm= boot parameter"}
        raise OSError(e.errno, why.get(e.errno, f"landlock_create_ruleset: {e.strerror}")) from None


def fences(version: int) -> list[str]:
    """In words, what a ruleset handles at this ABI version (for the layer report)."""
    return (["files"] + ["TCP"] * (version >= 4) + ["device ioctl"] * (version >= 5)
            + ["signals", "abstract unix sockets"] * (version >= 6))


def _ruleset(version: int) -> tuple[RulesetAttr, int]:
    """The ruleset attribute handling everything this ABI knows, and its size for this kernel."""
    fs = (1 << FS_BITS_BY_ABI[min(version, 5)]) - 1
    net = NET_BIND_TCP | NET_CONNECT_TCP if version >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    size = 8 if version < 4 else 16 if version < 6 else 24  # an older kernel rejects fields it does not know
    return RulesetAttr(fs, net, scoped), size


def _allow(ruleset_fd: int, path: str, rights: int) -> None:
    """Add the rule "beneath path, allow rights" (a missing path is skipped: nothing there to allow)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= FILE_ONLY
        rule = PathBeneathAttr(rights, fd)
        _syscall(SYS_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(RULE_PATH_BENEATH), ctypes.byref(rule),
                 ctypes.c_uint32(0))
    finally:
        os.close(fd)


def restrict(readable: list[str], writable: list[str]) -> list[str]:
    """Fence this process in: read and execute only beneath `readable`, read and write only beneath `writable`.

    Everything else the kernel's Landlock knows is denied: other files, TCP, signals out. Sets no_new_privs
    (required, and it also stops a set-user-id program from gaining privileges). Returns fences(version)."""
    version = abi()
    attr, size = _ruleset(version)
    handled = attr.handled_access_fs
    ruleset_fd = _syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for path in readable:
            _allow(ruleset_fd, path, READ & handled)
        for path in writable:
            _allow(ruleset_fd, path, WRITE & handled)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                      ctypes.c_ulong(0)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        _syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
    finally:
        os.close(ruleset_fd)
    return fences(version)
