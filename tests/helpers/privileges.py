"""Dropping to an unprivileged user (``nobody``, uid 65534) in tests, or skipping with the reason.

A test that runs this interpreter as ``nobody`` needs ``nobody`` to be able to read the checkout
(the interpreter of ``.venv`` and the sources live there): a clone in a private directory (mode
0700) is a normal way to work, so then the test skips and says why, even under ``CI=true``. The
one thing CI can always provide is ``setpriv(1)`` (util-linux): missing there, the test fails.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import pytest

from .paths import REPO

NOBODY = 65534
#: ``setpriv`` arguments that run a command as ``nobody`` with no supplementary groups.
AS_NOBODY = ("--reuid=65534", "--regid=65534", "--clear-groups")


def setpriv() -> str:
    """The path of ``setpriv``; skips (fails under ``CI=true``) when it cannot be used."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become an unprivileged user")
    path = shutil.which("setpriv")
    if path is None:
        message = "needs setpriv(1) (util-linux) to become an unprivileged user"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.cache
def _checkout_unreadable(setpriv_path: str) -> str:
    """Why ``nobody`` cannot run this interpreter on this checkout ("" when it can)."""
    probe = "import imagevol.trees.snapshots, tests.helpers.layerkit"
    done = subprocess.run(
        [setpriv_path, *AS_NOBODY, sys.executable, "-c", probe],
        cwd="/",
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode == 0:
        return ""
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return f"the unprivileged user (uid {NOBODY}) cannot read this checkout or its interpreter ({last})"


def setpriv_for_checkout() -> str:
    """Like :func:`setpriv`, and skips when ``nobody`` cannot read the checkout (a private clone)."""
    path = setpriv()
    reason = _checkout_unreadable(path)
    if reason:
        pytest.skip(reason)
    return path
