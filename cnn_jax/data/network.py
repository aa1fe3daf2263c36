"""The network, as dataset downloads see it: where the raw files are fetched from (``$CNN_JAX_DATA_MIRROR``) and
whether their hosts answer at all, found out in seconds rather than after TFDS's retries."""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse

__all__ = ["MIRROR_ENV", "download_urls", "unreachable"]

#: A base URL serving the raw files under their own names, used instead of the datasets' registered URLs.
MIRROR_ENV = "CNN_JAX_DATA_MIRROR"


def download_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    """``urls``, or the same file names under ``$CNN_JAX_DATA_MIRROR`` (a base URL) when it is set."""
    base = os.environ.get(MIRROR_ENV)
    if not base:
        return urls
    return tuple(urllib.parse.urljoin(base.rstrip("/") + "/", url.rsplit("/", 1)[1]) for url in urls)


def unreachable(urls: tuple[str, ...], timeout: float = 5.0) -> str | None:
    """Why the hosts serving ``urls`` cannot be reached (name lookup included), within ``timeout`` seconds
    per host; None when they can. The attempt runs in a daemon thread (a name lookup ignores socket timeouts),
    so a lookup that hangs delays neither the answer nor the interpreter's exit."""
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        outcome: list[BaseException | None] = []

        def attempt(host=parts.hostname, port=port, outcome=outcome) -> None:
            try:
                socket.create_connection((host, port), timeout).close()
                outcome.append(None)
            except OSError as e:
                outcome.append(e)

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(timeout)
        if not outcome:
            return f"cannot reach {parts.hostname}:{port} within {timeout:.0f} s (no network?)"
        if outcome[0] is not None:
            return f"cannot reach {parts.hostname}:{port} ({outcome[0]}; no network?)"
    return None
