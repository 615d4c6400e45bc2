"""A thin wrapper around the Linux ``openat2(2)`` system call (CPython 3.11 has no binding).

Only the flags this project uses are exposed. ``available()`` probes the kernel once: ``ENOSYS``
means the syscall does not exist (kernel < 5.6, or a seccomp filter), and callers may then use their
userspace fallback. Any *other* failure of a present openat2 must be reported, never "retried" in
userspace (a downgrade would let an attacker pick the weaker resolver, cf. filepath-securejoin).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform

O_PATH = getattr(os, "O_PATH", 0o10000000)

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_SYSCALL_NUMBERS = {"x86_64": 437, "aarch64": 437, "arm64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_NR = _SYSCALL_NUMBERS.get(platform.machine().lower(), -1)


def openat2(dirfd: int, path: str | bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """Call openat2; return the new fd or raise ``OSError`` with the kernel's errno.

    ``EAGAIN`` (a concurrent rename or mount was seen under ``RESOLVE_*``) is retried a bounded
    number of times, as libpathrs does."""
    if _NR < 0:
        raise OSError(errno.ENOSYS, "openat2 is not known on this architecture")
    raw = os.fsencode(path)
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    for _ in range(32):
        fd = _syscall(_NR, dirfd, raw, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), os.fsdecode(raw))
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), os.fsdecode(raw))


@functools.cache
def available() -> bool:
    """True when the running kernel implements openat2."""
    try:
        fd = openat2(-100, "/", O_PATH, 0)  # AT_FDCWD
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    os.close(fd)
    return True
