"""Run-folder file helpers: atomic JSON writes and the writable-folder check, one copy each."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_text", "write_json", "unwritable"]


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
