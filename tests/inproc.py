"""A command run in the test process, read as a process: its ``main(argv)`` called with ``sys.argv`` as the command
line would set it, its exit status and output returned as :class:`subprocess.CompletedProcess`. For a command's
one-line errors and its help, where the process boundary is not the point (the suite keeps one process per command
to show that the command itself starts)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest


def command(main: Callable[[list[str]], Any], argv: list[str], capsys: pytest.CaptureFixture,
            monkeypatch: pytest.MonkeyPatch, *, program: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """``main(argv)`` as ``python PROGRAM ARGV`` with ``env`` added to the environment. ``sys.exit("error: ...")``
    prints its message to stderr and exits 1, as Python does; an ``int`` returned is the exit status."""
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", [program, *argv])
    capsys.readouterr()  # what the test printed before is not the command's
    try:
        returned = main(list(argv))
        code, message = (returned if isinstance(returned, int) else 0), ""
    except SystemExit as e:
        code, message = (1, f"{e.code}\n") if isinstance(e.code, str) else (e.code or 0, "")
    out = capsys.readouterr()
    return subprocess.CompletedProcess([program, *argv], code, out.out, out.err + message)
