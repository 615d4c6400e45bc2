"""Failures in kubectl's words: one line per error, never a Python traceback, an ``[Errno N]`` or
the host path of the node's root (messages are written not to contain it; :func:`report` is the
safety net for text that came from elsewhere)."""

from __future__ import annotations

import errno
import os
import sys

from .. import errors
from .._text import escape_controls, strerror
from ._common import EXIT_FAIL, CommandError


def message(exc: BaseException, root: str) -> tuple[str, int] | None:
    """The line kubectl would print for ``exc`` and the exit status; None for an unexpected
    exception (a bug: the caller decides)."""
    if isinstance(exc, CommandError):
        return f"{exc.prefix}{exc}", exc.code
    if isinstance(exc, errors.ValidationError):
        return f"The {exc}", EXIT_FAIL
    if isinstance(exc, errors.PodNotFoundError | errors.SecretNotFoundError):
        return f"Error from server (NotFound): {exc}", EXIT_FAIL
    if isinstance(exc, errors.RequestEntityTooLargeError):
        return f"Error from server (RequestEntityTooLarge): {exc}", EXIT_FAIL
    if isinstance(exc, errors.StorageTooLargeError):
        return f"Error from server: {exc}", EXIT_FAIL
    if isinstance(exc, errors.DecodeError):
        text = str(exc)
        return (f"error: {text}" if text.startswith("error parsing") else f"error: error parsing input: {text}"), 1
    if isinstance(exc, UnicodeDecodeError):  # a configuration file (registries.conf, a docker config)
        return f"error: a configuration file is not valid UTF-8 (byte {exc.start}: {exc.reason})", EXIT_FAIL
    if isinstance(exc, errors.ImageVolError | ValueError):
        return f"error: {exc}", EXIT_FAIL
    if isinstance(exc, OSError):
        return f"error: {_os_error_message(exc, root)}", EXIT_FAIL
    return None


def report(exc: BaseException, root: str) -> int:
    """Print the line for ``exc`` on standard error; return its exit status. An unexpected
    exception is ``error: internal error (TYPE): MESSAGE`` (``IMAGEVOL_TRACEBACK=1`` re-raises)."""
    found = message(exc, root)
    if found is None:
        if os.environ.get("IMAGEVOL_TRACEBACK"):
            raise exc
        found = f"error: internal error ({type(exc).__name__}): {exc}", EXIT_FAIL
    return fail(*found, root=root)


def fail(line: str, code: int = EXIT_FAIL, *, root: str) -> int:
    """Print one error line, the node root's host path hidden and control characters escaped
    (the line may quote a Pod file or a registry's answer); return ``code``."""
    if len(root) > 1:
        line = line.replace(root, "<root>")
    sys.stderr.write(escape_controls(line.replace("\n", " ").rstrip()) + "\n")
    return code


def _os_error_message(exc: OSError, root: str) -> str:
    """An OS error in Go's words (``open PATH: permission denied``), naming the file only when it
    is not node state (a file named on the command line)."""
    name = exc.filename if isinstance(exc.filename, str) else ""
    inside = bool(name) and (os.path.abspath(name) + "/").startswith(root.rstrip("/") + "/")
    if exc.errno == errno.EADDRINUSE:
        return f"listen: {strerror(exc)}"
    if inside or not name:
        return f"node state (--root): {strerror(exc)}"
    return f"{name}: {strerror(exc)}"
