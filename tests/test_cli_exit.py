"""How the ``imagevol`` command ends (``imagevol.cli.run``): its exit status is the command's, its
output and exit handlers are complete, and a thread the command left running is waited for (a
daemon thread is not, as the interpreter would not wait for it either)."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest


def _run(body: str) -> subprocess.CompletedProcess[str]:
    # The command is replaced by ``body`` (a function ``main`` returning a status); ``run`` is not.
    script = f"import imagevol.cli._main as m\n{body}\nm.main = main\nm.run()\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("code", [0, 1, 2, 130])
def test_the_status_is_the_commands_and_buffered_output_is_all_written(code: int) -> None:
    done = _run(
        "import sys\n"
        "def main():\n"
        "    sys.stdout.write('x' * 1_000_000)\n"  # more than any pipe buffer holds: still buffered
        "    sys.stderr.write('err')\n"
        f"    return {code}\n"
    )
    assert (done.returncode, len(done.stdout), done.stderr) == (code, 1_000_000, "err")


def test_exit_handlers_still_run() -> None:
    done = _run("import atexit\ndef main():\n    atexit.register(print, 'handler ran')\n    return 0\n")
    assert (done.returncode, done.stdout) == (0, "handler ran\n")


def test_a_thread_left_running_is_waited_for() -> None:
    done = _run(
        "import threading, time\n"
        "def main():\n"
        "    threading.Thread(target=lambda: (time.sleep(0.5), print('thread done', flush=True))).start()\n"
        "    return 3\n"
    )
    assert (done.returncode, done.stdout) == (3, "thread done\n")


def test_a_daemon_thread_left_running_does_not_bring_back_the_teardown() -> None:
    # The registry client's watchdog is such a thread: a pull leaves it waiting. The interpreter
    # would not wait for it either, so the process ends without tearing its modules down (the
    # object below would say so from its finaliser, which only that teardown runs).
    done = _run(
        "import os, threading, time\n"
        "class Said:\n"
        "    def __del__(self):\n"
        "        os.write(1, b'torn down\\n')\n"
        "said = Said()\n"
        "def main():\n"
        "    threading.Thread(target=time.sleep, args=(60,), name='watchdog', daemon=True).start()\n"
        "    print('done')\n"
        "    return 4\n"
    )
    assert (done.returncode, done.stdout) == (4, "done\n")


def test_the_teardown_check_sees_a_normal_exit() -> None:
    """Without the early exit the finaliser above speaks: the test before this one can fail."""
    script = (
        "import os\nclass Said:\n    def __del__(self):\n        os.write(1, b'torn down\\n')\n"
        "said = Said()\nraise SystemExit(4)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (4, "torn down\n")


def test_a_reader_that_went_away_is_not_an_error() -> None:
    script = (
        "import imagevol.cli._main as m, sys\n"
        "def main():\n"
        "    sys.stdout.write('line\\n' * 200_000)\n"
        "    return 0\n"
        "m.main = main\nm.run()\n"
    )
    shell = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} | head -1"
    done = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=60, check=False)
    assert (done.stdout, done.stderr) == ("line\n", "")
