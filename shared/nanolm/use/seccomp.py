"""A seccomp filter written by hand: a tiny BPF program the kernel runs on every system call of the process.

seccomp ("secure computing") lets a process hand the kernel a filter, a program in classic BPF, that looks at
each system call before it runs (its number, its architecture, its six arguments) and answers: allow it, fail it
with an errno, or kill the process. Once installed it can never be removed, and it holds across exec (which is
why the sandbox installs it last, in the final interpreter: it denies exec).

Our filter, in order:

    1. the call must be x86_64's (AUDIT_ARCH_X86_64) and not an x32 one: another ABI has other numbers, so a
       filter written for these would be blind there. Anything else kills the process.
    2. calls that escape or reach other processes fail with EPERM ("Operation not permitted"):
       new processes and programs (fork, vfork, execve, execveat; clone unless it makes a thread),
       sockets, other processes' memory and tracing, mounts and namespaces, kernel keys, BPF, modules, io_uring
       (its requests would bypass this filter), reboot and swap
    3. signals and limits only for ourselves: kill, tkill, tgkill, rt_(tg)sigqueueinfo must name our own pid,
       prlimit64 our pid or 0 (else one could lower the limits of another process of the same user)
    4. clone3 fails with ENOSYS ("no such call"): its flags sit in memory a filter cannot read, and ENOSYS makes
       libc fall back to plain clone, whose flags we can check. So threads work, and new processes do not.
    5. everything else is allowed. This is a deny list, not an allow list: simpler to read and robust across
       Python versions, at the price of trusting the rest of the kernel's interface (Landlock and the
       namespaces are the other layers).

An instruction is struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}: load a word of struct seccomp_data
(nr at offset 0, arch at 4, argument i at 16 + 8 i, whose low half we read: pids and flags are 32-bit), compare it
with k, and jump jt or jf instructions ahead. Numbers below are x86_64's (<asm/unistd_64.h>).

This file runs inside the sandboxed child (nanolm.use.sandbox sends its source there), so it imports only the
standard library and does nothing on import.
"""

import ctypes
import errno
import platform

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF opcodes
NR, ARCH, CLONE_THREAD = 0, 4, 0x00010000

DENIED = {  # name: x86_64 number, failing with EPERM
    "fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
    "socket": 41,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "process_madvise": 440,
    "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442,
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "reboot": 169, "swapon": 167, "swapoff": 168,
}
SELF_ONLY = {"kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
             "prlimit64": 302}  # allowed when argument 0 is our pid (prlimit64: or 0, "myself")
CLONE, CLONE3 = 56, 435


class SockFilter(ctypes.Structure):
    """struct sock_filter: one BPF instruction."""

    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    """struct sock_fprog: the program, as a length and a pointer to its instructions."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def _arg0_low() -> tuple[int, int, int, int]:
    """Load the low 32 bits of argument 0 (x86_64 is little-endian: they come first)."""
    return (LD_W_ABS, 0, 0, 16)


def _self_only(number: int, allowed: list[int]) -> list[tuple[int, int, int, int]]:
    """If the call is `number`: allow it when argument 0 is one of `allowed`, else EPERM."""
    m = len(allowed)
    block = [(JEQ_K, 0, m + 3, number), _arg0_low()]
    block += [(JEQ_K, m - j, 0, value) for j, value in enumerate(allowed)]  # jump to the final allow
    return block + [(RET_K, 0, 0, RET_ERRNO | errno.EPERM), (RET_K, 0, 0, RET_ALLOW)]


def program(pid: int) -> list[tuple[int, int, int, int]]:
    """The filter for the process `pid`, as (code, jt, jf, k) instructions; see the module docstring."""
    prog = [(LD_W_ABS, 0, 0, ARCH), (JEQ_K, 1, 0, AUDIT_ARCH_X86_64), (RET_K, 0, 0, RET_KILL_PROCESS),
            (LD_W_ABS, 0, 0, NR), (JGE_K, 0, 1, X32_SYSCALL_BIT), (RET_K, 0, 0, RET_KILL_PROCESS)]
    for number in DENIED.values():
        prog += [(JEQ_K, 0, 1, number), (RET_K, 0, 0, RET_ERRNO | errno.EPERM)]
    for name, number in SELF_ONLY.items():
        prog += _self_only(number, [pid, 0] if name == "prlimit64" else [pid])
    prog += [(JEQ_K, 0, 1, CLONE3), (RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)]
    prog += [(JEQ_K, 0, 4, CLONE), _arg0_low(), (JSET_K, 1, 0, CLONE_THREAD),
             (RET_K, 0, 0, RET_ERRNO | errno.EPERM), (RET_K, 0, 0, RET_ALLOW)]
    return prog + [(RET_K, 0, 0, RET_ALLOW)]


def check_arch() -> None:
    """Raise OSError unless this is x86_64, the only architecture the numbers above are written for."""
    if platform.machine() != "x86_64":
        raise OSError(f"the seccomp filter is written for x86_64 system call numbers, this is {platform.machine()}")


def install(pid: int) -> None:
    """Install program(pid) on this process, for good (with no_new_privs, which the kernel requires)."""
    check_arch()
    instructions = program(pid)
    array = (SockFilter * len(instructions))(*[SockFilter(*ins) for ins in instructions])
    fprog = SockFprog(len(instructions), ctypes.cast(array, ctypes.POINTER(SockFilter)))
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), zero, zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), zero, zero) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {errno.errorcode.get(err, err)} (kernel without "
                           "CONFIG_SECCOMP_FILTER, or a filter already forbids it)")
