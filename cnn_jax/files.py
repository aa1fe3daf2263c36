"""Output files and folders: atomic writes, folders that are ours to write into, the one-writer lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["write_text", "write_json", "read_json", "atomic_path", "unwritable", "claim_folder", "owner",
           "NotOursError", "MARKER", "RunLock", "RunLockedError"]

#: The file that makes a folder ours: written (atomically) when we create or first fill the folder; JSON
#: ``{"cnn_jax": kind}``. A folder without it is written into only while it is empty.
MARKER = ".cnn_jax"


class NotOursError(ValueError):
    """A folder (or file) holds a user's files, not outputs of ours: nothing is written there."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on leaving the block without an error it is flushed to
    disk and renamed onto ``path`` (a reader sees the old file or the new one, never a part), else removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2))


_RAISE = object()


def read_json(path: str | os.PathLike, default: Any = _RAISE) -> Any:
    """A JSON file's content. Missing or unreadable (not JSON, not UTF-8): ``default`` when given, else a
    ``ValueError`` in one line naming the file and the reason."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        if default is not _RAISE:
            return default
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from e


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


def owner(folder: str | os.PathLike) -> str | None:
    """The kind of output of ours a folder holds (its :data:`MARKER`), or None."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("cnn_jax")
    except (OSError, ValueError, AttributeError):
        return None


def claim_folder(folder: str | os.PathLike, kind: str, *, check_only: bool = False) -> Path:
    """Make ``folder`` ours for outputs of ``kind`` (e.g. ``"run"``, ``"figures"``) and return it: a missing or
    empty folder is created and marked (:data:`MARKER`); one already marked with ``kind`` is fine. Anything
    else (a user's files, whatever their names) raises :class:`NotOursError` and nothing is written.
    ``check_only``: say so without creating or marking anything."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotOursError(f"{folder} is a file, not a folder; pick another name")
    mine = owner(folder)
    if mine is None and folder.is_dir() and (files := sorted(p.name for p in folder.iterdir())):
        raise NotOursError(f"{folder} holds files that cnn_jax did not write (e.g. {files[0]}); nothing was "
                           "written there: pick another (new or empty) folder")
    if mine is not None and mine != kind:
        raise NotOursError(f"{folder} holds cnn_jax {mine} outputs, not {kind} outputs; nothing was written there: "
                           "pick another (new or empty) folder")
    if mine is None and not check_only:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / MARKER, {"cnn_jax": kind})
    return folder


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
