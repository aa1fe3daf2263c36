"""Run-folder file helpers: atomic writes, the writable-folder check, the one-writer lock."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["write_text", "write_json", "unwritable", "RunLock", "RunLockedError"]


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically: a temporary file beside ``path``, then a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2))


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be created in ``folder`` (or the folders it would be made in), or None if they can."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK):
        return f"not writable ({probe} is read-only)"
    return None


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``<run>/.lock``, held while training. The
    operating system releases it when the process ends, however it ends; the file names the holder
    (host, PID), so a second trainer is told who, and a lock left by a dead process is taken over."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; :class:`RunLockedError` if held. Returns a note when a dead holder's record was found."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is being trained by another process ({previous or 'unknown'}); "
                                 "wait for it to finish, or pass --new-run to start a run beside it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, PID {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return f"took over the lock of a process that is gone ({previous})" if previous else None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no holder: the next run takes it silently
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
