"""SIGTERM and SIGINT (Ctrl-C): one mechanism for training and for data preparation, :class:`StopSignal`.

A signal is recorded by a handler and acted on where that is safe, so it is never lost:

- training (``StopSignal()``): a signal sets ``requested``; the loop asks ``stop()`` between chunks of steps,
  saves a checkpoint and exits. A second Ctrl-C raises ``KeyboardInterrupt`` at once.
- data preparation (:func:`interruptible`): Ctrl-C raises ``KeyboardInterrupt`` at once, as Python's own handler
  does, except where CPython would swallow it (a garbage-collector callback, which JAX registers, or a
  ``__del__``: about one Ctrl-C in ten while preparing Fashion-MNIST); there it is raised at the next
  :func:`check_interrupt` or on leaving.
"""

from __future__ import annotations

import gc
import signal
import sys
import threading
import types
from typing import Any

__all__ = ["StopSignal", "interruptible", "check_interrupt", "close_progress_bars"]

#: The entered :class:`StopSignal` s that abort (:func:`interruptible`), innermost last.
_ABORTING: list[StopSignal] = []


def _where_it_would_be_lost(frame: types.FrameType | None) -> bool:
    """Whether a ``KeyboardInterrupt`` raised in ``frame`` would be swallowed by CPython: in a garbage-collector
    callback or a ``__del__``, it is printed as a traceback and then ignored."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


class StopSignal:
    """Context manager: ``signals`` set :attr:`requested` (the signal's name) instead of killing the process;
    ``stop()`` says whether one came. A SIGINT raises ``KeyboardInterrupt`` at once (where it cannot be lost)
    when it is the second, or always with ``abort``.

    ``preemption``: a multi-process run's Orbax ``CheckpointManager``. JAX's preemption service then watches
    SIGTERM on every process and ``stop()`` is Orbax's ``reached_preemption``, true on all processes at the
    same call; no handler is installed (every process must call ``stop()`` at the same points).

    Handlers are installed only in the main thread; with ``abort``, only where SIGINT has Python's default
    handler (a caller's own, such as the trainer's, or SIGINT ignored under ``nohup``, is left alone).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), preemption: Any = None, *,
                 abort: bool = False):
        self.signals = () if preemption is not None else signals
        self.preemption, self.abort = preemption, abort
        self.requested: str | None = None
        self._calls = 0
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        if self.preemption is not None:
            self._calls += 1  # the sync id: the same sequence on every process
            if self.requested is None and self.preemption.reached_preemption(self._calls):
                self.requested = "SIGTERM"
        return self.requested is not None

    def check(self) -> None:
        """With ``abort``: raise ``KeyboardInterrupt`` if a signal came and has not surfaced yet."""
        if self.abort and self.requested is not None:
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        again, self.requested = self.requested is not None, signal.Signals(signum).name
        if signum == signal.SIGINT and (again or self.abort) and not _where_it_would_be_lost(frame):
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        if self.abort and signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return self
        for s in self.signals:
            self._old[s] = signal.signal(s, self._handle)
        if self.abort and self._old:
            _ABORTING.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        if self in _ABORTING:
            _ABORTING.remove(self)
        installed, self._old = bool(self._old), {}
        if installed and kind is None:
            self.check()  # one that came after the last check


def interruptible() -> StopSignal:
    """Within (``with interruptible(): ...``): Ctrl-C raises ``KeyboardInterrupt`` as usual, and is never lost
    (the module's docstring); long loops call :func:`check_interrupt` (once per example prepared, per chunk
    decoded)."""
    return StopSignal((signal.SIGINT,), abort=True)


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C came within :func:`interruptible` and has not surfaced yet."""
    for stop in _ABORTING:
        stop.check()


def close_progress_bars() -> None:
    """Close the progress bars an interrupt left open (TFDS's nested ones), before a closing message: a bar
    closed later, at exit, would write its cursor-up code after the message and a terminal would draw over it.
    Then back to the line's start (a closed bar leaves the cursor after the spaces that cleared it)."""
    from tqdm import tqdm

    bars = list(getattr(tqdm, "_instances", ()))
    for bar in bars:
        bar.close()
    if bars:
        sys.stderr.write("\r")
        sys.stderr.flush()
