"""Thin wrappers around Linux calls CPython 3.11 lacks: ``openat2(2)`` and ``fstatfs(2)``'s f_type.

Only the flags this project uses are exposed. :func:`available` probes the kernel once: if the probe
fails (``ENOSYS`` on kernels before 5.6, ``EPERM`` or ``ENOSYS`` from a seccomp filter) callers may use
their userspace fallback. Any failure of a *present* openat2 during a real lookup must be reported,
never "retried" in userspace: a downgrade would let an attacker who can provoke an error pick the
weaker resolver (filepath-securejoin refuses it for the same reason).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from typing import Any

O_PATH = getattr(os, "O_PATH", 0o10000000)
AT_FDCWD = -100

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

#: ``f_type`` of procfs, the only filesystem with "magic" links (``/proc/self/fd/N``, ``.../root``).
PROC_SUPER_MAGIC = 0x9FA0

#: openat2 got one number on every architecture (the syscall table was unified at 424).
_NR_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}

#: Bounded retries: a scoped lookup returns EAGAIN when a rename or mount raced with a ".." step.
MAX_RETRIES = 32


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)
_fstatfs = _libc.fstatfs
_fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
_fstatfs.restype = ctypes.c_int
_MACHINE = platform.machine().lower()
_NR = _NR_OPENAT2.get(_MACHINE, -1)
_HOW_SIZE = ctypes.sizeof(_OpenHow)


@functools.lru_cache(maxsize=64)
def _how(flags: int, resolve: int, mode: int) -> Any:
    # Cached, and passed by reference (the reference keeps the struct alive): building the struct
    # costs as much as the syscall's own path walk for short paths.
    return ctypes.byref(_OpenHow(flags | os.O_CLOEXEC, mode, resolve))


def openat2(
    dirfd: int,
    path: str | bytes,
    flags: int,
    resolve: int,
    mode: int = 0,
    *,
    retry: tuple[int, ...] = (errno.EAGAIN,),
) -> int:
    """Call openat2; return the new fd (always ``O_CLOEXEC``) or raise ``OSError`` with the
    kernel's errno. Errnos in ``retry`` are retried up to :data:`MAX_RETRIES` times."""
    if _NR < 0:
        raise OSError(errno.ENOSYS, "openat2 is not known on this architecture")
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    how = _how(flags, resolve, mode)
    for _ in range(MAX_RETRIES):
        fd: int = _syscall(_NR, dirfd, raw, how, _HOW_SIZE)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in retry:
            break
    raise OSError(err, os.strerror(err))


#: Errnos of a probe that mean "no usable openat2 here": missing syscall, seccomp refusal, flags
#: or struct size this kernel does not know.
_UNUSABLE = (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG)


@functools.cache
def available() -> bool:
    """True when openat2 works here with the scoping flags this project relies on. Any other
    failure of the probe (no fds or memory left) is raised, not taken as "unavailable": a transient
    error must not switch the process to the fallback for good (the answer is cached)."""
    root = os.open("/", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = openat2(root, ".", O_PATH, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, retry=())
    except OSError as exc:
        if exc.errno in _UNUSABLE:
            return False
        raise
    finally:
        os.close(root)
    os.close(fd)
    return True


def fs_type(fd: int) -> int:
    """The ``f_type`` magic of the filesystem holding ``fd`` (``fstatfs`` works on ``O_PATH`` fds)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    kind = ctypes.c_uint32 if _MACHINE == "s390x" else ctypes.c_long  # f_type is the first field
    return int(kind.from_buffer(buf).value) & 0xFFFFFFFF
